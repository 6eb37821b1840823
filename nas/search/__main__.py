"""`python -m nas.search --target-flops 400M`: the main job (`nas.cli.search`)."""
import sys

from nas.cli.search import main

if __name__ == "__main__":
    sys.exit(main())
