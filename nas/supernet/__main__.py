"""`python -m nas.supernet train --out RUN`: train a supernet (`nas.cli.supernet`)."""
import sys

from nas.cli.supernet import main

if __name__ == "__main__":
    sys.exit(main())
