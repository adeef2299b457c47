/*
 * netimpl.uring._bridge: where Python objects meet the io_uring core.
 *
 * A CPython extension, because cffi cannot declare a PyObject * parameter:
 * here lists and buffers arrive as declared arguments (METH_FASTCALL) and
 * are read with the C API, never as an id() cast to a pointer. The ring
 * core itself (ring.c) is C through cffi; the two share ring.h, and the C
 * structures cross as their addresses, ints that ring.py takes from cffi
 * (ffi.cast("uintptr_t", p)) once per structure.
 *
 *  enter       submit, wait (the GIL released) and reap, in one call per poll pass.
 *  reap        CQEs into a list of (user_data, res, flags) tuples; the CQEs of
 *              multishot receives never reach Python one by one: their
 *              buffers go onto the socket's ni_rxq here, and the list gets one
 *              entry per socket per reap (flags F_MORE while it stays armed).
 *  prep_send   iovecs read straight from a list of bytes-like objects (as
 *              socket.sendmsg reads them), then the SENDMSG(_ZC) SQE.
 *  rx_copy     a socket's recv_into out of the buffers it holds, recycling
 *  rx_copyv    each one read to its end; then EOF or the error, in order; a
 *              direct recv(2) when no multishot is armed and nothing is
 *              held, and (rx_copy) after a whole buffer's worth with room
 *              for another, on the ring's thread (ni_rxq_read, ring.h).
 *  rx_drain    everything held, as bytes (a socket leaving its group).
 *  rx_lend     the oldest held buffer itself, lent as a read-only memoryview
 *              (Sock.recv_next: no copy); back to the ring with its last view.
 *  poll, flush_dirty, prep_dirty, flush_sock, sock_recv_into, sock_has_buffered
 *              the group's hot path on the compiled core's sockets (see the
 *              section below): one C call per poll, Python only for callbacks.
 *
 * The GIL is held throughout, except while an enter waits: nothing else blocks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <limits.h>
#include <time.h>
#include <sys/socket.h>
#include "ring.h"
#include "../_native.h"

static unsigned reap_gen;
static PyObject *s_append;
static PyTypeObject *deque_type;                 /* collections.deque */
static PyObject *deque_append, *deque_popleft;   /* its methods, called without a lookup per CQE */
static PyObject *empty_bytes;                    /* b"": what recv_next's EOF views */

/* out.append(t): a list, or a collections.deque (the group's backlog, so that an exception raised
 * between two calls, KeyboardInterrupt say, finds every reaped CQE already there). */
static int append(PyObject *out, PyObject *t)
{
    PyObject *r;

    if (PyList_CheckExact(out))
        return PyList_Append(out, t);
    if (Py_IS_TYPE(out, deque_type)) {
        PyObject *a[2] = {out, t};

        r = PyObject_Vectorcall(deque_append, a, 2, NULL);
    } else {
        r = PyObject_CallMethodOneArg(out, s_append, t);
    }
    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* (user_data, res, flags), as Python's _dispatch takes a CQE. */
static PyObject *cqe_tuple(unsigned long long ud, int res, unsigned flags)
{
    PyObject *t = PyTuple_New(3), *v;

    if (t == NULL)
        return NULL;
    if ((v = PyLong_FromUnsignedLongLong(ud)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(t, 0, v);
    if ((v = PyLong_FromLong(res)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(t, 1, v);
    if ((v = PyLong_FromUnsignedLong(flags)) == NULL)
        goto fail;
    PyTuple_SET_ITEM(t, 2, v);
    return t;
fail:
    Py_DECREF(t);  /* the unset items are NULL: tuple dealloc skips them */
    return NULL;
}

static void *addr_arg(PyObject *o, const char *what)
{
    void *p = PyLong_AsVoidPtr(o);

    if (p == NULL && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s: a NULL address", what);
    return p;
}

static PyObject *raise_errno(int code)
{
    errno = code;
    return PyErr_SetFromErrno(PyExc_OSError);
}

/* A writable byte view of a read's destination; TypeError (as Sock.recv_into) when it is not one. */
static int get_dest(PyObject *o, Py_buffer *view)
{
    if (PyObject_GetBuffer(o, view, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) == 0)
        return 0;
    if (PyErr_ExceptionMatches(PyExc_BufferError) || PyErr_ExceptionMatches(PyExc_TypeError)) {
        PyErr_Clear();
        PyErr_Format(PyExc_TypeError, "recv buffer must be a writable contiguous buffer, not %.60R", o);
    }
    return -1;
}

/* Where a poll's reap files the sockets its multishot receives made readable (see file_report). */
struct poll_ctx {
    PyObject *gi;         /* the group impl polling */
    PyObject *ready;      /* its answer, a list */
    PyObject *removing;   /* its _removing, a set */
};

static int file_report(struct poll_ctx *pc, struct ni_rxq *q, PyObject *out);

/* Up to max CQEs into out (multishot-receive ones onto their rxq): the count, or -1 with an
 * exception. With pc (a poll's reap), a receive's report may be filed readable at once. */
static long reap_into(struct ni_ring *r, PyObject *out, unsigned long max, struct poll_ctx *pc)
{
    unsigned head, tail, n = 0, nq = 0;
    struct ni_rxq *touched[256];
    PyObject *t;

    if (max > 256)
        max = 256;
    reap_gen++;
    head = *r->cq_khead;
    tail = load_acquire(r->cq_ktail);
    while (head != tail && n < max) {
        struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];

        if (cqe->user_data & NI_UD_RECV) {
            struct ni_rxq *q = (struct ni_rxq *)(uintptr_t)(cqe->user_data & ~NI_UD_RECV);

            if (q->gen != reap_gen) {
                q->gen = reap_gen;
                touched[nq++] = q;
            }
            ni_rxq_cqe(q, cqe->res, cqe->flags);
        } else {
            t = cqe_tuple(cqe->user_data, cqe->res, cqe->flags);
            if (t == NULL || append(out, t) < 0) {
                /* Out of memory: this CQE stays for the next reap; the earlier ones are reported. */
                Py_XDECREF(t);
                if (n)
                    PyErr_Clear();
                break;
            }
            Py_DECREF(t);
        }
        head++;
        n++;
    }
    store_release(r->cq_khead, head);
    r->n_cqe += n;
    if (nq)
        ni_bufring_settle(touched[0]->br);  /* a group's receives share its one buffer ring */
    for (unsigned i = 0; i < nq; i++) {
        struct ni_rxq *q = touched[i];
        int filed = pc != NULL ? file_report(pc, q, out) : 0;

        if (filed < 0)
            return -1;
        if (filed)
            continue;
        t = cqe_tuple(q->py_ud, q->end, q->armed ? (unsigned)IORING_CQE_F_MORE : 0U);
        if (t == NULL || append(out, t) < 0) {
            Py_XDECREF(t);
            return -1;
        }
        Py_DECREF(t);
    }
    return PyErr_Occurred() ? -1 : (long)n;
}

/* Everything the CQ holds, overflowed CQEs included (a GETEVENTS enter moves them in). */
static long reap_all(struct ni_ring *r, PyObject *out, struct poll_ctx *pc)
{
    long n, total = 0;

    for (;;) {
        n = reap_into(r, out, 256, pc);
        if (n < 0)
            return -1;
        total += n;
        if (n == 256)
            continue;
        if (load_acquire(r->sq_kflags) & IORING_SQ_CQ_OVERFLOW) {
            ni_submit_inline(r, 0, -1);
            continue;
        }
        return total;
    }
}

/* reap(ring, out, max) -> int: CQEs reaped (multishot-receive ones included) */
static PyObject *b_reap(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_ring *r;
    unsigned long max;
    long n;

    if (nargs != 3 || !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "reap(ring_address, list, max)");
        return NULL;
    }
    if (!(r = addr_arg(args[0], "reap")))
        return NULL;
    max = PyLong_AsUnsignedLong(args[2]);
    if (PyErr_Occurred())
        return NULL;
    n = reap_into(r, args[1], max, NULL);
    return n < 0 ? NULL : PyLong_FromLong(n);
}

/* Submit what is prepared, wait (when asked and the CQ is empty) up to timeout_ns for a completion,
 * then reap everything into out. The SQEs taken, or -errno for a failure other than a timeout, a
 * signal or a CQ overflow, or ENTER_ERROR with a Python exception set (reaping ran out of memory). */
#define ENTER_ERROR INT_MIN
/* The kernel's IO_LOCAL_TW_DEFAULT_MAX (6.13 on): deferred task work run per enter. */
#define NI_LOCAL_TW_MAX 20
/* Enters one enter_reap may add to run what that limit left queued (20 items each). */
#define NI_ENTER_MORE 16
static int enter_reap(struct ni_ring *r, int wait, long long ns, PyObject *out, struct poll_ctx *pc)
{
    long n;
    int rc, defer;

    if (wait && load_acquire(r->cq_ktail) != *r->cq_khead)
        wait = 0;  /* completions are there already */
    if (wait) {
        Py_BEGIN_ALLOW_THREADS
        rc = ni_submit_inline(r, 1, ns);
        Py_END_ALLOW_THREADS
    } else {
        rc = ni_submit_inline(r, 0, -1);
    }
    if (rc == -ETIME || rc == -EINTR || rc == -EBUSY)
        rc = 0;
    n = reap_all(r, out, pc);
    /* With DEFER_TASKRUN an enter runs at most IO_LOCAL_TW_DEFAULT_MAX items of task work (more
     * only while it waits for more CQEs): as many CQEs as that may mean more is queued, run by one
     * more enter. What NI_ENTER_MORE leaves, the next poll runs; the CQEs posted here signalled
     * the eventfd, so a waiter on fileno() is woken for it. */
    defer = (r->setup_flags & IORING_SETUP_DEFER_TASKRUN) != 0;
    for (int more = 0; defer && n >= NI_LOCAL_TW_MAX && more < NI_ENTER_MORE && rc >= 0; more++) {
        int rc2 = ni_submit_inline(r, 0, -1);

        if (rc2 < 0 && rc2 != -ETIME && rc2 != -EINTR && rc2 != -EBUSY)
            rc = rc2;
        n = reap_all(r, out, pc);
    }
    if (n < 0)
        return ENTER_ERROR;
    return rc;
}

/* enter(ring, wait, timeout_ns, out) -> int: enter_reap, one call per poll pass. The SQEs taken, or
 * -errno. The GIL is released while waiting. */
static PyObject *b_enter(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_ring *r;
    int wait, rc;
    long long ns;

    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "enter(ring_address, wait, timeout_ns, list or deque)");
        return NULL;
    }
    if (!(r = addr_arg(args[0], "enter")))
        return NULL;
    wait = PyObject_IsTrue(args[1]);
    ns = PyLong_AsLongLong(args[2]);
    if (wait < 0 || (ns == -1 && PyErr_Occurred()))
        return NULL;
    rc = enter_reap(r, wait, ns, args[3], NULL);
    return rc == ENTER_ERROR ? NULL : PyLong_FromLong(rc);
}

/* prep_send(ring, send, bufs) -> int: 0, or -errno (-EBUSY: the SQ is full) */
static PyObject *b_prep_send(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_ring *r;
    struct ni_send *s;
    PyObject *list;
    Py_ssize_t n, i;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "prep_send(ring_address, send_address, list)");
        return NULL;
    }
    if (!(r = addr_arg(args[0], "prep_send")) || !(s = addr_arg(args[1], "prep_send")))
        return NULL;
    list = args[2];
    if (!PyList_CheckExact(list))
        return PyLong_FromLong(-EINVAL);
    if (r->sq_entries - (r->sqe_tail - load_acquire(r->sq_khead)) == 0)
        return PyLong_FromLong(-EBUSY);
    n = PyList_GET_SIZE(list);
    if (n == 0 || n > NI_IOV_MAX)
        return PyLong_FromLong(-EINVAL);
    for (i = 0; i < n; i++) {
        PyObject *o = PyList_GET_ITEM(list, i);
        Py_buffer view;

        if (PyBytes_CheckExact(o)) {
            s->iov[i].iov_base = PyBytes_AS_STRING(o);
            s->iov[i].iov_len = (size_t)PyBytes_GET_SIZE(o);
            continue;
        }
        if (PyObject_GetBuffer(o, &view, PyBUF_SIMPLE) < 0) {
            PyErr_Clear();
            return PyLong_FromLong(-EINVAL);
        }
        /* The object stays alive (its request holds it) and unchanged until the CQE. */
        s->iov[i].iov_base = view.buf;
        s->iov[i].iov_len = (size_t)view.len;
        PyBuffer_Release(&view);
    }
    s->iovcnt = (unsigned)n;
    return PyLong_FromLong(ni_prep_send_inline(r, s));
}

