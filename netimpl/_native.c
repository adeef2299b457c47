/* netimpl._native: the per-request and per-poll hot path in compiled code.
 *
 * A CPython extension written by hand. Not cffi: cffi cannot define Python
 * types, and here Python objects must reach C as declared types (a Request
 * is a C struct, a socket's queue a linked list of them), never as id()
 * casts. Not Cython: one C file of plain C API needs no build requirement
 * from PyPI, and the build stays optional like the cffi modules (setup.py:
 * without a compiler the install succeeds and the Python twin runs).
 * It implements, behind the same contract as the pure-Python reference
 * (netimpl/_pycore.py, netimpl/pipe.py, SockGroup._poll_py), which stays as
 * the fallback and as the twin the test suite also runs (NETIMPL_NATIVE=0):
 *
 *   Request    the write request: bufs, cb, ctx, nbytes, in_flight, repr,
 *              the same validation errors. Requests are linked into their
 *              socket's queues through a pointer of their own: queueing one
 *              allocates nothing.
 *   SockStats  the per-socket counters, C integers behind attributes.
 *   Pipe       the recv pipe, a C ring (twin of netimpl/pipe.py).
 *   SockCore   the base type of netimpl.Sock: the queued and pending
 *              queues, writev_async/flush, send accounting
 *              (_requests_sent), completion in order with the callbacks run
 *              from here (_complete_pending), aborts (_fail_queued), the
 *              _cb_cnt callback-depth guard and the deferred close,
 *              queued_bytes, and the fast paths of the posix backend:
 *              _posix_flush (gather up to 64 iovecs honouring offsets, one
 *              sendmsg(2) with MSG_NOSIGNAL) and recv_into (recv(2) straight
 *              into the caller's buffer, or readv(2) into the C pipe and a
 *              copy out of it).
 *   ReadyList, DirtyList  a group's pending-recv list (SockGroup._ready) and a
 *              group impl's sockets with requests queued (GroupImpl._dirty):
 *              ordered sets linked through the sockets themselves, as SPDK's
 *              pending_recv TAILQ (the twin: netimpl._pycore.SockList).
 *   flush_dirty  GroupImpl.flush_dirty as one C call.
 *   group_poll   SockGroup.poll: for posix group impls epoll_wait and the
 *              fd -> socket map in C (other backends' impls through their
 *              own poll()), then the pending-recv rotation, max_events, the
 *              read callbacks and one flush per dirty socket, all in C.
 *
 * What stays in Python, by design: every slow or rare path. A fast path
 * that meets anything unusual (the syscall seam replaced by a test, a
 * zero-copy notification, an epoll event other than readability, a paused
 * socket, a group of several backends, a poll that must wait on the
 * group's exported fd) calls the Python code instead, so each of those
 * mechanisms keeps one implementation. Zero-copy sockets send from C with
 * MSG_ZEROCOPY, but the counter bookkeeping and the error-queue parsing stay
 * Python's (ZcTracker, PosixSock._check_zcopy); _complete_pending never
 * completes a request whose zc_wait is not 0, whichever path sent it.
 *
 * The GIL is held throughout, except around an epoll_wait that may block:
 * every other system call here is non-blocking.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include "_native.h"
#include "copy.h"

#include <errno.h>
#include <string.h>
#include <limits.h>
#include <math.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <time.h>

#define IOV_BATCH_SIZE NI_GATHER_MAX
#define MIN_SOCK_PIPE_SIZE 1024

enum { REQ_FREE = 0, REQ_QUEUED = 1, REQ_PENDING = 2 };

/* Set by _setup() from Python: the pieces of the reference we defer to. */
static PyObject *cb_pending;    /* netimpl.errors.callback_errors.pending (a list) */
static PyObject *cb_reraise;    /* callback_errors.reraise */
static PyObject *as_buffer_fn;  /* netimpl._pycore._as_buffer(buf, i) */
static PyObject *ebadf_fn;      /* netimpl.errors.ebadf() -> OSError */
static PyObject *logger;        /* logging.getLogger("netimpl") */
static PyObject *py_recv_into;  /* the reference recv_into(self, buf) */
static PyObject *default_sys;   /* netimpl.posix.syscalls.SYSCALLS */
static PyObject *wrong_thread_fn; /* netimpl.errors.wrong_thread(what, call) -> OSError */
static unsigned long long completions;

static PyObject *s_inflight, *s_check_zcopy, *s_impl_opts, *s_zerocopy_threshold, *s_sent;
static PyObject *s_read_into, *s_readv;
static PyObject *s_sys, *s_zc, *s_flush, *s_flush_py, *s_close_now, *s_send_failed, *s_read,
    *s_write, *s_full, *s_error, *s_dirty, *s_owner, *s_check_thread,
    *s_work_arrived;

/* ------------------------------------------------------------------------ */
/* Request                                                                  */
/* ------------------------------------------------------------------------ */


static PyTypeObject ReqType;
#define Req_Check(o) PyObject_TypeCheck(o, &ReqType)

static int
plain_byte_view(PyObject *b)
{
    /* A memoryview that is 1-D, format "B" and contiguous passes as it is. */
    PyMemoryViewObject *mv = (PyMemoryViewObject *)b;
    if (mv->flags & _Py_MEMORYVIEW_RELEASED)
        return 0;
    Py_buffer *v = &mv->view;
    return v->ndim == 1 && (v->format == NULL || strcmp(v->format, "B") == 0) && PyBuffer_IsContiguous(v, 'C');
}

static int
req_set_bufs_impl(Req *self, PyObject *bufs)
{
    if (bufs == NULL) {
        PyErr_SetString(PyExc_AttributeError, "cannot delete a request's buffers");
        return -1;
    }
    if (self->state != REQ_FREE) {
        PyErr_SetString(PyExc_ValueError, "cannot change the buffers of a request that is in flight");
        return -1;
    }
    if (PyBytes_Check(bufs) || PyByteArray_Check(bufs) || PyMemoryView_Check(bufs) || PyUnicode_Check(bufs)) {
        PyErr_SetString(PyExc_TypeError,
                        "Request bufs must be a sequence of bytes-like objects, not a single buffer");
        return -1;
    }
    PyObject *items = PySequence_List(bufs);
    if (items == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_TypeError))
            return -1;
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "Request bufs must be a sequence of bytes-like objects, not %.60R", bufs);
        return -1;
    }
    Py_ssize_t total = 0, n = PyList_GET_SIZE(items);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *b = PyList_GET_ITEM(items, i);
        if (PyBytes_CheckExact(b)) {
            total += PyBytes_GET_SIZE(b);
        } else if (PyByteArray_CheckExact(b)) {
            total += PyByteArray_GET_SIZE(b);
        } else if (PyMemoryView_Check(b) && plain_byte_view(b)) {
            total += PyMemoryView_GET_BUFFER(b)->len;
        } else {
            PyObject *idx = PyLong_FromSsize_t(i);
            if (idx == NULL) goto fail;
            PyObject *conv = PyObject_CallFunctionObjArgs(as_buffer_fn, b, idx, NULL);
            Py_DECREF(idx);
            if (conv == NULL) goto fail;
            Py_ssize_t len = PyObject_Length(conv);
            if (len < 0) { Py_DECREF(conv); goto fail; }
            total += len;
            PyList_SET_ITEM(items, i, conv);  /* steals conv, drops the old item */
            Py_DECREF(b);
        }
    }
    Py_XSETREF(self->bufs, items);
    self->nbytes = total;
    return 0;
fail:
    Py_DECREF(items);
    return -1;
}

static int
req_init(Req *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"bufs", "cb", "ctx", NULL};
    PyObject *bufs, *cb = Py_None, *ctx = Py_None;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|OO:Request", kwlist, &bufs, &cb, &ctx))
        return -1;
    if (cb != Py_None && !PyCallable_Check(cb)) {
        PyErr_Format(PyExc_TypeError, "Request cb must be callable or None, not %R", cb);
        return -1;
    }
    if (self->state != REQ_FREE) {
        PyErr_SetString(PyExc_ValueError, "cannot re-initialise a request that is in flight");
        return -1;
    }
    Py_INCREF(cb);
    Py_XSETREF(self->cb, cb);
    Py_INCREF(ctx);
    Py_XSETREF(self->ctx, ctx);
    self->offset = self->iov_idx = self->iov_off = self->zc_wait = 0;
    self->status = 0;
    return req_set_bufs_impl(self, bufs);
}

static PyObject *
req_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Req *self = (Req *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->bufs = PyList_New(0);
    if (self->bufs == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    Py_INCREF(Py_None);
    self->cb = Py_None;
    Py_INCREF(Py_None);
    self->ctx = Py_None;
    return (PyObject *)self;
}

static int
req_traverse(Req *self, visitproc visit, void *arg)
{
    Py_VISIT(self->bufs);
    Py_VISIT(self->cb);
    Py_VISIT(self->ctx);
    return 0;
}

static int
req_clear(Req *self)
{
    Py_CLEAR(self->bufs);
    Py_CLEAR(self->cb);
    Py_CLEAR(self->ctx);
    return 0;
}

static void
req_dealloc(Req *self)
{
    PyObject_GC_UnTrack(self);
    req_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
req_repr(Req *self)
{
    static const char *names[] = {"free", "queued", "pending"};
    return PyUnicode_FromFormat("<Request %s nbytes=%zd sent=%zd zc_wait=%zd>",
                                names[self->state % 3], self->nbytes, self->offset, self->zc_wait);
}

static PyObject *
req_get_bufs(Req *self, void *closure)
{
    Py_INCREF(self->bufs);
    return self->bufs;
}

static int
req_set_bufs(Req *self, PyObject *value, void *closure)
{
    return req_set_bufs_impl(self, value);
}

static PyObject *
req_get_nbytes(Req *self, void *closure)
{
    return PyLong_FromSsize_t(self->nbytes);
}

static PyObject *
req_get_in_flight(Req *self, void *closure)
{
    return PyBool_FromLong(self->state != REQ_FREE);
}

static PyGetSetDef req_getset[] = {
    {"bufs", (getter)req_get_bufs, (setter)req_set_bufs,
     "The buffers, as given (memoryviews of other buffer types are cast to bytes).", NULL},
    {"nbytes", (getter)req_get_nbytes, NULL, "Total length of the buffers in bytes.", NULL},
    {"in_flight", (getter)req_get_in_flight, NULL, "True from ``writev_async`` until the callback has started.",
     NULL},
    {NULL},
};

static PyMemberDef req_members[] = {
    {"cb", T_OBJECT, offsetof(Req, cb), 0, NULL},
    {"ctx", T_OBJECT, offsetof(Req, ctx), 0, NULL},
    {"_bufs", T_OBJECT, offsetof(Req, bufs), READONLY, NULL},
    {"_nbytes", T_PYSSIZET, offsetof(Req, nbytes), READONLY, NULL},
    {"_offset", T_PYSSIZET, offsetof(Req, offset), 0, NULL},
    {"_iov_idx", T_PYSSIZET, offsetof(Req, iov_idx), READONLY, NULL},
    {"_iov_off", T_PYSSIZET, offsetof(Req, iov_off), READONLY, NULL},
    {"_zc_wait", T_PYSSIZET, offsetof(Req, zc_wait), 0, NULL},
    {"_status", T_INT, offsetof(Req, status), 0, NULL},
    {"_state", T_INT, offsetof(Req, state), READONLY, NULL},
    {NULL},
};

static PyTypeObject ReqType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl.Request",
    .tp_basicsize = sizeof(Req),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Request(bufs, cb=None, ctx=None)\n--\n\n"
              "A vector of buffers to send asynchronously, and who to tell when it is done (compiled; "
              "the reference is netimpl._pycore.Request).",
    .tp_new = req_new,
    .tp_init = (initproc)req_init,
    .tp_dealloc = (destructor)req_dealloc,
    .tp_traverse = (traverseproc)req_traverse,
    .tp_clear = (inquiry)req_clear,
    .tp_repr = (reprfunc)req_repr,
    .tp_getset = req_getset,
    .tp_members = req_members,
};

/* ------------------------------------------------------------------------ */
/* SockStats                                                                */
/* ------------------------------------------------------------------------ */


static PyTypeObject StatsType;

#define STAT_FIELDS(X) X(bytes_sent) X(bytes_received) X(requests_completed) X(requests_aborted) \
    X(zerocopy_sends) X(zerocopy_copied) X(zerocopy_fallbacks) X(syscalls)

static int
stats_init(Stats *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"impl", "bytes_sent", "bytes_received", "requests_completed", "requests_aborted",
                             "zerocopy_sends", "zerocopy_copied", "zerocopy_fallbacks", "syscalls", NULL};
    PyObject *impl;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O|nnnnnnnn:SockStats", kwlist, &impl, &self->bytes_sent,
                                     &self->bytes_received, &self->requests_completed, &self->requests_aborted,
                                     &self->zerocopy_sends, &self->zerocopy_copied, &self->zerocopy_fallbacks,
                                     &self->syscalls))
        return -1;
    Py_INCREF(impl);
    Py_XSETREF(self->impl, impl);
    return 0;
}

