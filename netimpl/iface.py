"""Which interface owns a local address: the loopback test of the zero-copy policy.

On loopback the kernel copies every MSG_ZEROCOPY send on receive and only the
notifications cost (SPDK disables zero-copy there too). "Loopback" means the
interface that holds the address has ``IFF_LOOPBACK``, asked of the kernel
over rtnetlink with pyroute2, so that an address added to ``lo`` counts and a
127.x address moved elsewhere does not. Answers are cached per address for
the life of the process; the well-known loopback ranges are answered without
a netlink round trip.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from ._kernel import IFF_LOOPBACK
from .errors import logger

__all__ = ["is_loopback_address"]


def is_loopback_address(host: str) -> bool:
    """True when ``host`` (a local numeric address) lives on a loopback interface."""
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip.is_loopback:
        return True
    return _on_loopback_interface(str(ip))


@lru_cache(maxsize=1024)
def _on_loopback_interface(ip: str) -> bool:
    try:
        from pyroute2 import IPRoute
    except ImportError:  # pragma: no cover - pyroute2 is a dependency
        logger.warning("pyroute2 is not installed; treating %s as not loopback", ip)
        return False
    try:
        with IPRoute() as ipr:
            addrs = ipr.get_addr(address=ip)
            for msg in addrs:
                index = msg["index"]
                for link in ipr.get_links(index):
                    return bool(link["flags"] & IFF_LOOPBACK)
    except Exception as exc:  # netlink unavailable (seccomp, no NETLINK_ROUTE)
        logger.warning("cannot ask netlink which interface holds %s (%s); treating it as not loopback", ip, exc)
    return False
