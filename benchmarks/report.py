"""BENCHMARKS.md's tables and pictures, regenerated: ``python -m benchmarks.run --markdown``.

Five families, each measured side by side with its peers in one run, each written as one table
and one picture (matplotlib, the ``bench`` extra) between its markers in BENCHMARKS.md:

- ``matrix``: rate control against independent servers, one row per server model
  (``benchmarks.ratelimit_matrix``): openrouter-sync and the plain requests + tenacity loop;
- ``processes``: several processes started together against one limit
  (``benchmarks.multiprocess``): openrouter-sync by default, with independent throttles, with a
  shared state file, and the plain loop;
- ``overhead``: per-call CPU, answer time and import time (``benchmarks.overhead``):
  openrouter-sync, ``requests`` and the openai SDK (raw ``http.client`` as the floor);
- ``batches``: a fault soak and a latency-bound batch on the fake server (``benchmarks.scenarios``)
  and memory over 10,000 sheets: openrouter-sync, the plain loop, a plain thread pool;
- ``scale``: sheets/s, peak RSS and resume time up to a million sheets (``benchmarks.scale``),
  beside a plain thread pool (a table, no picture).

A marker pair is ``<!-- benchmarks:NAME -->`` ... ``<!-- /benchmarks:NAME -->``; what lies
between is replaced, the rest of the file is left as written.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .harness import machine_line, ratio, table

REPO = Path(__file__).resolve().parents[1]
FIGURES = REPO / "docs" / "img" / "benchmarks"
COLOURS = {"openrouter-sync": "#3f51b5", "openrouter-sync (a throttle per process)": "#3f51b5",
           "openrouter-sync (shared state file)": "#7986cb",
           "requests + tenacity loop": "#e57373", "requests": "#e57373", "openai SDK": "#81c784",
           "raw http.client": "#bdbdbd", "thread pool + requests": "#e57373"}


@dataclass
class Family:
    """One family's result: its markdown (a table and a picture) and the figures behind it."""

    name: str
    markdown: str
    data: Any = field(default=None)


def _figure(name: str) -> tuple[Any, Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    FIGURES.mkdir(parents=True, exist_ok=True)
    return plt, FIGURES / f"{name}.png"


def _picture(name: str, alt: str) -> str:
    return f"![{alt}](docs/img/benchmarks/{name}.png)"


def _bars(ax: Any, groups: list[str], series: dict[str, list[Optional[float]]], xlabel: str) -> None:
    """Horizontal bars, one group per label, one bar per series (None: no bar)."""
    height = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        ys = [g + i * height for g in range(len(groups))]
        ax.barh(ys, [v if v is not None else 0.0 for v in values], height=height, label=label,
                color=COLOURS.get(label))
    ax.set_yticks([g + height * (len(series) - 1) / 2 for g in range(len(groups))])
    ax.set_yticklabels(groups)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.grid(axis="x", alpha=0.3)


def _legend_below(fig: Any, ax: Any) -> None:
    """One legend for the figure, under the plots (never over a bar)."""
    handles, labels = ax.get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), frameon=False)


# ----- rate control across server models -----

