"""`python -m service.cli`: the `gatequeue` command."""

import sys

from service.cli import main

sys.exit(main())
