"""Checking and resolving the ``host``/``port`` arguments of listen and connect."""

from __future__ import annotations

import ipaddress
import re
import socket

__all__ = ["check_host_port", "resolve"]

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)\Z")


def check_host_port(host: object, port: object) -> tuple[str, int]:
    """``(host, port)`` validated: brackets stripped from an IPv6 literal.

    Raises ``TypeError``/``ValueError`` naming the bad value.
    """
    if not isinstance(host, str):
        raise TypeError(f"host must be a str, not {host!r}")
    if isinstance(port, bool) or not isinstance(port, int):
        raise TypeError(f"port must be an int, not {port!r}")
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port!r} is outside 0..65535")
    h = host
    if h.startswith("[") and h.endswith("]"):
        h = h[1:-1]
        try:
            ipaddress.IPv6Address(h.split("%", 1)[0])
        except ValueError:
            raise ValueError(f"host {host!r} is not an IPv6 address in brackets") from None
        return h, port
    try:
        ipaddress.ip_address(h.split("%", 1)[0] if ":" in h else h)
        return h, port
    except ValueError:
        pass
    name = h[:-1] if h.endswith(".") else h
    if not name or len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise ValueError(f"host {host!r} is neither an IP address nor a host name")
    if all(label.isdigit() for label in name.split(".")):
        raise ValueError(f"host {host!r} is not a valid IPv4 address")
    return h, port


def resolve(host: str, port: int, passive: bool) -> list[tuple]:
    """getaddrinfo for TCP; raises ``socket.gaierror`` (an ``OSError``) if the name does not resolve."""
    flags = socket.AI_NUMERICSERV | (socket.AI_PASSIVE if passive else 0)
    return socket.getaddrinfo(host, port, socket.AF_UNSPEC, socket.SOCK_STREAM, socket.IPPROTO_TCP, flags)
