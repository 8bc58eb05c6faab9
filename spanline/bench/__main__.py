"""``python -m spanline.bench``: the same as ``spanline bench`` (and how the runner starts its processes)."""

import sys

from spanline.bench.cli import main

sys.exit(main())
