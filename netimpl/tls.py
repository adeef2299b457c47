"""TLS as a layer over any netimpl socket: :func:`wrap` turns a connected Sock into a :class:`TlsSock`.

Some facts about TLS here, and the choices they force:

* SPDK's ``ssl`` net impl is a backend of its own wrapping posix (TLS 1.3,
  PSK, and kTLS where the kernel's ``tls`` ULP lets it hand the record
  layer to the kernel). This kernel has no ``tls`` ULP, so the record layer
  runs in user space, in OpenSSL through Python's ``ssl`` module: an
  ``ssl.SSLObject`` between two ``ssl.MemoryBIO``\\s (``wrap_bio``), so
  OpenSSL never touches a file descriptor and the ciphertext travels as
  ordinary requests of the socket underneath (the *inner* socket).
* A layer, not a registered backend: NBD's NBD_OPT_STARTTLS (and SMTP's,
  and every other STARTTLS) upgrades a connection that has already spoken
  plaintext on the same socket, in the same group, with a reply still
  queued. So TLS is something done *to* a connected Sock of any backend
  (posix, uring, a third party's), at any time, by :func:`wrap`; a backend
  named "tls" would have to own socket creation and could not take over a
  socket another backend made. :class:`TlsSock` has the whole Sock
  interface, so the code above it (NBD's connection, an embedding server)
  does not change. It is not in :func:`netimpl.impls`.
* In a :class:`netimpl.SockGroup` a TlsSock is served by a
  :class:`TlsGroupImpl`, which keeps the inner sockets in a private group of
  its own (so any mix of inner backends works, and ``group.socks`` lists
  only what the caller added). The inner group's read callback drives the
  handshake, which therefore needs nothing but the group's polls, and
  reports the TlsSock readable once the handshake is done; the TlsSock's
  ``_has_buffered`` tells the group's pending-recv list when OpenSSL holds
  decrypted bytes, or whole records not yet decrypted, that no kernel event
  will announce again.
* OpenSSL cuts plaintext into records of at most 16 KiB, each with 22 bytes
  of framing and tag (TLS 1.3) and one AEAD call: small buffers (an NBD
  reply header, a 4 KiB block) are gathered into full records first, large
  ones are encrypted in place.
* Guarantees carried over: a plaintext request is treated like a zero-copy
  send. Encrypting it hands its bytes to one or more ciphertext requests on
  the inner socket, and it completes only when every one of those has
  completed (handed to the kernel and, on a zero-copy inner socket,
  released): status 0, or the first errno among them. Requests complete in
  order. At most ``AHEAD_BYTES`` of ciphertext are queued on the inner
  socket, so a peer that does not read holds plaintext requests queued
  (``queued_bytes`` grows, and ``pause_reading`` bounds it), not an
  unbounded ciphertext copy.
* A record cannot be taken back once encrypted: TLS numbers records
  implicitly, so dropping one breaks the session. ``remove_sock`` therefore
  cancels (ECANCELED) only what was not encrypted yet, in order behind
  what was, which completes when its records reach the kernel, wherever
  the socket is by then (the session survives a move between groups).
  ``close`` sends close_notify when nothing is half sent, then closes the
  inner socket, which cancels its unsent records: every request not yet in
  the kernel completes with ECANCELED before ``close`` returns.
* A failed handshake (a certificate the peer refuses, a plaintext peer)
  or a corrupt record is raised by ``recv_into``/``readv`` as the
  ``ssl.SSLError`` OpenSSL gave (an ``OSError``; ``ssl.SSLCertVerificationError``
  for a certificate), once, after the alert is sent; requests fail with
  ``EPROTO``. An EOF without close_notify reads as EOF
  (``suppress_ragged_eofs``, as :mod:`ssl` does by default).
* TLS-PSK needs PSK callbacks, which Python's ``ssl`` gained only in 3.13
  (``SSLContext.set_psk_server_callback``); :func:`psk_server_context` says
  so where they are missing.
* Costs: one more epoll set (posix) or ring (uring) per group that holds
  TLS sockets, the inner group's; per record an AEAD call and two copies
  (into OpenSSL's BIO and out of it) beside the kernel's.

STARTTLS, as a server does it from the connection's read callback::

    sock.writev_async(netimpl.Request([ack]))            # the plaintext "go ahead", queued
    sock = netimpl.tls.wrap(sock, ctx, server_side=True)  # same group, same read callback
    # then return: the next call of the callback gets the TLS socket; read nothing more from
    # the old one, and drop plaintext already read past the STARTTLS request (an injection).
"""

