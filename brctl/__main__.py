"""``python -m brctl``: the same click client as the ``brctl`` console script."""

from brctl._cli import main

main(prog_name="brctl")