static void
stats_dealloc(Stats *self)
{
    Py_XDECREF(self->impl);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
stats_repr(Stats *self)
{
#define FMT(f) ", " #f "=%zd"
#define ARG(f) , self->f
    return PyUnicode_FromFormat("SockStats(impl=%R" STAT_FIELDS(FMT) ")", self->impl STAT_FIELDS(ARG));
#undef FMT
#undef ARG
}

static PyObject *
stats_richcompare(PyObject *a, PyObject *b, int op)
{
    if (!PyObject_TypeCheck(b, &StatsType) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    Stats *x = (Stats *)a, *y = (Stats *)b;
    int eq = 1;
#define CMP(f) eq = eq && x->f == y->f;
    STAT_FIELDS(CMP)
#undef CMP
    if (eq) {
        int r = PyObject_RichCompareBool(x->impl, y->impl, Py_EQ);
        if (r < 0)
            return NULL;
        eq = r;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyMemberDef stats_members[] = {
    {"impl", T_OBJECT, offsetof(Stats, impl), 0, NULL},
#define MEMBER(f) {#f, T_PYSSIZET, offsetof(Stats, f), 0, NULL},
    STAT_FIELDS(MEMBER)
#undef MEMBER
    {NULL},
};

static PyTypeObject StatsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl.SockStats",
    .tp_basicsize = sizeof(Stats),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Per-socket counters (compiled; the reference is netimpl.stats.SockStats).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)stats_init,
    .tp_dealloc = (destructor)stats_dealloc,
    .tp_repr = (reprfunc)stats_repr,
    .tp_richcompare = stats_richcompare,
    .tp_members = stats_members,
};

/* ------------------------------------------------------------------------ */
/* GroupStats                                                               */
/* ------------------------------------------------------------------------ */

/* SockGroup.stats: a group's counters, C integers that group_poll counts in without an attribute
 * lookup (two a poll, on objects a QD1 wake-up finds cold); impls, the backends' names, a list. */
typedef struct {
    PyObject_HEAD
    PyObject *impls;
    Py_ssize_t polls, callbacks;
} GroupStats;

static PyTypeObject GroupStatsType;

static int
gstats_init(GroupStats *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"impls", "polls", "callbacks", NULL};
    PyObject *impls = NULL;
    Py_ssize_t polls = 0, callbacks = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|Onn:GroupStats", kwlist, &impls, &polls, &callbacks))
        return -1;
    impls = impls != NULL ? Py_NewRef(impls) : PyList_New(0);  /* the dataclass's default_factory=list */
    if (impls == NULL)
        return -1;
    Py_XSETREF(self->impls, impls);
    self->polls = polls;
    self->callbacks = callbacks;
    return 0;
}

static int
gstats_traverse(GroupStats *self, visitproc visit, void *arg)
{
    Py_VISIT(self->impls);
    return 0;
}

static int
gstats_clear(GroupStats *self)
{
    Py_CLEAR(self->impls);
    return 0;
}

static void
gstats_dealloc(GroupStats *self)
{
    PyObject_GC_UnTrack(self);
    gstats_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *
gstats_repr(GroupStats *self)
{
    return PyUnicode_FromFormat("GroupStats(impls=%R, polls=%zd, callbacks=%zd)",
                                self->impls ? self->impls : Py_None, self->polls, self->callbacks);
}

static PyObject *
gstats_richcompare(PyObject *a, PyObject *b, int op)
{
    if (!PyObject_TypeCheck(b, &GroupStatsType) || (op != Py_EQ && op != Py_NE))
        Py_RETURN_NOTIMPLEMENTED;
    GroupStats *x = (GroupStats *)a, *y = (GroupStats *)b;
    int eq = x->polls == y->polls && x->callbacks == y->callbacks;
    if (eq) {
        int r = PyObject_RichCompareBool(x->impls ? x->impls : Py_None, y->impls ? y->impls : Py_None, Py_EQ);
        if (r < 0)
            return NULL;
        eq = r;
    }
    return PyBool_FromLong(op == Py_EQ ? eq : !eq);
}

static PyMemberDef gstats_members[] = {
    {"impls", T_OBJECT, offsetof(GroupStats, impls), 0, NULL},
    {"polls", T_PYSSIZET, offsetof(GroupStats, polls), 0, NULL},
    {"callbacks", T_PYSSIZET, offsetof(GroupStats, callbacks), 0, NULL},
    {NULL},
};

static PyTypeObject GroupStatsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl.GroupStats",
    .tp_basicsize = sizeof(GroupStats),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Per-group counters (compiled; the reference is netimpl.stats.GroupStats).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)gstats_init,
    .tp_traverse = (traverseproc)gstats_traverse,
    .tp_clear = (inquiry)gstats_clear,
    .tp_dealloc = (destructor)gstats_dealloc,
    .tp_repr = (reprfunc)gstats_repr,
    .tp_richcompare = gstats_richcompare,
    .tp_members = gstats_members,
};

/* ------------------------------------------------------------------------ */
/* Pipe: the recv pipe as a C ring                                          */
/* ------------------------------------------------------------------------ */

/* The twin of netimpl/pipe.py (SPDK spdk_pipe semantics, the whole capacity usable, indices back to 0
 * when emptied, an anonymous mapping as the buffer). The views it hands out are slices of a
 * memoryview of the pipe itself (it exports its buffer), so a view keeps the mapping alive. The
 * socket core reads and fills it without any Python call. */

typedef struct {
    PyObject_HEAD
    char *buf;
    Py_ssize_t size, read, write;
    char full;
    Py_ssize_t exports;
} PipeObj;

static PyTypeObject PipeType;
#define Pipe_Check(o) (Py_TYPE(o) == &PipeType)

static inline Py_ssize_t
pipe_avail(PipeObj *p)
{
    if (p->full)
        return p->size;
    Py_ssize_t d = p->write - p->read;
    return d >= 0 ? d : d + p->size;
}

/* The (at most two) pieces of free space, from write on. */
static int
pipe_free_iov(PipeObj *p, Py_ssize_t n, struct iovec *iov)
{
    if (p->full || n <= 0)
        return 0;
    if (p->read <= p->write) {
        Py_ssize_t first = p->size - p->write < n ? p->size - p->write : n;
        iov[0].iov_base = p->buf + p->write;
        iov[0].iov_len = (size_t)first;
        Py_ssize_t rest = n - first < p->read ? n - first : p->read;
        if (rest > 0) {
            iov[1].iov_base = p->buf;
            iov[1].iov_len = (size_t)rest;
            return 2;
        }
        return 1;
    }
    Py_ssize_t k = p->read - p->write < n ? p->read - p->write : n;
    iov[0].iov_base = p->buf + p->write;
    iov[0].iov_len = (size_t)k;
    return 1;
}

/* The (at most two) readable pieces, oldest first. */
static int
pipe_data_iov(PipeObj *p, Py_ssize_t n, struct iovec *iov)
{
    if (n <= 0 || (p->read == p->write && !p->full))
        return 0;
    if (p->read < p->write) {
        Py_ssize_t k = p->write - p->read < n ? p->write - p->read : n;
        iov[0].iov_base = p->buf + p->read;
        iov[0].iov_len = (size_t)k;
        return 1;
    }
    Py_ssize_t first = p->size - p->read < n ? p->size - p->read : n;
    iov[0].iov_base = p->buf + p->read;
    iov[0].iov_len = (size_t)first;
    Py_ssize_t rest = n - first < p->write ? n - first : p->write;
    if (rest > 0) {
        iov[1].iov_base = p->buf;
        iov[1].iov_len = (size_t)rest;
        return 2;
    }
    return 1;
}

static void
pipe_writer_commit(PipeObj *p, Py_ssize_t n)
{
    if (n == 0)
        return;
    p->write = (p->write + n) % p->size;
    if (p->write == p->read)
        p->full = 1;
}

static void
pipe_reader_commit(PipeObj *p, Py_ssize_t n)
{
    if (n == 0)
        return;
    Py_ssize_t rd = (p->read + n) % p->size;
    p->full = 0;
    if (rd == p->write)
        rd = p->write = 0; /* emptied: start again at 0 so the next fill is one piece */
    p->read = rd;
}

/* Copy up to len readable bytes to dst and consume them. */
static Py_ssize_t
pipe_copy_out(PipeObj *p, char *dst, Py_ssize_t len)
{
    struct iovec iov[2];
    int cnt = pipe_data_iov(p, len, iov);
    Py_ssize_t got = 0;
    for (int i = 0; i < cnt; i++) {
        ni_copy(dst + got, iov[i].iov_base, iov[i].iov_len);
        got += (Py_ssize_t)iov[i].iov_len;
    }
    pipe_reader_commit(p, got);
    return got;
}

static int
pipe_init(PipeObj *self, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"capacity", NULL};
    PyObject *cap;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O:Pipe", kwlist, &cap))
        return -1;
    if (PyBool_Check(cap) || !PyLong_Check(cap)) {
        PyErr_Format(PyExc_TypeError, "Pipe capacity must be an int, not %R", cap);
        return -1;
    }
    int overflow;
    long long n = PyLong_AsLongLongAndOverflow(cap, &overflow);
    if (n == -1 && PyErr_Occurred())
        return -1;
    if (overflow < 0 || (!overflow && n <= 0)) {
        PyErr_Format(PyExc_ValueError, "Pipe capacity must be positive, not %R", cap);
        return -1;
    }
    if (overflow > 0 || n > PY_SSIZE_T_MAX) {
        PyErr_Format(PyExc_OverflowError, "Pipe capacity %R is too large", cap);
        return -1;
    }
    if (self->exports) {
        PyErr_SetString(PyExc_BufferError, "cannot re-initialise a Pipe whose buffer is in use");
        return -1;
    }
    void *m = mmap(NULL, (size_t)n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    if (self->buf != NULL)
        munmap(self->buf, (size_t)self->size);
    self->buf = m;
    self->size = (Py_ssize_t)n;
    self->read = self->write = 0;
    self->full = 0;
    return 0;
}

static void
pipe_dealloc(PipeObj *self)
{
    if (self->buf != NULL)
        munmap(self->buf, (size_t)self->size);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int
pipe_getbuffer(PipeObj *self, Py_buffer *view, int flags)
{
    if (self->buf == NULL) {
        PyErr_SetString(PyExc_ValueError, "Pipe not initialised");
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, self->buf, self->size, 0, flags) < 0)
        return -1;
    self->exports++;
    return 0;
}

static void
pipe_releasebuffer(PipeObj *self, Py_buffer *view)
{
    self->exports--;
}

static PyBufferProcs pipe_as_buffer = {(getbufferproc)pipe_getbuffer, (releasebufferproc)pipe_releasebuffer};

static PyObject *
pipe_repr(PipeObj *self)
{
    return PyUnicode_FromFormat("<Pipe capacity=%zd readable=%zd read=%zd write=%zd>", self->size,
                                pipe_avail(self), self->read, self->write);
}

/* Views over the pieces, as a list of memoryview slices of the pipe. */
static PyObject *
pipe_views(PipeObj *self, struct iovec *iov, int cnt)
{
    PyObject *list = PyList_New(0);
    if (list == NULL || cnt == 0)
        return list;
    PyObject *whole = PyMemoryView_FromObject((PyObject *)self);
    if (whole == NULL)
        goto fail;
    for (int i = 0; i < cnt; i++) {
        Py_ssize_t off = (char *)iov[i].iov_base - self->buf;
        PyObject *v = PySequence_GetSlice(whole, off, off + (Py_ssize_t)iov[i].iov_len);
        if (v == NULL || PyList_Append(list, v) < 0) {
            Py_XDECREF(v);
            Py_DECREF(whole);
            goto fail;
        }
        Py_DECREF(v);
    }
    Py_DECREF(whole);
    return list;
fail:
    Py_DECREF(list);
    return NULL;
}

static int
arg_ssize(PyObject *o, Py_ssize_t *n)
{
    *n = PyNumber_AsSsize_t(o, PyExc_OverflowError);
    return *n == -1 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *
pipe_free_space(PipeObj *self, PyObject *unused)
{
    return PyLong_FromSsize_t(self->size - pipe_avail(self));
}

static PyObject *
pipe_bytes_available(PipeObj *self, PyObject *unused)
{
    return PyLong_FromSsize_t(pipe_avail(self));
}

static PyObject *
pipe_writer_get_buffer(PipeObj *self, PyObject *arg)
{
    Py_ssize_t n;
    if (arg_ssize(arg, &n) < 0)
        return NULL;
    struct iovec iov[2];
    return pipe_views(self, iov, pipe_free_iov(self, n, iov));
}

static PyObject *
pipe_reader_get_buffer(PipeObj *self, PyObject *arg)
{
    Py_ssize_t n;
    if (arg_ssize(arg, &n) < 0)
        return NULL;
    struct iovec iov[2];
    return pipe_views(self, iov, pipe_data_iov(self, n, iov));
}

static PyObject *
pipe_writer_advance(PipeObj *self, PyObject *arg)
{
    Py_ssize_t n;
    if (arg_ssize(arg, &n) < 0)
        return NULL;
    Py_ssize_t free = self->size - pipe_avail(self);
    if (n < 0 || n > free) {
        PyErr_Format(PyExc_ValueError, "writer_advance(%R): only %zd bytes free", arg, free);
        return NULL;
    }
    pipe_writer_commit(self, n);
    Py_RETURN_NONE;
}

static PyObject *
pipe_reader_advance(PipeObj *self, PyObject *arg)
{
    Py_ssize_t n;
    if (arg_ssize(arg, &n) < 0)
        return NULL;
    Py_ssize_t avail = pipe_avail(self);
    if (n < 0 || n > avail) {
        PyErr_Format(PyExc_ValueError, "reader_advance(%R): only %zd bytes readable", arg, avail);
        return NULL;
    }
    pipe_reader_commit(self, n);
    Py_RETURN_NONE;
}

static PyObject *
pipe_read_into(PipeObj *self, PyObject *buf)
{
    Py_buffer view;
    if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) < 0)
        return NULL;
    Py_ssize_t got = pipe_copy_out(self, view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(got);
}

static PyObject *
pipe_fill(PipeObj *self, PyObject *readv)
{
    struct iovec iov[2];
    int cnt = pipe_free_iov(self, self->size, iov);
    if (cnt == 0)
        return PyLong_FromLong(0);
    PyObject *views = pipe_views(self, iov, cnt);
    if (views == NULL)
        return NULL;
    PyObject *n = PyObject_CallOneArg(readv, views);
    Py_DECREF(views);
    if (n == NULL || n == Py_None)
        return n;
    Py_ssize_t k = PyNumber_AsSsize_t(n, PyExc_OverflowError);
    if (k == -1 && PyErr_Occurred()) {
        Py_DECREF(n);
        return NULL;
    }
    Py_ssize_t free = self->size - pipe_avail(self);
    if (k < 0 || k > free) {
        PyErr_Format(PyExc_ValueError, "writer_advance(%zd): only %zd bytes free", k, free);
        Py_DECREF(n);
        return NULL;
    }
    pipe_writer_commit(self, k);
    return n;
}

static PyObject *
pipe_resized(PipeObj *self, PyObject *arg)
{
    Py_ssize_t have = pipe_avail(self);
    Py_ssize_t cap;
    if (PyLong_Check(arg) && !PyBool_Check(arg)) {
        if (arg_ssize(arg, &cap) < 0)
            return NULL;
        if (cap < have) {
            PyErr_Format(PyExc_ValueError, "cannot resize the recv pipe to %zd bytes: %zd bytes are buffered",
                         cap, have);
            return NULL;
        }
    }
    PipeObj *new = (PipeObj *)PyObject_CallOneArg((PyObject *)Py_TYPE(self), arg);
    if (new == NULL)
        return NULL;
    struct iovec iov[2];
    int cnt = pipe_data_iov(self, have, iov);
    Py_ssize_t off = 0;
    for (int i = 0; i < cnt; i++) {
        memcpy(new->buf + off, iov[i].iov_base, iov[i].iov_len);
        off += (Py_ssize_t)iov[i].iov_len;
    }
    pipe_writer_commit(new, off);
    return (PyObject *)new;
}

static PyObject *
pipe_get_capacity(PipeObj *self, void *closure)
{
    return PyLong_FromSsize_t(self->size);
}

