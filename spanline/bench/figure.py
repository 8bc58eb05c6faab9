"""The picture of a run (``--png`` / ``--out``), for people who would rather look than read the table.

In: a rendered :class:`~spanline.bench.report.Report` (its summary, and the per-call samples of its runs).
Out: one PNG with six panels, each titled with what it shows and its units:

1. per-call latency of S1 (untraced, spanline, MLflow autolog async and sync, each in its own process), as
   histograms on a log time axis, medians marked: how far each configuration moves the call;
2. the caller's path in one process: what the floor and spanline add per call, block by block against the
   adjacent untraced block (dots, and a box of them), with the ≤ 3% goal drawn: how much of spanline's
   cost any Python patch pays anyway;
3. CPU per traced call, split by where it runs: the calling thread and background threads of the application
   process, and a writer process (spanline's jobs run one);
4. S5: how long each configuration takes to store a burst, with traces stored / made;
5. S6: the application's CPU per run of the seed's agent under ``@mlflow.trace``: MLflow's own export against
   spanline's log, with what making MLflow's spans costs whoever stores them;
6. SP: the writer's CPU per trace on each store path, ``log_spans`` and the bulk path, with the traces one
   writer core sustains on each.

matplotlib is imported here only, with the Agg backend (no display needed).
"""

from __future__ import annotations

from typing import Any

from .configs import CONFIG_LABELS, MLFLOW_TRACER_ONLY, S6_CONFIGS, SPANLINE_MLFLOW_EXPORT
from .report import Report

COLORS = {
    "untraced": "#7f7f7f",
    "floor": "#bcbd22",
    "spanline": "#1f77b4",
    "mlflow_async": "#ff7f0e",
    "mlflow_sync": "#d62728",
}
LATENCY_CONFIGS = ("untraced", "spanline", "mlflow_async", "mlflow_sync")
SHORT = {
    "untraced": "untraced",
    "spanline": "spanline",
    "mlflow_async": "MLflow autolog\n(async export)",
    "mlflow_sync": "MLflow autolog\n(sync export)",
}


