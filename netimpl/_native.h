/*
 * netimpl/_native.h: the compiled core's layouts and the C interface it
 * offers other netimpl extensions.
 *
 * netimpl._native owns Request, SockStats and SockCore (netimpl/_native.c).
 * The io_uring bridge (netimpl/uring/bridge.c) runs its completion loop on
 * the same sockets, so it needs their queues and counters in C: it includes
 * this header for the layouts and takes the functions from the capsule
 * netimpl._native._C_API (a struct ni_core_api), as CPython's own
 * extensions share a C API (datetime.datetime_CAPI). Nothing else crosses:
 * no id() casts, and one implementation of each mechanism.
 */
#ifndef NETIMPL_NATIVE_H
#define NETIMPL_NATIVE_H

#include <Python.h>
#include <structmember.h>
#include <sys/uio.h>

#define NI_CORE_API_NAME "netimpl._native._C_API"
/* Bumped whenever a layout below or the table changes: a stale build refuses to pair. */
#define NI_CORE_API_VERSION 6
/* The most iovecs one gather fills (IOV_BATCH_SIZE in the Python core). */
#define NI_GATHER_MAX 64

typedef struct Req {
    PyObject_HEAD
    PyObject *bufs;        /* a list of bytes, bytearray or byte memoryviews */
    PyObject *cb;
    PyObject *ctx;
    Py_ssize_t nbytes;
    Py_ssize_t offset;     /* bytes of it already handed to the kernel */
    Py_ssize_t iov_idx;    /* the send cursor: its first buffer not sent whole... */
    Py_ssize_t iov_off;    /* ...and the bytes of that one sent (gathers start there) */
    Py_ssize_t zc_wait;    /* zero-copy sends carrying its bytes not yet released */
    int status;
    int state;
    struct Req *next;      /* the queue it is in, if any */
} Req;

typedef struct {
    PyObject_HEAD
    PyObject *impl;
    Py_ssize_t bytes_sent, bytes_received, requests_completed, requests_aborted, zerocopy_sends,
        zerocopy_copied, zerocopy_fallbacks, syscalls;
} Stats;

typedef struct {
    Req *head, *tail;
    Py_ssize_t len;
} ReqQueue;

/* A socket's place in a SockList: the list (borrowed: it unlinks its members before it goes), or NULL. */
#define NI_LINK_READY 0
#define NI_LINK_DIRTY 1
#define NI_LINKS 2
struct ni_link {
    PyObject *list;
    struct Core *prev, *next;
};

typedef struct Core {
    PyObject_HEAD
    ReqQueue queued;         /* each request in a queue holds one reference owned by the queue */
    ReqQueue pending;
    Py_ssize_t queued_iovcnt;
    Py_ssize_t queued_bytes; /* bytes of requests whose callbacks have not run */
    int cb_cnt;
    int fd;
    char closed;
    char close_deferred;
    char direct;             /* the backend reads and writes the fd with plain syscalls (posix) */
    char read_paused;        /* SockGroup.pause_reading: no read callback */
    PyObject *group_impl;
    PyObject *dirty;         /* group_impl._dirty, a dict, or NULL */
    Stats *stats;
    /* Attributes of the generic layer and the posix backend kept here so the hot path reads them
     * without a dict lookup; Python sees them as ordinary attributes. */
    PyObject *group;         /* _group: the SockGroup */
    PyObject *read_cb;       /* _read_cb: the read callback that group calls for it */
    /* The group's pending-recv list (SockGroup._ready, a ReadyList) and its group impl's dirty list
     * (_dirty, a DirtyList) run through their sockets, as SPDK's pending_recv TAILQ does: a socket
     * is in one of each at most, which holds a reference to it. */
    struct ni_link link[NI_LINKS];
    PyObject *pipe;          /* _pipe: the recv pipe or None */
    PyObject *sys;           /* _sys: the posix syscall seam */
    PyObject *zc;            /* _zc: the posix zero-copy tracker or None */
    /* The uring backend's per-socket state (netimpl/uring/sock.py names each), here for the same
     * reason: its completion loop (bridge.c) reads it per request. */
    unsigned long long send_ud;   /* _send_ud: the write task in flight, 0 when none */
    unsigned long long write_ud;  /* _write_ud: the op-table entry of its plain write tasks, 0 when none */
    unsigned long long send_addr; /* _send_addr: its struct ni_send */
    Py_ssize_t send_total;        /* _send_total: bytes that task asked the kernel to take */
    PyObject *send_iovs;          /* _send_iovs: what its iovecs point into, held until the CQE */
    unsigned long long rxq_addr;  /* _rxq_addr: the struct ni_rxq of its multishot receive, 0 when none */
    char out_armed;               /* _out_armed: waiting for write space */
    char rx_pipe_first;           /* _rx_pipe_first: the recv pipe holds older bytes than the rxq */
} Core;