/* What a read returns once nothing is held: EOF, the error (once, then EOF), or a direct recv. */
static PyObject *rx_nothing_held(struct ni_rxq *q, char *dst, size_t n)
{
    if (q->end == NI_RX_EOF)
        return PyLong_FromLong(0);
    if (q->end < 0) {
        int code = -q->end;

        q->end = NI_RX_EOF;   /* as the kernel: the error is reported once, then EOF */
        return raise_errno(code);
    }
    if ((q->armed && !q->poll) || n == 0)
        Py_RETURN_NONE;     /* the multishot receive reports what comes */
    for (;;) {
        ssize_t got = ni_rxq_recv(q, dst, n);

        if (got >= 0) {
            ni_rxq_note(q, (size_t)got);
            return PyLong_FromSsize_t(got);
        }
        if (got == -EAGAIN || got == -EWOULDBLOCK)
            Py_RETURN_NONE;
        if (got != -EINTR) {
            errno = (int)-got;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

/* Up to len(buf) held bytes into buf: the count, 0 at EOF, None when nothing is readable now. */
static PyObject *rx_copy(struct ni_rxq *q, PyObject *buf)
{
    Py_buffer view;
    PyObject *res;

    if (PyByteArray_CheckExact(buf)) {
        char *dst = PyByteArray_AS_STRING(buf);
        size_t n = (size_t)PyByteArray_GET_SIZE(buf);

        if (q->count)
            return PyLong_FromSize_t(ni_rxq_read(q, dst, n));
        return rx_nothing_held(q, dst, n);
    }
    if (get_dest(buf, &view) < 0)
        return NULL;
    if (q->count)
        res = PyLong_FromSize_t(ni_rxq_read(q, view.buf, (size_t)view.len));
    else
        res = rx_nothing_held(q, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return res;
}

/* rx_copy(rxq, buf) -> int | None */
static PyObject *b_rx_copy(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_rxq *q;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rx_copy(rxq_address, buffer)");
        return NULL;
    }
    if (!(q = addr_arg(args[0], "rx_copy")))
        return NULL;
    return rx_copy(q, args[1]);
}

/* rx_copyv(rxq, bufs) -> int | None: fills the buffers in order, stopping at the first not filled.
 * Every buffer is checked before a byte moves: a bad one raises with nothing consumed. */
static PyObject *b_rx_copyv(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_rxq *q;
    PyObject *seq, *res = NULL;
    Py_ssize_t i, n, ok = 0;
    Py_buffer *views;
    size_t total = 0;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rx_copyv(rxq_address, buffers)");
        return NULL;
    }
    if (!(q = addr_arg(args[0], "rx_copyv")))
        return NULL;
    seq = PySequence_Fast(args[1], "rx_copyv takes a sequence of buffers");
    if (seq == NULL)
        return NULL;
    n = PySequence_Fast_GET_SIZE(seq);
    views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    if (views == NULL) {
        Py_DECREF(seq);
        return PyErr_NoMemory();
    }
    for (; ok < n; ok++)
        if (get_dest(PySequence_Fast_GET_ITEM(seq, ok), &views[ok]) < 0)
            goto out;
    for (i = 0; i < n; i++) {
        size_t len = (size_t)views[i].len, got;

        if (len == 0)
            continue;
        if (!q->count) {
            if (!total) /* nothing held, nothing copied: EOF, the error, or a direct read into this one */
                res = rx_nothing_held(q, views[i].buf, len);
            break;
        }
        got = ni_rxq_copy(q, views[i].buf, len);
        total += got;
        if (got < len)
            break;
    }
    if (res == NULL && !PyErr_Occurred())
        res = PyLong_FromSize_t(total);
out:
    for (i = 0; i < ok; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    Py_DECREF(seq);
    return res;
}

/* rx_drain(rxq) -> bytes: every held byte, the buffers back to the ring */
static PyObject *b_rx_drain(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_rxq *q;
    PyObject *b;

    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "rx_drain(rxq_address)");
        return NULL;
    }
    if (!(q = addr_arg(args[0], "rx_drain")))
        return NULL;
    b = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)q->bytes);
    if (b == NULL)
        return NULL;
    ni_rxq_copy(q, PyBytes_AS_STRING(b), (size_t)q->bytes);
    return b;
}

/* A provided buffer lent to the caller (Sock.recv_next): the exporter behind the read-only
 * memoryview rx_lend returns. The buffer goes back to its ring when the last view of it is
 * released (view.release(), or the last reference gone), whatever became of socket and group. */
typedef struct {
    PyObject_HEAD
    struct ni_bufring *br;          /* NULL until the lend is committed (see rx_lend) */
    char *p;
    Py_ssize_t len;
    uint16_t bid;
} LentBuffer;

static unsigned long long lent_rings_freed;  /* buffer rings freed by their last lent buffer's return */

static int lent_getbuffer(PyObject *self, Py_buffer *view, int flags)
{
    LentBuffer *b = (LentBuffer *)self;

    return PyBuffer_FillInfo(view, self, b->p, b->len, 1, flags);
}