from __future__ import annotations

import errno
import os
import ssl
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from .errors import NetImplError, logger, oserror
from .group.placement import placement_map
from .impl import GroupImpl, NetImpl
from .options import ImplOpts, SockOpts
from .request import Request
from .sock import Sock

if TYPE_CHECKING:
    from .group import SockGroup

__all__ = [
    "AHEAD_BYTES",
    "TlsGroupImpl",
    "TlsSock",
    "client_context",
    "load_psk_file",
    "psk_client_context",
    "psk_server_context",
    "server_context",
    "wrap",
]

#: OpenSSL's largest record payload: small buffers are gathered up to this before encrypting.
RECORD = 16384
#: Plaintext encrypted into one ciphertext request.
BATCH = 256 * 1024
#: Ciphertext queued on the inner socket beyond which nothing more is encrypted until some completes.
AHEAD_BYTES = 1 << 20
#: Ciphertext requests queued on the inner socket, at most (below the 64 iovecs that flush at once).
AHEAD_REQS = 32
#: Ciphertext read from the inner socket at a time.
PULL = 256 * 1024

_TLS_OPTS = ImplOpts(enable_recv_pipe=False)  # OpenSSL's buffers are this layer's recv pipe
_local = threading.local()


def _scratch() -> bytearray:
    buf = getattr(_local, "buf", None)
    if buf is None:
        buf = _local.buf = bytearray(PULL)
    return buf


class TlsImpl(NetImpl):
    """The TLS layer's net impl: makes group impls; sockets come from :func:`wrap`. Not registered."""

    name = "tls"

    def listen(self, host: str, port: int, opts: SockOpts) -> Sock:
        raise NetImplError("TLS is a layer, not a backend: listen with any backend and wrap each "
                           "accepted socket with netimpl.tls.wrap(sock, context, server_side=True)")

    def connect(self, host: str, port: int, opts: SockOpts) -> Sock:
        raise NetImplError("TLS is a layer, not a backend: connect with any backend and wrap the "
                           "socket with netimpl.tls.wrap(sock, context, server_side=False)")

    def group_impl_create(self) -> TlsGroupImpl:
        return TlsGroupImpl(self)


_IMPL = TlsImpl()


def wrap(sock: Sock, context: ssl.SSLContext, *, server_side: bool, server_hostname: str | None = None,
         cb: Callable[[SockGroup, Sock], Any] | None = None, suppress_ragged_eofs: bool = True) -> TlsSock:
    """Start TLS on a connected socket of any backend and return the TLS socket; never blocks.

    The handshake runs as the socket is served: by the polls of its group
    when ``sock`` is in one, else by the TLS socket's own ``recv_into`` and
    ``flush`` calls. A socket in a group is replaced there by the TLS one,
    with ``cb`` as its read callback (default: ``sock``'s), paused if
    ``sock`` was; this works from ``sock``'s own read callback (STARTTLS).
    Requests already queued on ``sock`` (a plaintext reply to STARTTLS, say)
    go out first, in plaintext, and complete as ever. From then on the TLS
    socket owns ``sock``: read, write and close through it only.

    ``TypeError`` for a wrong type, ``ValueError`` for a listening, closed
    or already wrapped socket, or a ``cb`` without a group; what
    ``SSLContext.wrap_bio`` raises (``server_hostname`` missing while the
    context checks host names, a client context on the server side).
    """
    if not isinstance(sock, Sock):
        raise TypeError(f"wrap takes a netimpl Sock, not {sock!r:.60}")
    if not isinstance(context, ssl.SSLContext):
        raise TypeError(f"context must be an ssl.SSLContext, not {context!r:.60}")
    if not isinstance(server_side, bool):
        raise TypeError(f"server_side must be a bool, not {server_side!r}")
    if isinstance(sock, TlsSock):
        raise ValueError(f"{sock!r} already speaks TLS")  # noqa: TRY004 - a right type in a wrong state
    if sock.closed:
        raise ValueError(f"cannot start TLS on a closed socket: {sock!r}")
    if getattr(sock, "_listener", False):
        raise ValueError(f"cannot start TLS on a listening socket: {sock!r}; wrap each accepted socket")
    if not server_side and context.check_hostname and not server_hostname:
        raise ValueError("this client context checks the server's host name: pass server_hostname=")
    group = sock.group
    if cb is not None and not callable(cb):
        raise TypeError(f"cb must be callable, not {cb!r:.60}")
    if cb is not None and group is None:
        raise ValueError(f"a read callback needs a group, and {sock!r} is in none: add the TLS socket to one")
    tls = TlsSock(sock, context, server_side=server_side, server_hostname=server_hostname,
                  suppress_ragged_eofs=suppress_ragged_eofs)
    if group is not None:
        read_cb = cb if cb is not None else group._socks[sock]
        paused = sock._read_paused
        group._detach(sock)  # not remove_sock: what is queued on it stays queued, and goes out first
        try:
            group.add_sock(tls, read_cb)
        except BaseException:
            group.add_sock(sock, read_cb)
            raise
        if paused:
            group.pause_reading(tls)
    tls._start()
    return tls


