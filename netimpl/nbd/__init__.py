"""An NBD (Network Block Device) server on netimpl's public API: the storage target that proves it.

    python -m netimpl.nbd --size 1G --port 10809          # serve a 1 GiB memory export
    nbdinfo nbd://localhost:10809                          # or qemu-img, nbdcopy, fio --ioengine=nbd

Fixed newstyle negotiation (EXPORT_NAME, ABORT, LIST, INFO, GO, STRUCTURED_REPLY),
and READ, WRITE, FLUSH, TRIM, WRITE_ZEROES and DISC with FUA and MULTI_CONN,
with simple or structured replies. One :class:`netimpl.SockGroup` polled in one
loop; requests read through each socket's recv pipe; replies sent with
``writev_async`` straight from the backing store (header and data iovecs, no
joined copies), zero-copy for large reads where the backend allows it.

It uses ``import netimpl`` and nothing below it, as any embedding code would.
"""

from .handshake import ProtocolError, Session
from .server import NbdServer
from .store import DirectFileStore, FileStore, MemoryStore, Store, open_file_store, parse_size

__all__ = ["NbdServer", "Store", "MemoryStore", "FileStore", "DirectFileStore", "open_file_store",
           "parse_size", "ProtocolError", "Session"]
