"""``python -m pruners.cli`` is ``depprune``."""

import sys

from .main import main

sys.exit(main())
