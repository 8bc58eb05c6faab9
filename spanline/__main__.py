"""``python -m spanline ...``: the ``spanline`` command (spanline/cli.py), e.g. ``python -m spanline writer``."""

from __future__ import annotations

import sys

from spanline.cli import main

if __name__ == "__main__":
    sys.exit(main())
