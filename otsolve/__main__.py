"""``python -m otsolve``: the ``otsolve`` command line."""
import sys

from otsolve.cli import main

if __name__ == "__main__":
    sys.exit(main())
