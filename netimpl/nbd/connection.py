"""One client connection: negotiation, then the request loop.

Every group callback does one receive through the socket's recv pipe,
either into the connection's buffer (request headers and payloads up to
64 KiB: one receive serves a whole queue-depth's worth of requests) or,
for the rest of a larger write payload, straight into the store's write
target. After a large write the next receive is kept small, so that the
next large payload lands in place rather than being copied over from the
buffer. It then
answers every complete request in the buffer and queues all the replies of
that batch as one :class:`netimpl.Request` (up to :data:`MAX_REPLY_IOVS`
iovecs): header and data iovecs side by side, the data a slice of the
store, so that a queue depth of 32 reads costs one receive and one
``sendmsg`` of 64 iovecs.

Flow control: a client that sends requests and does not read the replies
would otherwise have the server hold every reply (for a file export, a
buffer with a copy of the data each). So a connection answers requests
only while its unsent replies (``Sock.queued_bytes``, plus
:data:`IOV_COST` per iovec for the Python objects) stay under
:data:`MAX_UNSENT_BYTES`; at the bound the remaining requests wait in the
buffer and the socket's reading is paused (``SockGroup.pause_reading``),
so the kernel's receive window pushes back on the client. The completion
that brings them down to :data:`RESUME_UNSENT_BYTES` answers what waited
and resumes reading. Negotiation is held the same way, between options, so
a client that sends options and reads none of the replies is bounded too. A
connection's replies therefore never hold more than :data:`MAX_UNSENT_BYTES`
plus one maximum-size reply (or one option's replies). A reply that fails
(the client reset the connection) ends the connection: a paused socket
would not learn of the reset from a receive.

Replies go out in the order the requests arrived. A request the server
cannot honour (past the end, over the maximum length, a write to a
read-only export, an unknown command) gets the protocol's error and the
connection goes on; a client that breaks the framing (wrong magic, bad
option data) is logged and dropped. Neither touches another connection. A
write whose client vanishes in the middle of its payload may have landed
in part, as a torn write does on a disk; it was never acknowledged.
"""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import struct
from typing import TYPE_CHECKING, Any

import netimpl

from . import protocol as P
from .handshake import STARTTLS, Negotiation, ProtocolError, Session, negotiate

if TYPE_CHECKING:
    from .server import NbdServer

logger = logging.getLogger("netimpl.nbd")

__all__ = ["Connection"]

BUFFER_SIZE = 256 << 10        # request headers and small payloads are received here
_SMALL_PAYLOAD = 64 << 10      # larger write payloads are received straight into their target
_RECEIVES_PER_CALL = 8         # then the group serves other clients
_HEADER_READ = 4096            # the receive after a large write: its successor's header, little payload
#: A connection answers no more requests (and reads none) while its unsent replies hold at least
#: this many bytes, and goes on once they are down to RESUME_UNSENT_BYTES: so its replies never
#: hold more than this plus one maximum-size reply, whatever the client does.
MAX_UNSENT_BYTES = 16 << 20
RESUME_UNSENT_BYTES = MAX_UNSENT_BYTES // 2
#: replies are queued in requests of at most this many iovecs: a request sent in many pieces costs
#: its backend a walk over the iovecs already sent for every piece
MAX_REPLY_IOVS = 256
#: what a reply's iovec costs in Python objects (a header's bytes, a memoryview), counted as unsent
#: bytes: a flood of tiny replies is bounded too
IOV_COST = 256
_REQUEST = P.REQUEST
_REQUEST_SIZE = P.REQUEST.size
_SIMPLE = P.SIMPLE_REPLY.pack
_CHUNK = P.CHUNK.pack
_CHUNK_DATA = P.CHUNK_OFFSET_DATA.pack
_CHUNK_ERROR = P.CHUNK_ERROR.pack
_CHUNK_STATUS = P.CHUNK_BLOCK_STATUS.pack
_EXTENT = P.EXTENT.pack
_REQUEST_MAGIC = P.NBD_REQUEST_MAGIC
_SIMPLE_MAGIC = P.NBD_SIMPLE_REPLY_MAGIC
_STRUCTURED_MAGIC = P.NBD_STRUCTURED_REPLY_MAGIC
_DONE = P.NBD_REPLY_FLAG_DONE
_MAX = P.MAX_BLOCK_SIZE
_FUA = P.NBD_CMD_FLAG_FUA
_NO_HOLE = P.NBD_CMD_FLAG_NO_HOLE
_FAST_ZERO = P.NBD_CMD_FLAG_FAST_ZERO
_REQ_ONE = P.NBD_CMD_FLAG_REQ_ONE

