"""The bench's table, JSON and plot."""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
from typing import IO

from .workloads import Workload

BASELINE = "asyncio"
#: The floor: a plain C epoll server of the same protocols (floor.c); each row's CPU is also shown as a multiple of it.
FLOOR = "c-epoll"
#: The io_uring design's floor: a plain C server making the kernel calls netimpl's uring backend makes
#: (floor_uring.c), with no Python between them.
URING_FLOOR = "c-uring"
SCHEMA_VERSION = 1


def medians(runs: list[dict]) -> dict:
    keys = runs[0].keys() if runs else []
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def _ratio(x: float, base: float | None) -> str:
    if base is None or not base or math.isnan(base) or math.isnan(x):
        return ""
    return f"{x / base:4.2f}x"


#: Higher is better / lower is better, shown beside every column label that has a direction.
UP, DOWN = "↑", "↓"


def _columns(w: Workload, counted: bool, floor: bool) -> list[tuple[str, int]]:
    unit = "GB/s" if w.metric == "gbps" else "req/s"
    cols = [(f"{unit} {UP}", 10), (f"rate/{BASELINE} {UP}", 14), (f"CPU µs/op {DOWN}", 11),
            (f"CPU/{BASELINE} {DOWN}", 13)]
    if floor:
        cols.append((f"CPU/{FLOOR} {DOWN}", 13))
    cols.append(("user µs/op", 10))
    if w.latency:
        cols += [(f"p50 µs {DOWN}", 8), (f"p99 µs {DOWN}", 8)]
    if counted:
        cols.append((f"syscalls/op {DOWN}", 13))
    return cols


def table(results: dict, workloads: list[Workload], contenders: list[str], out: IO[str]) -> None:
    """One table per workload: each contender's medians, every column labelled with unit and direction."""
    print(f"{UP} higher is better, {DOWN} lower is better; rate/{BASELINE} and CPU/{BASELINE}: ratio to "
          f"{BASELINE}'s median; CPU: the server's (user + system) per operation, user µs/op the user part of it",
          file=out)
    if any(FLOOR in results.get(w.name, {}) for w in workloads):
        print(f"CPU/{FLOOR}: server CPU per op as a multiple of {FLOOR}'s, a plain C epoll server doing the same "
              "work (1.00x is the floor)", file=out)
    for w in workloads:
        rows = results.get(w.name, {})
        if not rows:
            continue
        base = medians(rows[BASELINE]) if BASELINE in rows else None
        floor_cpu = medians(rows[FLOOR])["cpu_us"] if FLOOR in rows else None
        counted = any("syscalls_per_op" in r for c in contenders for r in rows.get(c, []))
        cols = _columns(w, counted, floor_cpu is not None)
        print(f"\n{w.title}", file=out)
        print(f"  {'contender':16s}" + "".join(f"  {label:>{width}s}" for label, width in cols), file=out)
        for c in contenders:
            if c not in rows:
                continue
            m = medians(rows[c])
            val = m[w.metric]
            cells = [f"{val:.2f}" if w.metric == "gbps" else f"{val:.0f}",
                     _ratio(val, base[w.metric] if base else None), f"{m['cpu_us']:.2f}",
                     _ratio(m["cpu_us"], base["cpu_us"] if base else None)]
            if floor_cpu is not None:
                cells.append(_ratio(m["cpu_us"], floor_cpu))
            cells.append(f"{m['user_us']:.2f}" if "user_us" in m else "")
            if w.latency:
                cells += [f"{m['p50_us']:.1f}", f"{m['p99_us']:.1f}"]
            if counted:
                cells.append(f"{m['syscalls_per_op']:.3f}" if "syscalls_per_op" in m else "n/a")
            print(f"  {c:16s}" + "".join(f"  {cell:>{width}s}" for cell, (_, width) in zip(cells, cols)), file=out)


#: The workloads' row names in the summary (and the README's table).
SHORT_TITLES = {
    "bulk-4k": "bulk 4 KiB writes",
    "bulk-64k": "bulk 64 KiB writes",
    "bulk-1m": "bulk 1 MiB writes",
    "read-qd1": "read-like QD1 (p50 / p99 µs)",
    "write-qd1": "write-like QD1 (p50 / p99 µs)",
    "read-16x32": "read-like 16 conns x 32",
    "write-16x32": "write-like 16 conns x 32",
    "many-1000": "1,000 conns, 5% active",
    "small-64x8": "small 64 B -> 64 B, 64 conns x 8",
}


