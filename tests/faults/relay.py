"""An impaired link built in user space: a frame relay in a network namespace of its own.

This kernel has no ``sch_netem``, so loss, delay, reordering, duplication and
corruption are made by a small Python process that bridges two veth pairs::

    root namespace            relay namespace               client namespace
    nif<T>a 198.18.N.1  <->  nif<T>b  [relay]  nif<T>c  <->  nif<T>d 198.18.N.2
            fd00:198:18:N::1                                         fd00:198:18:N::2

The server under test runs in the root namespace (its veth end is not
loopback, so the zero-copy policy lets it use MSG_ZEROCOPY); clients run in
child processes that entered the client namespace. Both ends sit in one /24:
the relay is a layer-2 bridge, ARP goes through it untouched. Both ends
have an IPv6 address too (one /64, no duplicate address detection).

Facts that shape the design:

* A packet relay, not a TCP proxy. A TCP-level relay (accept, connect on,
  forward) would terminate TCP in the relay: loss and duplication would
  never reach the endpoints' TCP, and the relay's own sockets would hide
  the server's send-side behaviour (zero-copy completions wait for the real
  peer's ACKs). Raw frames through ``AF_PACKET`` sockets, one bound to each
  inner veth, keep one end-to-end TCP connection whose segments are lost,
  duplicated, reordered and corrupted on the way, as on a bad wire. Segment
  timing at the TCP level (split writes, stalls, slow readers) is made by
  the peers themselves (see :mod:`tests.faults.peers`).
* Offloads are switched off on the endpoint veths (TSO, GSO, TX checksum,
  GRO), before they are moved into their namespaces. With them on, a veth
  hands the next device 64 KiB TCP super-frames whose checksum is still to
  be filled in (``CHECKSUM_PARTIAL``); a raw socket receives them without
  that information, could not send them back out (larger than the MTU), and
  a corrupted byte in them would be checksummed *after* the corruption and
  go unnoticed. With offloads off every frame on the wire is at most
  MTU-sized and carries a complete checksum, so the receiving TCP drops a
  corrupted segment and recovers it like a lost one: payload still
  verifies. Zero-copy sends stay zero-copy from the socket's view (TCP keeps
  SG and checksum capabilities through software GSO); the kernel may report
  them copied, which is honest and counted.
* The relay never sees its own transmissions (``PACKET_IGNORE_OUTGOING``)
  and only IP frames are impaired: IPv4 ones, and IPv6 ones that carry TCP
  (ARP and neighbour discovery pass as they are, so the link never loses
  its way, only its segments).
* Bounded in time and count: the relay holds at most ``MAX_HELD`` frames
  (more are dropped and counted as overflow), exits when its parent dies or
  after ``MAX_LIFETIME`` seconds, and every impairment is driven by one
  seeded ``random.Random``, so a failing run can be replayed with its seed.
"""

from __future__ import annotations

import ctypes
import fcntl
import heapq
import multiprocessing as mp
import os
import random
import select
import socket
import struct
import time
from dataclasses import asdict, dataclass, field
from typing import Any

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_IGNORE_OUTGOING = 23     # linux/if_packet.h, since 4.20
SIOCETHTOOL = 0x8946
IFA_F_NODAD = 0x02              # an address usable at once, without duplicate address detection
ETHTOOL_STXCSUM, ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO = 0x17, 0x1F, 0x24, 0x2C

MAX_HELD = 20000                # frames waiting for their delivery time
MAX_LIFETIME = 900.0            # seconds: a relay left behind by a crashed test ends by itself
FAULT_KINDS = ("lost", "duplicated", "reordered", "corrupted", "delayed")


@dataclass
class Impairment:
    """What the relay does to each IP frame, in each direction. Probabilities are per frame."""

    loss: float = 0.0
    duplicate: float = 0.0
    reorder: float = 0.0            # held back by ``reorder_delay`` so that later frames overtake it
    corrupt: float = 0.0            # one byte of the TCP payload (or of the IP packet) flipped
    delay: float = 0.0              # seconds added to every frame
    jitter: float = 0.0             # plus up to this many seconds, uniformly
    reorder_delay: float = 0.003
    seed: int = 0


@dataclass
class Counters:
    frames: int = 0
    lost: int = 0
    duplicated: int = 0
    reordered: int = 0
    corrupted: int = 0
    delayed: int = 0
    overflow: int = 0
    oversize: int = 0               # frames the relay could not send on (an offload left on)

    @property
    def faults(self) -> int:
        return sum(getattr(self, k) for k in FAULT_KINDS)


