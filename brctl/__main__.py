"""``python -m brctl``: the same click client as the ``brctl`` console script."""

from brctl._cli import console_main

console_main()