static PyMethodDef pipe_methods[] = {
    {"free_space", (PyCFunction)pipe_free_space, METH_NOARGS, "Bytes that can be written now."},
    {"bytes_available", (PyCFunction)pipe_bytes_available, METH_NOARGS, "Bytes that can be read now."},
    {"writer_get_buffer", (PyCFunction)pipe_writer_get_buffer, METH_O,
     "Views totalling ``min(n, free_space())`` bytes where a writer may put data."},
    {"writer_advance", (PyCFunction)pipe_writer_advance, METH_O, "Commit ``n`` bytes written."},
    {"reader_get_buffer", (PyCFunction)pipe_reader_get_buffer, METH_O,
     "Views totalling ``min(n, bytes_available())`` readable bytes, oldest first."},
    {"reader_advance", (PyCFunction)pipe_reader_advance, METH_O, "Consume ``n`` readable bytes."},
    {"read_into", (PyCFunction)pipe_read_into, METH_O,
     "Copy up to ``len(buf)`` readable bytes into ``buf`` and consume them."},
    {"fill", (PyCFunction)pipe_fill, METH_O, "Fill all free space with one ``readv`` call; returns what it returned."},
    {"resized", (PyCFunction)pipe_resized, METH_O,
     "A new pipe of ``capacity`` holding a copy of this pipe's unread bytes; this one is unchanged."},
    {NULL},
};

static PyGetSetDef pipe_getset[] = {
    {"capacity", (getter)pipe_get_capacity, NULL, NULL, NULL},
    {NULL},
};

static PyMemberDef pipe_members[] = {
    {"_read", T_PYSSIZET, offsetof(PipeObj, read), READONLY, NULL},
    {"_write", T_PYSSIZET, offsetof(PipeObj, write), READONLY, NULL},
    {"_full", T_BOOL, offsetof(PipeObj, full), READONLY, NULL},
    {NULL},
};

static PyTypeObject PipeType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl.Pipe",
    .tp_basicsize = sizeof(PipeObj),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Pipe(capacity)\n--\n\nThe recv pipe, a byte ring (compiled; the reference is netimpl/pipe.py).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)pipe_init,
    .tp_dealloc = (destructor)pipe_dealloc,
    .tp_repr = (reprfunc)pipe_repr,
    .tp_as_buffer = &pipe_as_buffer,
    .tp_methods = pipe_methods,
    .tp_getset = pipe_getset,
    .tp_members = pipe_members,
};

/* ------------------------------------------------------------------------ */
/* SockCore                                                                 */
/* ------------------------------------------------------------------------ */



#define FIELD(o) ((o) != NULL ? (o) : Py_None)

/* The sockets' lists (SockList, below): c->dirty, when cached, is a DirtyList. */
static PyTypeObject DirtyListType;
static int dirty_add(Core *c);
static void dirty_drop(Core *c);
static int dirty_discard(PyObject *dirty, PyObject *sock);

static PyTypeObject CoreType;
/* SockGroup's base: the state its compiled poll reads (the section "Group state" below). */
typedef struct {
    PyObject_HEAD
    PyObject *impls;    /* _impls: backend name -> group impl */
    PyObject *socks;    /* _socks: socket -> read callback */
    PyObject *ready;    /* _ready: the pending-recv list, in service order */
    PyObject *stats;    /* stats */
    int wake_fd;        /* _wake_fd */
    char closed, busy, polling;
} GroupCore;

static PyTypeObject GroupCoreType, GroupImplCoreType;
static PyObject *owner_member;  /* GroupImplCore's _owner descriptor: a class that shadows it is asked instead */

static inline void
q_push(ReqQueue *q, Req *r) /* takes over a reference */
{
    r->next = NULL;
    if (q->tail)
        q->tail->next = r;
    else
        q->head = r;
    q->tail = r;
    q->len++;
}

static inline Req *
q_pop(ReqQueue *q) /* hands over the queue's reference */
{
    Req *r = q->head;
    q->head = r->next;
    if (q->head == NULL)
        q->tail = NULL;
    r->next = NULL;
    q->len--;
    return r;
}

static void
q_clear(ReqQueue *q)
{
    while (q->head)
        Py_DECREF(q_pop(q));
}

static PyObject *
q_list(ReqQueue *q)
{
    PyObject *l = PyList_New(q->len);
    if (l == NULL)
        return NULL;
    Py_ssize_t i = 0;
    for (Req *r = q->head; r; r = r->next, i++) {
        Py_INCREF(r);
        PyList_SET_ITEM(l, i, (PyObject *)r);
    }
    return l;
}

static int
record_callback_error(void)
{
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    if (tb != NULL && v != NULL)
        PyException_SetTraceback(v, tb);
    int rc = v != NULL ? PyList_Append(cb_pending, v) : 0;
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
    return rc;
}

static PyObject *
reraise_or_none(void)
{
    if (PyList_GET_SIZE(cb_pending)) {
        PyObject *r = PyObject_CallNoArgs(cb_reraise);
        if (r == NULL)
            return NULL;
        Py_DECREF(r);
    }
    Py_RETURN_NONE;
}

static PyObject *
raise_made(PyObject *exc)
{
    if (exc != NULL) {
        PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
        Py_DECREF(exc);
    }
    return NULL;
}

static PyObject *
raise_ebadf(void)
{
    return raise_made(PyObject_CallNoArgs(ebadf_fn));
}

/* The group impl's owning thread (GroupImpl._owner, 0 when any thread may call): 1 when set, 0 not, -1 error. */
static int
gi_owner(PyObject *gi, unsigned long *owner)
{
    if (PyObject_TypeCheck(gi, &GroupImplCoreType) && _PyType_Lookup(Py_TYPE(gi), s_owner) == owner_member) {
        *owner = ((GroupImplCore *)gi)->owner;
        return *owner != 0;
    }
    PyObject *o = PyObject_GetAttr(gi, s_owner);  /* TlsGroupImpl: its inner group's owner */
    if (o == NULL)
        return -1;
    int set = PyObject_IsTrue(o);
    if (set > 0) {
        *owner = PyLong_AsUnsignedLong(o);
        if (*owner == (unsigned long)-1 && PyErr_Occurred())
            set = -1;
    }
    Py_DECREF(o);
    return set;
}

/* A socket just got its first queued request: wake a group whose poll is not running (its _wake_fd). */
static int
core_work_arrived(Core *c)
{
    /* _group: a SockGroup, which on this core is a GroupCore, or None */
    GroupCore *g = (GroupCore *)c->group;
    if (g == NULL || !PyObject_TypeCheck((PyObject *)g, &GroupCoreType) || g->wake_fd < 0 || g->polling)
        return 0;
    Py_INCREF(g);
    PyObject *r = PyObject_CallMethodNoArgs((PyObject *)g, s_work_arrived);
    Py_DECREF(g);
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* Run one request's callback; consumes the reference to r. */
static void
core_complete(Core *c, Req *r)
{
    int status = r->status;
    r->state = REQ_FREE;
    completions++;
    c->queued_bytes -= r->nbytes;
    if (status)
        c->stats->requests_aborted++;
    else
        c->stats->requests_completed++;
    PyObject *cb = r->cb;
    if (cb != NULL && cb != Py_None) {
        PyObject *st = PyLong_FromLong(status);
        if (st == NULL) {
            record_callback_error();
        } else {
            PyObject *args[2] = {(PyObject *)r, st};
            Py_INCREF(cb);
            PyObject *res = PyObject_Vectorcall(cb, args, 2, NULL);
            Py_DECREF(cb);
            Py_DECREF(st);
            if (res == NULL)
                record_callback_error();
            else
                Py_DECREF(res);
        }
    }
    Py_DECREF(r);
}

static int
core_close_if_deferred(Core *c)
{
    if (c->cb_cnt == 0 && c->close_deferred) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)c, s_close_now);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    return 0;
}

static int
core_complete_pending(Core *c)
{
    if (c->pending.head == NULL || c->pending.head->zc_wait)
        return 0;
    Py_INCREF(c);
    c->cb_cnt++;
    while (c->pending.head && !c->pending.head->zc_wait)
        core_complete(c, q_pop(&c->pending));
    c->cb_cnt--;
    int rc = core_close_if_deferred(c);
    Py_DECREF(c);
    return rc;
}

static inline void
core_move_to_pending(Core *c)
{
    Req *r = q_pop(&c->queued);
    c->queued_iovcnt -= PyList_GET_SIZE(r->bufs);
    r->state = REQ_PENDING;
    q_push(&c->pending, r);
}

/* Move a partly sent request's send cursor n bytes on: each gather then starts at its first unsent
 * buffer, so a request of many iovecs costs O(iovecs) to send, not O(iovecs^2 / 64). */
static int buf_ptr(PyObject *b, char **p, Py_ssize_t *len);

static void
req_advance_cursor(Req *r, Py_ssize_t n)
{
    Py_ssize_t i = r->iov_idx, nb = PyList_GET_SIZE(r->bufs), off = r->iov_off + n;
    while (i < nb) {
        char *p;
        Py_ssize_t len;
        if (buf_ptr(PyList_GET_ITEM(r->bufs, i), &p, &len) < 0) {
            PyErr_Clear();  /* a released view: the next gather reports it */
            break;
        }
        if (off < len)
            break;
        off -= len;
        i++;
    }
    r->iov_idx = i;
    r->iov_off = off;
}

/* Account n bytes handed to the kernel; with touched (zero-copy), list the requests the send carried. */
static int
core_requests_sent(Core *c, Py_ssize_t n, PyObject *touched)
{
    while (n > 0 && c->queued.head) {
        Req *r = c->queued.head;
        Py_ssize_t left = r->nbytes - r->offset;
        if (touched != NULL) {
            r->zc_wait++;
            if (PyList_Append(touched, (PyObject *)r) < 0)
                return -1;
        }
        if (n < left) {
            r->offset += n;
            req_advance_cursor(r, n);
            break;
        }
        n -= left;
        r->offset = r->nbytes;
        core_move_to_pending(c);
    }
    /* Zero-length requests at the head are sent as soon as they are reached. */
    while (c->queued.head && c->queued.head->nbytes == 0)
        core_move_to_pending(c);
    return 0;
}

static void
core_undirty(Core *c)
{
    if (c->dirty != NULL)
        dirty_drop(c);
}

/* Complete every queued request with status: a send error fails them in queue order, behind what the
 * kernel still holds by zero-copy; ECANCELED completes at once what the kernel never had, and only a
 * request partly handed over by zero-copy waits for its release (SPDK's abort order). */
static int
core_fail_queued(Core *c, int status)
{
    if (c->queued.head == NULL)
        return 0;
    Py_INCREF(c);
    /* The requests to complete now, in order; those partly sent by zero-copy wait on the pending list. */
    PyObject *failed = PyList_New(0);
    if (failed == NULL) {
        Py_DECREF(c);
        return -1;
    }
    c->queued_iovcnt = 0;
    core_undirty(c);
    if (status != ECANCELED) {
        /* A send error: in queue order, behind what the kernel still holds by zero-copy. */
        while (c->queued.head) {
            Req *r = q_pop(&c->queued);
            r->status = status;
            r->state = REQ_PENDING;
            q_push(&c->pending, r);
        }
        goto done;
    }
    while (c->queued.head) {
        Req *r = q_pop(&c->queued);
        r->status = status;
        r->state = REQ_PENDING;
        if (r->zc_wait) {
            q_push(&c->pending, r);
        } else {
            if (PyList_Append(failed, (PyObject *)r) < 0) {  /* out of memory: complete it now, not lose it */
                PyErr_Clear();
                core_complete(c, r);
            } else {
                Py_DECREF(r);
            }
        }
    }
    c->cb_cnt++;
    Py_ssize_t n = PyList_GET_SIZE(failed);
    for (Py_ssize_t i = 0; i < n; i++) {
        Req *r = (Req *)PyList_GET_ITEM(failed, i);
        Py_INCREF(r);
        core_complete(c, r);
    }
    c->cb_cnt--;
done:
    Py_DECREF(failed);
    int rc = core_complete_pending(c);
    if (rc == 0)
        rc = core_close_if_deferred(c);
    Py_DECREF(c);
    return rc;
}

static PyObject *
core_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fd = -1;
    self->stats = (Stats *)PyObject_CallOneArg((PyObject *)&StatsType, Py_None);
    if (self->stats == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int
core_traverse(Core *self, visitproc visit, void *arg)
{
    for (Req *r = self->queued.head; r; r = r->next)
        Py_VISIT(r);
    for (Req *r = self->pending.head; r; r = r->next)
        Py_VISIT(r);
    Py_VISIT(self->group_impl);
    Py_VISIT(self->dirty);
    Py_VISIT(self->stats);
    Py_VISIT(self->group);
    Py_VISIT(self->read_cb);
    Py_VISIT(self->pipe);
    Py_VISIT(self->sys);
    Py_VISIT(self->zc);
    Py_VISIT(self->send_iovs);
    return 0;
}

static int
core_clear(Core *self)
{
    q_clear(&self->queued);
    q_clear(&self->pending);
    Py_CLEAR(self->group_impl);
    Py_CLEAR(self->dirty);
    Py_CLEAR(self->stats);
    Py_CLEAR(self->group);
    Py_CLEAR(self->read_cb);
    Py_CLEAR(self->pipe);
    Py_CLEAR(self->sys);
    Py_CLEAR(self->zc);
    Py_CLEAR(self->send_iovs);
    return 0;
}

static void
core_dealloc(Core *self)
{
    PyObject_GC_UnTrack(self);
    core_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* -- methods ---------------------------------------------------------------- */

static PyObject *
core_init_queues(Core *self, PyObject *unused)
{
    Py_RETURN_NONE;
}

static PyObject *core_posix_flush(Core *c, PyObject *unused);

static PyObject *
core_call_flush(Core *c)
{
    PyObject *f = _PyType_Lookup(Py_TYPE(c), s_flush);
    /* The class's _flush is ours: call it without a method lookup. (An instance attribute could
     * shadow it; nothing does: tests replace the syscall seam, _sys, instead.) */
    if (f != NULL && PyObject_TypeCheck(f, &PyMethodDescr_Type) &&
        ((PyMethodDescrObject *)f)->d_method->ml_meth == (PyCFunction)core_posix_flush)
        return core_posix_flush(c, NULL);
    return PyObject_CallMethodNoArgs((PyObject *)c, s_flush);
}

static PyObject *
core_writev_async(Core *self, PyObject *arg)
{
    if (self->closed)
        return raise_ebadf();
    if (!Req_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "writev_async takes a netimpl.Request, not %.60R", arg);
        return NULL;
    }
    Req *r = (Req *)arg;
    if (r->state != REQ_FREE) {
        PyErr_Format(PyExc_ValueError, "%R is already queued", arg);
        return NULL;
    }
    PyObject *gi = self->group_impl;
    if (gi != NULL) {
        unsigned long owner;
        int set = gi_owner(gi, &owner);
        if (set < 0)
            return NULL;
        if (set && owner != PyThread_get_thread_ident())  /* before anything changes: the call does nothing */
            return raise_made(PyObject_CallFunction(wrong_thread_fn, "Os", (PyObject *)self, "writev_async"));
    }
    r->state = REQ_QUEUED;
    r->offset = r->iov_idx = r->iov_off = 0;
    r->zc_wait = 0;
    r->status = 0;
    Py_INCREF(r);
    q_push(&self->queued, r);
    self->queued_iovcnt += PyList_GET_SIZE(r->bufs);
    self->queued_bytes += r->nbytes;
    if (self->queued.len == 1 && gi != NULL) {
        if (self->dirty != NULL) {
            if (dirty_add(self) < 0)
                return NULL;
        } else {
            PyObject *d = PyObject_GetAttr(gi, s_dirty);
            if (d == NULL)
                return NULL;
            int rc = PyObject_SetItem(d, (PyObject *)self, Py_None);
            Py_DECREF(d);
            if (rc < 0)
                return NULL;
        }
        if (core_work_arrived(self) < 0)
            return NULL;
    }
    if (self->queued_iovcnt >= IOV_BATCH_SIZE && self->cb_cnt == 0) {
        PyObject *res = core_call_flush(self);
        if (res == NULL)
            return NULL;
        Py_DECREF(res);
        return reraise_or_none();
    }
    Py_RETURN_NONE;
}

static PyObject *
core_flush(Core *self, PyObject *unused)
{
    if (self->closed)
        return raise_ebadf();
    if (self->group_impl != NULL) {
        unsigned long owner;
        int set = gi_owner(self->group_impl, &owner);
        if (set < 0)
            return NULL;
        if (set) {
            PyObject *call = PyUnicode_FromString("flush");
            PyObject *r = call ? PyObject_CallMethodObjArgs(self->group_impl, s_check_thread, (PyObject *)self,
                                                            call, NULL) : NULL;
            Py_XDECREF(call);
            if (r == NULL)
                return NULL;
            Py_DECREF(r);
        }
    }
    if (self->cb_cnt == 0) {
        PyObject *res = core_call_flush(self);
        if (res == NULL)
            return NULL;
        Py_DECREF(res);
    }
    return reraise_or_none();
}

static PyObject *
core_py_requests_sent(Core *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "_requests_sent(n, zerocopy)");
        return NULL;
    }
    Py_ssize_t n = PyLong_AsSsize_t(args[0]);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    int zc = PyObject_IsTrue(args[1]);
    if (zc < 0)
        return NULL;
    PyObject *touched = NULL;
    if (zc && (touched = PyList_New(0)) == NULL)
        return NULL;
    if (core_requests_sent(self, n, touched) < 0) {
        Py_XDECREF(touched);
        return NULL;
    }
    if (touched)
        return touched;
    Py_RETURN_NONE;
}

