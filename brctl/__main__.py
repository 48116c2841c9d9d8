import sys

from brctl._entry import main

sys.exit(main())
