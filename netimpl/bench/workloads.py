"""The workloads, shaped like storage-target traffic."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024


@dataclass(frozen=True)
class Workload:
    name: str
    title: str
    mode: str                  # "rr": request/response; "bulk": the server streams
    req: int = 0               # rr: request bytes
    resp: int = 0              # rr: response bytes
    conns: int = 1
    depth: int = 1
    active: int | None = None  # rr: connections with a request outstanding at a time
    chunk: int = 0             # bulk: bytes per server write
    latency: bool = False      # report p50/p99 round trips

    @property
    def metric(self) -> str:
        return "gbps" if self.mode == "bulk" else "rps"


WORKLOADS = [
    Workload("bulk-4k", "bulk: one connection, 4 KiB writes", "bulk", chunk=4 * KiB),
    Workload("bulk-64k", "bulk: one connection, 64 KiB writes", "bulk", chunk=64 * KiB),
    Workload("bulk-1m", "bulk: one connection, 1 MiB writes", "bulk", chunk=1024 * KiB),
    Workload("read-qd1", "read-like 64 B -> 4 KiB, QD1", "rr", 64, 4 * KiB, latency=True),
    Workload("write-qd1", "write-like 4 KiB + 64 B -> 64 B, QD1", "rr", 4 * KiB + 64, 64, latency=True),
    Workload("read-16x32", "read-like, 16 connections x 32 outstanding", "rr", 64, 4 * KiB, conns=16, depth=32),
    Workload("write-16x32", "write-like, 16 connections x 32 outstanding", "rr", 4 * KiB + 64, 64, conns=16, depth=32),
    Workload("many-1000", "1,000 connections, 5% active, read-like", "rr", 64, 4 * KiB, conns=1000, active=50),
    Workload("small-64x8", "small requests 64 B -> 64 B, 64 connections x 8 outstanding", "rr", 64, 64,
             conns=64, depth=8),
]

BY_NAME = {w.name: w for w in WORKLOADS}