static PyObject *
core_py_complete_pending(Core *self, PyObject *unused)
{
    if (core_complete_pending(self) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
core_py_fail_queued(Core *self, PyObject *arg)
{
    int status = _PyLong_AsInt(arg);
    if (status == -1 && PyErr_Occurred())
        return NULL;
    if (core_fail_queued(self, status) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *
core_py_zc_released(Core *self, PyObject *arg)
{
    if (!Req_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "_zc_released takes a netimpl.Request, not %.60R", arg);
        return NULL;
    }
    Req *r = (Req *)arg;
    if (r->zc_wait > 0) {
        r->zc_wait--;
        Py_RETURN_NONE;
    }
    return PyObject_CallMethod(logger, "error", "sO", "%r: zero-copy release for a request not waiting for one",
                               (PyObject *)self);
}

/* The buffer of one iovec: bytes, bytearray or a byte memoryview (Request's setter admits nothing else). */
static int
buf_ptr(PyObject *b, char **p, Py_ssize_t *len)
{
    if (PyBytes_CheckExact(b)) {
        *p = PyBytes_AS_STRING(b);
        *len = PyBytes_GET_SIZE(b);
    } else if (PyByteArray_CheckExact(b)) {
        *p = PyByteArray_AS_STRING(b);
        *len = PyByteArray_GET_SIZE(b);
    } else if (PyMemoryView_Check(b)) {
        if (((PyMemoryViewObject *)b)->flags & _Py_MEMORYVIEW_RELEASED) {
            PyErr_SetString(PyExc_ValueError, "a queued request's memoryview was released");
            return -1;
        }
        Py_buffer *v = PyMemoryView_GET_BUFFER(b);
        *p = v->buf;
        *len = v->len;
    } else {
        PyErr_Format(PyExc_TypeError, "not a byte buffer: %.60R", b);
        return -1;
    }
    return 0;
}

/* Up to IOV_BATCH_SIZE iovecs from the queued requests, honouring the head's offset. */
static int
core_gather(Core *c, struct iovec *iov, int *cnt, Py_ssize_t *total, PyObject **held)
{
    int k = 0;
    Py_ssize_t sum = 0;
    for (Req *r = c->queued.head; r; r = r->next) {
        Py_ssize_t nb = PyList_GET_SIZE(r->bufs), off = r->iov_off;
        for (Py_ssize_t i = r->iov_idx; i < nb; i++) {
            char *p;
            Py_ssize_t len;
            if (buf_ptr(PyList_GET_ITEM(r->bufs, i), &p, &len) < 0)
                return -1;
            if (off) {
                if (off >= len) {
                    off -= len;
                    continue;
                }
                p += off;
                len -= off;
                off = 0;
            }
            iov[k].iov_base = p;
            iov[k].iov_len = (size_t)len;
            if (held != NULL)
                held[k] = PyList_GET_ITEM(r->bufs, i);
            k++;
            sum += len;
            if (k == IOV_BATCH_SIZE)
                goto done;
        }
    }
done:
    *cnt = k;
    *total = sum;
    return 0;
}

static PyObject *
core_send_failed(Core *c, int err)
{
    errno = err;
    PyErr_SetFromErrno(PyExc_OSError);
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    Py_XDECREF(t);
    Py_XDECREF(tb);
    if (v == NULL)
        return NULL;
    PyObject *r = PyObject_CallMethodOneArg((PyObject *)c, s_send_failed, v);
    Py_DECREF(v);
    return r;
}

#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif

/* sendmsg(2) of the gathered iovecs: bytes sent, or -1 with errno set. */
static ssize_t
core_sendmsg(Core *c, struct iovec *iov, int cnt, int flags)
{
    struct msghdr msg;
    memset(&msg, 0, sizeof msg);
    msg.msg_iov = iov;
    msg.msg_iovlen = (size_t)cnt;
    c->stats->syscalls++;
    return sendmsg(c->fd, &msg, flags);
}

/* A zero-copy socket's preamble: reap notifications already queued (ZcTracker.inflight non-empty),
 * and read the impl options' zerocopy_threshold. 0, or -1 on error. */
static int
core_zc_prepare(Core *c, Py_ssize_t *threshold)
{
    PyObject *inflight = PyObject_GetAttr(c->zc, s_inflight);
    int any = inflight ? PyObject_IsTrue(inflight) : -1;
    Py_XDECREF(inflight);
    if (any < 0)
        return -1;
    if (any) {
        PyObject *r = PyObject_CallMethodNoArgs((PyObject *)c, s_check_zcopy);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
    }
    PyObject *opts = PyObject_GetAttr((PyObject *)c, s_impl_opts);
    PyObject *t = opts ? PyObject_GetAttr(opts, s_zerocopy_threshold) : NULL;
    Py_XDECREF(opts);
    if (t == NULL)
        return -1;
    *threshold = PyLong_AsSsize_t(t);
    Py_DECREF(t);
    return *threshold == -1 && PyErr_Occurred() ? -1 : 0;
}

/* PosixSock._flush_py in C for sockets on the real syscalls (with or without zero-copy): the
 * zero-copy counter bookkeeping stays the Python ZcTracker's (zc.sent(touched)); a request that a
 * zero-copy send carried waits in the pending list until its release (_zc_wait), as there. */
static PyObject *
core_posix_flush(Core *c, PyObject *unused)
{
    if (!c->direct || c->sys != default_sys)
        return PyObject_CallMethodNoArgs((PyObject *)c, s_flush_py);
    struct iovec iov[IOV_BATCH_SIZE];
    Py_INCREF(c);
    PyObject *zc = FIELD(c->zc);
    Py_INCREF(zc);
    Py_ssize_t threshold = 0;
    if (zc != Py_None && core_zc_prepare(c, &threshold) < 0)
        goto error;
    while (c->queued.head) {
        int cnt;
        Py_ssize_t total;
        if (core_gather(c, iov, &cnt, &total, NULL) < 0)
            goto error;
        if (total == 0) {
            core_requests_sent(c, 0, NULL);
            continue;
        }
        int use_zc = zc != Py_None && total >= threshold;
        ssize_t n = core_sendmsg(c, iov, cnt, use_zc ? MSG_NOSIGNAL | MSG_ZEROCOPY : MSG_NOSIGNAL);
        if (n < 0 && errno == ENOBUFS && use_zc) {
            /* optmem_max spent on notifications: copy this batch instead. */
            c->stats->zerocopy_fallbacks++;
            use_zc = 0;
            n = core_sendmsg(c, iov, cnt, MSG_NOSIGNAL);
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                break;
        }
        if (n < 0) {
            int err = errno;
            if (err == EAGAIN || err == EWOULDBLOCK)
                break;
            if (err == EINTR) {
                if (PyErr_CheckSignals() < 0)
                    goto error;
                continue;
            }
            PyObject *r = core_send_failed(c, err);
            if (r == NULL)
                goto error;
            Py_DECREF(r);
            break;
        }
        c->stats->bytes_sent += n;
        if (use_zc) {
            PyObject *touched = PyList_New(0);
            if (touched == NULL || core_requests_sent(c, n, touched) < 0) {
                Py_XDECREF(touched);
                goto error;
            }
            PyObject *r = PyObject_CallMethodOneArg(zc, s_sent, touched);
            Py_DECREF(touched);
            if (r == NULL)
                goto error;
            Py_DECREF(r);
            c->stats->zerocopy_sends++;
        } else {
            core_requests_sent(c, n, NULL);
        }
        if (n < total)
            break;
    }
    if (core_complete_pending(c) < 0)
        goto error;
    Py_DECREF(zc);
    Py_DECREF(c);
    Py_RETURN_NONE;
error:
    Py_DECREF(zc);
    Py_DECREF(c);
    return NULL;
}

/* True when the Python Pipe object holds no unread byte (its indices meet and it is not full). */
static int
pipe_empty(PyObject *pipe)
{
    if (Pipe_Check(pipe))
        return pipe_avail((PipeObj *)pipe) == 0;
    PyObject *full = PyObject_GetAttr(pipe, s_full);
    if (full == NULL)
        return -1;
    Py_DECREF(full);
    if (full != Py_False)
        return full == Py_True ? 0 : -1;
    PyObject *rd = PyObject_GetAttr(pipe, s_read);
    if (rd == NULL)
        return -1;
    PyObject *wr = PyObject_GetAttr(pipe, s_write);
    if (wr == NULL) {
        Py_DECREF(rd);
        return -1;
    }
    int eq = PyObject_RichCompareBool(rd, wr, Py_EQ);
    Py_DECREF(rd);
    Py_DECREF(wr);
    return eq;
}

/* recv(2) into dst; None on EAGAIN. */
static PyObject *
core_recv_direct(Core *c, char *dst, Py_ssize_t len)
{
    for (;;) {
        c->stats->syscalls++;
        ssize_t n = recv(c->fd, dst, (size_t)len, 0);
        if (n >= 0) {
            c->stats->bytes_received += n;
            return PyLong_FromSsize_t(n);
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

/* Sock._recv for one buffer, through a C pipe (or none): copy what the pipe holds; else a large read
 * goes straight to dst and a small one fills the pipe with one readv(2) first. */
static PyObject *
core_recv_view(Core *c, PipeObj *p, char *dst, Py_ssize_t len)
{
    if (p == NULL || (pipe_avail(p) == 0 && len >= MIN_SOCK_PIPE_SIZE))
        return core_recv_direct(c, dst, len);
    if (pipe_avail(p) == 0) {
        struct iovec iov[2];
        int cnt = pipe_free_iov(p, p->size, iov);
        for (;;) {
            c->stats->syscalls++;
            ssize_t n = readv(c->fd, iov, cnt);
            if (n > 0) {
                c->stats->bytes_received += n;
                pipe_writer_commit(p, n);
                break;
            }
            if (n == 0)
                return PyLong_FromLong(0);
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                Py_RETURN_NONE;
            if (errno != EINTR)
                return PyErr_SetFromErrno(PyExc_OSError);
            if (PyErr_CheckSignals() < 0)
                return NULL;
        }
    }
    return PyLong_FromSsize_t(pipe_copy_out(p, dst, len));
}

static PyObject *base_read_into, *base_readv; /* PosixSock._read_into, PosixSock._readv */

/* The socket reads with PosixSock's own calls (a subclass such as UringSock may read otherwise:
 * its multishot buffers; it then takes the Python path, which calls its methods). */
static int
core_plain_reader(Core *c)
{
    PyTypeObject *t = Py_TYPE(c);
    return base_read_into != NULL && _PyType_Lookup(t, s_read_into) == base_read_into &&
           _PyType_Lookup(t, s_readv) == base_readv;
}

static PyObject *
core_recv_into(Core *c, PyObject *buf)
{
    if (c->closed)
        return raise_ebadf();
    if (c->direct && c->sys == default_sys && core_plain_reader(c)) {
        PyObject *pipe = FIELD(c->pipe);
        if (PyByteArray_CheckExact(buf)) {
            /* The common case: no buffer export needed. */
            if (pipe == Py_None)
                return core_recv_direct(c, PyByteArray_AS_STRING(buf), PyByteArray_GET_SIZE(buf));
            if (Pipe_Check(pipe))
                return core_recv_view(c, (PipeObj *)pipe, PyByteArray_AS_STRING(buf), PyByteArray_GET_SIZE(buf));
        } else if (pipe == Py_None || Pipe_Check(pipe)) {
            Py_buffer view;
            if (PyObject_GetBuffer(buf, &view, PyBUF_WRITABLE) == 0) {
                PyObject *r = core_recv_view(c, pipe == Py_None ? NULL : (PipeObj *)pipe, view.buf, view.len);
                PyBuffer_Release(&view);
                return r;
            }
            PyErr_Clear(); /* the Python path names what is wrong with buf */
        }
    }
    return PyObject_CallFunctionObjArgs(py_recv_into, (PyObject *)c, buf, NULL);
}

static PyMethodDef core_methods[] = {
    {"_init_queues", (PyCFunction)core_init_queues, METH_NOARGS, "Nothing to do: the C queues start empty."},
    {"writev_async", (PyCFunction)core_writev_async, METH_O,
     "Queue ``req``; sent at the next flush or group poll, or now when 64 iovecs are queued."},
    {"flush", (PyCFunction)core_flush, METH_NOARGS,
     "Hand queued requests to the kernel as far as it takes them now; never blocks."},
    {"recv_into", (PyCFunction)core_recv_into, METH_O,
     "Read into ``buf``: bytes read, 0 at EOF, ``None`` when nothing is readable now."},
    {"_requests_sent", (PyCFunction)(void (*)(void))core_py_requests_sent, METH_FASTCALL,
     "Account ``n`` bytes handed to the kernel from the head of the queue."},
    {"_complete_pending", (PyCFunction)core_py_complete_pending, METH_NOARGS,
     "Run the callbacks of pending requests whose buffers are free, in queue order."},
    {"_fail_queued", (PyCFunction)core_py_fail_queued, METH_O, "Complete every queued request with ``status``."},
    {"_zc_released", (PyCFunction)core_py_zc_released, METH_O, "One zero-copy chunk of ``req`` was released."},
    {"_posix_flush", (PyCFunction)core_posix_flush, METH_NOARGS,
     "The posix backend's flush: gather up to 64 iovecs, one sendmsg(2) per batch."},
    {NULL},
};

static PyObject *
core_get_queued(Core *self, void *closure)
{
    return q_list(&self->queued);
}

static PyObject *
core_get_pending(Core *self, void *closure)
{
    return q_list(&self->pending);
}

static PyObject *
core_get_queued_bytes(Core *self, void *closure)
{
    return PyLong_FromSsize_t(self->queued_bytes);
}

static PyObject *
core_get_group_impl(Core *self, void *closure)
{
    PyObject *gi = self->group_impl ? self->group_impl : Py_None;
    Py_INCREF(gi);
    return gi;
}

static int
core_set_group_impl(Core *self, PyObject *gi, void *closure)
{
    PyObject *dirty = NULL;
    if (gi == Py_None)
        gi = NULL;
    if (gi != NULL) {
        dirty = PyObject_GetAttr(gi, s_dirty);
        if (dirty == NULL)
            PyErr_Clear();
        else if (!Py_IS_TYPE(dirty, &DirtyListType))  /* anything else is reached by name */
            Py_CLEAR(dirty);
    }
    Py_XINCREF(gi);
    Py_XSETREF(self->group_impl, gi);
    Py_XSETREF(self->dirty, dirty);
    return 0;
}

static PyObject *
core_get_stats(Core *self, void *closure)
{
    Py_INCREF(self->stats);
    return (PyObject *)self->stats;
}

static int
core_set_stats(Core *self, PyObject *v, void *closure)
{
    if (v == NULL || !PyObject_TypeCheck(v, &StatsType)) {
        PyErr_SetString(PyExc_TypeError, "_stats must be a netimpl._native.SockStats");
        return -1;
    }
    Py_INCREF(v);
    Py_XSETREF(self->stats, (Stats *)v);
    return 0;
}

static PyGetSetDef core_getset[] = {
    {"_queued", (getter)core_get_queued, NULL, "A snapshot of the queued requests, oldest first.", NULL},
    {"_pending", (getter)core_get_pending, NULL, "A snapshot of the pending requests, oldest first.", NULL},
    {"queued_bytes", (getter)core_get_queued_bytes, NULL,
     "Bytes of this socket's requests whose callbacks have not run yet.", NULL},
    {"_group_impl", (getter)core_get_group_impl, (setter)core_set_group_impl, NULL, NULL},
    {"_stats", (getter)core_get_stats, (setter)core_set_stats,
     "The counters the core counts in: the object Sock.stats also names.", NULL},
    {NULL},
};

static PyMemberDef core_members[] = {
    {"_fd", T_INT, offsetof(Core, fd), 0, NULL},
    {"_cb_cnt", T_INT, offsetof(Core, cb_cnt), 0, NULL},
    {"_closed", T_BOOL, offsetof(Core, closed), 0, NULL},
    {"_close_deferred", T_BOOL, offsetof(Core, close_deferred), 0, NULL},
    {"_direct", T_BOOL, offsetof(Core, direct), 0, NULL},
    {"_read_paused", T_BOOL, offsetof(Core, read_paused), 0, NULL},
    {"_group", T_OBJECT, offsetof(Core, group), 0, NULL},
    {"_read_cb", T_OBJECT, offsetof(Core, read_cb), 0, NULL},
    {"_pipe", T_OBJECT, offsetof(Core, pipe), 0, NULL},
    {"_sys", T_OBJECT, offsetof(Core, sys), 0, NULL},
    {"_zc", T_OBJECT, offsetof(Core, zc), 0, NULL},
    /* The uring backend's (see _native.h). */
    {"_send_ud", T_ULONGLONG, offsetof(Core, send_ud), 0, NULL},
    {"_write_ud", T_ULONGLONG, offsetof(Core, write_ud), 0, NULL},
    {"_send_addr", T_ULONGLONG, offsetof(Core, send_addr), 0, NULL},
    {"_send_total", T_PYSSIZET, offsetof(Core, send_total), 0, NULL},
    {"_send_iovs", T_OBJECT, offsetof(Core, send_iovs), 0, NULL},
    {"_rxq_addr", T_ULONGLONG, offsetof(Core, rxq_addr), 0, NULL},
    {"_out_armed", T_BOOL, offsetof(Core, out_armed), 0, NULL},
    {"_rx_pipe_first", T_BOOL, offsetof(Core, rx_pipe_first), 0, NULL},
    {"_queued_iovcnt", T_PYSSIZET, offsetof(Core, queued_iovcnt), READONLY, NULL},
    {"_queued_bytes", T_PYSSIZET, offsetof(Core, queued_bytes), READONLY, NULL},
    {NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl._native.SockCore",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The compiled request life cycle that netimpl.Sock derives from (see the module docstring).",
    .tp_new = core_new,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_traverse = (traverseproc)core_traverse,
    .tp_clear = (inquiry)core_clear,
    .tp_methods = core_methods,
    .tp_getset = core_getset,
    .tp_members = core_members,
};

/* ------------------------------------------------------------------------ */
/* SockList: a group's pending-recv list and its dirty list                  */
/* ------------------------------------------------------------------------ */

/* SockGroup._ready (ReadyList: the sockets with something to read, in service order) and
 * GroupImpl._dirty (DirtyList: the sockets with requests queued, in the order they got them), on
 * the compiled core. Each runs through the sockets themselves (Core.link[slot]), as SPDK's
 * pending_recv TAILQ does, so that appending, taking the first and taking one out are pointer
 * moves, where a dict hashed into a table whose lines a pass over many sockets finds cold. Both are
 * ordered sets with the part of dict's interface the generic layer and the backends use
 * (list[sock] = None, del, pop, in, len, iteration, keys, clear) and popfirst(); the Python twin
 * uses dicts with popfirst (netimpl._pycore.SockList). A socket is on one list of each kind at
 * most: adding it to another takes it off the first (one left behind there by a socket that
 * changed groups is stale, and must not keep it from its new group's list). */
typedef struct {
    PyObject_HEAD
    Core *head, *tail;  /* each member holds one reference, owned by the list */
    Py_ssize_t len;
    int slot;           /* NI_LINK_READY or NI_LINK_DIRTY: the links it runs through */
} SockList;

static PyTypeObject ReadyListType;

#define IS_READY_LIST(o) Py_IS_TYPE((o), &ReadyListType)
#define IS_DIRTY_LIST(o) Py_IS_TYPE((o), &DirtyListType)
#define SL(o) ((SockList *)(o))
#define LINK(c, sl) (&(c)->link[(sl)->slot])

static const char *const sl_what[NI_LINKS] = {"pending-recv list", "dirty list"};

static PyObject *sl_unlink(SockList *sl, Core *c);

/* Append c (nothing if it is in already; off another list of the kind first). */
static void
sl_link(SockList *sl, Core *c)
{
    struct ni_link *l = LINK(c, sl);
    if (l->list == (PyObject *)sl)
        return;
    if (l->list != NULL)
        sl_unlink(SL(l->list), c);  /* its reference moves with it */
    else
        Py_INCREF(c);
    l->list = (PyObject *)sl;
    l->next = NULL;
    l->prev = sl->tail;
    if (sl->tail != NULL)
        LINK(sl->tail, sl)->next = c;
    else
        sl->head = c;
    sl->tail = c;
    sl->len++;
}

/* sl_link for what Python hands in: 0, or -1 with TypeError when it is not a netimpl socket. */
static int
sl_add(SockList *sl, PyObject *sock)
{
    if (!PyObject_TypeCheck(sock, &CoreType)) {
        PyErr_Format(PyExc_TypeError, "a %s holds netimpl sockets, not %.60R", sl_what[sl->slot], sock);
        return -1;
    }
    sl_link(sl, (Core *)sock);
    return 0;
}

/* Take c (a member) out: the list's reference passes to the caller. */
static PyObject *
sl_unlink(SockList *sl, Core *c)
{
    struct ni_link *l = LINK(c, sl);
    if (l->prev != NULL)
        LINK(l->prev, sl)->next = l->next;
    else
        sl->head = l->next;
    if (l->next != NULL)
        LINK(l->next, sl)->prev = l->prev;
    else
        sl->tail = l->prev;
    l->prev = l->next = NULL;
    l->list = NULL;
    sl->len--;
    return (PyObject *)c;
}

static inline int
sl_has(SockList *sl, PyObject *sock)
{
    return PyObject_TypeCheck(sock, &CoreType) && LINK((Core *)sock, sl)->list == (PyObject *)sl;
}

/* Take c out if it is in: 1 if it was, else 0. */
static int
sl_drop(SockList *sl, Core *c)
{
    if (LINK(c, sl)->list != (PyObject *)sl)
        return 0;
    Py_DECREF(sl_unlink(sl, c));
    return 1;
}

/* sl_drop for what Python hands in (anything: what is not a socket is not in). */
static int
sl_discard(SockList *sl, PyObject *sock)
{
    return sl_has(sl, sock) && sl_drop(sl, (Core *)sock);
}

static PyObject *
sl_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    if (PyTuple_GET_SIZE(args) || (kwds != NULL && PyDict_GET_SIZE(kwds))) {
        PyErr_Format(PyExc_TypeError, "%s() takes no arguments", _PyType_Name(type));
        return NULL;
    }
    PyObject *o = type->tp_alloc(type, 0);  /* zeroed: empty */
    if (o != NULL)
        SL(o)->slot = type == &DirtyListType ? NI_LINK_DIRTY : NI_LINK_READY;
    return o;
}

static int
sl_traverse(SockList *sl, visitproc visit, void *arg)
{
    for (Core *c = sl->head; c != NULL; c = LINK(c, sl)->next)
        Py_VISIT(c);
    return 0;
}

static int
sl_clear(SockList *sl)
{
    while (sl->head != NULL)  /* a finalizer run by a decref may change the list: read its head anew */
        Py_DECREF(sl_unlink(sl, sl->head));
    return 0;
}

static void
sl_dealloc(SockList *sl)
{
    PyObject_GC_UnTrack(sl);
    sl_clear(sl);
    Py_TYPE(sl)->tp_free((PyObject *)sl);
}

static PyObject *
sl_repr(SockList *sl)
{
    return PyUnicode_FromFormat("<netimpl %s of %zd sockets>", _PyType_Name(Py_TYPE(sl)), sl->len);
}

static Py_ssize_t
sl_length(SockList *sl)
{
    return sl->len;
}

static int
sl_contains(SockList *sl, PyObject *sock)
{
    return sl_has(sl, sock);
}

/* list[sock] = None appends it unless it is in; del list[sock] takes it out (KeyError if not in). */
static int
sl_ass_subscript(SockList *sl, PyObject *sock, PyObject *value)
{
    if (value == NULL) {
        if (sl_discard(sl, sock))
            return 0;
        PyErr_SetObject(PyExc_KeyError, sock);
        return -1;
    }
    if (value != Py_None) {
        PyErr_Format(PyExc_TypeError, "a %s is a set of sockets: its values are None, not %.60R",
                     sl_what[sl->slot], value);
        return -1;
    }
    return sl_add(sl, sock);
}

static PyObject *
sl_subscript(SockList *sl, PyObject *sock)
{
    if (!sl_has(sl, sock)) {
        PyErr_SetObject(PyExc_KeyError, sock);
        return NULL;
    }
    Py_RETURN_NONE;
}

/* A list of the members, in order (keys(), and what iteration walks). */
static PyObject *
sl_keys(SockList *sl, PyObject *unused)
{
    PyObject *l = PyList_New(sl->len);
    Py_ssize_t i = 0;

    if (l == NULL)
        return NULL;
    for (Core *c = sl->head; c != NULL; c = LINK(c, sl)->next) {
        Py_INCREF(c);
        PyList_SET_ITEM(l, i++, (PyObject *)c);
    }
    return l;
}

/* Iterates over the members as they were when it began (a flush or a serving loop changes the list). */
static PyObject *
sl_iter(SockList *sl)
{
    PyObject *l = sl_keys(sl, NULL), *it;

    if (l == NULL)
        return NULL;
    it = PyObject_GetIter(l);
    Py_DECREF(l);
    return it;
}

static PyObject *
sl_pop(SockList *sl, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs < 1 || nargs > 2) {
        PyErr_Format(PyExc_TypeError, "pop expected 1 or 2 arguments, got %zd", nargs);
        return NULL;
    }
    if (sl_discard(sl, args[0]))
        Py_RETURN_NONE;
    if (nargs == 2) {
        Py_INCREF(args[1]);
        return args[1];
    }
    PyErr_SetObject(PyExc_KeyError, args[0]);
    return NULL;
}

/* The first socket, taken out (KeyError when empty): how a serving loop takes its next one. */
static PyObject *
sl_popfirst(SockList *sl, PyObject *unused)
{
    if (sl->head == NULL) {
        PyErr_Format(PyExc_KeyError, "popfirst(): the %s is empty", sl_what[sl->slot]);
        return NULL;
    }
    return sl_unlink(sl, sl->head);
}

static PyObject *
sl_py_clear(SockList *sl, PyObject *unused)
{
    sl_clear(sl);
    Py_RETURN_NONE;
}

static PyMethodDef sl_methods[] = {
    {"pop", (PyCFunction)(void (*)(void))sl_pop, METH_FASTCALL,
     "pop(sock[, default]): take sock out; None, or default (KeyError without one) if it was not in."},
    {"keys", (PyCFunction)sl_keys, METH_NOARGS, "The sockets, in order, as a list."},
    {"popfirst", (PyCFunction)sl_popfirst, METH_NOARGS, "Take the first socket out and return it (KeyError when empty)."},
    {"clear", (PyCFunction)sl_py_clear, METH_NOARGS, "Take every socket out."},
    {NULL},
};

static PyMappingMethods sl_as_mapping = {
    .mp_length = (lenfunc)sl_length,
    .mp_subscript = (binaryfunc)sl_subscript,
    .mp_ass_subscript = (objobjargproc)sl_ass_subscript,
};

static PySequenceMethods sl_as_sequence = {
    .sq_contains = (objobjproc)sl_contains,
};

#define SOCK_LIST_TYPE(NAME, DOC)                                   \
    {                                                               \
        PyVarObject_HEAD_INIT(NULL, 0)                              \
        .tp_name = "netimpl._native." NAME,                         \
        .tp_basicsize = sizeof(SockList),                           \
        .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,        \
        .tp_doc = DOC,                                              \
        .tp_new = sl_new,                                           \
        .tp_dealloc = (destructor)sl_dealloc,                       \
        .tp_traverse = (traverseproc)sl_traverse,                   \
        .tp_clear = (inquiry)sl_clear,                              \
        .tp_repr = (reprfunc)sl_repr,                               \
        .tp_iter = (getiterfunc)sl_iter,                            \
        .tp_as_mapping = &sl_as_mapping,                            \
        .tp_as_sequence = &sl_as_sequence,                          \
        .tp_methods = sl_methods,                                   \
    }

static PyTypeObject ReadyListType = SOCK_LIST_TYPE(
    "ReadyList", "ReadyList(): a group's pending-recv list, an ordered set of sockets linked through them.");
static PyTypeObject DirtyListType = SOCK_LIST_TYPE(
    "DirtyList", "DirtyList(): a group impl's sockets with requests queued, an ordered set linked through them.");

/* c on (off) its group impl's dirty list, c->dirty (cached only when a DirtyList). */
static int
dirty_add(Core *c)
{
    sl_link(SL(c->dirty), c);
    return 0;
}

static void
dirty_drop(Core *c)
{
    sl_drop(SL(c->dirty), c);
}

/* sock taken off a DirtyList or a dict if it is there: 0, or -1 with an exception. */
static int
dirty_discard(PyObject *dirty, PyObject *sock)
{
    if (IS_DIRTY_LIST(dirty)) {
        sl_discard(SL(dirty), sock);
        return 0;
    }
    if (!PyDict_Check(dirty)) {
        PyErr_Format(PyExc_TypeError, "_dirty must be a DirtyList, not %.60R", dirty);
        return -1;
    }
    if (PyDict_DelItem(dirty, sock) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_KeyError))
            return -1;
        PyErr_Clear();  /* not there */
    }
    return 0;
}

/* The members of a DirtyList, or the keys of a dict: a new list, or NULL with an exception. */
static PyObject *
dirty_members(PyObject *dirty)
{
    if (IS_DIRTY_LIST(dirty))
        return sl_keys(SL(dirty), NULL);
    if (PyDict_Check(dirty))
        return PyDict_Keys(dirty);
    PyErr_Format(PyExc_TypeError, "_dirty must be a DirtyList, not %.60R", dirty);
    return NULL;
}

/* len() of a DirtyList or a dict; -1 with TypeError for anything else. */
static Py_ssize_t
dirty_len(PyObject *dirty)
{
    if (IS_DIRTY_LIST(dirty))
        return SL(dirty)->len;
    if (PyDict_Check(dirty))
        return PyDict_GET_SIZE(dirty);
    PyErr_Format(PyExc_TypeError, "_dirty must be a DirtyList, not %.60R", dirty);
    return -1;
}

/* ------------------------------------------------------------------------ */
/* Group state: what a poll pass reads, as C fields                         */
/* ------------------------------------------------------------------------ */

/* The bases of SockGroup (GroupCore), GroupImpl (GroupImplCore) and PosixGroupImpl (PosixGroupState).
 * The attributes a poll pass reads are members of these, so the compiled poll reads a field where it
 * would look a name up in an instance dict: a dozen lookups a pass, 37-42% of its user time (perf).
 * Python sees ordinary attributes; the Python twin's classes keep the same names in their __dict__.
 * Every reference they hold is an object member of their table, so one traverse and one clear walk
 * the tables (bridge.c's GroupState, which extends GroupImplCore, does the same). */

static int
members_traverse(PyObject *self, const PyMemberDef *m, visitproc visit, void *arg)
{
    for (; m->name != NULL; m++)
        if (m->type == T_OBJECT_EX)
            Py_VISIT(*(PyObject **)((char *)self + m->offset));
    return 0;
}

static void
members_clear(PyObject *self, const PyMemberDef *m)
{
    for (; m->name != NULL; m++)
        if (m->type == T_OBJECT_EX)
            Py_CLEAR(*(PyObject **)((char *)self + m->offset));
}

/* A member read straight from its field: a new reference, or AttributeError (as Python's) while unset. */
static PyObject *
member_get(PyObject *self, PyObject *v, PyObject *name)
{
    if (v == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%.50s' object has no attribute '%U'", Py_TYPE(self)->tp_name, name);
        return NULL;
    }
    Py_INCREF(v);
    return v;
}

/* object.__new__ with no arguments: the state types take none, and abstract subclasses stay refused. */
static PyObject *
state_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    PyObject *none = PyTuple_New(0);
    PyObject *self = none ? PyBaseObject_Type.tp_new(type, none, NULL) : NULL;
    Py_XDECREF(none);
    return self;
}

/* Define tp_traverse, tp_clear and tp_dealloc of the state type NAME from its member table. */
#define STATE_GC(NAME, members)                                                  \
    static int NAME##_traverse(PyObject *self, visitproc visit, void *arg)       \
    {                                                                            \
        return members_traverse(self, members, visit, arg);                      \
    }                                                                            \
    static int NAME##_clear(PyObject *self)                                      \
    {                                                                            \
        members_clear(self, members);                                            \
        return 0;                                                                \
    }                                                                            \
    static void NAME##_dealloc(PyObject *self)                                   \
    {                                                                            \
        PyObject_GC_UnTrack(self);                                               \
        NAME##_clear(self);                                                      \
        Py_TYPE(self)->tp_free(self);                                            \
    }

static PyMemberDef group_core_members[] = {
    {"_impls", T_OBJECT_EX, offsetof(GroupCore, impls), 0, NULL},
    {"_socks", T_OBJECT_EX, offsetof(GroupCore, socks), 0, NULL},
    {"_ready", T_OBJECT_EX, offsetof(GroupCore, ready), 0, NULL},
    {"stats", T_OBJECT_EX, offsetof(GroupCore, stats), 0, "The group's counters (netimpl.GroupStats)."},
    {"_wake_fd", T_INT, offsetof(GroupCore, wake_fd), 0, NULL},
    {"_closed", T_BOOL, offsetof(GroupCore, closed), 0, NULL},
    {"_busy", T_BOOL, offsetof(GroupCore, busy), 0, NULL},
    {"_polling", T_BOOL, offsetof(GroupCore, polling), 0, NULL},
    {NULL},
};
STATE_GC(group_core, group_core_members)

static PyTypeObject GroupCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl._native.GroupCore",
    .tp_new = state_new,
    .tp_basicsize = sizeof(GroupCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The state of a netimpl.SockGroup that its compiled poll reads (SockGroup derives from it).",
    .tp_dealloc = group_core_dealloc,
    .tp_traverse = group_core_traverse,
    .tp_clear = group_core_clear,
    .tp_members = group_core_members,
};

static PyMemberDef group_impl_members[] = {
    {"impl", T_OBJECT_EX, offsetof(GroupImplCore, impl), 0, "The backend (a NetImpl)."},
    {"_dirty", T_OBJECT_EX, offsetof(GroupImplCore, dirty), 0, NULL},
    {"_owner", T_ULONG, offsetof(GroupImplCore, owner), 0, NULL},
    {NULL},
};
STATE_GC(group_impl, group_impl_members)

static PyTypeObject GroupImplCoreType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl._native.GroupImplCore",
    .tp_new = state_new,
    .tp_basicsize = sizeof(GroupImplCore),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The state of a group impl that the compiled poll reads (netimpl.impl.GroupImpl derives from it).",
    .tp_dealloc = group_impl_dealloc,
    .tp_traverse = group_impl_traverse,
    .tp_clear = group_impl_clear,
    .tp_members = group_impl_members,
};

typedef struct {
    GroupImplCore base;
    PyObject *fds;       /* _fds: fd -> socket */
    PyObject *want_out;  /* _want_out: sockets waiting for write space, a set */
    PyObject *orphanage; /* _orphanage */
    int epfd;            /* _epfd */
    int orphan_fd;       /* _orphan_fd */
} PosixGroupState;

static PyMemberDef posix_state_members[] = {
    {"_fds", T_OBJECT_EX, offsetof(PosixGroupState, fds), 0, NULL},
    {"_want_out", T_OBJECT_EX, offsetof(PosixGroupState, want_out), 0, NULL},
    {"_orphanage", T_OBJECT_EX, offsetof(PosixGroupState, orphanage), 0, NULL},
    {"_epfd", T_INT, offsetof(PosixGroupState, epfd), 0, NULL},
    {"_orphan_fd", T_INT, offsetof(PosixGroupState, orphan_fd), 0, NULL},
    {NULL},
};

static struct ni_core_api core_api;
NI_GROUP_STATE_GC(posix_state, posix_state_members, &core_api)

static PyTypeObject PosixGroupStateType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl._native.PosixGroupState",
    .tp_basicsize = sizeof(PosixGroupState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The state of a posix group impl that the compiled poll reads (PosixGroupImpl derives from it).",
    .tp_base = &GroupImplCoreType,
    .tp_dealloc = posix_state_dealloc,
    .tp_traverse = posix_state_traverse,
    .tp_clear = posix_state_clear,
    .tp_members = posix_state_members,
};

#define IS_GROUP(o) PyObject_TypeCheck((o), &GroupCoreType)
#define IS_GROUP_IMPL(o) PyObject_TypeCheck((o), &GroupImplCoreType)

/* gi._dirty, from its field: a new reference. */
static PyObject *
gi_dirty(PyObject *gi)
{
    if (IS_GROUP_IMPL(gi))
        return member_get(gi, ((GroupImplCore *)gi)->dirty, s_dirty);
    return PyObject_GetAttr(gi, s_dirty);
}

/* ------------------------------------------------------------------------ */
/* module functions                                                         */
/* ------------------------------------------------------------------------ */

/* GroupImpl.flush_dirty: flush every socket with queued requests (deferred ones stay dirty). */
static PyObject *
mod_flush_dirty(PyObject *mod, PyObject *gi)
{
    PyObject *dirty = gi_dirty(gi);
    if (dirty == NULL)
        return NULL;
    Py_ssize_t len = dirty_len(dirty);
    if (len <= 0) {
        Py_DECREF(dirty);
        return len < 0 ? NULL : Py_NewRef(Py_None);
    }
    PyObject *socks = dirty_members(dirty);  /* a snapshot: the flushes' callbacks change the list */
    if (socks == NULL) {
        Py_DECREF(dirty);
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(socks);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *s = PyList_GET_ITEM(socks, i);
        PyObject *res;
        if (PyObject_TypeCheck(s, &CoreType)) {
            Core *c = (Core *)s;
            if (c->group_impl != gi) {  /* it left this group impl meanwhile (a callback moved it) */
                if (dirty_discard(dirty, s) < 0)
                    goto error;
                continue;
            }
            if (c->cb_cnt || c->closed)
                continue;
            res = core_call_flush(c);
            if (res == NULL)
                goto error;
            Py_DECREF(res);
            if (c->queued.head == NULL && dirty_discard(dirty, s) < 0)
                goto error;
        } else {
            PyErr_Format(PyExc_TypeError, "not a netimpl socket: %.60R", s);
            goto error;
        }
    }
    Py_DECREF(socks);
    Py_DECREF(dirty);
    Py_RETURN_NONE;
error:
    Py_DECREF(socks);
    Py_DECREF(dirty);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* SockGroup.poll                                                            */
/* ------------------------------------------------------------------------ */

/* The whole poll in one C call: flush the dirty sockets, epoll_wait, map fds to sockets, rotate the
 * pending-recv list (SockGroup._ready), call up to max_events read callbacks, flush what they queued.
 * Python runs only the callbacks. Anything out of the ordinary goes to the Python code that handles
 * it, which stays the one implementation: a poll that must wait on several backends, or on the
 * group's exported fd (_poll_py); an event other than plain readability (PosixGroupImpl._event);
 * arming EPOLLOUT (_watch_writable); the orphanage; a uring group impl's own poll. */

static PyTypeObject *posix_gi_type;  /* netimpl.posix.group.PosixGroupImpl */
static PyObject *s_has_buffered, *s_update_busy, *s_stats, *s_polls, *s_callbacks, *s_fds,
    *s_want_out, *s_orphanage, *s_reap, *s_watch_writable, *s_event, *s_poll_py, *s_flush_dirty,
    *s_poll, *s_self, *s_max_events, *s_timeout;

#define STACK_EVENTS 256

/* A snapshot of a group's impls (a callback may add a backend while they are served), taken without
 * a list per poll while they fit here (a group rarely holds more than two). */
#define IMPLS_STACK 8
typedef struct {
    Py_ssize_t n;
    PyObject *list;                 /* when there were more than IMPLS_STACK */
    PyObject *stack[IMPLS_STACK];
} Impls;

static int
impls_take(PyObject *impls, Impls *t)
{
    Py_ssize_t pos = 0, i = 0;
    PyObject *key, *gi;

    t->list = NULL;
    t->n = PyDict_GET_SIZE(impls);
    if (t->n > IMPLS_STACK) {
        t->list = PyDict_Values(impls);
        return t->list ? 0 : -1;
    }
    while (i < t->n && PyDict_Next(impls, &pos, &key, &gi))
        t->stack[i++] = Py_NewRef(gi);
    t->n = i;
    return 0;
}

static inline PyObject *
impls_at(Impls *t, Py_ssize_t i)
{
    return t->list ? PyList_GET_ITEM(t->list, i) : t->stack[i];
}

static void
impls_release(Impls *t)
{
    if (t->list)
        Py_CLEAR(t->list);
    else
        for (Py_ssize_t i = 0; i < t->n; i++)
            Py_DECREF(t->stack[i]);
    t->n = 0;
}

/* stats.name += n, for polls and callbacks: a GroupStats's field, or through the attribute when
 * the group's stats is some other object (the attribute is the application's to set). */
static int
count_stat(PyObject *stats, PyObject *name, Py_ssize_t n)
{
    if (Py_IS_TYPE(stats, &GroupStatsType)) {
        GroupStats *gs = (GroupStats *)stats;
        *(name == s_polls ? &gs->polls : &gs->callbacks) += n;
        return 0;
    }
    PyObject *v = PyObject_GetAttr(stats, name);
    if (v == NULL)
        return -1;
    PyObject *d = PyLong_FromSsize_t(n);
    PyObject *sum = d ? PyNumber_Add(v, d) : NULL;
    Py_DECREF(v);
    Py_XDECREF(d);
    if (sum == NULL)
        return -1;
    int rc = PyObject_SetAttr(stats, name, sum);
    Py_DECREF(sum);
    return rc;
}

static PyObject *base_has_buffered; /* netimpl.sock.Sock._has_buffered: the recv pipe check done here */

/* args[0].name(*args[1:]), a method its class defines. A compiled one (a builtin that as_method made
 * a method: the uring group impl's poll and flush_dirty, UringSock._has_buffered) is called as it
 * is, with no bound method made per call; anything else through the usual lookup. */
static PyObject *
call_method(PyObject *name, PyObject *const *args, size_t nargs)
{
    PyObject *m = _PyType_Lookup(Py_TYPE(args[0]), name);
    if (m != NULL && PyInstanceMethod_Check(m))
        return PyObject_Vectorcall(PyInstanceMethod_GET_FUNCTION(m), args, nargs, NULL);
    return PyObject_VectorcallMethod(name, args, nargs, NULL);
}

static PyObject *backend_has_buffered;        /* the compiled function a backend's _has_buffered wraps */
static int (*backend_buffered)(Core *c);      /* and its C twin (set_has_buffered) */

static int
api_set_has_buffered(PyObject *function, int (*buffered)(Core *c))
{
    if (backend_has_buffered != NULL && backend_has_buffered != function) {
        PyErr_SetString(PyExc_RuntimeError, "set_has_buffered: another backend's function is set already");
        return -1;
    }
    Py_INCREF(function);
    Py_XSETREF(backend_has_buffered, function);
    backend_buffered = buffered;
    return 0;
}

/* sock._has_buffered(): 1, 0, -1 on error. Done in C unless a class overrides it (TlsSock: OpenSSL's
 * buffers); a backend's compiled override, through its C twin. */
static int
core_has_buffered(Core *c)
{
    PyObject *sock = (PyObject *)c;
    PyObject *m = _PyType_Lookup(Py_TYPE(sock), s_has_buffered);
    if (m != NULL && m != base_has_buffered) {
        int t = -1;
        if (backend_buffered != NULL && PyInstanceMethod_Check(m) &&
            PyInstanceMethod_GET_FUNCTION(m) == backend_has_buffered)
            t = backend_buffered(c);
        if (t == 1)
            return 1;
        if (t < 0) {
            PyObject *r = call_method(s_has_buffered, &sock, 1);
            t = r ? PyObject_IsTrue(r) : -1;
            Py_XDECREF(r);
            return t;
        }
    }
    PyObject *pipe = FIELD(c->pipe);
    Py_INCREF(pipe);
    int r = 0;
    if (pipe != Py_None) {
        r = pipe_empty(pipe);
        if (r >= 0)
            r = !r;
    }
    Py_DECREF(pipe);
    return r;
}

/* A backend's compiled group calls (set_group_calls): the functions its group impl's poll and
 * flush_dirty wrap, and the C twins the group's poll calls instead, with no Python call between. */
static PyObject *backend_poll_fn, *backend_flush_fn;
static PyObject *(*backend_poll)(PyObject *gi, long max_events, double timeout);
static int (*backend_flush)(PyObject *gi);

static int
api_set_group_calls(PyObject *poll_fn, PyObject *(*poll)(PyObject *, long, double),
                    PyObject *flush_fn, int (*flush_dirty)(PyObject *))
{
    if ((backend_poll_fn != NULL && backend_poll_fn != poll_fn) ||
        (backend_flush_fn != NULL && backend_flush_fn != flush_fn)) {
        PyErr_SetString(PyExc_RuntimeError, "set_group_calls: another backend's functions are set already");
        return -1;
    }
    Py_INCREF(poll_fn);
    Py_XSETREF(backend_poll_fn, poll_fn);
    Py_INCREF(flush_fn);
    Py_XSETREF(backend_flush_fn, flush_fn);
    backend_poll = poll;
    backend_flush = flush_dirty;
    return 0;
}

/* The method gi's class defines as name is the compiled function fn (as_method's wrapper of it). */
static int
is_compiled_method(PyObject *gi, PyObject *name, PyObject *fn)
{
    PyObject *m = fn != NULL ? _PyType_Lookup(Py_TYPE(gi), name) : NULL;
    return m != NULL && PyInstanceMethod_Check(m) && PyInstanceMethod_GET_FUNCTION(m) == fn;
}

static int
call_flush_dirty(PyObject *gi)
{
    PyObject *r;
    if (Py_TYPE(gi) == posix_gi_type)
        r = mod_flush_dirty(NULL, gi);
    else if (is_compiled_method(gi, s_flush_dirty, backend_flush_fn))
        return backend_flush(gi);
    else
        r = call_method(s_flush_dirty, &gi, 1);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* gi.poll(max_events, wait): a new list (any iterable from a Python override), or NULL. */
static PyObject *
call_backend_poll(PyObject *gi, long max_events, double wait)
{
    if (is_compiled_method(gi, s_poll, backend_poll_fn))
        return backend_poll(gi, max_events, wait);
    PyObject *socks, *pargs[3] = {gi, PyLong_FromLong(max_events), PyFloat_FromDouble(wait)};
    socks = pargs[1] && pargs[2] ? call_method(s_poll, pargs, 3) : NULL;
    Py_XDECREF(pargs[1]);
    Py_XDECREF(pargs[2]);
    return socks;
}

/* A socket found readable goes on the group's pending-recv list if it is still the group's (a
 * callback run on the way, a send's completion, may have removed it). */
static int
ready_add(PyObject *group, PyObject *ready, PyObject *sock)
{
    if (!PyObject_TypeCheck(sock, &CoreType))
        return sl_add(SL(ready), sock);  /* TypeError naming it */
    if (((Core *)sock)->group == group)
        sl_link(SL(ready), (Core *)sock);
    return 0;
}

/* PosixGroupImpl.poll, adding the readable sockets to ready (the group's ReadyList). */
static int
posix_gi_poll(PyObject *group, PyObject *gi, double wait, PyObject *ready)
{
    int rc = -1;
    PosixGroupState *st = (PosixGroupState *)gi;  /* set_posix_group_type took a subclass of it */
    PyObject *dirty = NULL, *want_out = NULL, *fds = NULL;
    struct epoll_event stack_evs[STACK_EVENTS], *evs = stack_evs;

    if ((dirty = member_get(gi, st->base.dirty, s_dirty)) == NULL ||
        (want_out = member_get(gi, st->want_out, s_want_out)) == NULL ||
        (fds = member_get(gi, st->fds, s_fds)) == NULL)
        goto out;
    if (!(IS_DIRTY_LIST(dirty) || PyDict_Check(dirty)) || !PyAnySet_Check(want_out) || !PyDict_Check(fds)) {
        PyErr_SetString(PyExc_TypeError, "PosixGroupImpl: _dirty, _want_out or _fds of the wrong type");
        goto out;
    }
    if (dirty_len(dirty)) {
        unsigned long long before = completions;
        if (call_flush_dirty(gi) < 0)
            goto out;
        if (completions != before)
            wait = 0.0; /* callbacks ran: let the caller act on them first */
    }
    if ((wait > 0 || PySet_GET_SIZE(want_out)) && (dirty_len(dirty) || PySet_GET_SIZE(want_out))) {
        PyObject *r = PyObject_CallMethodNoArgs(gi, s_watch_writable);
        if (r == NULL)
            goto out;
        Py_DECREF(r);
    }
    int epfd = st->epfd, orphan_fd = st->orphan_fd;
    Py_ssize_t maxev = PyDict_GET_SIZE(fds);
    maxev = (maxev < 1 ? 1 : maxev) + 1;
    if (maxev > INT_MAX / 2)
        maxev = INT_MAX / 2;
    if (maxev > STACK_EVENTS) {
        evs = PyMem_Malloc(sizeof(struct epoll_event) * (size_t)maxev);
        if (evs == NULL) {
            PyErr_NoMemory();
            goto out;
        }
    }
    int ms = 0;
    if (wait > 0) {
        double d = ceil(wait * 1e3);
        ms = d >= (double)INT_MAX ? INT_MAX : (int)d;
    }
    int n;
    double deadline = 0.0;
    for (;;) {
        if (ms > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            if (deadline == 0.0)
                deadline = now.tv_sec + now.tv_nsec * 1e-9 + ms * 1e-3;
            Py_BEGIN_ALLOW_THREADS
            n = epoll_wait(epfd, evs, (int)maxev, ms);
            Py_END_ALLOW_THREADS
        } else {
            n = epoll_wait(epfd, evs, (int)maxev, 0);
        }
        if (n >= 0)
            break;
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            goto out;
        }
        /* PEP 475: run the signal handlers, then wait out the rest of the timeout. */
        if (PyErr_CheckSignals() < 0)
            goto out;
        if (ms > 0) {
            struct timespec now;
            clock_gettime(CLOCK_MONOTONIC, &now);
            double left = deadline - (now.tv_sec + now.tv_nsec * 1e-9);
            ms = left <= 0 ? 0 : (int)ceil(left * 1e3);
        }
    }
    for (int i = 0; i < n; i++) {
        int fd = evs[i].data.fd;
        uint32_t ev = evs[i].events;
        PyObject *key = PyLong_FromLong(fd);
        if (key == NULL)
            goto out;
        PyObject *sock = PyDict_GetItemWithError(fds, key);
        Py_DECREF(key);
        if (sock == NULL) {
            if (PyErr_Occurred())
                goto out;
            if (fd == orphan_fd) {
                PyObject *orph = member_get(gi, st->orphanage, s_orphanage);
                PyObject *r = orph ? PyObject_CallMethodNoArgs(orph, s_reap) : NULL;
                Py_XDECREF(orph);
                if (r == NULL)
                    goto out;
                Py_DECREF(r);
            }
            continue;
        }
        Py_INCREF(sock);
        int readable;
        if (!(ev & (EPOLLERR | EPOLLOUT)) && PyObject_TypeCheck(sock, &CoreType) && !((Core *)sock)->read_paused) {
            readable = (ev & (EPOLLIN | EPOLLHUP | EPOLLRDHUP)) != 0;
        } else {
            PyObject *evo = PyLong_FromUnsignedLong(ev);
            PyObject *r = evo ? PyObject_CallMethodObjArgs(gi, s_event, sock, evo, NULL) : NULL;
            Py_XDECREF(evo);
            readable = r ? PyObject_IsTrue(r) : -1;
            Py_XDECREF(r);
        }
        int err = readable < 0 || (readable && ready_add(group, ready, sock) < 0);
        Py_DECREF(sock);
        if (err)
            goto out;
    }
    rc = 0;
out:
    if (evs != stack_evs)
        PyMem_Free(evs);
    Py_XDECREF(dirty);
    Py_XDECREF(want_out);
    Py_XDECREF(fds);
    return rc;
}

/* Back of the pending-recv list while the socket holds bytes; otherwise the kernel will say. */
static int
group_requeue(PyObject *group, PyObject *ready, Core *c)
{
    if (c->group != group || c->read_paused)
        return 0;
    int buffered = core_has_buffered(c);
    if (buffered <= 0)
        return buffered;
    sl_link(SL(ready), c);
    return 0;
}

/* SockGroup._serve: up to max_events read callbacks, then flush what they queued. */
static Py_ssize_t
group_serve(PyObject *group, PyObject *ready, PyObject *impls, PyObject *stats, long max_events)
{
    Py_ssize_t served = 0;
    while (served < max_events && SL(ready)->head != NULL) {
        Core *c = SL(ready)->head;
        PyObject *sock = sl_unlink(SL(ready), c);  /* the list's reference, now ours */
        /* Still in this group and not paused: its callback. */
        PyObject *cb = c->group == group && !c->read_paused ? c->read_cb : NULL;
        if (cb == NULL || cb == Py_None) {
            Py_DECREF(sock);
            continue;
        }
        served++;
        Py_INCREF(cb);
        PyObject *args[2] = {group, sock};
        PyObject *res = PyObject_Vectorcall(cb, args, 2, NULL);
        Py_DECREF(cb);
        if (res == NULL) {
            PyObject *t, *val, *tb;
            PyErr_Fetch(&t, &val, &tb);
            if (group_requeue(group, ready, c) < 0 || count_stat(stats, s_callbacks, served) < 0)
                PyErr_WriteUnraisable(group);
            PyErr_Restore(t, val, tb);
            goto fail_sock;
        }
        Py_DECREF(res);
        int rc = group_requeue(group, ready, c);
        Py_DECREF(sock);
        if (rc < 0)
            return -1;
        continue;
    fail_sock:
        Py_DECREF(sock);
        return -1;
    }
    if (count_stat(stats, s_callbacks, served) < 0)
        return -1;
    if (served) {
        /* What the callbacks queued goes out now, not at the next poll (QD1 latency). */
        Impls gis;
        if (impls_take(impls, &gis) < 0)
            return -1;
        for (Py_ssize_t i = 0; i < gis.n; i++) {
            PyObject *gi = impls_at(&gis, i);
            PyObject *dirty = gi_dirty(gi);
            int any = dirty ? PyObject_IsTrue(dirty) : -1;
            Py_XDECREF(dirty);
            if (any < 0 || (any && call_flush_dirty(gi) < 0)) {
                impls_release(&gis);
                return -1;
            }
        }
        impls_release(&gis);
    }
    PyObject *r = reraise_or_none();
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return served;
}

/* poll(self, max_events=32, timeout=0.0)'s arguments, as vectorcall passes them (no tuple, no dict
 * made per call); the errors are Python's own for a function of that signature. */
static int
poll_args(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, PyObject *out[3])
{
    static const char *const names[3] = {"self", "max_events", "timeout"};
    PyObject *const interned[3] = {s_self, s_max_events, s_timeout};
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;

    if (nargs > 3) {
        PyErr_Format(PyExc_TypeError, "poll() takes at most 3 positional arguments (%zd given)", nargs);
        return -1;
    }
    out[0] = out[1] = out[2] = NULL;
    for (Py_ssize_t i = 0; i < nargs; i++)
        out[i] = args[i];
    for (Py_ssize_t k = 0; k < nkw; k++) {
        PyObject *key = PyTuple_GET_ITEM(kwnames, k);
        int i = 0;

        while (i < 3 && key != interned[i])  /* the names in a caller's code are interned: found by identity */
            i++;
        if (i == 3)
            for (i = 0; i < 3 && PyUnicode_CompareWithASCIIString(key, names[i]) != 0; i++)
                ;
        if (i == 3) {
            PyErr_Format(PyExc_TypeError, "poll() got an unexpected keyword argument '%S'", key);
            return -1;
        }
        if (out[i] != NULL) {
            PyErr_Format(PyExc_TypeError, "poll() got multiple values for argument '%s'", names[i]);
            return -1;
        }
        out[i] = args[nargs + k];
    }
    if (out[0] == NULL) {
        PyErr_SetString(PyExc_TypeError, "poll() missing required argument 'self'");
        return -1;
    }
    return 0;
}

static PyObject *
mod_group_poll(PyObject *mod, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *parsed[3];
    if (poll_args(args, nargs, kwnames, parsed) < 0)
        return NULL;
    PyObject *group = parsed[0], *max_o = parsed[1], *timeout_o = parsed[2];
    long max_events = 32;
    double timeout = 0.0;
    int fast = 1, exported = 0;
    if (max_o != NULL) {
        if (PyLong_CheckExact(max_o)) {
            int overflow;
            max_events = PyLong_AsLongAndOverflow(max_o, &overflow);
            fast = !overflow && max_events > 0;
        } else {
            fast = 0;
        }
    }
    if (timeout_o != NULL && fast) {
        if (PyFloat_CheckExact(timeout_o))
            timeout = PyFloat_AS_DOUBLE(timeout_o);
        else if (PyLong_CheckExact(timeout_o))
            timeout = PyLong_AsDouble(timeout_o);
        else
            fast = 0;
        if (timeout == -1.0 && PyErr_Occurred())
            PyErr_Clear(), fast = 0;
        if (!(timeout >= 0))
            fast = 0;
    }
    PyObject *impls = NULL, *stats = NULL, *ready = NULL, *result = NULL;
    Impls gis = {0};
    GroupCore *g = (GroupCore *)group;
    /* A closed group (EBADF) and what is not a GroupCore go to _poll_py. */
    if (fast && IS_GROUP(group) && !g->closed && g->impls && g->ready && PyDict_Check(g->impls) &&
        IS_READY_LIST(g->ready)) {
        Py_ssize_t nimpls = PyDict_GET_SIZE(g->impls), nready = SL(g->ready)->len;
        if (g->wake_fd >= 0) {
            /* fileno() was asked for (netimpl.aio drives the group with timeout 0): served here too,
             * unless this poll may wait, which _poll_py does on the waiter epoll. */
            exported = 1;
            fast = timeout <= 0 || g->busy || nready;
        }
        /* Several backends and a poll that may wait: _poll_py waits on the waiter epoll over them. */
        fast = fast && nimpls > 0 && (nimpls == 1 || exported || timeout <= 0 || nready > 0);
    } else {
        fast = 0;
    }
    if (fast) {
        impls = g->impls;
        ready = g->ready;
        Py_INCREF(impls);
        Py_INCREF(ready);
    } else {
        /* group._poll_py(*args[1:], **kwargs), the arguments as they came */
        PyObject *m = PyObject_GetAttr(group, s_poll_py);
        if (m == NULL)
            return NULL;
        PyObject *r = NULL;
        if (nargs >= 1) {
            r = PyObject_Vectorcall(m, args + 1, nargs - 1, kwnames);
        } else {  /* self=... by name: the others go by name too */
            PyObject *kw = PyDict_New();
            if (kw != NULL && (max_o == NULL || PyDict_SetItem(kw, s_max_events, max_o) == 0) &&
                (timeout_o == NULL || PyDict_SetItem(kw, s_timeout, timeout_o) == 0))
                r = PyObject_VectorcallDict(m, NULL, 0, kw);
            Py_XDECREF(kw);
        }
        Py_DECREF(m);
        return r;
    }
    if (exported)
        g->polling = 1;
    stats = member_get(group, g->stats, s_stats);
    if (stats == NULL || count_stat(stats, s_polls, 1) < 0)
        goto out;
    double wait = SL(ready)->len || exported || PyDict_GET_SIZE(impls) > 1 ? 0.0 : timeout;
    if (impls_take(impls, &gis) < 0)
        goto out;
    for (Py_ssize_t i = 0; i < gis.n; i++) {
        PyObject *gi = impls_at(&gis, i);
        if (Py_TYPE(gi) == posix_gi_type) {
            if (posix_gi_poll(group, gi, wait, ready) < 0)
                goto out;
            continue;
        }
        /* Another backend's group impl (uring): its own poll, then the same serving loop. */
        PyObject *socks = call_backend_poll(gi, max_events, wait);
        if (socks == NULL)
            goto out;
        if (PyList_CheckExact(socks)) {
            int rc = 0;
            /* (ready_add runs no Python: the list cannot change under the index) */
            for (Py_ssize_t k = 0; rc == 0 && k < PyList_GET_SIZE(socks); k++)
                rc = ready_add(group, ready, PyList_GET_ITEM(socks, k));
            Py_DECREF(socks);
            if (rc < 0)
                goto out;
            continue;
        }
        PyObject *it = PyObject_GetIter(socks);
        Py_DECREF(socks);
        if (it == NULL)
            goto out;
        PyObject *sock;
        while ((sock = PyIter_Next(it)) != NULL) {
            int rc = ready_add(group, ready, sock);
            Py_DECREF(sock);
            if (rc < 0)
                break;
        }
        Py_DECREF(it);
        if (PyErr_Occurred())
            goto out;
    }
    PyObject *r = reraise_or_none();
    if (r == NULL)
        goto out;
    Py_DECREF(r);
    Py_ssize_t served = group_serve(group, ready, impls, stats, max_events);
    if (served >= 0)
        result = PyLong_FromSsize_t(served);
out:
    if (exported) {
        /* _poll_exported's finally: keep fileno()'s promise, whatever happened above. */
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        g->polling = 0;
        PyObject *u = PyObject_CallMethodNoArgs(group, s_update_busy);
        Py_XDECREF(u);
        if (u == NULL) {
            if (t != NULL) {
                PyErr_WriteUnraisable(group);  /* keep the first exception, report the second */
            } else {
                Py_CLEAR(result);
                goto done;
            }
        }
        PyErr_Restore(t, v, tb);
    }
done:
    impls_release(&gis);
    Py_XDECREF(impls);
    Py_XDECREF(stats);
    Py_XDECREF(ready);
    return result;
}

static PyObject *
mod_set_base_has_buffered(PyObject *mod, PyObject *f)
{
    Py_INCREF(f);
    Py_XSETREF(base_has_buffered, f);
    Py_RETURN_NONE;
}

static PyObject *
mod_set_posix_group_type(PyObject *mod, PyObject *type)
{
    if (!PyType_Check(type) || !PyType_IsSubtype((PyTypeObject *)type, &PosixGroupStateType)) {
        PyErr_Format(PyExc_TypeError, "set_posix_group_type takes a subclass of PosixGroupState, not %.60R", type);
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(posix_gi_type, (PyTypeObject *)type);
    Py_RETURN_NONE;
}

static PyObject *
mod_completions(PyObject *mod, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(completions);
}

static PyObject *
mod_as_method(PyObject *mod, PyObject *func)
{
    /* A builtin function that binds to instances like a Python function: a C method for a Python class. */
    return PyInstanceMethod_New(func);
}

static PyObject *
mod_setup(PyObject *mod, PyObject *args, PyObject *kwds)
{
    static char *kwlist[] = {"callback_pending", "callback_reraise", "as_buffer", "ebadf", "logger",
                             "recv_into", "wrong_thread", NULL};
    PyObject *a[7];
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!OOOOOO:_setup", kwlist, &PyList_Type, &a[0], &a[1], &a[2],
                                     &a[3], &a[4], &a[5], &a[6]))
        return NULL;
    PyObject **slots[] = {&cb_pending, &cb_reraise, &as_buffer_fn, &ebadf_fn, &logger, &py_recv_into,
                          &wrong_thread_fn};
    for (int i = 0; i < 7; i++) {
        Py_INCREF(a[i]);
        Py_XSETREF(*slots[i], a[i]);
    }
    Py_RETURN_NONE;
}

static PyObject *
mod_set_default_sys(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "set_default_sys(syscalls, read_into, readv)");
        return NULL;
    }
    PyObject **slots[] = {&default_sys, &base_read_into, &base_readv};
    for (int i = 0; i < 3; i++) {
        Py_INCREF(args[i]);
        Py_XSETREF(*slots[i], args[i]);
    }
    Py_RETURN_NONE;
}

