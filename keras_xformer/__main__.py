"""`python -m keras_xformer` is the `xformer` command."""

import sys

from keras_xformer.cli import main

if __name__ == "__main__":
    sys.exit(main())