static void lent_dealloc(PyObject *self)
{
    LentBuffer *b = (LentBuffer *)self;

    if (b->br)
        lent_rings_freed += (unsigned long long)ni_bufring_return(b->br, b->bid);
    Py_TYPE(self)->tp_free(self);
}

static PyObject *lent_repr(PyObject *self)
{
    LentBuffer *b = (LentBuffer *)self;

    return PyUnicode_FromFormat("<LentBuffer bid=%u len=%zd>", (unsigned)b->bid, b->len);
}

static PyBufferProcs lent_as_buffer = {lent_getbuffer, NULL};

static PyTypeObject LentBuffer_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl.uring._bridge.LentBuffer",
    .tp_basicsize = sizeof(LentBuffer),
    .tp_dealloc = lent_dealloc,
    .tp_repr = lent_repr,
    .tp_as_buffer = &lent_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "A provided buffer lent by Sock.recv_next; back to its ring with its last view.",
};

/* The most recv_next reads with recv(2) where the socket holds no buffers (netimpl.sock.RECV_NEXT_SIZE,
 * from use_core): what posix reads, so a stream in direct receive goes in as few calls. */
static Py_ssize_t recv_next_size = 64 * 1024;

/* What recv_next returns once nothing is held: rx_nothing_held's answer as a view (empty at
 * EOF), the direct recv(2) of up to recv_next_size bytes into a new object. */
static PyObject *lend_nothing_held(struct ni_rxq *q, Py_ssize_t *n)
{
    PyObject *b, *res, *view;
    Py_ssize_t got;

    if (q->end || (q->armed && !q->poll)) {  /* EOF, the error, or None: nothing to read into */
        res = rx_nothing_held(q, NULL, 0);
        if (res == NULL || res == Py_None)
            return res;
        Py_DECREF(res);
        return PyMemoryView_FromObject(empty_bytes);
    }
    if ((b = PyBytes_FromStringAndSize(NULL, recv_next_size)) == NULL)
        return NULL;
    res = rx_nothing_held(q, PyBytes_AS_STRING(b), (size_t)recv_next_size);
    if (res == NULL || res == Py_None) {
        Py_DECREF(b);
        return res;
    }
    got = PyLong_AsSsize_t(res);
    Py_DECREF(res);
    if (_PyBytes_Resize(&b, got) < 0)
        return NULL;  /* the bytes are lost with the memory: as socket.recv */
    view = PyMemoryView_FromObject(b);
    Py_DECREF(b);
    if (view != NULL)
        *n = got;
    return view;
}

/* rxq_free(rxq): free a receive queue, its held buffers back to the ring (with the GIL held: see ring.h). */
static PyObject *b_rxq_free(PyObject *self, PyObject *addr)
{
    struct ni_rxq *q = addr_arg(addr, "rxq_free");

    if (q == NULL)
        return NULL;
    ni_rxq_free(q);
    Py_RETURN_NONE;
}

/* bufring_free(bufring): free an unregistered buffer ring, or, while buffers are lent, leave that
 * to the last of them (with the GIL held, as their returns are). */
static PyObject *b_bufring_free(PyObject *self, PyObject *addr)
{
    struct ni_bufring *br = addr_arg(addr, "bufring_free");

    if (br == NULL)
        return NULL;
    if (br->lent)
        br->dead = 1;
    else
        ni_bufring_free(br);
    Py_RETURN_NONE;
}

/* lent_rings_freed() -> int: buffer rings whose memory their last lent buffer freed (for tests). */
static PyObject *b_lent_rings_freed(PyObject *self, PyObject *unused)
{
    return PyLong_FromUnsignedLongLong(lent_rings_freed);
}

/* The oldest held buffer's unread bytes, lent as a read-only memoryview (*n: how many); what
 * lend_nothing_held says when q holds none. With NI_LEND_SHARE of the ring lent already, a copy
 * of them instead, the buffer back to the ring at once. */
static PyObject *rx_lend(struct ni_rxq *q, Py_ssize_t *n)
{
    LentBuffer *b;
    PyObject *view;
    uint16_t bid;
    uint32_t len;
    char *p;

    *n = 0;
    if (!q->count)
        return lend_nothing_held(q, n);
    p = ni_rxq_peek(q, &bid, &len);
    if (q->br->lent >= q->br->entries / NI_LEND_SHARE) {
        PyObject *copy = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)len);

        if (copy == NULL)
            return NULL;
        view = PyMemoryView_FromObject(copy);
        Py_DECREF(copy);
        if (view != NULL)
            *n = (Py_ssize_t)ni_rxq_copy(q, PyBytes_AS_STRING(copy), len);
        return view;
    }
    if ((b = PyObject_New(LentBuffer, &LentBuffer_Type)) == NULL)
        return NULL;
    /* The view is made before q lets go of the buffer: a failure leaves the bytes held. */
    b->br = NULL;
    b->bid = bid;
    b->p = p;
    b->len = (Py_ssize_t)len;
    view = PyMemoryView_FromObject((PyObject *)b);
    if (view != NULL) {
        ni_rxq_lend(q);
        b->br = q->br;
        *n = b->len;
    }
    Py_DECREF(b);
    return view;
}

/* rx_lend(rxq) -> memoryview | None: as Sock.recv_next, for a socket with a receive queue. */
static PyObject *b_rx_lend(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_rxq *q;
    Py_ssize_t n;

    if (nargs != 1) {
        PyErr_SetString(PyExc_TypeError, "rx_lend(rxq_address)");
        return NULL;
    }
    if (!(q = addr_arg(args[0], "rx_lend")))
        return NULL;
    return rx_lend(q, &n);
}

/* ------------------------------------------------------------------------ */
/* The group's hot path on the compiled core's sockets                      */
/* ------------------------------------------------------------------------ */

/*
 * UringGroupImpl's poll, flush_dirty, _prep_dirty and flush_sock, and
 * UringSock's recv_into and _has_buffered, in C, for sockets of the compiled
 * core (netimpl._native.SockCore; use_core() hands over its C interface).
 * Each is a translation of the Python method of the same name in group.py
 * or sock.py, which stays the reference (it runs under NETIMPL_NATIVE=0)
 * and the slow path: the C runs the common cases itself, a send completed
 * whole and a multishot receive still armed, and hands everything else
 * (short or failed sends, zero-copy, polls, accepts, cancels, a socket
 * leaving) to the Python method, which keeps one implementation of each.
 * The group's Python state (its op table, in-flight counts, backlog) is
 * shared as it is: the CQEs go through the same backlog deque, so a
 * removal from inside a callback sees every CQE not yet dispatched.
 * The group's own poll (netimpl._native) calls poll and flush_dirty as C
 * functions (group_poll, flush_dirty; use_core() names them through the
 * core's set_group_calls), so a poll pass makes no Python call to reach
 * them; a class that overrides either method gets its method called.
 */

static const struct ni_core_api *core;   /* NULL until use_core(): then these functions refuse */
static long K_SEND, K_RECV;              /* group.SEND, group.RECV: the op kinds */
static Py_ssize_t direct_send_max;       /* group.DIRECT_SEND_MAX */
static Py_ssize_t flush_rounds;          /* group.FLUSH_ROUNDS */
static PyObject *s_ring, *s_addr, *s_ops, *s_removing, *s_backlog, *s_carry,
    *s_dirty, *s_dispatch, *s_popleft, *s_impl, *s_orphanage, *s_arm_polls, *s_poll_py, *s_prep_dirty_py, *s_flush_sock_py, *s_recv_other,
    *s_recv_next_py, *s_has_buffered_py, *s_bytes_available, *s_socks, *s_recv_into_py, *s_wait_writable;

#define IS_CORE(o) (core != NULL && PyObject_TypeCheck((o), core->core_type))

/* UringGroupImpl's base on the compiled core: the state its poll reads, as fields, so that a pass
 * reads a field where it would look a name up in the instance's dict (about fifteen a pass).
 * GroupImplCore's fields (impl, _dirty, _owner) come first; Python sees ordinary attributes.
 * A static type whose base, netimpl._native.GroupImplCore, use_core() supplies. */
typedef struct {
    GroupImplCore base;
    PyObject *ring;       /* _ring: the Ring, None before first use and once closed */
    PyObject *ops;        /* _ops: user_data -> (kind, sock, extra) */
    PyObject *backlog;    /* _backlog: CQEs not dispatched yet, a deque */
    PyObject *unarmed;    /* _unarmed: sockets whose readiness poll is not armed */
    PyObject *starved;    /* _starved: multishot receives ended by ENOBUFS */
    PyObject *removing;   /* _removing: sockets being removed, a set */
    PyObject *inflight;   /* _inflight: socket -> its polls, receives and accepts in flight */
    PyObject *carry;      /* _carry: readable sockets found outside poll, a list */
    unsigned long long next_ud;  /* _next_ud */
    unsigned long long ring_sends;  /* _ring_sends: write tasks started on the ring (SEND, SENDMSG_ZC) */
    int efd;              /* _efd: the eventfd behind fileno(), -1 until asked for */
    char orphans_armed;   /* _orphans_armed */
    PyObject *ring_seen;  /* _ring_seen: the Ring whose address ring_ptr holds (group_ring) */
    struct ni_ring *ring_ptr;
    PyObject *orphan_socks;  /* _orphan_socks: impl._orphanage._socks once there is one (arm_needed) */
} GroupState;

