"""The process-wide pipeline and the switches the caller's path reads.

Module globals rather than an object, so the hot path pays one module attribute read per switch.
"""

from __future__ import annotations

from spanline.pipeline import options as _options
from spanline.pipeline.lifecycle import Pipeline

options = _options.build(_options.Options(), _options.from_env())
pipeline = Pipeline(options)

# True while autolog(log_traces=True) is in force for the SDK patches.
recording = False
# False after autolog(log_traces=False): then user spans (trace, start_span) record nothing either.
log_traces = True
# Read by spans and patches: the fraction of new traces kept.
sample_rate = options.sample_rate


def set_options(new: _options.Options) -> None:
    global options, sample_rate
    options = new
    sample_rate = new.sample_rate
    pipeline.configure(new)
