"""The bench's own logic: a quick run produces figures for every contender, in the documented schema."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import pytest

import netimpl
from netimpl.bench import contenders, report
from netimpl.bench.workloads import BY_NAME, WORKLOADS

ONLY = ["bulk-64k", "read-qd1", "read-16x32"]


def bench(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "netimpl", "bench", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("bench")
    out = bench("--quick", "--seconds", "0.15", *sum((["--only", w] for w in ONLY), []),
                "--json", str(d / "b.json"), "--plot", str(d / "b.png"))
    assert out.returncode == 0, out.stderr[-3000:]
    return out, json.loads((d / "b.json").read_text()), d / "b.png"


def test_every_contender_is_measured_on_every_workload(quick_run):
    out, doc, _ = quick_run
    names = contenders()
    assert {"asyncio", "uvloop", "blocking"} <= set(names)
    assert [c for c in names if c.startswith("netimpl:")] == [f"netimpl:{i.name}" for i in netimpl.impls() if i.available]
    assert doc["contenders"] == names
    got = {(r["workload"], r["contender"]) for r in doc["results"]}
    assert got == {(w, c) for w in ONLY for c in names}
    for c in names:
        assert c in out.stdout


def test_json_schema_and_figures_are_sane(quick_run):
    _, doc, _ = quick_run
    assert doc["schema"] == report.SCHEMA_VERSION and doc["baseline"] == "asyncio"
    assert set(doc["machine"]) == {"cpus", "kernel", "python"}
    assert doc["config"] == {"rounds": 1, "seconds": 0.15, "quick": True}
    assert [w["name"] for w in doc["workloads"]] == ONLY
    for r in doc["results"]:
        w = BY_NAME[r["workload"]]
        assert len(r["runs"]) == 1
        keys = {w.metric, "cpu_us", "user_us"} | ({"p50_us", "p99_us"} if w.latency else set())
        assert set(r["median"]) == keys
        for k in keys:
            v = r["median"][k]
            assert isinstance(v, float) and math.isfinite(v), (r["workload"], r["contender"], k, v)
            # a server blocked in send may spend no measurable user time in a short window
            assert v >= 0 if k == "user_us" else v > 0, (r["workload"], r["contender"], k, v)
        assert r["median"]["user_us"] <= r["median"]["cpu_us"]
        if w.latency:
            assert r["median"]["p99_us"] >= r["median"]["p50_us"]


def test_plot_is_a_png(quick_run):
    _, _, png = quick_run
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_refused():
    assert bench("--only", "nonsense").returncode == 2
    assert bench("--rounds", "0").returncode == 2
    out = bench("--impl", "nonexistent", "--only", "read-qd1")
    assert out.returncode != 0 and "nonexistent" in out.stderr


def test_table_ratios_are_against_asyncio():
    w = BY_NAME["read-16x32"]
    results = {w.name: {"asyncio": [{"rps": 100.0, "cpu_us": 4.0}, {"rps": 300.0, "cpu_us": 2.0}],
                        "netimpl:posix": [{"rps": 400.0, "cpu_us": 1.0, "user_us": 0.25}]}}
    buf = io.StringIO()
    report.table(results, [w], ["netimpl:posix", "asyncio"], buf)
    row = next(line for line in buf.getvalue().splitlines() if "netimpl:posix" in line).split()
    # asyncio's medians are 200 req/s and 3 µs: netimpl is 2x the rate at 0.33x the CPU
    assert row[1:6] == ["400", "2.00x", "1.00", "0.33x", "0.25"]  # and how much of the CPU was user time
    doc = report.to_json(results, [w], ["netimpl:posix", "asyncio"], {"rounds": 2})
    assert doc["results"][1]["median"] == {"rps": 200.0, "cpu_us": 3.0}


def test_workload_names_are_unique_and_shaped_like_the_issue():
    assert len(BY_NAME) == len(WORKLOADS)
    assert {w.chunk for w in WORKLOADS if w.mode == "bulk"} == {4096, 65536, 1 << 20}
    many = BY_NAME["many-1000"]
    assert many.conns == 1000 and many.active == 50