def matrix(quick: bool) -> Family:
    """Every server model of ``ratelimit_matrix``, both clients, one after the other."""
    from . import ratelimit_matrix as m

    n = 60 if quick else 300
    rows = m.rows_for(n)
    names = ["tb-int", "fw-int", "conc"] if quick else list(rows)
    kinds = ["ours", "plain"]
    results = [(name, m.run_one(kind, rows[name], n, None)) for name in names for kind in kinds]
    by = {(name, r["client"]): r for name, r in results}

    def cells(r: dict[str, Any]) -> list[str]:
        if r["timeout"] or r["makespan"] is None:
            return ["timeout" if r["timeout"] else "failed", f"{r['429s']}"]
        return [ratio(r["makespan"], r["ideal"]), f"{r['429s']} ({r['share_429']:.0%})"]

    lines = []
    for name in names:
        ours, plain = by[(name, "ours")], by[(name, "plain")]
        lines.append([name, rows[name].says, f"{ours['ideal']:.2f}", *cells(ours), *cells(plain),
                      f"{ours['correct']}/{ours['n']}, {ours['twice']}; {plain['correct']}/{plain['n']}, "
                      f"{plain['twice']}"])
    markdown = (f"{n} prompts a row, {m.WORKERS} workers, {m.LATENCY * 1000:g} ms of server work per answer, "
                "429s answered at once; each client in its own process against a fresh server.\n\n"
                + table(["row", "server model", "ideal s", "openrouter-sync x ideal", "429s",
                         "plain loop x ideal", "429s", "own answer, twice (ours; plain)"], lines))
    plt, png = _figure("matrix")
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.6), sharey=True)
    for ax, key, xlabel in ((left, "makespan", "makespan / ideal (1 = the floor)"),
                            (right, "share_429", "429s per prompt")):
        series = {}
        for kind in kinds:
            values = []
            for name in names:
                r = by[(name, kind)]
                value = r[key] / r["ideal"] if key == "makespan" and r["makespan"] else r.get(key)
                values.append(None if r["timeout"] else value)
            series[m.CLIENT_LABELS[kind]] = values
        _bars(ax, names, series, xlabel)
    left.axvline(1.0, color="black", linewidth=0.8)
    fig.suptitle("Rate control: one batch per server model")
    _legend_below(fig, left)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Family("matrix", markdown + "\n\n" + _picture("matrix", "makespan and 429s per server model"),
                  [{"row": name, **r} for name, r in results])


# ----- many processes -----

def processes(quick: bool) -> Family:
    """2 and 4 processes x 16 workers against one bucket and one window, four ways."""
    from . import multiprocess as mp

    n = 40 if quick else 150
    counts = (2,) if quick else (2, 4)
    models = mp.server_models(n)
    if quick:
        models = {"bucket": models["bucket"]}
    ways = [("openrouter-sync (default)", "ours", None),
            ("openrouter-sync (`off`: a throttle per process)", "ours", mp.StateBackend("off")),
            ("openrouter-sync (shared state file)", "ours", mp.StateBackend()),
            ("requests + tenacity loop", "plain", None)]
    lines: list[list[Any]] = []
    data: list[dict[str, Any]] = []
    groups: list[str] = []
    series: dict[str, list[Optional[float]]] = {label: [] for label, _, _ in ways}
    for count in counts:
        for name, (says, spec, ideal_of) in models.items():
            ideal = ideal_of(count * n, count * mp.WORKERS)
            line: list[Any] = [says, f"{count} x {mp.WORKERS}", f"{ideal:.2f}"]
            groups.append(f"{name}, {count} processes")
            for label, kind, state in ways:
                r = mp.run_group(kind, spec, count, n, None, state, budget=20 * ideal + 30)
                line += [ratio(r["makespan"], ideal) or "timeout", f"{r['share_429']:.0%}",
                         f"{r['correct']}/{r['of']}, {r['twice']}"]
                series[label].append(None if r["makespan"] is None else r["makespan"] / ideal)
                data.append({"server": name, "processes": count, "client": label, "ideal": ideal, **r})
            lines.append(line)
    headers = ["server", "processes x workers", "ideal s"]
    for label, _, _ in ways:
        headers += [f"{label}: x ideal", "429s per prompt", "own answer, twice"]
    markdown = (f"{n} prompts per process, {mp.WORKERS} workers per process, all started together against one "
                "server.\n\n" + table(headers, lines))
    plt, png = _figure("processes")
    fig, ax = plt.subplots(figsize=(9, 0.7 * len(groups) + 1.6))
    _bars(ax, groups, series, "makespan / ideal (1 = the floor)")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_title("Many processes, one limit")
    _legend_below(fig, ax)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Family("processes", markdown + "\n\n" + _picture("processes", "makespan of processes sharing a limit"),
                  data)


