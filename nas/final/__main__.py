"""`python -m nas.final RUN`: run or extend stage 2 of a search run (`nas.cli.final`)."""
import sys

from nas.cli.final import main

if __name__ == "__main__":
    sys.exit(main())
