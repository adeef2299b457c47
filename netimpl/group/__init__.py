"""Sock groups that serve sockets of any backend."""

from .sockgroup import SockGroup, optimal_group

__all__ = ["SockGroup", "optimal_group"]
