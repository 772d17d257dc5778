"""`python -m refface.cli` runs the `refface` command."""

import sys

from refface.cli import main

sys.exit(main())
