"""A deliberately plain, blocking NBD client for driving the server byte by byte in tests.

It speaks the protocol from its own constants (not the server's module),
so a wrong constant on either side shows up as a failure.
"""

from __future__ import annotations

import socket
import struct

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = 0x49484156454F5054
REP_MAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE_MAGIC = 0x67446698
STRUCT_MAGIC = 0x668E33EF

OPT = {"EXPORT_NAME": 1, "ABORT": 2, "LIST": 3, "STARTTLS": 5, "INFO": 6, "GO": 7, "STRUCTURED_REPLY": 8,
       "LIST_META_CONTEXT": 9, "SET_META_CONTEXT": 10, "EXTENDED_HEADERS": 11}
REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN = 2**31 + 1, 2**31 + 3, 2**31 + 6
INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3
CMD = {"READ": 0, "WRITE": 1, "DISC": 2, "FLUSH": 3, "TRIM": 4, "CACHE": 5, "WRITE_ZEROES": 6, "BLOCK_STATUS": 7}
FLAG_FUA, FLAG_NO_HOLE, FLAG_REQ_ONE, FLAG_FAST_ZERO = 1, 2, 8, 16
EPERM, EINVAL, ENOTSUP = 1, 22, 95
STATE_HOLE, STATE_ZERO = 1, 2
TF = {"HAS_FLAGS": 1, "READ_ONLY": 2, "SEND_FLUSH": 4, "SEND_FUA": 8, "SEND_TRIM": 32,
      "SEND_WRITE_ZEROES": 64, "SEND_DF": 128, "CAN_MULTI_CONN": 256, "SEND_CACHE": 1024, "SEND_FAST_ZERO": 2048}


class Closed(Exception):
    """The server closed the connection."""


class Client:
    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 10.0) -> None:
        self.s = socket.create_connection((host, port), timeout=timeout)
        self.structured = False

    def close(self) -> None:
        self.s.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw bytes ---------------------------------------------------------------------

    def recv_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            chunk = self.s.recv(n - len(out))
            if not chunk:
                raise Closed(f"connection closed after {len(out)} of {n} bytes")
            out += chunk
        return bytes(out)

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True when the server has closed (EOF or reset) within ``timeout``."""
        self.s.settimeout(timeout)
        try:
            return self.s.recv(1) == b""
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    # -- handshake ---------------------------------------------------------------------

    def greeting(self, client_flags: int = 3) -> int:
        magic, opt, hflags = struct.unpack(">8sQH", self.recv_exact(18))
        assert magic == NBDMAGIC and opt == IHAVEOPT, (magic, opt)
        self.s.sendall(struct.pack(">I", client_flags))
        return hflags

    def option(self, opt: int, data: bytes = b"") -> None:
        self.s.sendall(struct.pack(">QII", IHAVEOPT, opt, len(data)) + data)

    def option_reply(self) -> tuple[int, int, bytes]:
        magic, opt, rtype, length = struct.unpack(">QIII", self.recv_exact(20))
        assert magic == REP_MAGIC, hex(magic)
        return opt, rtype, self.recv_exact(length)

    def replies_until_final(self) -> list[tuple[int, bytes]]:
        out = []
        while True:
            _, rtype, data = self.option_reply()
            out.append((rtype, data))
            if rtype == REP_ACK or rtype & 2**31:
                return out

    def go(self, name: str = "", info: tuple[int, ...] = (), opt: str = "GO") -> list[tuple[int, bytes]]:
        raw = name.encode()
        self.option(OPT[opt], struct.pack(">I", len(raw)) + raw + struct.pack(">H", len(info))
                    + b"".join(struct.pack(">H", i) for i in info))
        return self.replies_until_final()

    def connect(self, name: str = "", structured: bool = False) -> tuple[int, int]:
        """Greeting, optional structured replies, GO: ``(size, transmission flags)``."""
        self.greeting()
        if structured:
            self.option(OPT["STRUCTURED_REPLY"])
            assert self.option_reply()[1] == REP_ACK
            self.structured = True
        for rtype, data in self.go(name):
            if rtype == REP_INFO and struct.unpack_from(">H", data)[0] == INFO_EXPORT:
                _, size, flags = struct.unpack(">HQH", data)
            assert not rtype & 2**31, (rtype, data)
        return size, flags

    # -- transmission ---------------------------------------------------------------------

    def send_request(self, cmd: str | int, offset: int = 0, length: int = 0, handle: int = 1, flags: int = 0,
                     data: bytes = b"", magic: int = REQ_MAGIC) -> None:
        c = CMD[cmd] if isinstance(cmd, str) else cmd
        self.s.sendall(struct.pack(">IHHQQI", magic, flags, c, handle, offset, length) + data)

    def reply(self, read_length: int = 0) -> tuple[int, int, bytes]:
        """``(handle, error, data)`` of the next reply; ``read_length`` is what a read asked for."""
        (magic,) = struct.unpack(">I", self.recv_exact(4))
        if magic == SIMPLE_MAGIC:
            error, handle = struct.unpack(">IQ", self.recv_exact(12))
            data = self.recv_exact(read_length) if not error and read_length else b""
            return handle, error, data
        assert magic == STRUCT_MAGIC, hex(magic)
        data = b""
        while True:
            flags, rtype, handle, length = struct.unpack(">HHQI", self.recv_exact(16))
            body = self.recv_exact(length)
            if rtype == 1:                               # OFFSET_DATA
                data += body[8:]
            if rtype == 5:                               # BLOCK_STATUS: context id, then (length, flags) pairs
                data += body
            if rtype & 0x8000:                           # ERROR
                error, msglen = struct.unpack_from(">IH", body)
                assert flags & 1
                return handle, error, b""
            if flags & 1:
                return handle, 0, data
            (magic,) = struct.unpack(">I", self.recv_exact(4))
            assert magic == STRUCT_MAGIC

    def read(self, offset: int, length: int, handle: int = 7) -> bytes:
        self.send_request("READ", offset, length, handle)
        h, err, data = self.reply(length)
        assert (h, err) == (handle, 0), (h, err)
        return data

    def meta_context(self, opt: str, name: str = "", queries: tuple[str, ...] = ()) -> list[tuple[int, bytes]]:
        """LIST_META_CONTEXT or SET_META_CONTEXT: the replies up to the final one."""
        raw = name.encode()
        data = struct.pack(">I", len(raw)) + raw + struct.pack(">I", len(queries))
        for q in queries:
            data += struct.pack(">I", len(q.encode())) + q.encode()
        self.option(OPT[opt + "_META_CONTEXT"], data)
        return self.replies_until_final()

    def block_status(self, offset: int, length: int, flags: int = 0, handle: int = 9
                     ) -> tuple[int, int, list[tuple[int, int]]]:
        """``(error, context id, [(length, flags), ...])`` of one NBD_CMD_BLOCK_STATUS."""
        self.send_request("BLOCK_STATUS", offset, length, handle, flags)
        h, err, body = self.reply()
        assert h == handle
        if err:
            return err, 0, []
        (ctx,) = struct.unpack_from(">I", body)
        return 0, ctx, [struct.unpack_from(">II", body, i) for i in range(4, len(body), 8)]

    def write(self, offset: int, data: bytes, handle: int = 8, flags: int = 0) -> int:
        self.send_request("WRITE", offset, len(data), handle, flags, data)
        h, err, _ = self.reply()
        assert h == handle
        return err