static PyMemberDef gs_members[] = {
    {"_ring", T_OBJECT_EX, offsetof(GroupState, ring), 0, NULL},
    {"_ops", T_OBJECT_EX, offsetof(GroupState, ops), 0, NULL},
    {"_backlog", T_OBJECT_EX, offsetof(GroupState, backlog), 0, NULL},
    {"_unarmed", T_OBJECT_EX, offsetof(GroupState, unarmed), 0, NULL},
    {"_starved", T_OBJECT_EX, offsetof(GroupState, starved), 0, NULL},
    {"_removing", T_OBJECT_EX, offsetof(GroupState, removing), 0, NULL},
    {"_inflight", T_OBJECT_EX, offsetof(GroupState, inflight), 0, NULL},
    {"_carry", T_OBJECT_EX, offsetof(GroupState, carry), 0, NULL},
    {"_next_ud", T_ULONGLONG, offsetof(GroupState, next_ud), 0, NULL},
    {"_ring_sends", T_ULONGLONG, offsetof(GroupState, ring_sends), 0, NULL},
    {"_efd", T_INT, offsetof(GroupState, efd), 0, NULL},
    {"_orphans_armed", T_BOOL, offsetof(GroupState, orphans_armed), 0, NULL},
    {"_ring_seen", T_OBJECT_EX, offsetof(GroupState, ring_seen), READONLY, NULL},
    {"_orphan_socks", T_OBJECT_EX, offsetof(GroupState, orphan_socks), READONLY, NULL},
    {NULL},
};

NI_GROUP_STATE_GC(gs, gs_members, core)

static PyTypeObject GroupState_Type = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "netimpl.uring._bridge.GroupState",
    .tp_basicsize = sizeof(GroupState),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The state of a uring group impl that its compiled poll reads (UringGroupImpl derives from it).",
    .tp_dealloc = gs_dealloc,
    .tp_traverse = gs_traverse,
    .tp_clear = gs_clear,
    .tp_members = gs_members,
};

#define GS(gi) ((GroupState *)(gi))
/* A GroupState field as a new reference; AttributeError, as Python's, while it is unset. */
#define GS_GET(gi, field, name) core->member_get((gi), GS(gi)->field, (name))

/* The entry points take a GroupState (UringGroupImpl on the compiled core) and nothing else. */
static int check_gs(PyObject *gi, const char *call)
{
    if (core != NULL && PyObject_TypeCheck(gi, &GroupState_Type))
        return 0;
    if (core == NULL)
        PyErr_Format(PyExc_RuntimeError, "%s: use_core() was not called", call);
    else
        PyErr_Format(PyExc_TypeError, "%s takes a uring group impl, not %.60R", call, gi);
    return -1;
}

_Static_assert(NI_GATHER_MAX <= NI_IOV_MAX, "a gather must fit a struct ni_send");

/* The group's ring, NULL (no exception) when it has none or it was closed. Its address is read
 * once per Ring (a poll asks three or four times): the Ring stays _ring_seen, so that no other
 * object can come to have its identity, and a group closes its Ring only once it is no longer its
 * _ring (UringGroupImpl.close), so a Ring that is _ring is open. */
static struct ni_ring *group_ring(PyObject *gi)
{
    PyObject *ring = GS(gi)->ring, *a;
    void *p = NULL;

    if (ring != NULL && ring == GS(gi)->ring_seen)
        return GS(gi)->ring_ptr;
    if ((ring = GS_GET(gi, ring, s_ring)) == NULL)
        return NULL;
    if (ring != Py_None && (a = PyObject_GetAttr(ring, s_addr)) != NULL) {
        p = PyLong_AsVoidPtr(a);
        Py_DECREF(a);
        if (p != NULL) {
            Py_XSETREF(GS(gi)->ring_seen, Py_NewRef(ring));
            GS(gi)->ring_ptr = p;
        }
    }
    Py_DECREF(ring);
    return p;
}

static int in_set(PyObject *set, PyObject *o)
{
    return PySet_GET_SIZE(set) ? PySet_Contains(set, o) : 0;
}

/* gi._dirty[sock] = None (the socket's cached dict, or the attribute when it has none cached). */
static int mark_dirty(PyObject *gi, Core *c)
{
    PyObject *d;
    int rc;

    if (c->dirty != NULL)
        return core->dirty_add(c);
    if ((d = GS_GET(gi, base.dirty, s_dirty)) == NULL)
        return -1;
    rc = PyObject_SetItem(d, (PyObject *)c, Py_None);
    Py_DECREF(d);
    return rc;
}

/* dict.pop(sock, None) on gi._dirty. */
static int unmark_dirty(PyObject *gi, Core *c)
{
    PyObject *d = c->dirty != NULL ? Py_NewRef(c->dirty) : GS_GET(gi, base.dirty, s_dirty);
    int rc = d == NULL ? -1 : core->dirty_discard(d, (PyObject *)c);

    Py_XDECREF(d);
    return rc;
}

/* The submit of Ring.submit(): a timeout, a signal or a CQ overflow is not an error. */
static int submit_now(struct ni_ring *r)
{
    int rc = ni_submit_inline(r, 0, -1);

    if (rc >= 0 || rc == -ETIME || rc == -EINTR || rc == -EBUSY)
        return 0;
    errno = -rc;
    PyErr_SetFromErrnoWithFilename(PyExc_OSError, "io_uring_enter");
    return -1;
}

/* UringGroupImpl.flush_sock: start the socket's write task if none is in flight; submit if asked.
 * direct: sendmsg(2) first (the posix flush), and a SEND only for what the kernel did not take. */
static int flush_one(PyObject *gi, PyObject *sock, int submit, int direct)
{
    Core *c = (Core *)sock;
    PyObject *removing, *held_t;
    PyObject *held[NI_IOV_MAX];
    struct ni_ring *r;
    struct ni_send *s;
    unsigned long long ud;
    Py_ssize_t total;
    int cnt, rc = -1, full = 0;

    if (!IS_CORE(sock))
        goto python;
again:
    /* (One that left this group impl, a callback moved it, is its new group's to send.) */
    if (c->group_impl != gi || c->send_ud || c->out_armed || c->queued.head == NULL || c->cb_cnt)
        return 0;
    if (c->zc != NULL && c->zc != Py_None)
        goto python;  /* zero-copy's choice and bookkeeping: Python's */
    if ((removing = GS_GET(gi, removing, s_removing)) == NULL)
        return -1;
    rc = PySet_Check(removing) ? in_set(removing, sock) : -2;
    Py_DECREF(removing);
    if (rc == -2)
        goto python;
    if (rc)
        return rc < 0 ? -1 : 0;
    if (full) {
        /* A SEND on a full socket would wait in the kernel on a poll that a half-closed peer's
         * POLLRDHUP wakes for ever: wait in the write-space set, as a short SEND's completion does. */
        PyObject *res = PyObject_CallMethodOneArg(gi, s_wait_writable, sock);  /* first: a failure leaves it dirty */

        if (res == NULL)
            return -1;
        Py_DECREF(res);
        if (unmark_dirty(gi, c) < 0)
            return -1;
        if (submit) {  /* the write-space poll, if this armed it, goes to the kernel now */
            if ((r = group_ring(gi)) == NULL)
                return PyErr_Occurred() ? -1 : 0;
            return submit_now(r);
        }
        return 0;
    }
    if (direct) {
        Py_ssize_t offered = 0, sent = c->stats->bytes_sent;
        PyObject *res;

        for (Req *q = c->queued.head; q != NULL; q = q->next)
            offered += q->nbytes - q->offset;
        if ((res = core->posix_flush(c)) == NULL)  /* the request callbacks of what it sent run here */
            return -1;
        Py_DECREF(res);
        if (c->queued.head == NULL)
            return unmark_dirty(gi, c);
        if (c->closed || c->group_impl != gi)
            return 0;
        direct = 0;
        full = c->stats->bytes_sent - sent < offered;  /* it took less than it was offered */
        goto again;
    }
    if (!c->send_addr || !c->write_ud)
        goto python;  /* the first ring send's struct: made by Python */
    if ((r = group_ring(gi)) == NULL) {
        if (PyErr_Occurred())
            return -1;
        goto python;  /* made on first use, by Python */
    }
    s = (struct ni_send *)(uintptr_t)c->send_addr;
    if (core->gather(c, s->iov, &cnt, &total, held) < 0)
        return -1;
    /* Owned before anything allocates (a GC pass could run a finalizer that aborts these requests). */
    for (int i = 0; i < cnt; i++)
        Py_INCREF(held[i]);
    if (total == 0) {
        for (int i = 0; i < cnt; i++)
            Py_DECREF(held[i]);
        if (core->requests_sent(c, 0, NULL) < 0)
            return -1;
        return core->complete_pending(c);
    }
    /* The kernel reads the buffers until the CQE: the tuple holds them (an aborted request lets go of its own). */
    if ((held_t = PyTuple_New(cnt)) == NULL) {
        for (int i = 0; i < cnt; i++)
            Py_DECREF(held[i]);
        return -1;
    }
    for (int i = 0; i < cnt; i++)
        PyTuple_SET_ITEM(held_t, i, held[i]);
    if (r->sqe_tail - load_acquire(r->sq_khead) >= r->sq_entries && submit_now(r) < 0) {
        Py_DECREF(held_t);
        return -1;
    }
    if (r->sqe_tail - load_acquire(r->sq_khead) >= r->sq_entries) {
        Py_DECREF(held_t);
        errno = EBUSY;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, "prep_send");
        return -1;
    }
    /* The socket's own op-table entry (SEND, sock, False), made by add_sock: nothing made per send. */
    ud = c->write_ud;
    s->iovcnt = (unsigned)cnt;
    s->zerocopy = 0;
    s->user_data = ud;
    if ((rc = ni_prep_send_inline(r, s)) < 0) {
        Py_DECREF(held_t);
        errno = -rc;
        PyErr_SetFromErrnoWithFilename(PyExc_OSError, "prep_send");
        return -1;
    }
    Py_XSETREF(c->send_iovs, held_t);
    c->send_total = total;
    c->send_ud = ud;
    GS(gi)->ring_sends++;
    if (unmark_dirty(gi, c) < 0)
        return -1;
    if (submit) {
        c->stats->syscalls++;
        if (submit_now(r) < 0)
            return -1;
    }
    return 0;
