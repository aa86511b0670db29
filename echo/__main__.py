"""`python -m echo`, the same as `wisp-echo`."""

import sys

from echo import main

sys.exit(main())
