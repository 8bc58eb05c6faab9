"""``spanline bench``: caller-path overhead, throughput, drain, CPU and memory, against MLflow, in one run.

    spanline bench [--quick] [--out DIR] [--markdown PATH] [--json PATH] [--png PATH] [--scenarios S1,S2,...]
    python -m spanline.bench --quick --out bench/     # bench/bench.md, bench/bench.json, bench/bench.png

Method. Patching is process-global, so every configuration of a comparison runs in its own process:
``untraced``, ``spanline``, ``mlflow_async`` (``mlflow.anthropic.autolog()``, MLflow's default async
export) and ``mlflow_sync`` (the same with ``MLFLOW_ENABLE_ASYNC_TRACE_LOGGING=false``). For each
scenario the configurations alternate, round after round (A B C D, then D C B A, ...), so drift on a
noisy machine hits them alike; results are medians over the pooled per-call samples of all rounds, and
overheads are differences and ratios against ``untraced`` from the same interleaved run, never a lone
absolute time. Processes are forked from one interpreter that has imported anthropic, mlflow and spanline
(and nothing else: no patch, no store, no tracer), so a round costs no interpreter start-up; ``--spawn``
starts a fresh interpreter per process instead. Every process talks to the in-process fake Anthropic
API (``spanline.testing``) and writes to its own copy of a sqlite MLflow store in a temp dir.

Modules, one job each, in the order a run uses them:

- ``workload``: the requests, the agent's questions, and the fake API's clients;
- ``plan``: the run sizes (``--quick`` / full) and the job list, configurations alternated per round;
- ``runner``: a fresh process per job (a preloaded fork server, or ``--spawn``), and a local ``mlflow server``;
- ``jobs``: inside a job's process, dispatch on the job's kind and write the result file;
- ``configs``: one configuration (untraced, spanline, MLflow autolog) set up inside a process;
- ``scenarios``: S1–S5; ``caller_path``: the caller's path alone, in one process (``untraced_twin``,
  ``floor_client``, ``interleaved_overhead``); ``throughput``: TW; ``memory``: MEM; ``measure``: CPU by
  thread, RSS, stored counts, percentiles;
- ``report``: rows, ratios and targets, as Markdown (and the summary the JSON holds); ``figure``: the PNG;
  ``progress``: the progress bar (tqdm's when installed);
- ``cli``: ``main``, the arguments, the run itself and where its outputs go.

Figures are facts of this run, not assertions.
"""

from __future__ import annotations

from .caller_path import floor_client, interleaved_overhead, untraced_twin
from .cli import main
from .workload import CHAT_KWARGS, MODEL, STREAM_KWARGS, TOOLS, fake_clients

__all__ = [
    "CHAT_KWARGS",
    "MODEL",
    "STREAM_KWARGS",
    "TOOLS",
    "fake_clients",
    "floor_client",
    "interleaved_overhead",
    "main",
    "untraced_twin",
]