python:
    {
        PyObject *res = PyObject_CallMethodObjArgs(gi, s_flush_sock_py, sock, submit ? Py_True : Py_False,
                                                   direct ? Py_True : Py_False, full ? Py_True : Py_False, NULL);

        Py_XDECREF(res);
        return res ? 0 : -1;
    }
}

/* UringGroupImpl._prep_dirty: a write task for every dirty socket that has none in flight; with
 * allow_direct and at most direct_send_max of them, each sent at once instead. */
static int prep_dirty(PyObject *gi, int allow_direct)
{
    PyObject *dirty = GS_GET(gi, base.dirty, s_dirty), *socks;
    Py_ssize_t n, i;
    int rc = 0, direct;

    if (dirty == NULL)
        return -1;
    if ((n = core->dirty_len(dirty)) <= 0) {
        Py_DECREF(dirty);
        return n < 0 ? -1 : 0;
    }
    socks = core->dirty_members(dirty);  /* a snapshot: direct sends run callbacks that change it */
    if (socks == NULL) {
        Py_DECREF(dirty);
        return -1;
    }
    n = PyList_GET_SIZE(socks);
    direct = allow_direct && n <= direct_send_max;
    for (i = 0; i < n && rc == 0; i++) {
        PyObject *sock = PyList_GET_ITEM(socks, i);
        Core *c = (Core *)sock;

        if (!IS_CORE(sock)) {
            PyObject *res = PyObject_CallMethodOneArg(gi, s_prep_dirty_py, allow_direct ? Py_True : Py_False);

            Py_XDECREF(res);
            rc = res ? 0 : -1;
            break;
        }
        if (c->group_impl != gi || c->send_ud || c->out_armed || c->queued.head == NULL) {
            rc = core->dirty_discard(dirty, sock);  /* this group impl's list (one that left: it is stale here) */
        } else if (!(c->cb_cnt || c->closed)) {
            rc = flush_one(gi, sock, 0, direct);
        }
    }
    Py_DECREF(socks);
    Py_DECREF(dirty);
    return rc;
}

/* A still-armed receive's (or readiness poll's) report on socket c (q its queue), as a poll
 * files it: c readable in ready when q has something for a read. 1 filed, 0 for Python's
 * _dispatch (c left the group, was closed or paused, is being removed, q is not its queue, or
 * its reads want the other mode), -1 an error. */
static int file_recv_report(PyObject *gi, PyObject *removing, Core *c, struct ni_rxq *q, PyObject *ready)
{
    int rm;

    if (c->group_impl != gi || c->closed || c->read_paused || c->rxq_addr != (uintptr_t)q)
        return 0;
    if (q->armed && q->bulk != q->poll && !q->switching)
        return 0;  /* its reads want the other mode: Python's _dispatch switches it */
    if ((rm = in_set(removing, (PyObject *)c)) != 0)
        return rm < 0 ? -1 : 0;
    if (ni_rxq_readable(q) && PyList_Append(ready, (PyObject *)c) < 0)
        return -1;
    return 1;
}

/* UringGroupImpl._dispatch for one CQE of the backlog: a send completed whole and a multishot
 * receive's report are served here, everything else by the Python method. */
static int dispatch_one(PyObject *gi, PyObject *ops, PyObject *removing, PyObject *ent, PyObject *ready)
{
    int res;
    unsigned flags;
    PyObject *key, *op, *sock, *r;
    Core *c;

    if (!PyTuple_CheckExact(ent) || PyTuple_GET_SIZE(ent) != 3) {
        PyErr_Format(PyExc_TypeError, "a backlog entry must be (user_data, res, flags), not %.60R", ent);
        return -1;
    }
    key = PyTuple_GET_ITEM(ent, 0);
    res = _PyLong_AsInt(PyTuple_GET_ITEM(ent, 1));
    flags = (unsigned)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(ent, 2));
    if (PyErr_Occurred())
        return -1;
    op = PyDict_GetItemWithError(ops, key);
    if (op == NULL) {
        if (PyErr_Occurred())
            return -1;
        goto python;  /* it logs the stray */
    }
    if (!PyTuple_CheckExact(op) || PyTuple_GET_SIZE(op) != 3)
        goto python;
    sock = PyTuple_GET_ITEM(op, 1);
    if (!IS_CORE(sock))
        goto python;
    c = (Core *)sock;
    if (c->group_impl != gi || c->closed)
        goto python;
    long kind = PyLong_AsLong(PyTuple_GET_ITEM(op, 0));
    if (kind == -1 && PyErr_Occurred())
        return -1;
    if (kind == K_SEND && !(flags & IORING_CQE_F_NOTIF) && PyTuple_GET_ITEM(op, 2) == Py_False && res >= 0 &&
        res == c->send_total && c->send_ud == c->write_ud) {
        int rm = in_set(removing, sock), rc = -1;

        if (rm)
            goto python_or_error;
        Py_INCREF(sock);
        c->send_ud = 0;  /* its entry, the socket's own, stays for the next send */
        Py_CLEAR(c->send_iovs);
        c->stats->bytes_sent += res;
        if (core->requests_sent(c, res, NULL) < 0)
            goto send_out;
        if (core->complete_pending(c) < 0)
            goto send_out;
        if (c->queued.head && !c->out_armed && !c->closed && c->group_impl == gi) {
            rm = in_set(removing, sock);
            if (rm < 0 || (!rm && mark_dirty(gi, c) < 0))
                goto send_out;
        }
        rc = 0;
    send_out:
        Py_DECREF(sock);
        return rc;
    }
    if (kind == K_RECV && (flags & IORING_CQE_F_MORE) && c->rxq_addr) {
        int rc = file_recv_report(gi, removing, c, (struct ni_rxq *)(uintptr_t)c->rxq_addr, ready);

        if (rc)
            return rc < 0 ? -1 : 0;
        goto python;
    }
python:
    r = PyObject_CallMethodObjArgs(gi, s_dispatch, PyTuple_GET_ITEM(ent, 0), PyTuple_GET_ITEM(ent, 1),
                                   PyTuple_GET_ITEM(ent, 2), ready, NULL);
    Py_XDECREF(r);
    return r ? 0 : -1;
python_or_error:
    if (PyErr_Occurred())
        return -1;
    goto python;
}

/*
 * A multishot receive's (or readiness poll's) report filed at reap time (file_recv_report),
 * where it would have gone through the backlog: only while the backlog is empty, so that it is
 * the oldest CQE and dispatch order holds, and only for a receive still armed (an ended one's
 * re-arm is Python's _dispatch's to decide). 1 filed, 0 left to the backlog as a tuple, -1 an error.
 */