def display_name(contender: str) -> str:
    """``netimpl:uring`` -> ``netimpl uring``; ``netimpl-aio:uring`` -> ``netimpl-aio uring`` (and
    ``netimpl-next``); ``blocking`` -> ``blocking threads``."""
    if contender.startswith(("netimpl:", "netimpl-aio:", "netimpl-next:")):
        return contender.replace(":", " ", 1)
    return {"blocking": "blocking threads"}.get(contender, contender)


def _sig3(x: float) -> str:
    if math.isnan(x):
        return "n/a"
    return f"{x:.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"


def _cell(w: Workload, m: dict, base: dict | None, is_base: bool) -> str:
    cell = _sig3(m["cpu_us"])
    if not is_base:
        ratio = _ratio(m["cpu_us"], base["cpu_us"] if base else None)
        if ratio:
            cell += f" ({ratio})"
    if w.latency:
        return cell + f" {m['p50_us']:.0f} / {m['p99_us']:.0f}"
    if w.metric == "gbps":
        return cell + f" {m['gbps']:.2f} GB/s"
    return cell + f" {m['rps'] / 1000:.0f}k req/s"


def summary(results: dict, workloads: list[Workload], contenders: list[str], out: IO[str]) -> None:
    """Every workload in one Markdown table, shaped like the README's.

    Each cell: the server's CPU µs per operation (lower is better), its ratio
    to the baseline's in brackets, then the throughput (higher is better) or,
    for latency workloads, the p50 / p99 round trip in µs (lower is better).
    """
    print(f"summary: server CPU µs per op {DOWN} (ratio to {BASELINE}), then GB/s or req/s {UP}; "
          f"QD1 rows: p50 / p99 round trip µs {DOWN}", file=out)
    head = ["workload", *(display_name(c) for c in contenders)]
    body = []
    for w in workloads:
        rows = results.get(w.name, {})
        if not rows:
            continue
        base = medians(rows[BASELINE]) if BASELINE in rows else None
        body.append([SHORT_TITLES.get(w.name, w.title),
                     *(_cell(w, medians(rows[c]), base, c == BASELINE) if rows.get(c) else "-" for c in contenders)])
    widths = [max(len(r[k]) for r in [head, *body]) for k in range(len(head))]
    for r in [head, ["-" * n for n in widths], *body]:
        print("| " + " | ".join(cell.ljust(n) for cell, n in zip(r, widths)) + " |", file=out)


def to_json(results: dict, workloads: list[Workload], contenders: list[str], config: dict) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "config": config,
        "baseline": BASELINE,
        "floor": FLOOR,
        "uring_floor": URING_FLOOR,
        "contenders": contenders,
        "workloads": [{"name": w.name, "title": w.title, "metric": w.metric} for w in workloads],
        "results": [
            {"workload": w.name, "contender": c, "runs": results[w.name][c], "median": medians(results[w.name][c])}
            for w in workloads for c in contenders if c in results.get(w.name, {})
        ],
    }


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)


def plot(path: str, doc: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [w["name"] for w in doc["workloads"]]
    contenders = doc["contenders"]
    med = {(r["workload"], r["contender"]): r["median"] for r in doc["results"]}
    fig, axes = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    width = 0.8 / max(1, len(contenders))
    for k, c in enumerate(contenders):
        xs = [i + k * width for i in range(len(names))]
        thr, cpu = [], []
        for n in names:
            m = med.get((n, c))
            b = med.get((n, doc["baseline"]))
            key = "gbps" if m and "gbps" in m else "rps"
            thr.append(m[key] / b[key] if m and b and b[key] else 0)
            cpu.append(m["cpu_us"] if m else 0)
        axes[0].bar(xs, thr, width, label=c)
        axes[1].bar(xs, cpu, width, label=c)
    axes[0].axhline(1.0, color="grey", lw=0.8)
    axes[0].set_ylabel(f"throughput vs {doc['baseline']}")
    axes[1].set_ylabel("server CPU µs per op (log)")
    axes[1].set_yscale("log")
    axes[1].set_xticks([i + 0.4 - width / 2 for i in range(len(names))], names, rotation=20)
    axes[0].legend(ncol=len(contenders), fontsize=8)
    axes[0].set_title(f"python -m netimpl bench — {doc['machine']['cpus']} CPUs, Linux {doc['machine']['kernel']}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
