"""``python -m zstore ...``: the ``zstore`` command, where no console script is on PATH."""

import sys

from zstore._cli import main

if __name__ == "__main__":  # not on import (pytest's --doctest-modules imports every module)
    sys.exit(main())
