"""`python -m nas` runs the search (same as `python -m nas.search`)."""
import sys

from nas.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
