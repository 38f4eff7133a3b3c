"""``python -m styleforge ...`` (and ``accelerate launch -m styleforge batch ...``): the ``styleforge`` command."""

import sys

from .cli.main import main

if __name__ == "__main__":
    sys.exit(main())
