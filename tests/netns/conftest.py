"""A veth pair into a network namespace of the test's own, made with pyroute2 and removed afterwards.

The root-namespace end (``host_ip``) is not loopback, so the zero-copy policy
allows MSG_ZEROCOPY there; the peer runs in a child process that entered the
namespace (``peer_ip``). Addresses are link-local (169.254.0.0/16).
"""

from __future__ import annotations

import multiprocessing as mp
import os
from dataclasses import dataclass

import pytest

from netimpl import features
from tests.conftest import need


@dataclass
class Veth:
    ns: str
    host_ip: str
    peer_ip: str

    def run_in_ns(self, target, *args) -> mp.Process:
        """Start ``target(*args)`` in a child process inside the namespace."""
        ctx = mp.get_context("fork")
        proc = ctx.Process(target=_enter_and_run, args=(self.ns, target, args), daemon=True)
        proc.start()
        return proc


def _enter_and_run(ns, target, args):
    from pyroute2 import netns

    netns.setns(ns)
    target(*args)


@pytest.fixture
def veth():
    need(features.netns_reason())
    from pyroute2 import IPRoute, NetNS, netns

    tag = os.getpid() % 50000
    ns = f"netimpl-test-{tag}"
    host_if, peer_if = f"nit{tag}a", f"nit{tag}b"
    octet = 1 + tag % 250
    host_ip, peer_ip = f"169.254.{octet}.1", f"169.254.{octet}.2"
    netns.create(ns)
    ipr = IPRoute()
    try:
        ipr.link("add", ifname=host_if, kind="veth", peer={"ifname": peer_if, "net_ns_fd": ns})
        idx = ipr.link_lookup(ifname=host_if)[0]
        ipr.addr("add", index=idx, address=host_ip, prefixlen=24)
        ipr.link("set", index=idx, state="up")
        with NetNS(ns) as nsr:
            pidx = nsr.link_lookup(ifname=peer_if)[0]
            nsr.addr("add", index=pidx, address=peer_ip, prefixlen=24)
            nsr.link("set", index=pidx, state="up")
            nsr.link("set", index=nsr.link_lookup(ifname="lo")[0], state="up")
        yield Veth(ns, host_ip, peer_ip)
    finally:
        for i in ipr.link_lookup(ifname=host_if):
            ipr.link("del", index=i)
        ipr.close()
        netns.remove(ns)
