"""One line per matrix session (noxfile.py): its versions and its passed / failed / skipped counts.

Reads ``.nox/_reports/<session>.json`` (what the session pinned, or why it was skipped) and ``<session>.xml``
(pytest's junit report). Exits non-zero if a session failed or left no report (it did not run its tests).
A session skipped for a missing interpreter is listed as SKIPPED, with its reason, and is not a failure.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def counts(report: Path) -> dict[str, int]:
    root = ET.parse(report).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    total = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    return {
        "passed": total["tests"] - total["failures"] - total["errors"] - total["skipped"],
        "failed": total["failures"] + total["errors"],
        "skipped": total["skipped"],
    }


def main(reports: Path, sessions: list[str]) -> int:
    bad = 0
    for name in sessions:
        meta_file = reports / f"{name}.json"
        meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
        versions = (
            f"Python {meta.get('python', '?')}, anthropic {meta.get('anthropic', '?')}"
            f"{'[aiohttp]' if meta.get('aiohttp') else ''}, mlflow {meta.get('mlflow', '?')}"
        )
        report = reports / f"{name}.xml"
        if meta.get("skipped_because"):
            print(f"SKIPPED {name:16} {versions}: {meta['skipped_because']}")
            continue
        if not report.exists():
            print(f"FAILED  {name:16} {versions}: no test report (the session failed before its tests ran)")
            bad += 1
            continue
        c = counts(report)
        status = "FAILED " if c["failed"] or not c["passed"] else "ok     "
        bad += status != "ok     "
        print(f"{status} {name:16} {versions}: {c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped")
    return 1 if bad else 0


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    sys.path.insert(0, str(root))
    import noxfile  # the session list, so a session that never ran is reported too

    sys.exit(main(root / ".nox" / "_reports", list(noxfile.MATRIX)))