# ----- per-call overhead -----

def overhead(quick: bool) -> Family:
    """CPU per call against a fixed-answer server, answer time against ``http.server``, import time."""
    from . import overhead as o

    if quick:
        o.CALLS, o.ROUNDS, o.WARMUP = 100, 2, 20
    per_call = o.per_call()
    latency = o.latency(calls=10, rounds=2) if quick else o.latency()
    imports = o.imports(runs=3) if quick else o.imports()
    answer = dict(latency)
    imported = {"requests.Session.post + .json()": "import requests, tenacity",
                "openrouter-sync execute": "import openrouter_sync", "openai SDK": "import openai"}
    import_ms = dict(imports)
    lines = []
    for name, f in per_call:
        statement = imported.get(name)
        ms = import_ms.get(statement) if statement else None
        lines.append([name, f["cpu_us"], f"{f['cpu_vs_requests']:.2f}x",
                      answer[name]["median_ms"] if name in answer else "",
                      "" if ms is None else f"{ms['ms']} (`{statement}`)"])
    markdown = (f"CPU per call: {o.ROUNDS} interleaved rounds of {o.CALLS} sequential calls per client after "
                f"{o.WARMUP} warm-up calls to `fastserver --fixed`, medians. Answer time: 50 ms of server work "
                "on `http.server`, medians. Import: fresh interpreters, medians.\n\n"
                + table(["client", "CPU per call, us", "CPU vs requests", "answer time, ms", "import, ms"], lines))
    plt, png = _figure("overhead")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.2))
    for ax, rows, key, xlabel in ((axes[0], per_call, "cpu_us", "CPU per call, us"),
                                  (axes[1], latency, "median_ms", "answer time, ms"),
                                  (axes[2], imports, "ms", "import, ms")):
        labels = [name for name, _ in rows]
        ax.barh(labels, [f[key] for _, f in rows], color=[_colour_of(name) for name in labels])
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    axes[1].axvline(50.0, color="black", linewidth=0.8)
    fig.suptitle("Per-call overhead")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Family("overhead", markdown + "\n\n" + _picture("overhead", "CPU per call, answer time, import time"),
                  {"per_call": per_call, "latency": latency, "import": imports})


def _colour_of(name: str) -> str:
    if name.startswith(("openrouter-sync", "import openrouter_sync")):
        return COLOURS["openrouter-sync"]
    if "openai" in name:
        return COLOURS["openai SDK"]
    if "http.client" in name:
        return COLOURS["raw http.client"]
    return COLOURS["requests"]


# ----- batches -----

