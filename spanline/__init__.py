"""spanline: trace every Anthropic SDK call into MLflow as nested traces, at almost no cost to the caller.

    import spanline
    spanline.autolog()          # patch the SDK once
    ...                         # use anthropic as usual; decorate agents and tools with @spanline.trace
    spanline.flush()            # block until everything so far is stored

Importing spanline imports neither mlflow nor anthropic.
"""

from spanline._api import aflush, autolog, configure, flush, shutdown, stats
from spanline.pipeline.stats import Stats
from spanline.tracing import Span, start_span, trace

__version__ = "0.1.0"

__all__ = [
    "Span",
    "Stats",
    "aflush",
    "autolog",
    "configure",
    "flush",
    "shutdown",
    "start_span",
    "stats",
    "trace",
]

for _name in __all__:
    globals()[_name].__module__ = "spanline"
del _name
