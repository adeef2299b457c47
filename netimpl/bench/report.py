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
SCHEMA_VERSION = 1


def medians(runs: list[dict]) -> dict:
    keys = runs[0].keys() if runs else []
    return {k: statistics.median(r[k] for r in runs if k in r) for k in keys}


def _ratio(x: float, base: float | None) -> str:
    if base is None or not base or math.isnan(base) or math.isnan(x):
        return "     "
    return f"{x / base:4.2f}x"


def table(results: dict, workloads: list[Workload], contenders: list[str], out: IO[str]) -> None:
    if any(FLOOR in results.get(w.name, {}) for w in workloads):
        print(f"vs floor: server CPU per op as a multiple of {FLOOR}'s, a plain C epoll server doing the same work; "
              "lower is better, 1.00x is the floor", file=out)
    for w in workloads:
        rows = results.get(w.name, {})
        if not rows:
            continue
        base = medians(rows[BASELINE]) if BASELINE in rows else None
        floor_cpu = medians(rows[FLOOR])["cpu_us"] if FLOOR in rows else None
        unit = "GB/s" if w.metric == "gbps" else "req/s"
        print(f"\n{w.title}", file=out)
        head = (f"  {'contender':16s} {unit:>10s} {'vs ' + BASELINE:>11s} {'CPU µs/op':>10s} {'vs ' + BASELINE:>11s}"
                f" {'vs floor':>8s} {'of it user':>10s}")
        if w.latency:
            head += f" {'p50 µs':>8s} {'p99 µs':>8s}"
        counted = any("syscalls_per_op" in r for c in contenders for r in rows.get(c, []))
        if counted:
            head += f" {'syscalls/op':>11s}"
        print(head, file=out)
        for c in contenders:
            if c not in rows:
                continue
            m = medians(rows[c])
            val = m[w.metric]
            shown = f"{val:10.2f}" if w.metric == "gbps" else f"{val:10.0f}"
            line = (f"  {c:16s} {shown} {_ratio(val, base[w.metric] if base else None):>11s} "
                    f"{m['cpu_us']:10.2f} {_ratio(m['cpu_us'], base['cpu_us'] if base else None):>11s}")
            line += f" {_ratio(m['cpu_us'], floor_cpu):>8s}"
            line += f" {m['user_us']:10.2f}" if "user_us" in m else f" {'':10s}"
            if w.latency:
                line += f" {m['p50_us']:8.1f} {m['p99_us']:8.1f}"
            if counted:
                line += f" {m['syscalls_per_op']:11.3f}" if "syscalls_per_op" in m else f" {'n/a':>11s}"
            print(line, file=out)


def to_json(results: dict, workloads: list[Workload], contenders: list[str], config: dict) -> dict:
    return {
        "schema": SCHEMA_VERSION,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version()},
        "config": config,
        "baseline": BASELINE,
        "floor": FLOOR,
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
