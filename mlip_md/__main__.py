"""``python -m mlip_md COMMAND`` is ``mlip-md COMMAND``."""

import sys

from mlip_md.cli import main

if __name__ == "__main__":
    sys.exit(main())