static unsigned long long
api_completions(void)
{
    return completions;
}

static PyObject *
api_posix_flush(Core *c)
{
    return core_posix_flush(c, NULL);
}

static struct ni_core_api core_api = {
    .version = NI_CORE_API_VERSION,
    .core_type = &CoreType,
    .group_impl_type = &GroupImplCoreType,
    .gather = core_gather,
    .requests_sent = core_requests_sent,
    .complete_pending = core_complete_pending,
    .completions = api_completions,
    .posix_flush = api_posix_flush,
    .members_traverse = members_traverse,
    .members_clear = members_clear,
    .member_get = member_get,
    .dirty_len = dirty_len,
    .dirty_members = dirty_members,
    .dirty_add = dirty_add,
    .dirty_discard = dirty_discard,
    .set_has_buffered = api_set_has_buffered,
    .set_group_calls = api_set_group_calls,
};

static PyMethodDef mod_methods[] = {
    {"flush_dirty", (PyCFunction)mod_flush_dirty, METH_O,
     "flush_dirty(group_impl): flush every socket in group_impl._dirty that is not inside a callback."},
    {"completions", (PyCFunction)mod_completions, METH_NOARGS, "Requests completed in this process."},
    {"group_poll", (PyCFunction)(void (*)(void))mod_group_poll, METH_FASTCALL | METH_KEYWORDS,
     "group_poll(group, max_events=32, timeout=0.0): SockGroup.poll, compiled: posix group impls are "
     "polled in C, others through their own poll(); the serving loop is C. A poll that must wait on "
     "several backends goes to SockGroup._poll_py."},
    {"set_base_has_buffered", (PyCFunction)mod_set_base_has_buffered, METH_O,
     "Sock._has_buffered, which the compiled poll replaces by its own recv-pipe check; a class that "
     "overrides it is asked."},
    {"set_posix_group_type", (PyCFunction)mod_set_posix_group_type, METH_O,
     "The PosixGroupImpl class, whose groups group_poll serves itself."},
    {"as_method", (PyCFunction)mod_as_method, METH_O, "as_method(builtin) -> an instancemethod binding self."},
    {"_setup", (PyCFunction)(void (*)(void))mod_setup, METH_VARARGS | METH_KEYWORDS,
     "Hand the module the Python pieces it defers to (netimpl.sock calls it once)."},
    {"set_default_sys", (PyCFunction)(void (*)(void))mod_set_default_sys, METH_FASTCALL,
     "set_default_sys(syscalls, read_into, readv): the posix syscall seam's default object and "
     "PosixSock's own read methods; a socket whose _sys is another object, or whose class reads "
     "otherwise, takes the Python path."},
    {NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "netimpl._native",
    .m_doc = "The compiled hot path of netimpl (see netimpl/_native.c).",
    .m_size = -1,
    .m_methods = mod_methods,
};

#define INTERN(var, s) if ((var = PyUnicode_InternFromString(s)) == NULL) return NULL;

PyMODINIT_FUNC
PyInit__native(void)
{
    INTERN(s_sys, "_sys");
    INTERN(s_zc, "_zc");
    INTERN(s_flush, "_flush");
    INTERN(s_flush_py, "_flush_py");
    INTERN(s_close_now, "_close_now");
    INTERN(s_send_failed, "_send_failed");
    INTERN(s_read, "_read");
    INTERN(s_write, "_write");
    INTERN(s_full, "_full");
    INTERN(s_error, "error");
    INTERN(s_dirty, "_dirty");
    INTERN(s_owner, "_owner");
    INTERN(s_check_thread, "_check_thread");
    INTERN(s_work_arrived, "_work_arrived");
    INTERN(s_has_buffered, "_has_buffered");
    INTERN(s_read_into, "_read_into");
    INTERN(s_readv, "_readv");
    INTERN(s_inflight, "inflight");
    INTERN(s_check_zcopy, "_check_zcopy");
    INTERN(s_impl_opts, "_impl_opts");
    INTERN(s_zerocopy_threshold, "zerocopy_threshold");
    INTERN(s_sent, "sent");
    INTERN(s_update_busy, "_update_busy");
    INTERN(s_stats, "stats");
    INTERN(s_polls, "polls");
    INTERN(s_callbacks, "callbacks");
    INTERN(s_fds, "_fds");
    INTERN(s_want_out, "_want_out");
    INTERN(s_orphanage, "_orphanage");
    INTERN(s_reap, "reap");
    INTERN(s_watch_writable, "_watch_writable");
    INTERN(s_event, "_event");
    INTERN(s_poll_py, "_poll_py");
    INTERN(s_poll, "poll");
    INTERN(s_self, "self");
    INTERN(s_max_events, "max_events");
    INTERN(s_timeout, "timeout");
    INTERN(s_flush_dirty, "flush_dirty");
    if (PyType_Ready(&ReqType) < 0 || PyType_Ready(&StatsType) < 0 || PyType_Ready(&GroupStatsType) < 0 ||
        PyType_Ready(&CoreType) < 0 || PyType_Ready(&PipeType) < 0 || PyType_Ready(&GroupCoreType) < 0 || PyType_Ready(&GroupImplCoreType) < 0 ||
        PyType_Ready(&PosixGroupStateType) < 0 || PyType_Ready(&ReadyListType) < 0 ||
        PyType_Ready(&DirtyListType) < 0)
        return NULL;
    owner_member = PyDict_GetItemWithError(GroupImplCoreType.tp_dict, s_owner);  /* the type holds it */
    if (owner_member == NULL)
        return PyErr_Occurred() ? NULL : PyErr_Format(PyExc_SystemError, "GroupImplCore has no _owner");
    PyObject *m = PyModule_Create(&native_module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Request", (PyObject *)&ReqType) < 0 ||
        PyModule_AddObjectRef(m, "SockStats", (PyObject *)&StatsType) < 0 ||
        PyModule_AddObjectRef(m, "GroupStats", (PyObject *)&GroupStatsType) < 0 ||
        PyModule_AddObjectRef(m, "SockCore", (PyObject *)&CoreType) < 0 ||
        PyModule_AddObjectRef(m, "Pipe", (PyObject *)&PipeType) < 0 ||
        PyModule_AddObjectRef(m, "GroupCore", (PyObject *)&GroupCoreType) < 0 ||
        PyModule_AddObjectRef(m, "GroupImplCore", (PyObject *)&GroupImplCoreType) < 0 ||
        PyModule_AddObjectRef(m, "PosixGroupState", (PyObject *)&PosixGroupStateType) < 0 ||
        PyModule_AddObjectRef(m, "ReadyList", (PyObject *)&ReadyListType) < 0 ||
        PyModule_AddObjectRef(m, "DirtyList", (PyObject *)&DirtyListType) < 0 ||
        PyModule_AddIntConstant(m, "IOV_BATCH_SIZE", IOV_BATCH_SIZE) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *capi = PyCapsule_New(&core_api, NI_CORE_API_NAME, NULL);
    if (capi == NULL || PyModule_AddObject(m, "_C_API", capi) < 0) {
        Py_XDECREF(capi);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