def disable_offloads(ifname: str) -> None:
    """Switch TSO, GSO, TX checksumming and GRO off on ``ifname`` (in this process's namespace)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for cmd in (ETHTOOL_STSO, ETHTOOL_SGSO, ETHTOOL_SGRO, ETHTOOL_STXCSUM):
            value = ctypes.create_string_buffer(struct.pack("II", cmd, 0))
            ifreq = struct.pack("16sP", ifname.encode(), ctypes.addressof(value)).ljust(40, b"\0")
            fcntl.ioctl(s.fileno(), SIOCETHTOOL, ifreq)


def _impaired(frame: bytes | bytearray, n: int) -> bool:
    """An IPv4 frame, or an IPv6 frame whose next header is TCP."""
    kind = frame[12:14]
    return (kind == b"\x08\x00" and n >= 34) or (kind == b"\x86\xdd" and n >= 74 and frame[20] == socket.IPPROTO_TCP)


def _corrupt(frame: bytearray, rng: random.Random) -> None:
    """Flip one byte of the TCP payload if there is one, else one byte of the IP packet."""
    if frame[12:14] == b"\x86\xdd":
        ip, end, proto = 40, 14 + 40 + struct.unpack_from(">H", frame, 18)[0], frame[20]
    else:
        ip, end, proto = (frame[14] & 0x0F) * 4, 14 + struct.unpack_from(">H", frame, 16)[0], frame[23]
    start = 14
    if proto == socket.IPPROTO_TCP and len(frame) >= 14 + ip + 20:
        payload = 14 + ip + (frame[14 + ip + 12] >> 4) * 4
        if payload < end:
            start = payload
    at = rng.randrange(start, min(end, len(frame)))
    frame[at] ^= rng.randrange(1, 256)


def _relay_main(ns: str, ifaces: tuple[str, str], conn: Any, parent: int) -> None:
    """The relay process: bridge the two interfaces of namespace ``ns``, impairing as told over ``conn``."""
    from pyroute2 import netns

    netns.setns(ns)
    socks = []
    for name in ifaces:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((name, 0))
        s.setblocking(False)
        socks.append(s)
    other = {socks[0].fileno(): socks[1], socks[1].fileno(): socks[0]}
    imp, rng, counters = Impairment(), random.Random(0), Counters()
    held: list[tuple[float, int, socket.socket, bytes]] = []
    seq = 0
    buf = bytearray(65536)
    ended = time.monotonic() + MAX_LIFETIME
    fds = [socks[0].fileno(), socks[1].fileno(), conn.fileno()]

    def send(out: socket.socket, frame: bytes) -> None:
        try:
            out.send(frame)
        except BlockingIOError:
            counters.overflow += 1
        except OSError:             # EMSGSIZE: a super-frame, an offload left on
            counters.oversize += 1

    while time.monotonic() < ended and os.getppid() == parent:
        now = time.monotonic()
        while held and held[0][0] <= now:
            _, _, out, frame = heapq.heappop(held)
            send(out, frame)
        wait = min(0.5, max(0.0, held[0][0] - now)) if held else 0.5
        ready, _, _ = select.select(fds, [], [], wait)
        for fd in ready:
            if fd == conn.fileno():
                msg = conn.recv()
                if msg[0] == "stop":
                    return
                if msg[0] == "set":
                    conn.send(asdict(counters))
                    imp, rng, counters = Impairment(**msg[1]), random.Random(msg[1]["seed"]), Counters()
                continue
            src = socks[0] if fd == socks[0].fileno() else socks[1]
            for _ in range(64):     # a burst, then look at the other side and the clock again
                try:
                    n = src.recv_into(buf)
                except BlockingIOError:
                    break
                out = other[fd]
                if not _impaired(buf, n):
                    send(out, bytes(buf[:n]))
                    continue
                counters.frames += 1
                if imp.loss and rng.random() < imp.loss:
                    counters.lost += 1
                    continue
                frame = bytearray(buf[:n])
                if imp.corrupt and rng.random() < imp.corrupt:
                    _corrupt(frame, rng)
                    counters.corrupted += 1
                due = time.monotonic()
                if imp.delay or imp.jitter:
                    due += imp.delay + rng.uniform(0.0, imp.jitter)
                    counters.delayed += 1
                if imp.reorder and rng.random() < imp.reorder:
                    due += imp.reorder_delay
                    counters.reordered += 1
                copies = 2 if imp.duplicate and rng.random() < imp.duplicate else 1
                counters.duplicated += copies - 1
                for i in range(copies):
                    if len(held) >= MAX_HELD:
                        counters.overflow += 1
                        continue
                    seq += 1
                    heapq.heappush(held, (due + i * 0.0005, seq, out, bytes(frame)))


@dataclass
class Link:
    """The three namespaces, the relay process, and how to run a client beyond it."""

    tag: int
    server_ip: str
    client_ip: str
    server_ip6: str
    client_ip6: str
    relay_ns: str
    client_ns: str
    host_if: str
    _relay: Any = None
    _ctl: Any = None
    totals: Counters = field(default_factory=Counters)

    def impair(self, **fields: Any) -> Counters:
        """Set the impairment (``Impairment`` fields; all others back to zero) and return the counters so far."""
        self._ctl.send(("set", asdict(Impairment(**fields))))
        deadline = time.monotonic() + 10
        while not self._ctl.poll(0.05):
            if not self.alive() or time.monotonic() > deadline:
                raise AssertionError(f"the relay {'does not answer' if self.alive() else 'has died'}")
        got = Counters(**self._ctl.recv())
        for k in asdict(got):
            setattr(self.totals, k, getattr(self.totals, k) + getattr(got, k))
        return got

    def alive(self) -> bool:
        return self._relay is not None and self._relay.is_alive()

    def run_client(self, target: Any, *args: Any) -> mp.Process:
        """Start ``target(*args)`` in a child process inside the client namespace."""
        proc = mp.get_context("fork").Process(target=_enter_and_run, args=(self.client_ns, target, args),
                                              daemon=True)
        proc.start()
        return proc


def _enter_and_run(ns: str, target: Any, args: tuple) -> None:
    from pyroute2 import netns

    netns.setns(ns)
    target(*args)


def _free_octet(ipr: Any) -> int:
    used = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(family=socket.AF_INET)}
    for octet in range(os.getpid() % 200, os.getpid() % 200 + 250):
        if f"198.18.{octet % 250}.1" not in used:
            return octet % 250
    raise RuntimeError("no free 198.18.N.0/24 for the test link")


def create_link() -> Link:
    """Make the namespaces, veths and relay. Pair with :func:`destroy_link` (also after a failure)."""
    from pyroute2 import IPRoute, NetNS, netns

    tag = os.getpid() % 100000
    ipr = IPRoute()
    octet = _free_octet(ipr)
    names = [f"nif{tag}{c}" for c in "abcd"]
    link = Link(tag, f"198.18.{octet}.1", f"198.18.{octet}.2", f"fd00:198:18:{octet:x}::1",
                f"fd00:198:18:{octet:x}::2", f"netimpl-relay-{tag}", f"netimpl-client-{tag}", names[0])
    netns.create(link.relay_ns)
    netns.create(link.client_ns)
    try:
        ipr.link("add", ifname=names[0], kind="veth", peer={"ifname": names[1]})
        ipr.link("add", ifname=names[2], kind="veth", peer={"ifname": names[3]})
        for name in names:
            disable_offloads(name)
        for name, ns in ((names[1], link.relay_ns), (names[2], link.relay_ns), (names[3], link.client_ns)):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], net_ns_fd=ns)
        idx = ipr.link_lookup(ifname=names[0])[0]
        ipr.addr("add", index=idx, address=link.server_ip, prefixlen=24)
        ipr.addr("add", index=idx, address=link.server_ip6, prefixlen=64, flags=IFA_F_NODAD)
        ipr.link("set", index=idx, state="up")
        with NetNS(link.relay_ns) as r:
            for name in names[1:3]:
                r.link("set", index=r.link_lookup(ifname=name)[0], state="up")
        with NetNS(link.client_ns) as c:
            cidx = c.link_lookup(ifname=names[3])[0]
            c.addr("add", index=cidx, address=link.client_ip, prefixlen=24)
            c.addr("add", index=cidx, address=link.client_ip6, prefixlen=64, flags=IFA_F_NODAD)
            c.link("set", index=cidx, state="up")
            c.link("set", index=c.link_lookup(ifname="lo")[0], state="up")
        ctx = mp.get_context("fork")
        link._ctl, child = ctx.Pipe()
        link._relay = ctx.Process(target=_relay_main, args=(link.relay_ns, (names[1], names[2]), child, os.getpid()),
                                  daemon=True)
        link._relay.start()
        link.impair()               # answers once the relay is bridging
    except BaseException:
        destroy_link(link)
        raise
    finally:
        ipr.close()
    return link


def destroy_link(link: Link) -> None:
    """Stop the relay and remove what :func:`create_link` made; safe on a half-made link."""
    from pyroute2 import IPRoute, netns

    if link._relay is not None:
        try:
            link._ctl.send(("stop",))
        except OSError:
            pass
        link._relay.join(5)
        if link._relay.is_alive():
            link._relay.kill()
            link._relay.join(5)
    with IPRoute() as ipr:
        for i in ipr.link_lookup(ifname=link.host_if):
            ipr.link("del", index=i)
    for ns in (link.relay_ns, link.client_ns):
        if ns in netns.listnetns():
            netns.remove(ns)