def draw(report: Report, path: str) -> None:
    """Draw ``report`` (already rendered, so its summary is filled) into the PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 2, figsize=(15, 15), layout="constrained")
    m = report.meta
    fig.suptitle(
        f"spanline bench ({report.sizes.name}), {m.get('started_utc', '')}: {m.get('cpu', '?')}, "
        f"{m.get('nproc', '?')} cores; Python {m.get('python', '?')}, mlflow {m.get('mlflow', '?')}, "
        f"anthropic {m.get('anthropic', '?')}; in-process fake API, sqlite store",
        fontsize=11,
    )
    _latency_panel(axes[0][0], report)
    _caller_path_panel(axes[0][1], report)
    _cpu_panel(axes[1][0], report)
    _drain_panel(axes[1][1], report)
    _mlflow_spans_panel(axes[2][0], report)
    _store_paths_panel(axes[2][1], report)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def _not_run(ax: Any, title: str, why: str) -> None:
    ax.set_title(title, fontsize=11, loc="left")
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="#555555")
    ax.set_axis_off()


def _latency_panel(ax: Any, report: Report) -> None:
    title = "S1 per-call latency, each configuration in its own process (log scale)"
    rows = report.rows("S1")
    samples = {c: [x / 1e3 for x in rows[c].pooled()] for c in LATENCY_CONFIGS if c in rows and rows[c].ok_runs}
    if not samples:
        _not_run(ax, title, "S1 not run")
        return
    import numpy as np

    everything = np.concatenate([np.asarray(v) for v in samples.values()])
    lo, hi = np.percentile(everything, 0.2), np.percentile(everything, 99.8)
    bins = np.geomspace(max(lo * 0.9, 1e-3), hi * 1.1, 90)
    for config, values in samples.items():
        median = float(np.median(values))
        ax.hist(
            values,
            bins=bins,
            density=False,
            weights=np.full(len(values), 100 / len(values)),
            histtype="stepfilled",
            alpha=0.35,
            color=COLORS[config],
            edgecolor=COLORS[config],
            linewidth=1.2,
            label=f"{CONFIG_LABELS[config]}: median {median:,.0f} µs",
            zorder=2,
        )
        ax.axvline(median, color=COLORS[config], linestyle="--", linewidth=1)
    ax.set_xscale("log")
    ax.set_xlabel("wall time per `messages.create` call (µs, log scale)")
    ax.set_ylabel("% of calls per bin")
    ax.set_title(title, fontsize=11, loc="left")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.grid(True, which="both", axis="x", alpha=0.3)


def _caller_path_panel(ax: Any, report: Report) -> None:
    title = "Caller's path: one process, blocks interleaved, worker idle"
    runs = [r for _, r in report.results_of("paired") if r.get("ok") and r.get("block_medians_ns")]
    cp = report.summary.get("caller_path")
    if not runs or not cp:
        _not_run(ax, title, "no block medians in this run (S1 not run, or saved by an older bench)")
        return
    import numpy as np

    medians = runs[0]["block_medians_ns"]
    base = cp["untraced_us"]
    added = {"floor": cp["floor_added_us"], "spanline": cp["spanline_added_us"]}
    names = ["floor", "spanline"]
    # Each block against the untraced block next to it in time: slow drifts of the machine cancel.
    diffs = [np.subtract(medians[n], medians["untraced"]) / 1e3 for n in names]
    labels = [
        "floor: the cheapest Python-level\ncapture of both bodies\n"
        f"{added['floor']:+,.2f} µs = {added['floor'] / base:+.2%} of the call",
        f"spanline\n{added['spanline']:+,.2f} µs = {added['spanline'] / base:+.2%} of the call",
    ]
    box = ax.boxplot(
        diffs,
        orientation="horizontal",
        whis=(5, 95),
        showfliers=False,
        patch_artist=True,
        widths=0.5,
        medianprops={"color": "black", "linewidth": 1.5},
    )
    for patch, name in zip(box["boxes"], names, strict=True):
        patch.set_facecolor(COLORS[name])
        patch.set_alpha(0.45)
    rng = np.random.default_rng(0)
    for i, values in enumerate(diffs, start=1):
        ax.scatter(values, i + rng.uniform(-0.18, 0.18, len(values)), s=9, color="black", alpha=0.45, zorder=3)
    ax.set_yticks([1, 2], labels)
    goal = base * cp["goal_pct"] / 100
    ax.axvline(0, color=COLORS["untraced"], linewidth=1)
    ax.axvline(goal, color="#2ca02c", linestyle="--", linewidth=1.5,
               label=f"goal: {cp['goal_pct']:g}% of the untraced call ({goal:,.1f} µs)")
    spread = np.concatenate(diffs)
    lo, hi = np.percentile(spread, 3), np.percentile(spread, 97)
    ax.set_xlim(min(lo, 0, goal) - 0.1 * (hi - lo + 1), max(hi, goal) + 0.1 * (hi - lo + 1))
    ax.set_xlabel("µs added per call (a dot: one block's median − the adjacent untraced block's)")
    verdict = "met" if cp["goal_met"] else "not met"
    x_floor = cp["multiple_of_floor"]
    ax.set_title(
        f"{title}\nspanline adds {cp['pct_of_untraced_call']:.2f}% of the call (goal ≤ {cp['goal_pct']:g}%: {verdict})"
        + (f", {x_floor:.2f}× the floor" if x_floor and x_floor > 0 else ""),
        fontsize=11,
        loc="left",
    )
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    ax.grid(True, axis="x", alpha=0.3)


def _cpu_panel(ax: Any, report: Report) -> None:
    title = "S1 CPU per traced call, by where it runs (until stored)"
    s1 = report.summary.get("S1", {})
    configs = [c for c in LATENCY_CONFIGS if c in s1 and s1[c].get("cpu_per_trace_us") is not None]
    if not configs:
        _not_run(ax, title, "S1 not run")
        return
    parts = (
        ("caller_cpu_per_trace_us", "application: calling thread", "#4c72b0", None),
        ("background_cpu_per_trace_us", "application: background threads (spanline's worker, MLflow's export)",
         "#9ecae1", None),
        ("writer_cpu_per_trace_us", "writer process", "#c7e9c0", "//"),
    )
    if all(s1[c].get("writer_cpu_per_trace_us") is None for c in configs):
        parts = (*parts[:2], (parts[2][0], "writer process (none in this run)", *parts[2][2:]))
    y = list(range(len(configs)))[::-1]
    left = [0.0] * len(configs)
    for key, label, color, hatch in parts:
        widths = [(s1[c].get(key) or 0.0) / 1e3 for c in configs]
        ax.barh(y, widths, left=left, color=color, hatch=hatch, edgecolor="white", label=label, height=0.6)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    ax.set_yticks(y, [SHORT[c] for c in configs])
    for yi, config, total in zip(y, configs, left, strict=True):
        row = s1[config]
        writer = row.get("writer_cpu_per_trace_us")
        text = (
            f" {total:,.2f} ms\n {row['caller_cpu_per_trace_us'] / 1e3:,.2f} calling thread"
            f" + {row['background_cpu_per_trace_us'] / 1e3:,.2f} background"
            + (f" + {writer / 1e3:,.2f} writer" if writer is not None else "")
        )
        ax.text(total, yi, text, va="center", fontsize=9)
    ax.set_xlim(0, max(left) * 1.6)
    ax.set_xlabel("ms of CPU per traced call")
    ax.set_title(title, fontsize=11, loc="left")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=1, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)


def _drain_panel(ax: Any, report: Report) -> None:
    title = "S5: a burst of calls, then flush: time to store it all"
    s5 = report.summary.get("S5", {})
    configs = [c for c in ("spanline", "mlflow_async") if s5.get(c, {}).get("drain_s") is not None]
    if not configs:
        _not_run(ax, title, "S5 not run")
        return
    y = list(range(len(configs)))[::-1]
    drains = [s5[c]["drain_s"] for c in configs]
    ax.barh(y, drains, color=[COLORS[c] for c in configs], height=0.5)
    ax.set_yticks(y, [SHORT[c] for c in configs])
    for yi, config, drain in zip(y, configs, drains, strict=True):
        row = s5[config]
        rate = row.get("drain_rate")
        ax.text(
            drain,
            yi,
            f" {drain:,.2f} s\n stored {row.get('stored', 0):,} of {row.get('made', 0):,} traces"
            + (f"\n {rate:,.0f} traces/s while draining" if rate else ""),
            va="center",
            fontsize=9,
        )
    ax.set_xlim(0, max(drains) * 1.6 or 1)
    made = s5[configs[0]].get("made", 0)
    ax.set_xlabel(f"seconds from the last of {made:,} calls until everything was stored (flush returned)")
    ax.set_title(title, fontsize=11, loc="left")
    ax.grid(True, axis="x", alpha=0.3)


S6_SHORT = {
    "untraced": "untraced",
    MLFLOW_TRACER_ONLY: "MLflow's tracer only\n(export stubbed)",
    "spanline": "spanline\n(MLflow's spans via its log)",
    SPANLINE_MLFLOW_EXPORT: "spanline, MLflow\nexporting its spans",
    "mlflow_async": "MLflow autolog\n(async export)",
}


def _mlflow_spans_panel(ax: Any, report: Report) -> None:
    title = "S6 the seed's agent under @mlflow.trace: application CPU per agent run (until stored)"
    s6 = report.summary.get("S6", {})
    configs = [c for c in S6_CONFIGS if s6.get(c, {}).get("cpu_per_trace_us") is not None]
    if not configs:
        _not_run(ax, title, "S6 not run")
        return
    y = list(range(len(configs)))[::-1]
    app = [s6[c]["cpu_per_trace_us"] / 1e3 for c in configs]
    writer = [(s6[c].get("writer_cpu_per_trace_us") or 0.0) / 1e3 for c in configs]
    ax.barh(y, app, color="#4c72b0", height=0.6, label="application process (all its threads)")
    ax.barh(y, writer, left=app, color="#c7e9c0", hatch="//", edgecolor="white", height=0.6,
            label="writer process (not the application's)")
    ax.set_yticks(y, [S6_SHORT[c] for c in configs])
    for yi, a, w in zip(y, app, writer, strict=True):
        ax.text(a + w, yi, f" {a:,.2f} ms" + (f" + {w:,.2f} writer" if w else ""), va="center", fontsize=9)
    derived = s6.get("derived")
    if derived:
        ax.text(0.98, 0.98, f"spanline's own: {derived['spanline_beyond_creation'] / derived['mlflow_added']:.3f}\n"
                "of MLflow's added CPU", transform=ax.transAxes, ha="right", va="top", fontsize=10)
    ax.set_xlim(0, max(a + w for a, w in zip(app, writer, strict=True)) * 1.5)
    ax.set_xlabel("ms of CPU per agent run (1 AGENT, 2 CHAT_MODEL, 1 TOOL span)")
    ax.set_title(title, fontsize=11, loc="left")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, frameon=False)
    ax.grid(True, axis="x", alpha=0.3)


def _store_paths_panel(ax: Any, report: Report) -> None:
    title = "SP writer CPU per trace by store path (sqlite, the seed agent's 4-span traces)"
    sp = report.summary.get("SP")
    if not sp:
        _not_run(ax, title, "SP not run")
        return
    from .storepaths import cpu_panel

    samples = {path: [{"cpu_ms": v, "server_cpu_ms": 0.0} for v in values] for path, values in sp["samples"].items()}
    cpu_panel(ax, samples, f"{title}\nbulk / log_spans, same rounds: {sp['cpu_ratio']:.2f} "
              f"= {sp['per_core_gain']:.2f}× the traces per writer core (goal ≥ 3×)", loc="left", fontsize=11)
