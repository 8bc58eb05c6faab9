"""The run's sizes (``--quick`` or full) and its job list: each scenario's configurations alternated
round after round (A B C D, then D C B A), so drift on a noisy machine hits them alike."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .configs import CONFIGS, MLFLOW_TRACER_ONLY, NOSTORE, S1_CONFIGS, S6_CONFIGS, SPANLINE_MLFLOW_EXPORT

SCENARIOS = ("S1", "S2", "S3", "S4", "S5", "S6", "SP", "TW", "MEM")
_T, _E = MLFLOW_TRACER_ONLY, SPANLINE_MLFLOW_EXPORT


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does per process, by configuration, and how many rounds it runs.

    MLflow's paths cost milliseconds of CPU per trace (its synchronous export ~26 ms per call), so their
    counts are capped to keep a run bounded; medians and per-call figures do not depend on the count. Except
    in S1, where spanline and MLflow's async export make as many traces each (500 per process): S1 compares
    CPU per stored trace (#20's goal), and a sqlite store's cost per trace grows with the file (spanline's
    writer: ~350 µs a trace over 1,000 calls into a fresh copy, 520–570 µs over 8,000), so both write into
    stores that grow alike. (With 150 against 1,000, MLflow's figure came from a store a seventh the size.) Not
    more: past ~1,000 traces waiting for its export thread, MLflow's async export drops traces (its trace
    buffer and its export queue, ``MLFLOW_TRACE_BUFFER_MAX_SIZE`` and ``MLFLOW_ASYNC_TRACE_LOGGING_MAX_QUEUE_SIZE``,
    1,000 each by default: 1,005 of 1,500 calls stored; 5,115 of 20,000 in a full run at 4,000 per process;
    1,713 of 2,000 at 1,000 per process on a busy machine), and its CPU per trace made would count work it never
    did.
    """

    name: str
    rounds: int
    warmup: int
    s1: dict[str, int]
    s2_gathers: dict[str, int]
    s3: dict[str, int]
    s4_gathers: dict[str, int]
    s5: dict[str, int]
    s5_rounds: int
    s6_gathers: dict[str, int]
    tw_traces: int
    tw_batches: tuple[int, ...]
    tw_rounds: int
    tw_server: bool
    mem_calls: int
    mem_queue: int
    paired_blocks: int
    paired_block_calls: int
    lag_seconds: float = 3.0  # the steady load after spanline's S1 and S5 jobs (scenarios.py), per job
    sp_traces: int = 500  # SP: the seed agent's traces per (round, store path) job
    sp_rounds: int = 2


QUICK = Sizes(
    name="quick",
    rounds=2,
    warmup=30,
    s1={"untraced": 1000, "spanline": 500, NOSTORE: 1000, "mlflow_async": 500, "mlflow_sync": 40},
    s2_gathers={"untraced": 5, "spanline": 5, "mlflow_async": 2, "mlflow_sync": 1},
    s3={"untraced": 200, "spanline": 200, "mlflow_async": 100, "mlflow_sync": 30},
    s4_gathers={"untraced": 40, "spanline": 40, "mlflow_async": 10, "mlflow_sync": 3},
    s5={"untraced": 2000, "spanline": 2000, "mlflow_async": 2000, "mlflow_sync": 60},
    s5_rounds=1,
    s6_gathers={"untraced": 40, _T: 40, "spanline": 40, _E: 15, "mlflow_async": 10},
    tw_traces=300,
    tw_batches=(10, 100),
    tw_rounds=2,
    tw_server=False,
    mem_calls=10_000,
    mem_queue=2_000,
    paired_blocks=40,
    paired_block_calls=100,
)

# For the test suite only: every part of a run, in seconds; its figures mean nothing.
SMOKE = Sizes(
    name="smoke",
    rounds=1,
    warmup=5,
    s1={"untraced": 50, "spanline": 50, NOSTORE: 50, "mlflow_async": 20, "mlflow_sync": 5},
    s2_gathers={"untraced": 1, "spanline": 1, "mlflow_async": 1, "mlflow_sync": 1},
    s3={"untraced": 10, "spanline": 10, "mlflow_async": 5, "mlflow_sync": 3},
    s4_gathers={"untraced": 2, "spanline": 2, "mlflow_async": 2, "mlflow_sync": 1},
    s5={"untraced": 100, "spanline": 100, "mlflow_async": 100, "mlflow_sync": 5},
    s5_rounds=1,
    s6_gathers={"untraced": 2, _T: 2, "spanline": 2, _E: 2, "mlflow_async": 2},
    tw_traces=50,
    tw_batches=(100,),
    tw_rounds=1,
    tw_server=False,
    mem_calls=500,
    mem_queue=100,
    paired_blocks=4,
    paired_block_calls=20,
    lag_seconds=0.5,
    sp_traces=20,
    sp_rounds=1,
)