class TlsSock(Sock):
    """A TLS connection over a connected netimpl socket (the *inner* one); made by :func:`wrap`.

    The Sock interface, in plaintext; how it differs from a kernel socket:

    * ``recv_into``/``readv`` return decrypted bytes (``None`` also while
      the handshake runs), and raise the ``ssl.SSLError`` of a failed
      handshake or a corrupt record once, after the receive error of the
      inner socket, if any.
    * ``writev`` writes directly only when the inner socket has nothing
      queued; it encrypts up to 256 KiB and reports those bytes written,
      queueing on the inner socket whatever ciphertext the kernel did not
      take. ``None`` while the handshake runs.
    * A request completes when every ciphertext request carrying its bytes
      has completed (so zero-copy release included), with status 0 or the
      first errno among them; ``EPROTO`` after a TLS failure.
    * ``fileno``, ``getaddr``, ``is_ipv4``/``is_ipv6``, ``placement_id``,
      ``zerocopy`` and the buffer-size calls are the inner socket's
      (``set_recvlowat`` counts ciphertext bytes).
    """

    def __init__(self, inner: Sock, context: ssl.SSLContext, *, server_side: bool,
                 server_hostname: str | None, suppress_ragged_eofs: bool) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._ssl = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        super().__init__(_IMPL, inner._fd, _TLS_OPTS, inner._sock_opts)
        self.impl_name = "tls"
        self._pipe = None
        self._inner = inner
        self._server_side = server_side
        self._suppress_ragged_eofs = suppress_ragged_eofs
        self._established = False
        self._exc: BaseException | None = None  # the TLS failure, raised by the next receive
        self._exc_raised = False
        self._rx_exc: OSError | None = None  # the inner socket's receive error, raised after the bytes before it
        self._tx_err = 0                        # the inner socket's send errno: every later request fails with it
        self._eof = False                       # the inner socket reached EOF
        self._starved = False                   # OpenSSL holds only part of a record and the kernel has no more
        self._closing = False

    def _start(self) -> None:
        if not self._server_side:
            self._handshake()  # the ClientHello goes out now
        self._push()

    # -- what it shows ------------------------------------------------------------------

    @property
    def inner(self) -> Sock:
        """The socket the ciphertext travels on."""
        return self._inner

    @property
    def established(self) -> bool:
        """True once the handshake has completed."""
        return self._established

    @property
    def ssl_object(self) -> ssl.SSLObject:
        """The ``ssl.SSLObject``: ``version()``, ``cipher()``, ``getpeercert()``, ``selected_alpn_protocol()``..."""
        return self._ssl

    @property
    def tls_error(self) -> BaseException | None:
        """The TLS failure of this connection, if any."""
        return self._exc

    def __repr__(self) -> str:
        state = ("failed" if self._exc is not None else "established" if self._established else "handshaking")
        where = "closed" if self._closed else f"fd={self._fd}"
        return (f"<TlsSock impl=tls over {self._inner.impl_name} {where} {state} queued={len(self._queued)} "
                f"pending={len(self._pending)}>")

    # -- the inner socket's attributes ---------------------------------------------------

    def getaddr(self) -> tuple[str, int, str, int]:
        self._check_open()
        return self._inner.getaddr()

    def is_ipv4(self) -> bool:
        self._check_open()
        return self._inner.is_ipv4()

    def is_ipv6(self) -> bool:
        self._check_open()
        return self._inner.is_ipv6()

    def is_connected(self) -> bool:
        self._check_open()
        return self._exc is None and not self._tx_err and self._inner.is_connected()

    @property
    def placement_id(self) -> int:
        return -1 if self._closed else self._inner.placement_id

    @property
    def zerocopy(self) -> bool:
        return not self._closed and self._inner.zerocopy

    def _set_recvlowat(self, n: int) -> None:
        self._inner.set_recvlowat(n)

    def _set_recvbuf(self, n: int) -> None:
        self._inner.set_recvbuf(n)

    def _set_sendbuf(self, n: int) -> None:
        self._inner.set_sendbuf(n)

    def _accept(self) -> Sock | None:
        raise OSError(errno.EINVAL, "accept on a TLS socket, which is never a listener")

    # -- the handshake ------------------------------------------------------------------

    def _handshake(self) -> None:
        """Take the handshake as far as the bytes at hand allow; raise (and record) its failure."""
        if self._established:
            return
        if self._exc is not None:
            raise self._exc
        sslobj = self._ssl
        while True:
            try:
                sslobj.do_handshake()
            except ssl.SSLWantReadError:
                self._send_out()
                if self._pull_for_handshake():
                    continue
                return
            except ssl.SSLError as exc:
                self._send_out()  # the alert: tell the peer why
                self._failed(exc)
                raise
            self._established = True
            self._send_out()  # the last flight (and a server's session tickets)
            self._handshake_done()
            return

    def _pull_for_handshake(self) -> bool:
        try:
            n = self._pull()
        except OSError as exc:
            self._failed(exc)
            raise
        return n is not None

    def _handshake_done(self) -> None:
        logger.debug("%r: %s established (%s)", self, self._ssl.version(), self._ssl.cipher())
        gi = self._group_impl
        if gi is not None:
            if self._read_paused:
                gi.pause(self)  # held back while the handshake needed the reads
            if self._queued:
                gi._dirty[self] = None

    def _failed(self, exc: BaseException) -> None:
        """The connection is unusable: remember why, fail what is queued."""
        if self._exc is None:
            self._exc = exc
            logger.debug("%r: TLS failed: %s", self, exc)
        self._fail_queued(errno.EPROTO if isinstance(exc, ssl.SSLError) else (getattr(exc, "errno", 0) or errno.EIO))

    # -- receive ------------------------------------------------------------------------

    def _pull(self) -> int | None:
        """Move ciphertext from the inner socket into OpenSSL; as ``recv_into``, EOF recorded."""
        if self._eof:
            return 0
        buf = _scratch()
        n = self._inner.recv_into(buf)
        if n:
            self._incoming.write(memoryview(buf)[:n])
            self._starved = False
        elif n == 0:
            self._eof = True
            self._incoming.write_eof()
        return n

    def _read_into(self, buf: bytearray) -> int | None:
        return self._readv([memoryview(buf)])

    def _readv(self, bufs: list[memoryview]) -> int | None:
        if self._rx_exc is not None:
            exc, self._rx_exc = self._rx_exc, None
            raise exc
        if self._exc is not None:
            if self._exc_raised:
                return 0  # told once; from then on the connection reads as ended
            self._exc_raised = True
            raise self._exc
        if not self._established:
            try:
                self._handshake()
            except BaseException:
                self._exc_raised = True
                raise
            self._push()
            if not self._established:
                return None
        sslobj = self._ssl
        read: Callable[..., int] = sslobj.read  # type: ignore[assignment]  # with a buffer: a count
        incoming = self._incoming
        total = 0
        dry = False  # the kernel had nothing more this call
        try:
            for view in bufs:
                size = len(view)
                off = 0
                while off < size:
                    if not self._eof and not sslobj.pending() and (self._starved or not incoming.pending):
                        # Nothing OpenSSL can return without more ciphertext (no failing read: it costs).
                        if total or dry:
                            return total or None
                        try:
                            got = self._pull()
                        except OSError as exc:
                            if total:
                                self._rx_exc = exc
                                return total
                            raise
                        if got is None:
                            dry = True
                        continue
                    try:
                        n = read(size - off, view[off:] if off else view)
                    except ssl.SSLWantReadError:
                        self._starved = True  # part of a record: the rest is still on its way
                        continue
                    except ssl.SSLZeroReturnError:
                        return total  # close_notify
                    except ssl.SSLEOFError:
                        if self._suppress_ragged_eofs:
                            return total
                        raise
                    if not n:
                        return total  # close_notify
                    total += n
                    off += n
            return total
        except ssl.SSLError as exc:
            self._send_out()
            self._failed(exc)
            if total:
                return total
            self._exc_raised = True
            raise
        finally:
            if self._outgoing.pending:  # a key update's answer, say
                self._send_out()
                self._push()

    def _has_buffered(self) -> bool:
        """Decrypted bytes, or records not yet decrypted, that no kernel event will announce."""
        if self._closed:
            return False
        if self._rx_exc is not None or (self._exc is not None and not self._exc_raised):
            return True
        return self._ssl.pending() > 0 or (self._incoming.pending > 0 and self._established
                                           and not self._starved and not self._eof)

    def _inner_readable(self, group: SockGroup, inner: Sock) -> None:
        """The private inner group's read callback: drive the handshake, then report this socket."""
        gi: TlsGroupImpl | None = self._group_impl  # type: ignore[assignment]
        if gi is None or self._closed:
            return
        if not self._established and self._exc is None:
            try:
                self._handshake()
            except OSError:
                pass  # recorded; raised by the read callback's recv_into
            else:
                if not self._established:
                    return
                self._flush_now(push=False)
                if not self._has_buffered():
                    return
        if not self._read_paused:
            gi._ready[self] = None

    # -- send ---------------------------------------------------------------------------

    def _room(self) -> bool:
        inner = self._inner
        return inner._queued_bytes < AHEAD_BYTES and len(inner._queued) < AHEAD_REQS

    def _flush(self) -> None:
        self._flush_now(push=True)

    def _flush_now(self, push: bool) -> None:
        """Encrypt queued requests into ciphertext requests while the inner socket has room; with
        ``push``, hand those to the kernel as well (a group hands them at its own pace)."""
        if self._tx_err:
            self._fail_queued(self._tx_err)
            return
        if self._exc is not None:
            self._failed(self._exc)
            return
        if not self._established:
            try:
                self._handshake()
            except OSError:
                return
            if push:
                self._push()
            if not self._established:
                return
        while True:
            progress = False
            while self._queued and self._room():
                self._encrypt_queued()
                progress = True
            if push:
                self._push()
            if not (push and progress and self._queued and self._room()):
                break

    def _push(self) -> None:
        inner = self._inner
        if inner._queued and not inner._cb_cnt and not inner._closed:
            inner._flush()

    def _encrypt_queued(self) -> None:
        """One ciphertext request out of the head of the queue (at most BATCH plaintext bytes)."""
        n = _encrypt(self._ssl.write, _queued_pieces(self._queued), BATCH)
        if not n:
            self._requests_sent(0, False)  # zero-length requests: pending at once, done in their turn
            self._complete_pending()
            return
        self.stats.bytes_sent += n
        touched = self._requests_sent(n, True) or []
        self._send_out(touched)

    def _send_out(self, touched: list[Request] | tuple = ()) -> None:
        """Queue what OpenSSL wrote on the inner socket, carrying ``touched``."""
        data = self._outgoing.read()
        if data and not self._inner._closed:
            self._inner.writev_async(Request([data], self._cipher_done, touched))
        elif touched:
            for req in touched:
                req._status = req._status or errno.ECANCELED
                self._zc_released(req)
            self._complete_pending()

    def _cipher_done(self, creq: Request, status: int) -> None:
        """A ciphertext request completed: so has its share of each plaintext request it carried."""
        touched = creq.ctx
        if status:
            if not self._tx_err and status != errno.ECANCELED:
                self._tx_err = status
            for req in touched:
                if not req._status:
                    req._status = status
        for req in touched:
            self._zc_released(req)
        self._complete_pending()
        if status:
            if not self._closing:  # close fails the queue itself, once every record is accounted for
                self._fail_queued(status)
        elif self._queued and not self._closed:
            gi = self._group_impl
            if gi is not None:
                gi._dirty[self] = None  # room again: the group encrypts more

    def _writev(self, bufs: list[Any]) -> int | None:
        if self._exc is not None:
            raise self._exc
        if self._tx_err:
            raise oserror(self._tx_err)
        if not self._established:
            self._handshake()
            self._push()
            if not self._established:
                return None
        inner = self._inner
        if inner._queued:
            self._push()
            if inner._queued:
                return None
        n = _encrypt(self._ssl.write, _buf_pieces(bufs), BATCH)
        data = self._outgoing.read()
        if not data:
            return n
        try:
            k = inner.writev([data]) or 0
        except OSError as exc:
            self._tx_err = exc.errno or errno.EIO
            raise
        if k < len(data):
            inner.writev_async(Request([memoryview(data)[k:]], self._cipher_done, ()))
        return n

    def _fail_queued(self, status: int) -> None:
        """As Sock's, except that while the socket is open the failed requests complete in their
        turn, after the encrypted ones ahead of them (whose records cannot be taken back)."""
        if self._closed or self._closing or not self._pending:
            super()._fail_queued(status)
            return
        # Held like zero-copy requests awaiting a release, Sock's abort leaves them all pending, in order.
        held = list(self._queued)
        for req in held:
            req._zc_wait += 1
        super()._fail_queued(status)
        for req in held:
            req._zc_wait -= 1
        self._complete_pending()

    # -- close --------------------------------------------------------------------------

    def close(self) -> None:
        """Close: close_notify if nothing is half sent, then the inner socket; idempotent.

        Requests whose records are not in the kernel yet, and those not
        encrypted yet, complete with ECANCELED before this returns (records
        on a zero-copy inner socket complete when the kernel releases them).
        """
        if self._closed:
            return
        group = self._group
        if group is not None:
            group._detach(self)
        self._closing = True
        inner = self._inner
        if not inner._closed:
            self._goodbye()
            inner.close()
        super().close()

    def _goodbye(self) -> None:
        inner = self._inner
        if not self._established or self._exc is not None or self._tx_err or inner._queued:
            return
        try:
            self._ssl.unwrap()
        except ssl.SSLWantReadError:
            pass  # ours is written; the peer's may come or not
        except (ssl.SSLError, ValueError):
            return
        data = self._outgoing.read()
        if data:
            try:
                inner.writev([data])
            except OSError as exc:
                logger.debug("%r: close_notify not sent: %s", self, exc)

    def _close(self) -> None:
        pass  # the inner socket is closed by close()


