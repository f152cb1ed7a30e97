"""Allow ``python -m memtrace``."""

import sys

from memtrace.tools.cli import main

sys.exit(main())
