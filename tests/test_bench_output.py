"""What the bench prints: labelled tables, a README-shaped summary, progress that suits its stream."""

from __future__ import annotations

import io
from pathlib import Path

from netimpl.bench import _Progress, report
from netimpl.bench.workloads import BY_NAME

CONTENDERS = ["netimpl:posix", "asyncio", "blocking"]


def figures() -> dict:
    out: dict = {}
    for name, scale in (("bulk-4k", 1.0), ("read-qd1", 2.0), ("read-16x32", 4.0)):
        w = BY_NAME[name]
        out[name] = {}
        for c, f in (("netimpl:posix", 0.5), ("asyncio", 1.0), ("blocking", 0.25)):
            m = {"cpu_us": 8.0 * f * scale, "user_us": 2.0 * f * scale}
            m["gbps" if w.metric == "gbps" else "rps"] = (0.5 if w.metric == "gbps" else 600_000) / f
            if w.latency:
                m.update(p50_us=100.0 * f, p99_us=300.0 * f)
            out[name][c] = [m]
    return out


def test_every_column_names_its_unit_and_direction():
    buf = io.StringIO()
    report.table(figures(), [BY_NAME["read-qd1"]], CONTENDERS, buf)
    text = buf.getvalue()
    head = next(line for line in text.splitlines() if line.strip().startswith("contender"))
    for label in ("req/s ↑", "rate/asyncio ↑", "CPU µs/op ↓", "CPU/asyncio ↓", "user µs/op", "p50 µs ↓", "p99 µs ↓"):
        assert label in head, (label, head)
    assert text.splitlines()[0].startswith("↑ higher is better, ↓ lower is better")


def test_the_summary_is_shaped_like_the_readme_table():
    buf = io.StringIO()
    ws = [BY_NAME[n] for n in ("bulk-4k", "read-qd1", "read-16x32")]
    report.summary(figures(), ws, CONTENDERS, buf)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in buf.getvalue().splitlines()[1:]]
    assert rows[0] == ["workload", "netimpl posix", "asyncio", "blocking threads"]
    assert set(rows[1][0]) == {"-"}
    assert rows[2] == ["bulk 4 KiB writes", "4.00 (0.50x) 1.00 GB/s", "8.00 0.50 GB/s", "2.00 (0.25x) 2.00 GB/s"]
    assert rows[3] == ["read-like QD1 (p50 / p99 µs)", "8.00 (0.50x) 50 / 150", "16.0 100 / 300",
                       "4.00 (0.25x) 25 / 75"]
    assert rows[4][1] == "16.0 (0.50x) 1200k req/s"
    # the README's table is one the bench printed: the same shape, every contender a column
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    header = next(line for line in readme.splitlines() if line.startswith("| workload"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[0] == "workload" and {"netimpl uring", "netimpl posix", "asyncio", "uvloop", "blocking threads",
                                        "c-epoll", "netimpl-aio uring"} <= set(cells[1:]), cells


def test_progress_on_a_terminal_redraws_one_line():
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Tty()
    p = _Progress(4, out)
    for done, (w, c) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]):
        p.step(done, w, c)
    p.finish()
    text = out.getvalue()
    assert text.count("\r") == 5 and text.count("\n") == 1 and text.endswith("\n")


def test_progress_elsewhere_is_one_line_per_workload():
    out = io.StringIO()
    p = _Progress(4, out)
    for done, (w, c) in enumerate([("a", "x"), ("a", "y"), ("b", "x"), ("b", "y")]):
        p.step(done, w, c)
    p.finish()
    lines = out.getvalue().splitlines()
    assert "\r" not in out.getvalue()
    assert lines[0] == "[0/4 runs] a" and lines[1].startswith("[2/4 runs] b, eta ") and lines[2].startswith("[4/4 runs] done")