static int file_report(struct poll_ctx *pc, struct ni_rxq *q, PyObject *out)
{
    Py_ssize_t nb;

    if (q->sock == NULL || !q->armed)
        return 0;
    if ((nb = PyObject_Size(out)) != 0)
        return nb < 0 ? -1 : 0;
    return file_recv_report(pc->gi, pc->removing, q->sock, q, pc->ready);
}

/* A poll's reap context for gi, its readable sockets going to ready: 0, or -1 with TypeError. */
static int poll_ctx_init(struct poll_ctx *pc, PyObject *gi, PyObject *ready)
{
    if ((pc->removing = GS(gi)->removing) == NULL || !PyAnySet_Check(pc->removing)) {
        PyErr_SetString(PyExc_TypeError, "UringGroupImpl._removing must be a set");
        return -1;
    }
    pc->gi = gi;
    pc->ready = ready;
    return 0;
}

/* Dispatch the backlog, oldest first, into ready (a list). */
static int drain(PyObject *gi, PyObject *backlog, PyObject *ready)
{
    PyObject *ops, *removing;
    int rc = 0;

    if (PyObject_Size(backlog) <= 0)
        return PyErr_Occurred() ? -1 : 0;
    ops = GS_GET(gi, ops, s_ops);
    removing = ops ? GS_GET(gi, removing, s_removing) : NULL;
    if (removing == NULL) {
        Py_XDECREF(ops);
        return -1;
    }
    if (!PyDict_Check(ops) || !PyAnySet_Check(removing)) {
        PyErr_SetString(PyExc_TypeError, "UringGroupImpl: _ops or _removing of the wrong type");
        rc = -1;
    }
    while (rc == 0) {
        Py_ssize_t n = PyObject_Size(backlog);
        PyObject *ent;

        if (n <= 0) {
            rc = n < 0 ? -1 : 0;
            break;
        }
        ent = Py_IS_TYPE(backlog, deque_type) ? PyObject_Vectorcall(deque_popleft, &backlog, 1, NULL)
                                              : PyObject_CallMethodNoArgs(backlog, s_popleft);
        if (ent == NULL) {
            rc = -1;
            break;
        }
        rc = dispatch_one(gi, ops, removing, ent, ready);
        Py_DECREF(ent);
    }
    Py_DECREF(ops);
    Py_DECREF(removing);
    return rc;
}

/* Reset the group's eventfd (if fileno() made one): what completes from here on signals it again. */
static int reset_efd(PyObject *gi)
{
    int efd = GS(gi)->efd;
    uint64_t count;

    while (efd >= 0 && read(efd, &count, sizeof count) < 0 && errno != EAGAIN) {
        if (errno != EINTR) {
            PyErr_SetFromErrno(PyExc_OSError);
            return -1;
        }
        if (PyErr_CheckSignals() < 0)
            return -1;
    }
    return 0;
}

/* _arm_polls has work: sockets to arm, starved receives, an orphanage not watched. */
static int arm_needed(PyObject *gi)
{
    Py_ssize_t n;
    PyObject *impl, *orph, *socks, *unarmed = GS(gi)->unarmed, *starved = GS(gi)->starved;

    if (unarmed == NULL || starved == NULL || !PyDict_Check(unarmed) || !PyDict_Check(starved)) {
        PyErr_SetString(PyExc_TypeError, "UringGroupImpl: _unarmed or _starved is not a dict");
        return -1;
    }
    if (PyDict_GET_SIZE(unarmed) || PyDict_GET_SIZE(starved))
        return 1;
    /* impl._orphanage (made on first use, None before, then the same for good) and its _socks:
     * read, not called (no Python runs); the dict is kept, so a pass reads its size alone. */
    if ((socks = GS(gi)->orphan_socks) == NULL) {
        if ((impl = GS_GET(gi, base.impl, s_impl)) == NULL)
            return -1;
        orph = PyObject_GetAttr(impl, s_orphanage);
        Py_DECREF(impl);
        if (orph == Py_None) {
            Py_DECREF(orph);
            return 0;
        }
        socks = orph ? PyObject_GetAttr(orph, s_socks) : NULL;
        Py_XDECREF(orph);
        if (socks == NULL)
            return -1;
        if (!PyDict_Check(socks)) {
            Py_DECREF(socks);
            PyErr_SetString(PyExc_TypeError, "UringGroupImpl: the orphanage's _socks is not a dict");
            return -1;
        }
        GS(gi)->orphan_socks = socks;
    }
    n = PyDict_GET_SIZE(socks);
    return n > 0 && !GS(gi)->orphans_armed;
}

/* A dict (or any sized container) holds something; -1 sizes leave their exception for the caller. */
static int dict_busy(PyObject *o)
{
    return PyDict_Check(o) ? PyDict_GET_SIZE(o) > 0 : PyObject_Size(o) > 0;
}

static double now_s(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

static int call0(PyObject *o, PyObject *name)
{
    PyObject *r = PyObject_CallMethodNoArgs(o, name);

    Py_XDECREF(r);
    return r ? 0 : -1;
}

/* rxq_bind(rxq, sock): the socket a poll's reap files the receive's reports to (file_report);
 * borrowed: a socket's receive queue is freed before it leaves its group. */
static PyObject *b_rxq_bind(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_rxq *q;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rxq_bind(rxq_address, sock)");
        return NULL;
    }
    if ((q = addr_arg(args[0], "rxq_bind")) == NULL)
        return NULL;
    if (!IS_CORE(args[1])) {
        PyErr_Format(PyExc_TypeError, "rxq_bind takes a socket of the compiled core, not %.60R", args[1]);
        return NULL;
    }
    if (((Core *)args[1])->rxq_addr != (uintptr_t)q) {
        PyErr_Format(PyExc_ValueError, "rxq_bind: %R does not hold that receive queue", args[1]);
        return NULL;
    }
    q->sock = args[1];
    Py_RETURN_NONE;
}

/* UringGroupImpl.poll: the sockets found readable, a new list. The group's poll (netimpl._native)
 * calls it as it is (set_group_calls); b_poll is the method. */
static PyObject *group_poll(PyObject *gi, long max_events, double timeout)
{
    PyObject *ready = NULL, *backlog = NULL, *dirty = NULL, *carry;
    struct poll_ctx pc;
    struct ni_ring *r;
    double deadline = 0.0;
    unsigned long long before;

    if (check_gs(gi, "poll") < 0)
        return NULL;
    /* The first poll (it makes the ring), another thread's (refused there): the Python method. */
    if (GS(gi)->base.owner != PyThread_get_thread_ident() || (r = group_ring(gi)) == NULL) {
        PyObject *max_o, *timeout_o, *res = NULL;

        if (PyErr_Occurred())
            return NULL;
        max_o = PyLong_FromLong(max_events);
        timeout_o = PyFloat_FromDouble(timeout);
        if (max_o != NULL && timeout_o != NULL)
            res = PyObject_CallMethodObjArgs(gi, s_poll_py, max_o, timeout_o, NULL);
        Py_XDECREF(max_o);
        Py_XDECREF(timeout_o);
        return res;
    }
    if (reset_efd(gi) < 0)
        return NULL;
    if ((dirty = GS_GET(gi, base.dirty, s_dirty)) == NULL)
        return NULL;
    /* Before the first prep: a direct send there completes requests, and then the poll must not sleep. */
    before = core->completions();
    if (dict_busy(dirty) && prep_dirty(gi, 1) < 0)
        goto error;
    if (PyErr_Occurred())
        goto error;
    /* What flush_dirty found readable since the last poll: the list becomes this poll's answer. */
    if ((carry = GS(gi)->carry) == NULL || !PyList_Check(carry)) {
        PyErr_SetString(PyExc_TypeError, "UringGroupImpl._carry must be a list");
        goto error;
    }
    if ((ready = PyList_New(0)) == NULL)
        goto error;
    if (PyList_GET_SIZE(carry)) {
        PyObject *t = carry;  /* swapped: _carry starts empty again */

        GS(gi)->carry = ready;
        ready = t;
    }
    if ((backlog = GS_GET(gi, backlog, s_backlog)) == NULL)
        goto error;
    if (poll_ctx_init(&pc, gi, ready) < 0)
        goto error;
    for (;;) {
        Py_ssize_t nb;
        int wait, need, rc;

        if ((need = arm_needed(gi)) < 0 || (need && call0(gi, s_arm_polls) < 0))
            goto error;
        if ((nb = PyObject_Size(backlog)) < 0)
            goto error;
        wait = timeout > 0 && PyList_GET_SIZE(ready) == 0 && nb == 0 && core->completions() == before;
        if (wait && deadline == 0.0)
            deadline = now_s() + timeout;
        if ((r = group_ring(gi)) == NULL) {
            if (PyErr_Occurred())
                goto error;
            break;  /* closed by a callback */
        }
        /* (an infinite or huge timeout waits as long as the kernel's timespec takes: about 292 years) */
        rc = enter_reap(r, wait, wait ? (timeout < 9.2e9 ? (long long)(timeout * 1e9) : LLONG_MAX) : -1, backlog, &pc);
        if (rc == ENTER_ERROR)
            goto error;
        if (rc < 0) {
            errno = -rc;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, "io_uring_enter");
            goto error;
        }
        if (drain(gi, backlog, ready) < 0)
            goto error;
        if (dict_busy(dirty) && prep_dirty(gi, 1) < 0)
            goto error;
        if (PyErr_Occurred())
            goto error;
        if (PyList_GET_SIZE(ready) || !wait || core->completions() != before)
            break;
        /* Only completions the caller cannot see: wait on for what is left of the timeout. */
        timeout = deadline - now_s();
        if (timeout <= 0.0005)
            break;
    }
    Py_DECREF(dirty);
    Py_DECREF(backlog);
    return ready;
