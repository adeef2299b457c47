"""The NBD wire format: magics, flags, option and command numbers, headers.

Names and values are the NBD protocol document's (``doc/proto.md`` of the
reference implementation), fixed newstyle negotiation only. Everything on
the wire is big-endian.
"""

from __future__ import annotations

import struct

# -- handshake -------------------------------------------------------------------

NBDMAGIC = 0x4E42444D41474943          # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054          # "IHAVEOPT"
NBD_REP_MAGIC = 0x0003E889045565A9     # option reply magic

# handshake flags (server, 16 bits)
NBD_FLAG_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_NO_ZEROES = 1 << 1
# client flags (32 bits)
NBD_FLAG_C_FIXED_NEWSTYLE = 1 << 0
NBD_FLAG_C_NO_ZEROES = 1 << 1
CLIENT_FLAGS_KNOWN = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES

# options
NBD_OPT_EXPORT_NAME = 1
NBD_OPT_ABORT = 2
NBD_OPT_LIST = 3
NBD_OPT_STARTTLS = 5
NBD_OPT_INFO = 6
NBD_OPT_GO = 7
NBD_OPT_STRUCTURED_REPLY = 8
NBD_OPT_LIST_META_CONTEXT = 9
NBD_OPT_SET_META_CONTEXT = 10
NBD_OPT_EXTENDED_HEADERS = 11

# option replies
NBD_REP_ACK = 1
NBD_REP_SERVER = 2
NBD_REP_INFO = 3
NBD_REP_META_CONTEXT = 4
NBD_REP_FLAG_ERROR = 1 << 31
NBD_REP_ERR_UNSUP = NBD_REP_FLAG_ERROR | 1
NBD_REP_ERR_POLICY = NBD_REP_FLAG_ERROR | 2
NBD_REP_ERR_INVALID = NBD_REP_FLAG_ERROR | 3
NBD_REP_ERR_TLS_REQD = NBD_REP_FLAG_ERROR | 5
NBD_REP_ERR_UNKNOWN = NBD_REP_FLAG_ERROR | 6
NBD_REP_ERR_TOO_BIG = NBD_REP_FLAG_ERROR | 9

# NBD_REP_INFO types
NBD_INFO_EXPORT = 0
NBD_INFO_NAME = 1
NBD_INFO_DESCRIPTION = 2
NBD_INFO_BLOCK_SIZE = 3

# transmission flags (16 bits)
NBD_FLAG_HAS_FLAGS = 1 << 0
NBD_FLAG_READ_ONLY = 1 << 1
NBD_FLAG_SEND_FLUSH = 1 << 2
NBD_FLAG_SEND_FUA = 1 << 3
NBD_FLAG_ROTATIONAL = 1 << 4
NBD_FLAG_SEND_TRIM = 1 << 5
NBD_FLAG_SEND_WRITE_ZEROES = 1 << 6
NBD_FLAG_SEND_DF = 1 << 7
NBD_FLAG_CAN_MULTI_CONN = 1 << 8
NBD_FLAG_SEND_CACHE = 1 << 10
NBD_FLAG_SEND_FAST_ZERO = 1 << 11

# -- transmission ---------------------------------------------------------------------

NBD_REQUEST_MAGIC = 0x25609513
NBD_SIMPLE_REPLY_MAGIC = 0x67446698
NBD_STRUCTURED_REPLY_MAGIC = 0x668E33EF

NBD_CMD_READ = 0
NBD_CMD_WRITE = 1
NBD_CMD_DISC = 2
NBD_CMD_FLUSH = 3
NBD_CMD_TRIM = 4
NBD_CMD_CACHE = 5
NBD_CMD_WRITE_ZEROES = 6
NBD_CMD_BLOCK_STATUS = 7

