"""Profile one bench server under load: where does its CPU per request go?

    python benchmarks/profile_server.py [CONTENDER] [WORKLOAD] [SECONDS]

e.g. ``netimpl:posix read-16x32 3``. The server runs in this process under
cProfile, pinned to CPU 1; the C load generator runs in a child on CPU 0.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import signal
import sys

from netimpl.bench import servers
from netimpl.bench.loadgen import LoadGen
from netimpl.bench.workloads import BY_NAME


def main() -> None:
    contender = sys.argv[1] if len(sys.argv) > 1 else "netimpl:posix"
    w = BY_NAME[sys.argv[2] if len(sys.argv) > 2 else "read-16x32"]
    seconds = float(sys.argv[3]) if len(sys.argv) > 3 else 3.0
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(wfd)
        port = int(os.read(r, 64))
        os.sched_setaffinity(0, {0})
        if w.mode == "bulk":
            lg = LoadGen("127.0.0.1", port, sink=True)
        else:
            lg = LoadGen("127.0.0.1", port, conns=w.conns, depth=w.depth, active=w.active,
                         req_size=w.req, resp_size=w.resp)
        win = lg.run(seconds)
        os.kill(os.getppid(), signal.SIGTERM)
        print(f"load generator: {win.responses / win.seconds:.0f} responses/s, {win.bytes_in / win.seconds / 1e9:.2f} GB/s in",
              file=sys.stderr)
        os._exit(0)
    os.close(r)
    os.sched_setaffinity(0, {1 % os.cpu_count()})
    servers.announce = lambda port: os.write(wfd, str(port).encode())
    servers.finish = lambda: None
    args = (w.req, w.resp) if w.mode == "rr" else (w.chunk, 0)
    prof = cProfile.Profile()
    prof.enable()
    if contender.startswith("netimpl:"):
        servers.serve_netimpl(contender.split(":", 1)[1], w.mode, *args)
    else:
        servers.serve_asyncio(contender, w.mode, *args)
    prof.disable()
    os.waitpid(pid, 0)
    pstats.Stats(prof).sort_stats("tottime").print_stats(22)


if __name__ == "__main__":
    main()