def _queued_pieces(queued: Iterable[Request]) -> Iterator[Any]:
    """The buffers of queued requests from where each stands (a partly encrypted one from its offset)."""
    for req in queued:
        off = req._offset
        for b in req._bufs:
            if off:
                n = len(b)
                if off >= n:
                    off -= n
                    continue
                b = memoryview(b)[off:]
                off = 0
            yield b


def _buf_pieces(bufs: list[Any]) -> Iterator[Any]:
    for b in bufs:
        yield b if type(b) in (bytes, bytearray) or (type(b) is memoryview and b.format == "B") else memoryview(b).cast("B")


def _encrypt(write: Callable[[Any], int], pieces: Iterator[Any], limit: int) -> int:
    """Encrypt up to ``limit`` bytes of ``pieces``: small ones gathered into full records, whole
    records of large ones in place. Returns the plaintext bytes encrypted."""
    stage = bytearray()
    n = 0
    for b in pieces:
        size = len(b)
        if not size:
            continue
        if n + size > limit:
            size = limit - n
            b = memoryview(b)[:size]
        n += size
        if stage or size < RECORD:
            room = RECORD - len(stage)
            if size < room:
                stage += b
                if n >= limit:
                    break
                continue
            stage += memoryview(b)[:room] if size > room else b
            write(stage)
            stage.clear()
            if size == room:
                if n >= limit:
                    break
                continue
            b = memoryview(b)[room:]
            size -= room
        whole = size - size % RECORD
        if whole:
            write(b if whole == size else memoryview(b)[:whole])
        if whole < size:
            stage += memoryview(b)[whole:]
        if n >= limit:
            break
    if stage:
        write(stage)
    return n