CMD_NAMES = {NBD_CMD_READ: "READ", NBD_CMD_WRITE: "WRITE", NBD_CMD_DISC: "DISC", NBD_CMD_FLUSH: "FLUSH",
             NBD_CMD_TRIM: "TRIM", NBD_CMD_CACHE: "CACHE", NBD_CMD_WRITE_ZEROES: "WRITE_ZEROES",
             NBD_CMD_BLOCK_STATUS: "BLOCK_STATUS"}

# command flags
NBD_CMD_FLAG_FUA = 1 << 0
NBD_CMD_FLAG_NO_HOLE = 1 << 1
NBD_CMD_FLAG_DF = 1 << 2
NBD_CMD_FLAG_REQ_ONE = 1 << 3
NBD_CMD_FLAG_FAST_ZERO = 1 << 4

# structured reply chunks
NBD_REPLY_FLAG_DONE = 1 << 0
NBD_REPLY_TYPE_NONE = 0
NBD_REPLY_TYPE_OFFSET_DATA = 1
NBD_REPLY_TYPE_BLOCK_STATUS = 5
NBD_REPLY_TYPE_ERROR = (1 << 15) | 1

# metadata contexts: the one the protocol defines, and its extent flags
BASE_ALLOCATION = "base:allocation"
#: the id the server gives base:allocation (any value; clients must treat it as opaque)
BASE_ALLOCATION_ID = 1
NBD_STATE_HOLE = 1 << 0
NBD_STATE_ZERO = 1 << 1

# errors carried in replies (the protocol's numbers, which are Linux's)
NBD_EPERM = 1
NBD_EIO = 5
NBD_ENOMEM = 12
NBD_EINVAL = 22
NBD_ENOSPC = 28
NBD_EOVERFLOW = 75
NBD_ENOTSUP = 95
NBD_ESHUTDOWN = 108

# -- headers ---------------------------------------------------------------------------

#: server greeting: NBDMAGIC, IHAVEOPT, handshake flags
GREETING = struct.Struct(">QQH")
#: client option: IHAVEOPT, option, length
OPTION = struct.Struct(">QII")
#: option reply: magic, option, reply type, length
OPTION_REPLY = struct.Struct(">QIII")
#: NBD_OPT_EXPORT_NAME's answer: size, transmission flags (then 124 zeroes unless NO_ZEROES)
EXPORT_NAME_REPLY = struct.Struct(">QH")
#: NBD_INFO_EXPORT: type, size, transmission flags
INFO_EXPORT = struct.Struct(">HQH")
#: NBD_INFO_BLOCK_SIZE: type, minimum, preferred, maximum
INFO_BLOCK_SIZE = struct.Struct(">HIII")
#: request: magic, command flags, type, handle, offset, length
REQUEST = struct.Struct(">IHHQQI")
#: simple reply: magic, error, handle
SIMPLE_REPLY = struct.Struct(">IIQ")
#: structured reply chunk: magic, flags, type, handle, length
CHUNK = struct.Struct(">IHHQI")
#: NBD_REPLY_TYPE_OFFSET_DATA's chunk header with its offset field
CHUNK_OFFSET_DATA = struct.Struct(">IHHQIQ")
#: NBD_REPLY_TYPE_BLOCK_STATUS's chunk header with its metadata context id (then EXTENT descriptors)
CHUNK_BLOCK_STATUS = struct.Struct(">IHHQII")
#: one block status descriptor: extent length, status flags
EXTENT = struct.Struct(">II")
#: NBD_REPLY_TYPE_ERROR's chunk header with its error and message length
CHUNK_ERROR = struct.Struct(">IHHQIIH")

#: option data above this is not read: the client is dropped
MAX_OPTION_LENGTH = 1 << 16
#: the limits the server advertises (nbdcopy asks for up to 32 MiB per request)
MIN_BLOCK_SIZE = 1
PREFERRED_BLOCK_SIZE = 4096
MAX_BLOCK_SIZE = 32 << 20
#: extents in one block status reply at most (the protocol asks for no more than 2**20): a client asks
#: again from where a shorter reply ends
MAX_EXTENTS = 1 << 14
