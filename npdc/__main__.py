"""`python -m npdc`: see npdc.cli."""

import sys

from npdc.cli import main

sys.exit(main())
