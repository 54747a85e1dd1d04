# `python -m sparseforce.cli`, as when the command was the module sparseforce/cli.py.
import sys

from . import main

sys.exit(main())