error:
    Py_XDECREF(dirty);
    Py_XDECREF(backlog);
    Py_XDECREF(ready);
    return NULL;
}

/* poll(group_impl, max_events, timeout) -> list: UringGroupImpl.poll. */
static PyObject *b_poll(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    long max_events;
    double timeout;

    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "poll(group_impl, max_events, timeout)");
        return NULL;
    }
    if ((max_events = PyLong_AsLong(args[1])) == -1 && PyErr_Occurred())
        return NULL;
    if ((timeout = PyFloat_AsDouble(args[2])) == -1.0 && PyErr_Occurred())
        return NULL;
    return group_poll(args[0], max_events, timeout);
}

/* UringGroupImpl.flush_dirty: 0, or -1 with an exception. The group's poll calls it as it is
 * (set_group_calls); b_flush_dirty is the method. */
static int flush_dirty(PyObject *gi)
{
    struct poll_ctx pc;
    struct ni_ring *r;
    PyObject *backlog, *carry;
    int rc;

    if (check_gs(gi, "flush_dirty") < 0)
        return -1;
    for (Py_ssize_t round = 0; round < flush_rounds; round++) {
        unsigned long long before = core->completions();
        PyObject *dirty;
        int busy;

        if (prep_dirty(gi, 1) < 0)
            return -1;
        if (core->completions() == before)
            break;
        /* A direct send's callbacks ran: what they queued, on this socket or others, goes too. */
        if ((dirty = GS_GET(gi, base.dirty, s_dirty)) == NULL)
            return -1;
        busy = dict_busy(dirty);
        Py_DECREF(dirty);
        if (!busy)
            break;
    }
    if ((r = group_ring(gi)) == NULL || r->sqe_tail == load_acquire(r->sq_khead)) {
        if (PyErr_Occurred())
            return -1;
        return 0;
    }
    /* Before the enter, as in poll: task work queued after this signals it again. */
    if (reset_efd(gi) < 0)
        return -1;
    if ((backlog = GS_GET(gi, backlog, s_backlog)) == NULL)
        return -1;
    if ((carry = GS_GET(gi, carry, s_carry)) != NULL && !PyList_Check(carry)) {
        PyErr_SetString(PyExc_TypeError, "UringGroupImpl._carry must be a list");
        Py_CLEAR(carry);
    }
    /* what it finds readable is the next poll's answer */
    if (carry == NULL || poll_ctx_init(&pc, gi, carry) < 0) {
        Py_XDECREF(carry);
        Py_DECREF(backlog);
        return -1;
    }
    rc = enter_reap(r, 0, -1, backlog, &pc);
    if (rc == ENTER_ERROR || rc < 0) {
        if (rc != ENTER_ERROR) {
            errno = -rc;
            PyErr_SetFromErrnoWithFilename(PyExc_OSError, "io_uring_enter");
        }
        Py_DECREF(carry);
        Py_DECREF(backlog);
        return -1;
    }
    rc = drain(gi, backlog, carry);
    Py_DECREF(carry);
    Py_DECREF(backlog);
    if (rc < 0 || prep_dirty(gi, 1) < 0)
        return -1;
    return 0;
}

