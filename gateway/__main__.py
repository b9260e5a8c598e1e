"""`python -m gateway` is the same program as `store-gateway`."""

import sys

from gateway.cli import main

sys.exit(main())