def batches(quick: bool) -> Family:
    """A fault soak and a latency-bound batch on the fake server, then memory over many sheets."""
    from . import overhead as o
    from . import scenarios as s

    n = 60 if quick else 300
    soak = [("openrouter-sync", s.fault_soak(s.ours, n=n)), ("requests + tenacity loop",
                                                             s.fault_soak(s.requests_tenacity, n=n))]
    m = 100 if quick else 400
    batch = [("openrouter-sync", s.latency_bound(s.ours, n=m)),
             ("thread pool + requests", s.latency_bound(s.plain_requests_pool, n=m))]
    sizes = (("iter", 500), ("run", 500)) if quick else (("iter", 2000), ("iter", 10000), ("run", 10000))
    memory = o.memory(sizes)
    soak_table = table(["client", "answered correctly", "answered twice", "requests", "faulty answers", "seconds"],
                       [[name, f"{f['answered']}/{f['of']}", f["answered_twice"], f["requests"],
                         f["faulty_answers"], f["makespan"]] for name, f in soak])
    batch_table = table(["client", "answered correctly", "seconds", "ideal s", "x ideal"],
                        [[name, f"{f['answered']}/{f['of']}", f["makespan"], f["ideal"], f"{f['ratio']:.2f}x"]
                         for name, f in batch])
    memory_table = table(["run", "answered", "peak Python memory, MB", "seconds"],
                         [[name, f["ok"], f["peak_python_mb"], f["seconds"]] for name, f in memory])
    markdown = (f"Fault soak ({n} prompts, 16 workers, a quarter of the answers faulty, seeded):\n\n{soak_table}\n\n"
                f"Latency-bound batch ({m} sheets, 50 workers, 200 ms per answer):\n\n{batch_table}\n\n"
                f"Memory (`tracemalloc` peak, 32 workers, a fast local server):\n\n{memory_table}")
    plt, png = _figure("batches")
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.0))
    for ax, rows, key, xlabel in ((axes[0], soak, "makespan", "fault soak, seconds"),
                                  (axes[1], batch, "ratio", "latency-bound batch, x ideal")):
        labels = [name for name, _ in rows]
        ax.barh(labels, [f[key] for _, f in rows], color=[_colour_of(name) for name in labels])
        ax.invert_yaxis()
        ax.set_xlabel(xlabel)
        ax.grid(axis="x", alpha=0.3)
    labels = [name for name, _ in memory]
    axes[2].barh(labels, [f["peak_python_mb"] for _, f in memory], color=COLOURS["openrouter-sync"])
    axes[2].invert_yaxis()
    axes[2].set_xlabel("peak Python memory, MB")
    axes[2].grid(axis="x", alpha=0.3)
    fig.suptitle("Batches")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return Family("batches", markdown + "\n\n" + _picture("batches", "fault soak, latency-bound batch, memory"),
                  {"soak": soak, "batch": batch, "memory": memory})


# ----- scale -----

def scale(quick: bool) -> Family:
    """Throughput, peak RSS and resume time up to a million sheets (``benchmarks.scale``), beside a plain pool."""
    from . import scale as sc

    sizes, run_sizes = ([2000], [1000]) if quick else ([10_000, 100_000, 1_000_000], [10_000, 100_000])
    rows = sc.run(sizes, run_sizes, 16)
    markdown = ("Fresh runs against `benchmarks.fastserver` (16 workers), then resumes of synthesized checkpoints "
                "(peak RSS of each child process):\n\n" + sc.table(rows))
    return Family("scale", markdown, rows)


FAMILIES: dict[str, Callable[[bool], Family]] = {"matrix": matrix, "processes": processes, "overhead": overhead,
                                                 "batches": batches, "scale": scale}


def machine(quick: bool) -> str:
    """The machine line, and a warning when the figures come from a quick run."""
    import openrouter_sync

    line = (f"{machine_line()}; openrouter-sync {openrouter_sync.__version__}, "
            f"{os.popen('git -C ' + str(REPO) + ' rev-parse --short HEAD 2>/dev/null').read().strip() or '?'}")
    return line + ("\n\n**A quick run** (`--quick`): small samples for a smoke test, not figures to quote."
                   if quick else "")


def write(path: Path, sections: dict[str, str]) -> None:
    """Replace the text between each section's markers in ``path``; ``SystemExit`` when a marker is missing."""
    text = path.read_text(encoding="utf-8")
    for name, body in sections.items():
        pattern = re.compile(rf"(<!-- benchmarks:{name} -->\n).*?(\n<!-- /benchmarks:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"{path}: no <!-- benchmarks:{name} --> ... <!-- /benchmarks:{name} --> markers")
        text = pattern.sub(lambda m, body=body: m.group(1) + body.strip() + m.group(2), text)
    path.write_text(text, encoding="utf-8")


def run(names: list[str], quick: bool) -> tuple[dict[str, str], dict[str, Any]]:
    """Measure the named families: their markdown by marker name (with ``machine``), and their figures."""
    sections = {"machine": machine(quick)}
    data: dict[str, Any] = {}
    for name in names:
        began = time.time()
        family = FAMILIES[name](quick)
        sections[name], data[name] = family.markdown, family.data
        print(f"  {name}: {time.time() - began:.0f} s", flush=True)
    return sections, data
