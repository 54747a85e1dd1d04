"""``python -m benchmarks``: the same runner as ``sparseforce bench``."""
import sys

from sparseforce.cli import main

sys.exit(main(["bench", *sys.argv[1:]]))