/* flush_dirty(group_impl): UringGroupImpl.flush_dirty. */
static PyObject *b_flush_dirty(PyObject *self, PyObject *gi)
{
    if (flush_dirty(gi) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* prep_dirty(group_impl, direct=True): UringGroupImpl._prep_dirty. */
static PyObject *b_prep_dirty(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int direct = 1;

    if (nargs != 1 && nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "prep_dirty(group_impl, direct=True)");
        return NULL;
    }
    if (nargs == 2 && (direct = PyObject_IsTrue(args[1])) < 0)
        return NULL;
    if (check_gs(args[0], "prep_dirty") < 0)
        return NULL;
    if (prep_dirty(args[0], direct) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* flush_sock(group_impl, sock, submit, direct=submit): UringGroupImpl.flush_sock. */
static PyObject *b_flush_sock(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int submit, direct;

    if (nargs != 3 && nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "flush_sock(group_impl, sock, submit, direct=submit)");
        return NULL;
    }
    if ((submit = PyObject_IsTrue(args[2])) < 0)
        return NULL;
    direct = submit;
    if (nargs == 4 && args[3] != Py_None && (direct = PyObject_IsTrue(args[3])) < 0)
        return NULL;
    if (check_gs(args[0], "flush_sock") < 0)
        return NULL;
    if (flush_one(args[0], args[1], submit, direct) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* sock_recv_into(sock, buf): UringSock.recv_into. */
static PyObject *b_sock_recv_into(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    PyObject *res;
    Core *c;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "recv_into(buf)");
        return NULL;
    }
    c = (Core *)args[0];
    if (IS_CORE(args[0]) && c->rxq_addr && !c->rx_pipe_first) {
        struct ni_rxq *q = (struct ni_rxq *)(uintptr_t)c->rxq_addr;
        uint64_t calls = q->direct_calls;

        res = rx_copy(q, args[1]);
        c->stats->syscalls += q->direct_calls - calls;
        if (res != NULL && PyLong_CheckExact(res))
            c->stats->bytes_received += PyLong_AsSsize_t(res);
        return res;
    }
    if (!IS_CORE(args[0]))
        return PyObject_CallMethodObjArgs(args[0], s_recv_into_py, args[1], NULL);
    return PyObject_CallMethodObjArgs(args[0], s_recv_other, args[1], Py_False, NULL);
}

/* sock_recv_next(sock): UringSock.recv_next. */
static PyObject *b_sock_recv_next(PyObject *self, PyObject *sock)
{
    Core *c = (Core *)sock;

    if (IS_CORE(sock) && c->rxq_addr && !c->rx_pipe_first) {
        Py_ssize_t n;
        PyObject *res = rx_lend((struct ni_rxq *)(uintptr_t)c->rxq_addr, &n);

        c->stats->bytes_received += n;
        return res;
    }
    return PyObject_CallMethodNoArgs(sock, s_recv_next_py);
}

/* sock_has_buffered(sock): UringSock._has_buffered. */
/* b_sock_has_buffered's C twin for the group's serving loop: 1 when the provided buffers hold bytes
 * (or an end), 0 when they hold none (the recv pipe decides), -1 for a socket with no receive queue
 * (a listener's accepted connections: the method says). */
static int sock_buffered(Core *c)
{
    struct ni_rxq *q = (struct ni_rxq *)(uintptr_t)c->rxq_addr;

    if (q == NULL)
        return -1;
    return ni_rxq_readable(q);
}

static PyObject *b_sock_has_buffered(PyObject *self, PyObject *sock)
{
    Core *c = (Core *)sock;

    if (IS_CORE(sock) && c->rxq_addr) {
        struct ni_rxq *q = (struct ni_rxq *)(uintptr_t)c->rxq_addr;

        PyObject *n;
        int t;

        if (ni_rxq_readable(q))
            Py_RETURN_TRUE;
        /* A socket with a receive queue is no listener (nothing accepted): only its recv pipe is left. */
        if (c->pipe == NULL || c->pipe == Py_None)
            Py_RETURN_FALSE;
        PyObject *pipe = c->pipe;

        Py_INCREF(pipe);
        n = PyObject_CallMethodNoArgs(pipe, s_bytes_available);
        Py_DECREF(pipe);
        if (n == NULL || (t = PyObject_IsTrue(n)) < 0) {
            Py_XDECREF(n);
            return NULL;
        }
        Py_DECREF(n);
        return PyBool_FromLong(t);
    }
    return PyObject_CallMethodNoArgs(sock, s_has_buffered_py);
}

/* use_core(capsule, SEND, RECV, DIRECT_SEND_MAX, FLUSH_ROUNDS, RECV_NEXT_SIZE) -> bool: the
 * compiled core's C interface and the constants; False if it does not pair. */
static PyObject *b_use_core(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    const struct ni_core_api *api;
    Py_ssize_t dmax, rounds, rnext;

    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError, "use_core(capsule, SEND, RECV, DIRECT_SEND_MAX, FLUSH_ROUNDS, RECV_NEXT_SIZE)");
        return NULL;
    }
    if ((dmax = PyLong_AsSsize_t(args[3])) == -1 && PyErr_Occurred())
        return NULL;
    if ((rounds = PyLong_AsSsize_t(args[4])) == -1 && PyErr_Occurred())
        return NULL;
    if ((rnext = PyLong_AsSsize_t(args[5])) == -1 && PyErr_Occurred())
        return NULL;
    if (rnext < 1) {
        PyErr_Format(PyExc_ValueError, "use_core: RECV_NEXT_SIZE %zd is not a positive size", rnext);
        return NULL;
    }
    api = PyCapsule_GetPointer(args[0], NI_CORE_API_NAME);
    if (api == NULL)
        return NULL;
    long send = PyLong_AsLong(args[1]), recv;

    if (send == -1 && PyErr_Occurred())
        return NULL;
    if ((recv = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred())
        return NULL;
    if (api->version != NI_CORE_API_VERSION)
        Py_RETURN_FALSE;
    K_SEND = send;
    K_RECV = recv;
    direct_send_max = dmax;
    flush_rounds = rounds;
    recv_next_size = rnext;
    if (!(GroupState_Type.tp_flags & Py_TPFLAGS_READY)) {
        GroupState_Type.tp_base = api->group_impl_type;
        if (PyType_Ready(&GroupState_Type) < 0 || PyModule_AddObjectRef(self, "GroupState", (PyObject *)&GroupState_Type) < 0)
            return NULL;
    } else if (GroupState_Type.tp_base != api->group_impl_type) {
        PyErr_SetString(PyExc_RuntimeError, "use_core: paired with another netimpl._native already");
        return NULL;
    }
    PyObject *fn = PyObject_GetAttrString(self, "sock_has_buffered");
    int rc = fn == NULL ? -1 : api->set_has_buffered(fn, sock_buffered);

    Py_XDECREF(fn);
    if (rc < 0)
        return NULL;
    PyObject *poll_fn = PyObject_GetAttrString(self, "poll");
    PyObject *flush_fn = poll_fn ? PyObject_GetAttrString(self, "flush_dirty") : NULL;

    rc = flush_fn == NULL ? -1 : api->set_group_calls(poll_fn, group_poll, flush_fn, flush_dirty);
    Py_XDECREF(poll_fn);
    Py_XDECREF(flush_fn);
    if (rc < 0)
        return NULL;
    core = api;
    Py_RETURN_TRUE;
}

static PyMethodDef bridge_methods[] = {
    {"reap", (PyCFunction)(void (*)(void))b_reap, METH_FASTCALL,
     "reap(ring, out, max) -> n: up to max CQEs; multishot receives go to their rxq, one entry per socket."},
    {"enter", (PyCFunction)(void (*)(void))b_enter, METH_FASTCALL,
     "enter(ring, wait, timeout_ns, out) -> SQEs taken or -errno: submit, wait if asked, reap all into out."},
    {"prep_send", (PyCFunction)(void (*)(void))b_prep_send, METH_FASTCALL,
     "prep_send(ring, send, bufs) -> 0 or -errno: SENDMSG(_ZC) of a list of 1..64 bytes-like objects."},
    {"rx_copy", (PyCFunction)(void (*)(void))b_rx_copy, METH_FASTCALL,
     "rx_copy(rxq, buf) -> n, 0 at EOF, None when nothing is readable now; OSError for the socket's error."},
    {"rx_copyv", (PyCFunction)(void (*)(void))b_rx_copyv, METH_FASTCALL,
     "rx_copyv(rxq, bufs) -> as rx_copy, filling the buffers in order."},
    {"rx_drain", (PyCFunction)(void (*)(void))b_rx_drain, METH_FASTCALL,
     "rx_drain(rxq) -> bytes: everything the receive holds."},
    {"use_core", (PyCFunction)(void (*)(void))b_use_core, METH_FASTCALL,
     "use_core(netimpl._native._C_API, SEND, RECV, DIRECT_SEND_MAX, FLUSH_ROUNDS) -> bool: serve the compiled "
     "core's sockets in C."},
    {"poll", (PyCFunction)(void (*)(void))b_poll, METH_FASTCALL,
     "poll(group_impl, max_events, timeout) -> list: UringGroupImpl.poll, compiled."},
    {"flush_dirty", (PyCFunction)b_flush_dirty, METH_O, "flush_dirty(group_impl): UringGroupImpl.flush_dirty, compiled."},
    {"prep_dirty", (PyCFunction)(void (*)(void))b_prep_dirty, METH_FASTCALL,
     "prep_dirty(group_impl, direct=True): UringGroupImpl._prep_dirty, compiled."},
    {"flush_sock", (PyCFunction)(void (*)(void))b_flush_sock, METH_FASTCALL,
     "flush_sock(group_impl, sock, submit, direct=submit): UringGroupImpl.flush_sock, compiled."},
    {"rxq_free", b_rxq_free, METH_O, "rxq_free(rxq_address): free a receive queue, its buffers back to the ring."},
    {"rxq_bind", (PyCFunction)(void (*)(void))b_rxq_bind, METH_FASTCALL,
     "rxq_bind(rxq_address, sock): the socket a poll files the receive queue's reports to."},
    {"bufring_free", b_bufring_free, METH_O,
     "bufring_free(bufring_address): free an unregistered buffer ring (or leave it to its last lent buffer)."},
    {"lent_rings_freed", b_lent_rings_freed, METH_NOARGS,
     "lent_rings_freed() -> int: buffer rings freed when their last lent buffer came back."},
    {"rx_lend", (PyCFunction)(void (*)(void))b_rx_lend, METH_FASTCALL,
     "rx_lend(rxq_address) -> memoryview | None: the oldest held buffer, lent (Sock.recv_next)."},
    {"sock_recv_into", (PyCFunction)(void (*)(void))b_sock_recv_into, METH_FASTCALL,
     "sock_recv_into(sock, buf): UringSock.recv_into, compiled."},
    {"sock_recv_next", (PyCFunction)b_sock_recv_next, METH_O,
     "sock_recv_next(sock): UringSock.recv_next, compiled."},
    {"sock_has_buffered", (PyCFunction)b_sock_has_buffered, METH_O,
     "sock_has_buffered(sock): UringSock._has_buffered, compiled."},
    {NULL},
};

static struct PyModuleDef bridge_module = {
    PyModuleDef_HEAD_INIT, "netimpl.uring._bridge",
    "Python objects to the io_uring core and back (see bridge.c).", -1, bridge_methods,
};

PyMODINIT_FUNC PyInit__bridge(void)
{
    PyObject *m;

    static const struct { PyObject **var; const char *s; } names[] = {
        {&s_append, "append"}, {&s_ring, "_ring"}, {&s_addr, "addr"}, {&s_ops, "_ops"},
        {&s_removing, "_removing"},
        {&s_backlog, "_backlog"}, {&s_carry, "_carry"}, {&s_dirty, "_dirty"}, {&s_dispatch, "_dispatch"},
        {&s_popleft, "popleft"}, {&s_impl, "impl"}, {&s_orphanage, "_orphanage"}, {&s_socks, "_socks"}, {&s_arm_polls, "_arm_polls"}, {&s_poll_py, "_poll_py"},
        {&s_prep_dirty_py, "_prep_dirty_py"}, {&s_flush_sock_py, "_flush_sock_py"},
        {&s_wait_writable, "_wait_writable"},
        {&s_recv_other, "_recv_other"}, {&s_recv_into_py, "_recv_into_py"},
        {&s_recv_next_py, "_recv_next_py"}, {&s_has_buffered_py, "_has_buffered_py"},
        {&s_bytes_available, "bytes_available"},
    };

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if ((*names[i].var = PyUnicode_InternFromString(names[i].s)) == NULL)
            return NULL;
    {
        PyObject *coll = PyImport_ImportModule("collections"), *dq;

        dq = coll ? PyObject_GetAttrString(coll, "deque") : NULL;
        Py_XDECREF(coll);
        if (dq == NULL || !PyType_Check(dq)) {
            Py_XDECREF(dq);
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_TypeError, "collections.deque is not a type");
            return NULL;
        }
        deque_type = (PyTypeObject *)dq;  /* kept for the module's life */
        if ((deque_append = PyObject_GetAttr(dq, s_append)) == NULL ||
            (deque_popleft = PyObject_GetAttr(dq, s_popleft)) == NULL)
            return NULL;
    }
    if (PyType_Ready(&LentBuffer_Type) < 0 || (empty_bytes = PyBytes_FromStringAndSize("", 0)) == NULL)
        return NULL;
    m = PyModule_Create(&bridge_module);

    if (m && (PyModule_AddIntConstant(m, "UD_RECV_BIT", 63) < 0 || PyModule_AddIntConstant(m, "RX_EOF", NI_RX_EOF) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