/* The generic part of a group impl (netimpl.impl.GroupImpl's base): what every poll pass reads, as
 * fields; a backend's group state type (bridge.c's GroupState) extends it. */
typedef struct {
    PyObject_HEAD
    PyObject *impl;          /* impl: the NetImpl */
    PyObject *dirty;         /* _dirty: the sockets with queued requests, a dict */
    unsigned long owner;     /* _owner: the thread that alone may drive it, 0 when any may */
} GroupImplCore;

/* What netimpl._native lends: each is the very function its own paths use. */
struct ni_core_api {
    int version;
    PyTypeObject *core_type;
    PyTypeObject *group_impl_type;  /* GroupImplCore's */
    /* Up to NI_GATHER_MAX iovecs from the queued requests, honouring the head's offset; with held, the buffer
     * object behind each iovec (borrowed references). 0, or -1 with an exception. */
    int (*gather)(Core *c, struct iovec *iov, int *cnt, Py_ssize_t *total, PyObject **held);
    /* n bytes handed to the kernel (no zero-copy): requests sent whole move to the pending list. */
    int (*requests_sent)(Core *c, Py_ssize_t n, PyObject *touched);
    /* Run the callbacks of pending requests in order (and a close deferred until they ran). */
    int (*complete_pending)(Core *c);
    /* Requests completed in this process (netimpl.sock.completions()). */
    unsigned long long (*completions)(void);
    /* PosixSock._flush: sendmsg(2) of the queued requests until the kernel takes no more, their
     * callbacks run. A new reference to None, or NULL with an exception. */
    PyObject *(*posix_flush)(Core *c);
    /* A state type's tp_traverse and tp_clear, over the T_OBJECT_EX members of its table (each holds
     * one reference), and a member read from its field: a new reference, AttributeError while unset. */
    int (*members_traverse)(PyObject *self, const PyMemberDef *m, visitproc visit, void *arg);
    void (*members_clear)(PyObject *self, const PyMemberDef *m);
    PyObject *(*member_get)(PyObject *self, PyObject *v, PyObject *name);
    /* A group impl's dirty list (_dirty: a DirtyList, or a dict): its length, -1 with TypeError for
     * anything else; its members in order (a new list); c, whose cached c->dirty is a DirtyList,
     * appended unless it is in (0, or -1 with an exception); sock taken off it if it is there (0,
     * or -1 with an exception). */
    Py_ssize_t (*dirty_len)(PyObject *dirty);
    PyObject *(*dirty_members)(PyObject *dirty);
    int (*dirty_add)(Core *c);
    int (*dirty_discard)(PyObject *dirty, PyObject *sock);
    /* A backend whose sockets hold received bytes of their own (uring: the provided buffers) names
     * the compiled function its class's _has_buffered wraps, and a C twin of it that the group's
     * serving loop calls instead: 1 when the socket holds bytes, 0 when it holds none (the recv
     * pipe, checked as for any socket, decides), -1 when only the method can say. 0, or -1 with an
     * exception. */
    int (*set_has_buffered)(PyObject *function, int (*buffered)(Core *c));
    /* A backend whose group impl's poll and flush_dirty are compiled names them (the functions its
     * class's methods wrap) and their C twins, which the group's poll calls instead of the methods:
     * poll(gi, max_events, timeout) returns a new list of the sockets it found readable, as the
     * method does; flush_dirty(gi) returns 0. NULL, or -1, with an exception. 0, or -1 with an
     * exception. */
    int (*set_group_calls)(PyObject *poll_fn, PyObject *(*poll)(PyObject *gi, long max_events, double timeout),
                           PyObject *flush_fn, int (*flush_dirty)(PyObject *gi));
};

/* tp_traverse, tp_clear and tp_dealloc (NAME_traverse, NAME_clear, NAME_dealloc) of a state type that
 * extends GroupImplCore: the object members of its own table MEMBERS, then GroupImplCore's, through
 * the core's interface API (a const struct ni_core_api *). netimpl._native's PosixGroupState and the
 * uring bridge's GroupState are both made so. */
#define NI_GROUP_STATE_GC(NAME, MEMBERS, API)                                     \
    static int NAME##_traverse(PyObject *self, visitproc visit, void *arg)       \
    {                                                                            \
        int rc = (API)->members_traverse(self, MEMBERS, visit, arg);            \
        return rc ? rc : (API)->group_impl_type->tp_traverse(self, visit, arg); \
    }                                                                            \
    static int NAME##_clear(PyObject *self)                                      \
    {                                                                            \
        (API)->members_clear(self, MEMBERS);                                     \
        return (API)->group_impl_type->tp_clear(self);                           \
    }                                                                            \
    static void NAME##_dealloc(PyObject *self)                                   \
    {                                                                            \
        PyObject_GC_UnTrack(self);                                               \
        NAME##_clear(self);                                                      \
        (API)->group_impl_type->tp_dealloc(self); /* untracks again (no-op) and frees */ \
    }

#endif