#: errnos the protocol can carry; anything else is reported as EIO
_NBD_ERRNOS = frozenset((P.NBD_EPERM, P.NBD_EIO, P.NBD_ENOMEM, P.NBD_EINVAL, P.NBD_ENOSPC,
                         P.NBD_EOVERFLOW, P.NBD_ENOTSUP, P.NBD_ESHUTDOWN))


def _nbd_errno(exc: OSError) -> int:
    return exc.errno if exc.errno in _NBD_ERRNOS else P.NBD_EIO


#: The whole reply to a request that succeeded and carries no data back, from its handle alone: one
#: call into C per request (write, flush, trim...), not a Python function's frame.
_OK_SIMPLE = functools.partial(_SIMPLE, _SIMPLE_MAGIC, 0)
_OK_STRUCTURED = functools.partial(struct.Struct(">IHHQ4x").pack, _STRUCTURED_MAGIC, _DONE,
                                   P.NBD_REPLY_TYPE_NONE)  # P.CHUNK with a length of 0


def _status_reply(structured: bool, handle: int, error: int) -> bytes:
    """The whole reply to a request that carries no data back."""
    if not structured:
        return _SIMPLE(_SIMPLE_MAGIC, error, handle)
    if error:
        return _CHUNK_ERROR(_STRUCTURED_MAGIC, _DONE, P.NBD_REPLY_TYPE_ERROR, handle, 6, error, 0)
    return _CHUNK(_STRUCTURED_MAGIC, _DONE, P.NBD_REPLY_TYPE_NONE, handle, 0)


class _Payload:
    """A write whose payload is still arriving: where it goes and what to answer."""

    __slots__ = ("handle", "flags", "offset", "length", "target", "token", "got", "error")

    def __init__(self, handle: int, flags: int, offset: int, length: int, target: memoryview | None,
                 token: Any, error: int) -> None:
        self.handle = handle
        self.flags = flags
        self.offset = offset
        self.length = length
        self.target = target          # None: the payload is read and dropped (the reply is `error`)
        self.token = token
        self.got = 0
        self.error = error


