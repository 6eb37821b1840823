"""`python -m nas.supernet train --out RUN`: train a supernet (`nas.cli.supernet`)."""
from nas.cli.supernet import main
from nas.supernet.distributed import exit_process

if __name__ == "__main__":
    exit_process(main())  # a torchrun rank skips the interpreter's teardown (see exit_process)
