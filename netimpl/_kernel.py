"""Kernel constants that Python 3.11's :mod:`socket` does not export.

Named exactly as the kernel's headers name them, so that a reader can grep
``include/uapi`` for each.
"""

from __future__ import annotations

import socket

# include/uapi/asm-generic/socket.h
SO_ZEROCOPY = getattr(socket, "SO_ZEROCOPY", 60)
SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)
SO_INCOMING_NAPI_ID = getattr(socket, "SO_INCOMING_NAPI_ID", 56)

# include/linux/socket.h
MSG_ZEROCOPY = getattr(socket, "MSG_ZEROCOPY", 0x4000000)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", 0x2000)

# include/uapi/linux/in.h, include/uapi/linux/in6.h
IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
SOL_IPV6 = socket.IPPROTO_IPV6  # the kernel's SOL_IPV6 is 41, as IPPROTO_IPV6

# include/uapi/linux/errqueue.h
SO_EE_ORIGIN_ZEROCOPY = 5
SO_EE_CODE_ZEROCOPY_COPIED = 1

# include/uapi/linux/tcp.h
TCP_QUICKACK = getattr(socket, "TCP_QUICKACK", 12)
TCP_USER_TIMEOUT = getattr(socket, "TCP_USER_TIMEOUT", 18)

# include/uapi/linux/if.h
IFF_LOOPBACK = 0x8

# The kernel counts MSG_ZEROCOPY sends per socket in a u32 that wraps.
ZC_INDEX_MASK = 0xFFFFFFFF