class Connection:
    """Serves one client from its group callback (:meth:`readable`)."""

    def __init__(self, server: "NbdServer", sock: netimpl.Sock) -> None:
        self.server = server
        self.sock = sock
        self.tls = False                 # the socket speaks TLS (after NBD_OPT_STARTTLS)
        _, _, host, port = sock.getaddr()
        self.peer = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self.session: Session | None = None
        self.requests = 0
        self._buf = bytearray(BUFFER_SIZE)
        self._mv = memoryview(self._buf)
        self._pos = 0
        self._end = 0
        self._payload: _Payload | None = None
        self._expect_large = False     # the last request was a large write: read headers alone
        self._free: list[netimpl.Request] = []       # reply requests to reuse
        self._last: netimpl.Request | None = None     # the latest reply request still in flight
        self._closing = False                          # NBD_CMD_DISC: close once _last is sent
        self._closed = False
        self._iovs = 0                 # iovecs of the reply requests in flight
        self._budget = 0               # unsent reply bytes still allowed, while answering requests
        self._held = False             # over MAX_UNSENT_BYTES: requests wait, reading is paused
        self._negotiation: Negotiation | None = negotiate(server.exports, self._send, server.tls_mode)
        self._need = next(self._negotiation)

    def __repr__(self) -> str:
        return f"<nbd Connection {self.peer} export={self.session.name if self.session else None!r}>"

    # -- plumbing ---------------------------------------------------------------------------

    def _send(self, data: bytes) -> None:
        if self._closed:                  # a send that failed inside this option's replies closed it
            return
        self._iovs += 1
        self.sock.writev_async(netimpl.Request([data], cb=self._option_reply_done))

    def _option_reply_done(self, req: netimpl.Request, status: int) -> None:
        self._iovs -= 1
        self._check_sent(status)

    def close(self) -> None:
        """Leave the group and close the socket; queued replies are cancelled. Idempotent.

        Everything the connection holds is let go here rather than left to
        the cyclic collector: the reply requests (whose callbacks point back
        at the connection), the negotiation generator (which holds
        :meth:`_send`), a half-received write's buffer and the receive
        buffer. Replies still in the kernel's hands (zero-copy) keep their
        own buffers until it releases them, and then nothing else.
        """
        if self._closed:
            return
        self._closed = True
        sock = self.sock
        try:
            if sock.group is not None:
                sock.group.remove_sock(sock)
        finally:
            sock.close()                  # queued replies complete now, through _reply_done
            self._release()
            self.server._forget(self)

    def _release(self) -> None:
        # This may run inside the connection's own work (a send that fails at once completes the
        # replies at once): the running negotiation step and receive loop see _closed and stop.
        gen, self._negotiation = self._negotiation, None
        if gen is not None and inspect.getgeneratorstate(gen) != inspect.GEN_RUNNING:
            gen.close()
        payload, self._payload = self._payload, None
        if payload is not None and payload.target is not None:
            payload.target.release()
            assert self.session is not None
            self.session.store.discard(payload.token)
        for req in self._free:
            req.cb = None
        self._free.clear()
        self._last = None
        self._buf = bytearray()           # a running receive loop keeps the old one while it needs it
        self._mv = memoryview(self._buf)

    def timed_out(self, seconds: float) -> None:
        """The server's negotiation deadline passed: drop the client."""
        self._drop("negotiation not finished after %g s", seconds)

    def _drop(self, why: str, *args: Any) -> None:
        logger.warning("%s: " + why + "; dropping the connection", self.peer, *args)
        self.close()

    def _reply_done(self, req: netimpl.Request, status: int) -> None:
        tokens = req.ctx
        if tokens:
            assert self.session is not None
            release = self.session.store.release
            try:
                for token in tokens:
                    release(token)
            except Exception:
                logger.exception("%s: could not release a reply buffer", self.peer)
            tokens.clear()
        self._iovs -= len(req.bufs)
        req.bufs = ()                     # the reply's buffers go now, not when the request is reused
        if self._closed:
            req.cb = None                 # the last reference to the connection may be this one
            return
        if not status:
            self._free.append(req)
            if req is self._last:
                self._last = None
                if self._closing:
                    self.close()
                    return
            if not self._held:
                return                    # the common case, without one more call per reply
        self._check_sent(status)

    def _check_sent(self, status: int) -> None:
        """After a reply's completion: end the connection if it failed, go on if the replies have drained."""
        if self._closed:
            return
        if status:
            logger.info("%s: sending replies failed: %s", self.peer, errno.errorcode.get(status, status))
            self.close()
        elif self._held and self.sock.queued_bytes + self._iovs * IOV_COST <= RESUME_UNSENT_BYTES:
            self._guarded(self._go_on)

    def _go_on(self) -> None:
        """The replies have drained: answer the requests (or options) that waited, then read again."""
        self._held = False
        out: list[Any] = []
        tokens: list[Any] = []
        sock = self.sock
        self._budget = MAX_UNSENT_BYTES - sock.queued_bytes - self._iovs * IOV_COST
        self._answer(out, tokens)
        self._finish_batch(sock, out, tokens)
        if not self._held and not self._closed and sock.group is not None:
            sock.group.resume_reading(sock)

    def _queue(self, out: list[Any], tokens: list[Any] | None) -> None:
        req = self._free.pop() if self._free else netimpl.Request((), cb=self._reply_done, ctx=[])
        req.bufs = out
        if tokens:
            req.ctx.extend(tokens)
        self._last = req
        self._iovs += len(out)
        self.sock.writev_async(req)

    def _hold(self) -> None:
        """Too many reply bytes unsent: stop reading until they drain (see :meth:`_reply_done`)."""
        self._held = True
        group = self.sock.group
        if group is not None:
            group.pause_reading(self.sock)

    # -- the group callback ----------------------------------------------------------------------

    def readable(self, group: netimpl.SockGroup, sock: netimpl.Sock) -> None:
        """Data, EOF or an error is waiting: receive once and answer what is complete.

        Whatever goes wrong with this client ends this client only.
        """
        if self._closed or self._held:
            return
        try:                              # as _guarded does, with no more calls per request
            sock = self.sock
            out: list[Any] = []           # the replies of this call, queued as one request
            tokens: list[Any] = []        # store buffers they lend, released when it completes
            self._budget = MAX_UNSENT_BYTES - sock.queued_bytes - self._iovs * IOV_COST
            for _ in range(_RECEIVES_PER_CALL):
                if not self._receive(sock, out, tokens):
                    break
            self._finish_batch(sock, out, tokens)
        except Exception as exc:  # noqa: BLE001 (_failed logs it, with its traceback)
            self._failed(exc)

    def _guarded(self, serve: Any) -> None:
        """Run ``serve()``; whatever goes wrong with this client ends this client only."""
        try:
            serve()
        except Exception as exc:  # noqa: BLE001 (_failed logs it, with its traceback)
            self._failed(exc)

    def _failed(self, exc: Exception) -> None:
        """Serving this client raised ``exc`` (called while it is handled): end this client only."""
        if isinstance(exc, ProtocolError):
            self._drop("%s", exc)
        else:
            logger.exception("%s: internal error serving the client; dropping the connection", self.peer)
            self.close()

    def _finish_batch(self, sock: netimpl.Sock, out: list[Any], tokens: list[Any]) -> None:
        if self._closed:
            return
        if out:
            self._queue(out, tokens)
            if self._closed:
                return
        if self._closing:
            if self._last is None:
                self.close()
            else:
                sock.flush()             # closed by _reply_done once the last reply is sent

    def _receive(self, sock: netimpl.Sock, out: list[Any], tokens: list[Any]) -> bool:
        """Receive once and answer what became complete; False when there is no point in receiving again."""
        payload = self._payload
        try:
            if payload is not None:
                if payload.target is not None:
                    want = len(payload.target) - payload.got
                    n = sock.recv_into(payload.target[payload.got:])
                else:                                 # dropped: received into the idle buffer
                    want = min(payload.length - payload.got, BUFFER_SIZE)
                    n = sock.recv_into(self._mv[:want])
            else:
                if self._pos:                 # the buffer's requests were served: room at its start
                    self._make_room()
                end = self._end
                # after a large write, mostly a header: the payload after it is received in place
                want = min(_HEADER_READ, BUFFER_SIZE - end) if self._expect_large else BUFFER_SIZE - end
                n = sock.recv_into(self._mv[end:end + want])
        except OSError as exc:
            logger.info("%s: receive failed: %s", self.peer, exc)
            self.close()
            return False
        if n is None:
            return False
        if n == 0:
            if payload is not None or self._end > self._pos:
                logger.warning("%s: client went away in the middle of a request", self.peer)
            else:
                logger.info("%s: client disconnected after %d requests", self.peer, self.requests)
            self.close()
            return False
        # A short read took what the kernel (or the recv pipe) had: receiving again now would find
        # nothing, a system call for EAGAIN (libuv's rule). What comes later is a new readiness event,
        # and what a backend still holds keeps the socket on the group's pending-recv list.
        if payload is not None:
            payload.got += n
            if payload.got == payload.length:
                self._payload = None
                self._finish_write(payload, out)
            return n == want
        self._end += n
        return self._answer(out, tokens) and n == want

    def _answer(self, out: list[Any], tokens: list[Any]) -> bool:
        """Negotiate and serve what the buffer holds; False when there is no point in receiving now."""
        if self._negotiation is not None:
            if not self._negotiate():
                return False             # TLS started: the old socket is not to be read again
            if self._negotiation is not None or self._closed:
                return not (self._closed or self._held)
        return self._serve(out, tokens)

    def _make_room(self) -> None:
        pos, end = self._pos, self._end
        if pos == end:
            self._pos = self._end = 0
        elif pos > BUFFER_SIZE // 2 or end == BUFFER_SIZE:
            self._buf[:end - pos] = self._mv[pos:end]
            self._pos, self._end = 0, end - pos

    # -- negotiation ------------------------------------------------------------------------------

    def _negotiate(self) -> bool:
        """Feed the negotiation what the buffer holds; False when TLS has just started (stop receiving)."""
        gen = self._negotiation
        assert gen is not None
        while self._end - self._pos >= self._need:
            if self._closed:
                return True
            if self.sock.queued_bytes + self._iovs * IOV_COST >= MAX_UNSENT_BYTES:
                self._hold()             # a client that sends options and reads no replies
                return True
            pos, need = self._pos, self._need
            data = bytes(self._mv[pos:pos + need])
            self._pos = pos + need
            try:
                self._need = gen.send(data)
                if self._need == STARTTLS:
                    self._start_tls()
                    self._need = gen.send(b"")
                    return False
            except StopIteration as stop:
                self._negotiation = None
                self.server._negotiated(self)
                session = stop.value
                if session is None or self._closed:
                    if not self._closed:
                        logger.info("%s: client ended the negotiation", self.peer)
                        self.sock.flush()
                        self.close()
                    return True
                self.session = session
                logger.info("%s: serving export %r (%s replies%s)", self.peer, session.name,
                            "structured" if session.structured else "simple", ", TLS" if self.tls else "")
                return True
        return True

    def _start_tls(self) -> None:
        """NBD_OPT_STARTTLS was acknowledged (the ACK is queued, in plaintext): go on over TLS."""
        from netimpl import tls

        # Whatever the client sent after STARTTLS, before our ACK, is not to be trusted (CVE-2021-3716).
        self._pos = self._end = 0
        self.sock = tls.wrap(self.sock, self.server.tls_context, server_side=True)
        self.tls = True
        logger.info("%s: TLS started", self.peer)

    # -- transmission -----------------------------------------------------------------------------

    def _serve(self, out: list[Any], tokens: list[Any]) -> bool:
        """Answer every complete request in the buffer into ``out``, as far as the budget of unsent
        reply bytes goes; False after NBD_CMD_DISC or when the rest must wait (:meth:`_hold`)."""
        session = self.session
        assert session is not None
        store = session.store
        rview = store.read_view
        wview = store.write_view
        size = store.size
        read_only = store.read_only
        structured = session.structured
        ok = _OK_STRUCTURED if structured else _OK_SIMPLE
        buf, mv = self._buf, self._mv
        pos, end = self._pos, self._end
        unpack = _REQUEST.unpack_from
        served = 0
        disconnect = held = False
        budget = self._budget
        while end - pos >= _REQUEST_SIZE:
            if budget <= 0:
                held = True
                break
            if len(out) >= MAX_REPLY_IOVS:
                self._queue(out, tokens)
                out.clear()
                tokens.clear()
                if self._closed:          # the send failed at once
                    return False
            magic, flags, cmd, handle, offset, length = unpack(buf, pos)
            pos += _REQUEST_SIZE
            served += 1
            if magic != _REQUEST_MAGIC:
                self._pos = pos
                raise ProtocolError(f"request magic {magic:#x} is not NBD_REQUEST_MAGIC")
            error = 0
            if cmd == 0:                                              # NBD_CMD_READ
                if offset + length > size or length > _MAX:
                    error = self._range_error(cmd, offset, length, size)
                elif length:
                    if rview is not None:
                        # a large read of pages never written goes out from shared zeroes, not faulting
                        # them in (a 4 KiB read does not pay for asking)
                        zeroes = store.zero_view(offset, length) if length >= _SMALL_PAYLOAD else None
                        data = rview[offset:offset + length] if zeroes is None else zeroes
                    else:
                        try:
                            data, token = store.read(offset, length)
                        except OSError as exc:
                            logger.error("%s: read at %d+%d failed: %s", self.peer, offset, length, exc)
                            error = _nbd_errno(exc)
                        else:
                            tokens.append(token)
                    if not error:
                        if structured:
                            out.append(_CHUNK_DATA(_STRUCTURED_MAGIC, _DONE, P.NBD_REPLY_TYPE_OFFSET_DATA,
                                                   handle, length + 8, offset))
                        else:
                            out.append(_SIMPLE(_SIMPLE_MAGIC, 0, handle))
                        out.append(data)
                        budget -= length + 2 * IOV_COST
                        continue
            elif cmd == 1:                                            # NBD_CMD_WRITE
                partial = end - pos < length          # the payload is still arriving
                if partial and length <= _SMALL_PAYLOAD:   # wait for it here, and answer it with its batch
                    pos -= _REQUEST_SIZE
                    served -= 1
                    break
                if read_only:
                    error = P.NBD_EPERM
                elif offset + length > size or length > _MAX:
                    error = self._range_error(cmd, offset, length, size)
                if partial:
                    self._start_payload(handle, flags, offset, length, error, mv[pos:end], store)
                    pos = end
                    break
                if not error:
                    try:
                        if wview is not None:
                            wview[offset:offset + length] = mv[pos:pos + length]
                            store.commit(offset, length, None, flags & _FUA != 0)
                        else:
                            store.write(offset, mv[pos:pos + length], bool(flags & _FUA))
                    except OSError as exc:
                        logger.error("%s: write at %d+%d failed: %s", self.peer, offset, length, exc)
                        error = _nbd_errno(exc)
                pos += length
            elif cmd == 3:                                            # NBD_CMD_FLUSH
                error = self._store_call(store.flush)
            elif cmd == 4 or cmd == 6:                                # NBD_CMD_TRIM, NBD_CMD_WRITE_ZEROES
                if cmd == 4 and flags & _FAST_ZERO:                   # FAST_ZERO is WRITE_ZEROES' alone
                    error = self._flag_error(cmd, flags)
                elif read_only:
                    error = P.NBD_EPERM
                elif offset + length > size:
                    error = self._range_error(cmd, offset, length, size)
                elif cmd == 4:
                    error = self._store_call(store.trim, offset, length)
                elif flags & _FAST_ZERO:
                    error = self._fast_zero(store, offset, length, not flags & _NO_HOLE)
                else:
                    error = self._store_call(store.zero, offset, length, not flags & _NO_HOLE)
                if not error and flags & _FUA:
                    error = self._store_call(store.flush)
            elif cmd == 7:                                            # NBD_CMD_BLOCK_STATUS
                error = self._check_status(session, flags, offset, length, size)
                if not error:
                    try:
                        extents = store.extents(offset, length, 1 if flags & _REQ_ONE else P.MAX_EXTENTS)
                    except OSError as exc:
                        logger.error("%s: block status at %d+%d failed: %s", self.peer, offset, length, exc)
                        error = _nbd_errno(exc)
                    else:
                        body = b"".join([_EXTENT(n, state) for n, state in extents])
                        out.append(_CHUNK_STATUS(_STRUCTURED_MAGIC, _DONE, P.NBD_REPLY_TYPE_BLOCK_STATUS, handle,
                                                 4 + len(body), P.BASE_ALLOCATION_ID) + body)
                        budget -= len(body) + IOV_COST
                        continue
            elif cmd == 5:                                            # NBD_CMD_CACHE
                if flags:
                    error = self._flag_error(cmd, flags)
                elif offset + length > size:
                    error = self._range_error(cmd, offset, length, size)
                else:
                    error = self._store_call(store.cache, offset, length)
            elif cmd == 2:                                            # NBD_CMD_DISC
                disconnect = True
                served -= 1
                break
            else:
                logger.warning("%s: unsupported command %d (%s)", self.peer, cmd,
                               P.CMD_NAMES.get(cmd, "unknown"))
                error = P.NBD_EINVAL
            out.append(_status_reply(structured, handle, error) if error else ok(handle))
            budget -= IOV_COST
        self._pos, self._end = pos, end
        self._budget = budget
        self.requests += served
        if served > 1:
            self._expect_large = False
        if held:
            self._hold()
            return False
        if disconnect:
            logger.info("%s: client disconnected (NBD_CMD_DISC) after %d requests", self.peer, self.requests)
            self._closing = True
            return False
        return True

    def _range_error(self, cmd: int, offset: int, length: int, size: int) -> int:
        logger.warning("%s: %s at %d+%d is past the end (%d) or over the maximum (%d)", self.peer,
                       P.CMD_NAMES[cmd], offset, length, size, _MAX)
        return P.NBD_EINVAL

    def _flag_error(self, cmd: int, flags: int) -> int:
        logger.warning("%s: %s with flags %#x it does not take", self.peer, P.CMD_NAMES[cmd], flags)
        return P.NBD_EINVAL

    def _check_status(self, session: Session, flags: int, offset: int, length: int, size: int) -> int:
        """The error a block status request gets before the store is asked, or 0."""
        if not session.allocation:
            logger.warning("%s: BLOCK_STATUS without base:allocation negotiated", self.peer)
            return P.NBD_EINVAL
        if flags & ~_REQ_ONE:
            return self._flag_error(P.NBD_CMD_BLOCK_STATUS, flags)
        if offset + length > size or not length:
            return self._range_error(P.NBD_CMD_BLOCK_STATUS, offset, length, size)
        return 0

    def _fast_zero(self, store: Any, offset: int, length: int, may_trim: bool) -> int:
        """NBD_CMD_FLAG_FAST_ZERO: NBD_ENOTSUP, quietly and with nothing changed, where zeroing is slow."""
        try:
            store.zero(offset, length, may_trim, True)
        except OSError as exc:
            if exc.errno == errno.ENOTSUP:
                logger.debug("%s: fast zero at %d+%d refused: %s", self.peer, offset, length, exc)
                return P.NBD_ENOTSUP
            logger.error("%s: zero at %d+%d failed: %s", self.peer, offset, length, exc)
            return _nbd_errno(exc)
        return 0

    def _store_call(self, fn: Any, *args: Any) -> int:
        try:
            fn(*args)
        except OSError as exc:
            logger.error("%s: %s%r failed: %s", self.peer, getattr(fn, "__name__", fn), args, exc)
            return _nbd_errno(exc)
        return 0

    def _start_payload(self, handle: int, flags: int, offset: int, length: int, error: int,
                       head: memoryview, store: Any) -> None:
        """A write's payload is partly here: keep what arrived, receive the rest into its target."""
        target = token = None
        if not error:
            try:
                target, token = store.write_target(offset, length)
            except OSError as exc:
                logger.error("%s: write at %d+%d failed: %s", self.peer, offset, length, exc)
                error = _nbd_errno(exc)
        self._expect_large = True
        payload = _Payload(handle, flags, offset, length, target, token, error)
        if target is not None:
            target[:len(head)] = head
        payload.got = len(head)
        self._payload = payload

    def _finish_write(self, payload: _Payload, out: list[Any]) -> None:
        session = self.session
        assert session is not None
        error = payload.error
        if not error and payload.target is not None:
            store = session.store
            try:
                store.commit(payload.offset, payload.length, payload.token, bool(payload.flags & _FUA))
            except OSError as exc:
                logger.error("%s: write at %d+%d failed: %s", self.peer, payload.offset, payload.length, exc)
                error = _nbd_errno(exc)
            payload.target.release()
        out.append(_status_reply(session.structured, payload.handle, error))
