"""`python -m wisp.echo`, the same as `wisp-echo`."""

import sys

from wisp.echo import main

sys.exit(main())