class TlsGroupImpl(GroupImpl):
    """The TLS sockets of a :class:`netimpl.SockGroup`, their inner sockets in a private group.

    ``poll`` encrypts what the TLS sockets queued, polls the inner group
    (whose read callbacks drive handshakes and mark TLS sockets readable,
    and whose completions complete the plaintext requests), then encrypts
    again for the sockets whose ciphertext drained.
    """

    def __init__(self, impl: NetImpl) -> None:
        super().__init__(impl)
        from .group import SockGroup

        self._inner = SockGroup()
        self._ready: dict[TlsSock, None] = {}

    @property
    def _owner(self) -> int:  # type: ignore[override]
        for gi in self._inner._impls.values():
            if gi._owner:
                return gi._owner
        return 0

    def fileno(self) -> int:
        # The inner group's epoll over its backends' fds, not its fileno(): that one's own eventfd would
        # cost a write and a read per request; before_wait tells the caller what it would have said.
        return self._inner._waiter_get().fileno()

    def add_sock(self, sock: TlsSock) -> None:  # type: ignore[override]
        inner = sock._inner
        self._inner.add_sock(inner, sock._inner_readable)
        if inner._group_pid >= 0:  # the placement id belongs to the caller's group, not this private one
            placement_map.release(inner._group_pid, self._inner)
            inner._group_pid = -1

    def remove_sock(self, sock: TlsSock) -> None:  # type: ignore[override]
        self._ready.pop(sock, None)
        inner = sock._inner
        if inner._group is self._inner:
            if not sock._closed:
                sock._push()  # give the records already made their best chance to go out first
            self._inner._detach(inner)  # what is queued on it stays queued: records cannot be dropped

    def pause(self, sock: TlsSock) -> None:  # type: ignore[override]
        self._ready.pop(sock, None)
        # While the handshake runs its reads go on (the handshake completion pauses it).
        if sock._established and sock._inner._group is self._inner:
            self._inner.pause_reading(sock._inner)

    def resume(self, sock: TlsSock) -> None:  # type: ignore[override]
        if sock._inner._group is self._inner:
            self._inner.resume_reading(sock._inner)

    def poll(self, max_events: int, timeout: float) -> list[TlsSock]:  # type: ignore[override]
        if self._dirty:
            self.flush_dirty()
        ready = self._ready
        self._inner.poll(max_events, 0.0 if ready or self._dirty else timeout)
        if self._dirty:
            self.flush_dirty()
        out = list(ready)
        ready.clear()
        return out

    def flush_dirty(self) -> None:
        """Encrypt for every dirty TLS socket, then send what the inner sockets queued."""
        dirty = self._dirty
        for _round in range(4):
            for sock in list(dirty):
                if sock._cb_cnt or sock._closed:
                    continue
                dirty.pop(sock, None)  # put back by its ciphertext's completion while more waits
                sock._flush_now(push=False)  # type: ignore[attr-defined]
            for gi in list(self._inner._impls.values()):
                if gi._dirty:
                    gi.flush_dirty()
            if not any(not (s._cb_cnt or s._closed) for s in dirty):
                break

    def before_wait(self) -> bool:
        if self._dirty:
            self.flush_dirty()
        inner = self._inner
        busy = bool(self._ready or inner._ready)
        for gi in inner._impls.values():
            if gi.before_wait():
                busy = True
        return busy

    def close(self) -> None:
        self._inner.close()


