"""The kernel's bound on task work per enter, and what a uring group does about it.

With IORING_SETUP_DEFER_TASKRUN an io_uring_enter runs at most 20 items of
task work (IO_LOCAL_TW_DEFAULT_MAX, Linux 6.13 on): a receive that became
ready is one item. A poll enters again while its reaps reach that bound, a
bounded number of times; what is still queued then is the next poll's,
and the group's fd stays readable for it (the CQEs posted in that poll
signalled the ring's eventfd after the poll reset it).
"""

from __future__ import annotations

import select
import socket
import time

import netimpl

N = 400  # more receives than one poll's enters run: 20 + 16 x 20


def test_receives_left_queued_by_a_poll_keep_the_group_fd_readable(request):
    lsock = netimpl.listen("127.0.0.1", 0, impl="uring")
    request.addfinalizer(lsock.close)
    port = lsock.getaddr()[1]
    clients = []
    for _ in range(N):
        c = socket.create_connection(("127.0.0.1", port))
        request.addfinalizer(c.close)
        clients.append(c)
    servers: list[netimpl.Sock] = []
    deadline = time.monotonic() + 10
    while len(servers) < N and time.monotonic() < deadline:
        s = lsock.accept()
        if s is None:
            time.sleep(0.001)
            continue
        request.addfinalizer(s.close)
        servers.append(s)
    assert len(servers) == N
    group = netimpl.SockGroup()
    fd = group.fileno()
    served: set[netimpl.Sock] = set()
    buf = bytearray(64)

    def on_read(g, s):
        served.add(s)
        s.recv_into(buf)

    for s in servers:
        group.add_sock(s, on_read)

    def finish():
        for s in servers:
            if s.group is group:
                group.remove_sock(s)
        group.close()

    request.addfinalizer(finish)
    assert group.poll(max_events=N, timeout=0) == 0  # every receive armed before the data comes
    for c in clients:
        c.sendall(b"x" * 16)
    polls = []
    while len(served) < N:
        # netimpl.aio's loop: wait for the fd, then poll without waiting
        readable, _, _ = select.select([fd], [], [], 2.0)
        assert readable, f"the group's fd went quiet with {N - len(served)} receives not served (polls: {polls})"
        polls.append(group.poll(max_events=N, timeout=0))
    assert sum(polls) == N and len(polls) <= 4, polls