FULL = Sizes(
    name="full",
    rounds=5,
    warmup=50,
    s1={"untraced": 4000, "spanline": 500, NOSTORE: 4000, "mlflow_async": 500, "mlflow_sync": 150},
    s2_gathers={"untraced": 20, "spanline": 20, "mlflow_async": 4, "mlflow_sync": 1},
    s3={"untraced": 1000, "spanline": 1000, "mlflow_async": 300, "mlflow_sync": 100},
    s4_gathers={"untraced": 200, "spanline": 200, "mlflow_async": 30, "mlflow_sync": 8},
    s5={"untraced": 10_000, "spanline": 10_000, "mlflow_async": 10_000, "mlflow_sync": 200},
    s5_rounds=2,
    s6_gathers={"untraced": 200, _T: 200, "spanline": 200, _E: 50, "mlflow_async": 30},
    tw_traces=1000,
    tw_batches=(1, 10, 100, 500),
    tw_rounds=3,
    tw_server=True,
    mem_calls=100_000,
    mem_queue=10_000,
    paired_blocks=100,
    paired_block_calls=200,
    lag_seconds=10.0,
    sp_traces=1000,
    sp_rounds=4,
)


def _round_order(configs: Sequence[str], r: int) -> list[str]:
    """A B C D, then D C B A: each configuration's average position is the same (ABBA)."""
    return list(configs) if r % 2 == 0 else list(reversed(configs))


@dataclass
class Plan:
    sizes: Sizes
    scenarios: list[str]
    jobs: list[dict[str, Any]] = field(default_factory=list)

    def build(self, server: bool) -> None:
        s = self.sizes
        per = {"S1": s.s1, "S2": s.s2_gathers, "S3": s.s3, "S4": s.s4_gathers, "S5": s.s5, "S6": s.s6_gathers}
        for scenario in self.scenarios:
            if scenario in per:
                rounds = s.s5_rounds if scenario == "S5" else s.rounds
                for r in range(rounds):
                    configs = {"S1": S1_CONFIGS, "S6": S6_CONFIGS}.get(scenario, CONFIGS)
                    for config in _round_order(configs, r):
                        self.jobs.append(
                            {
                                "kind": "scenario",
                                "scenario": scenario,
                                "config": config,
                                "round": r,
                                "n": per[scenario][config],
                                "warmup": s.warmup,
                                "lag_seconds": s.lag_seconds,
                            }
                        )
                if scenario == "S1":
                    self.jobs.append(
                        {
                            "kind": "paired",
                            "scenario": "S1",
                            "config": "spanline",
                            "round": 0,
                            "n": s.paired_block_calls,
                            "blocks": s.paired_blocks,
                            "warmup": s.warmup,
                        }
                    )
            elif scenario == "TW":
                targets = ["sqlite", "server"] if (server and s.tw_server) else ["sqlite"]
                for target in targets:
                    for batch in s.tw_batches:
                        for r in range(s.tw_rounds):
                            for mode in _round_order(("worker", "raw"), r):
                                self.jobs.append(
                                    {
                                        "kind": "throughput",
                                        "scenario": "TW",
                                        "config": "spanline",
                                        "target": target,
                                        "batch": batch,
                                        "mode": mode,
                                        "round": r,
                                        "n": s.tw_traces,
                                    }
                                )
            elif scenario == "SP":  # the store paths, log_spans and bulk, each job a fresh copy of the store
                for r in range(s.sp_rounds):
                    for path in _round_order(("log_spans", "bulk"), r):
                        self.jobs.append({"kind": "store_path", "scenario": "SP", "config": "spanline",
                                          "path": path, "round": r, "n": s.sp_traces, "batch": 200})
            elif scenario == "MEM":
                for config in ("untraced", "spanline"):
                    self.jobs.append(
                        {
                            "kind": "memory",
                            "scenario": "MEM",
                            "config": config,
                            "round": 0,
                            "n": s.mem_calls,
                            "queue": s.mem_queue,
                            "warmup": s.warmup,
                        }
                    )


def job_label(job: dict[str, Any]) -> str:
    if job["kind"] == "throughput":
        return f"TW {job['target']} batch {job['batch']} {job['mode']} r{job['round'] + 1}"
    if job["kind"] == "store_path":
        return f"SP {job['path']} r{job['round'] + 1}"
    if job["kind"] == "paired":
        return "S1 caller's path (untraced twin, floor, spanline: one process)"
    return f"{job['scenario']} {job['config']} r{job['round'] + 1}"


# --- aggregation ------------------------------------------------------------------------------------