# -- contexts ---------------------------------------------------------------------------------

def _need_file(path: str, what: str) -> str:
    if not os.path.isfile(path):
        raise FileNotFoundError(errno.ENOENT, f"{what} {path!r} does not exist (the layout: DIR/server-cert.pem, "
                                "DIR/server-key.pem, DIR/ca-cert.pem; client-cert.pem and client-key.pem for clients)",
                                path)
    return path


def _load_chain(ctx: ssl.SSLContext, cert: str, key: str) -> None:
    try:
        ctx.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        raise ValueError(f"cannot use the certificate {cert!r} with the key {key!r}: {exc}") from exc


def _check_dir(certdir: str | os.PathLike[str]) -> str:
    if not isinstance(certdir, (str, os.PathLike)):
        raise TypeError(f"the certificate directory must be a path, not {certdir!r}")
    d = os.fspath(certdir)
    if not os.path.isdir(d):
        raise FileNotFoundError(errno.ENOENT, f"TLS certificate directory {d!r} does not exist", d)
    return d


def server_context(certdir: str | os.PathLike[str], *, verify_peer: bool = False) -> ssl.SSLContext:
    """A server ``SSLContext`` from an nbdkit/qemu certificate directory.

    ``DIR/server-cert.pem`` and ``DIR/server-key.pem`` are required;
    ``DIR/ca-cert.pem`` too when ``verify_peer`` (then every client must
    present a certificate that CA signed, as nbdkit's ``--tls-verify-peer``).
    TLS 1.2 or 1.3. A missing file: ``FileNotFoundError`` naming it; a key
    that does not match its certificate: ``ValueError`` naming both.
    """
    d = _check_dir(certdir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(ctx, _need_file(os.path.join(d, "server-cert.pem"), "the server certificate"),
                _need_file(os.path.join(d, "server-key.pem"), "the server key"))
    if verify_peer:
        ctx.load_verify_locations(_need_file(os.path.join(d, "ca-cert.pem"), "the CA certificate"))
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_context(certdir: str | os.PathLike[str], *, check_hostname: bool = True) -> ssl.SSLContext:
    """A client ``SSLContext`` from an nbdkit/qemu certificate directory.

    ``DIR/ca-cert.pem`` verifies the server (with its host name unless
    ``check_hostname`` is False); ``DIR/client-cert.pem`` and
    ``DIR/client-key.pem``, if present, are the client's own.
    """
    d = _check_dir(certdir)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_hostname
    ctx.load_verify_locations(_need_file(os.path.join(d, "ca-cert.pem"), "the CA certificate"))
    cert, key = os.path.join(d, "client-cert.pem"), os.path.join(d, "client-key.pem")
    if os.path.exists(cert) or os.path.exists(key):
        _load_chain(ctx, _need_file(cert, "the client certificate"), _need_file(key, "the client key"))
    return ctx


# -- PSK ----------------------------------------------------------------------------------------

def load_psk_file(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """Read a GnuTLS psktool file: ``identity:hexkey`` lines. ``ValueError`` naming the line that is wrong."""
    keys: dict[str, bytes] = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            ident, sep, hexkey = line.partition(":")
            if not sep or not ident:
                raise ValueError(f"{os.fspath(path)}:{lineno}: not an 'identity:hexkey' line")
            try:
                key = bytes.fromhex(hexkey)
            except ValueError:
                raise ValueError(f"{os.fspath(path)}:{lineno}: the key of {ident!r} is not hexadecimal") from None
            if not key:
                raise ValueError(f"{os.fspath(path)}:{lineno}: the key of {ident!r} is empty")
            keys[ident] = key
    if not keys:
        raise ValueError(f"{os.fspath(path)} holds no 'identity:hexkey' line")
    return keys


def _psk_missing() -> str:
    if hasattr(ssl.SSLContext, "set_psk_server_callback"):
        return ""
    v = sys.version_info
    return (f"TLS-PSK is not available: Python {v.major}.{v.minor}.{v.micro}'s ssl module has no PSK callbacks "
            "(ssl.SSLContext.set_psk_server_callback came in Python 3.13); use X.509 certificates instead")


def psk_server_context(path: str | os.PathLike[str]) -> ssl.SSLContext:
    """A server ``SSLContext`` for TLS-PSK with the keys of a psktool file.

    Needs an interpreter whose ``ssl`` has PSK callbacks (Python 3.13+);
    elsewhere :class:`netimpl.NetImplError` says so in one sentence.
    """
    missing = _psk_missing()
    if missing:
        raise NetImplError(missing)
    keys = load_psk_file(path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_ciphers("PSK")  # TLS 1.2's PSK suites; TLS 1.3 uses the callback with its own suites
    ctx.set_psk_server_callback(lambda identity: keys.get(identity or "", b""))  # type: ignore[attr-defined]
    return ctx


def psk_client_context(path: str | os.PathLike[str], identity: str | None = None) -> ssl.SSLContext:
    """A client ``SSLContext`` for TLS-PSK: ``identity``'s key (default: the file's first)."""
    missing = _psk_missing()
    if missing:
        raise NetImplError(missing)
    keys = load_psk_file(path)
    ident = identity if identity is not None else next(iter(keys))
    if ident not in keys:
        raise ValueError(f"{os.fspath(path)} has no key for identity {ident!r}")
    key = keys[ident]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.set_ciphers("PSK")
    ctx.set_psk_client_callback(lambda hint: (ident, key))  # type: ignore[attr-defined]
    return ctx
