"""``python -m spanline.writer``: the writer process (same as ``spanline writer``; see pipeline/writer.py)."""

from __future__ import annotations

import sys

from spanline.cli import main

if __name__ == "__main__":
    sys.exit(main(["writer", *sys.argv[1:]]))
