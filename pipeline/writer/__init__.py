"""The writer process (``spanline writer``): a log directory's segments into MLflow traces.

The package's modules, each run by the writer process's one thread unless it says otherwise: loop.py
(``Writer``: the run loop and its rounds), segments.py (reading a producer's segments), store.py (the
store-and-checkpoint step), server.py (the flush protocol's socket), status.py (the status and the status
file), tally.py (the counts), fanout.py (store writers in parallel), deadletter.py (what the store refuses
for good), storeerrors.py (a store error in words), drain.py (the end on SIGTERM).
"""

from __future__ import annotations

from .loop import Writer
from .status import OneLineFormatter

__all__ = ["OneLineFormatter", "Writer"]
