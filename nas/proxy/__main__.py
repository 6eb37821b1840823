"""`python -m nas.proxy check`: the proxy check (`nas.cli.proxy`)."""
import sys

from nas.cli.proxy import main

if __name__ == "__main__":
    sys.exit(main())
