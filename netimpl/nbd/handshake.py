"""Fixed newstyle negotiation, as a generator the connection feeds.

:func:`negotiate` is written top to bottom like a blocking protocol
exchange: it *yields* how many bytes it needs next and is sent exactly
those bytes; replies go out through ``send``. It returns the
:class:`Session` to serve (``NBD_OPT_EXPORT_NAME`` or ``NBD_OPT_GO``), or
``None`` when the client aborts. A client that breaks the protocol raises
:class:`ProtocolError`, and its connection is dropped.

Options served: EXPORT_NAME, ABORT, LIST, INFO, GO (with NBD_INFO_EXPORT,
and NBD_INFO_NAME, NBD_INFO_DESCRIPTION and NBD_INFO_BLOCK_SIZE when
asked), STRUCTURED_REPLY, LIST_META_CONTEXT / SET_META_CONTEXT with the
one context there is, ``base:allocation`` (LIST answers it to no query, to
``base:`` and to its own name; SET selects it by name, needs structured
replies first, and holds only if GO names the same export; queries of
other namespaces are ignored, as the protocol says), and STARTTLS where TLS
is ``on`` or ``require``. Every other option, EXTENDED_HEADERS included,
gets ``NBD_REP_ERR_UNSUP``.

STARTTLS: the generator queues the ACK (in plaintext), then yields
:data:`STARTTLS` instead of a byte count; the connection starts TLS on its
socket, drops whatever plaintext the client sent after the option (a client
must wait for the ACK: CVE-2021-3716), and sends ``b""`` to go on. What was
agreed before TLS (structured replies, a meta context) does not carry over.
With ``require``, every option before TLS but STARTTLS and ABORT is
answered ``NBD_REP_ERR_TLS_REQD`` (EXPORT_NAME, which has no error reply,
ends the session), so nothing about the exports leaks in plaintext.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Callable, Generator, Mapping

from . import protocol as P
from .store import Store

__all__ = ["negotiate", "Session", "ProtocolError", "transmission_flags", "STARTTLS", "TLS_MODES"]

#: Yielded (instead of a byte count) when the connection must start TLS now.
STARTTLS = -1
#: --tls: no STARTTLS; STARTTLS offered; STARTTLS required before anything about the exports.
TLS_MODES = ("off", "on", "require")

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

Negotiation = Generator[int, bytes, "Session | None"]


class ProtocolError(Exception):
    """The client broke the protocol; the message says how. Its connection is dropped."""


@dataclass
class Session:
    """What negotiation agreed: the export and the reply style."""

    name: str
    store: Store
    structured: bool
    flags: int
    #: base:allocation was selected: NBD_CMD_BLOCK_STATUS is answered
    allocation: bool = False


def transmission_flags(store: Store, structured: bool) -> int:
    """The transmission flags an export is offered with."""
    flags = (P.NBD_FLAG_HAS_FLAGS | P.NBD_FLAG_SEND_FLUSH | P.NBD_FLAG_SEND_FUA | P.NBD_FLAG_SEND_TRIM
             | P.NBD_FLAG_SEND_WRITE_ZEROES | P.NBD_FLAG_CAN_MULTI_CONN | P.NBD_FLAG_SEND_CACHE
             | P.NBD_FLAG_SEND_FAST_ZERO)
    if store.read_only:
        flags |= P.NBD_FLAG_READ_ONLY
    if structured:
        flags |= P.NBD_FLAG_SEND_DF       # a read is always answered in one chunk
    return flags


def _reply(option: int, rtype: int, data: bytes = b"") -> bytes:
    return P.OPTION_REPLY.pack(P.NBD_REP_MAGIC, option, rtype, len(data)) + data


def _name(raw: bytes, what: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} {raw[:64]!r} is not UTF-8") from None


def negotiate(exports: Mapping[str, Store], send: Callable[[bytes], None], tls: str = "off") -> Negotiation:
    """Haggle options with one client; see the module docstring. ``tls`` is one of :data:`TLS_MODES`."""
    if tls not in TLS_MODES:
        raise ValueError(f"tls mode {tls!r} is not one of {', '.join(TLS_MODES)}")
    encrypted = False
    send(P.GREETING.pack(P.NBDMAGIC, P.IHAVEOPT, P.NBD_FLAG_FIXED_NEWSTYLE | P.NBD_FLAG_NO_ZEROES))
    (cflags,) = _U32.unpack((yield 4))
    if cflags & ~P.CLIENT_FLAGS_KNOWN:
        raise ProtocolError(f"client flags {cflags:#x} set bits this server did not offer")
    no_zeroes = bool(cflags & P.NBD_FLAG_C_NO_ZEROES)
    structured = False
    meta_export: str | None = None     # the export the last SET_META_CONTEXT selected base:allocation on
    while True:
        magic, option, length = P.OPTION.unpack((yield P.OPTION.size))
        if magic != P.IHAVEOPT:
            raise ProtocolError(f"option magic {magic:#x} is not IHAVEOPT")
        if length > P.MAX_OPTION_LENGTH:
            raise ProtocolError(f"option {option} carries {length} bytes (at most {P.MAX_OPTION_LENGTH})")
        data = (yield length) if length else b""

        if option == P.NBD_OPT_STARTTLS and tls != "off":
            if encrypted:
                send(_reply(option, P.NBD_REP_ERR_INVALID, b"TLS is already in use"))
            elif data:
                send(_reply(option, P.NBD_REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data"))
            else:
                send(_reply(option, P.NBD_REP_ACK))
                yield STARTTLS
                encrypted = True
                structured = False  # what was agreed in plaintext does not carry over
                meta_export = None
            continue

        if tls == "require" and not encrypted and option != P.NBD_OPT_ABORT:
            if option == P.NBD_OPT_EXPORT_NAME:
                raise ProtocolError("NBD_OPT_EXPORT_NAME before STARTTLS, and TLS is required")
            send(_reply(option, P.NBD_REP_ERR_TLS_REQD, b"TLS is required: send NBD_OPT_STARTTLS first"))
            continue

        if option == P.NBD_OPT_EXPORT_NAME:
            name = _name(data, "export name")
            store = exports.get(name)
            if store is None:            # this option has no error reply: the session ends
                raise ProtocolError(f"NBD_OPT_EXPORT_NAME asked for unknown export {name!r}")
            flags = transmission_flags(store, structured)
            send(P.EXPORT_NAME_REPLY.pack(store.size, flags) + (b"" if no_zeroes else bytes(124)))
            return Session(name, store, structured, flags, allocation=meta_export == name)

        if option == P.NBD_OPT_ABORT:
            send(_reply(option, P.NBD_REP_ACK))
            return None

        if option == P.NBD_OPT_LIST:
            if data:
                send(_reply(option, P.NBD_REP_ERR_INVALID, b"NBD_OPT_LIST takes no data"))
                continue
            for name, store in exports.items():
                raw = name.encode()
                send(_reply(option, P.NBD_REP_SERVER, _U32.pack(len(raw)) + raw + store.describe().encode()))
            send(_reply(option, P.NBD_REP_ACK))
            continue

        if option == P.NBD_OPT_STRUCTURED_REPLY:
            if data:
                send(_reply(option, P.NBD_REP_ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY takes no data"))
                continue
            structured = True
            send(_reply(option, P.NBD_REP_ACK))
            continue

        if option in (P.NBD_OPT_INFO, P.NBD_OPT_GO):
            session = _info(option, data, exports, structured, send)
            if session is not None and option == P.NBD_OPT_GO:
                session.allocation = meta_export == session.name
                return session
            continue

        if option in (P.NBD_OPT_LIST_META_CONTEXT, P.NBD_OPT_SET_META_CONTEXT):
            if option == P.NBD_OPT_SET_META_CONTEXT:
                meta_export = None            # replaced, even when this one fails
            selected = _meta_context(option, data, exports, structured, send)
            if selected is not None:
                meta_export = selected
            continue

        send(_reply(option, P.NBD_REP_ERR_UNSUP, f"option {option} is not supported".encode()))


def _string(data: bytes, pos: int) -> tuple[bytes, int] | None:
    """The 32-bit-length-prefixed string at ``pos`` and the position after it; None if it runs past the end."""
    if pos + 4 > len(data):
        return None
    end = pos + 4 + _U32.unpack_from(data, pos)[0]
    return (data[pos + 4:end], end) if end <= len(data) else None


def _meta_context(option: int, data: bytes, exports: Mapping[str, Store], structured: bool,
                  send: Callable[[bytes], None]) -> str | None:
    """Answer LIST_META_CONTEXT or SET_META_CONTEXT; the export name when SET selected base:allocation."""
    setting = option == P.NBD_OPT_SET_META_CONTEXT
    if setting and not structured:
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"NBD_OPT_SET_META_CONTEXT needs structured replies first"))
        return None
    got = _string(data, 0)
    if got is None or got[1] + 4 > len(data):
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"truncated metadata context request"))
        return None
    raw, pos = got
    (count,) = _U32.unpack_from(data, pos)
    pos += 4
    queries: list[bytes] = []
    while len(queries) < count and (got := _string(data, pos)) is not None:
        query, pos = got
        queries.append(query)
    if len(queries) != count or pos != len(data):
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"metadata context queries do not match the length"))
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"export name is not UTF-8"))
        return None
    if name not in exports:
        send(_reply(option, P.NBD_REP_ERR_UNKNOWN, f"no export named {name!r}".encode()))
        return None
    allocation = P.BASE_ALLOCATION.encode()
    if setting:                 # by name only; "base:" selects nothing, other namespaces are ignored
        found = allocation in queries
    else:                       # no query lists everything; "base:" is the namespace's wildcard
        found = not queries or allocation in queries or b"base:" in queries
    if found:
        context_id = P.BASE_ALLOCATION_ID if setting else 0     # LIST's ids are reserved: zero
        send(_reply(option, P.NBD_REP_META_CONTEXT, _U32.pack(context_id) + allocation))
    send(_reply(option, P.NBD_REP_ACK))
    return name if setting and found else None


def _info(option: int, data: bytes, exports: Mapping[str, Store], structured: bool,
          send: Callable[[bytes], None]) -> Session | None:
    """Answer NBD_OPT_INFO or NBD_OPT_GO; the session it describes, or None after an error reply."""
    if len(data) < 6:
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"truncated INFO/GO request"))
        return None
    (nlen,) = _U32.unpack_from(data, 0)
    if 4 + nlen + 2 > len(data):
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"export name runs past the option"))
        return None
    raw = data[4:4 + nlen]
    (nreq,) = _U16.unpack_from(data, 4 + nlen)
    if len(data) != 4 + nlen + 2 + 2 * nreq:
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"information request count does not match the length"))
        return None
    requests = {_U16.unpack_from(data, 6 + nlen + 2 * i)[0] for i in range(nreq)}
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        send(_reply(option, P.NBD_REP_ERR_INVALID, b"export name is not UTF-8"))
        return None
    store = exports.get(name)
    if store is None:
        send(_reply(option, P.NBD_REP_ERR_UNKNOWN, f"no export named {name!r}".encode()))
        return None
    flags = transmission_flags(store, structured)
    send(_reply(option, P.NBD_REP_INFO, P.INFO_EXPORT.pack(P.NBD_INFO_EXPORT, store.size, flags)))
    if P.NBD_INFO_NAME in requests:
        send(_reply(option, P.NBD_REP_INFO, _U16.pack(P.NBD_INFO_NAME) + raw))
    if P.NBD_INFO_DESCRIPTION in requests:
        send(_reply(option, P.NBD_REP_INFO, _U16.pack(P.NBD_INFO_DESCRIPTION) + store.describe().encode()))
    if P.NBD_INFO_BLOCK_SIZE in requests:
        send(_reply(option, P.NBD_REP_INFO, P.INFO_BLOCK_SIZE.pack(
            P.NBD_INFO_BLOCK_SIZE, P.MIN_BLOCK_SIZE, P.PREFERRED_BLOCK_SIZE, P.MAX_BLOCK_SIZE)))
    send(_reply(option, P.NBD_REP_ACK))
    return Session(name, store, structured, flags)
