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
 *              direct recv(2) only when no multishot is armed and nothing is
 *              held.
 *  rx_drain    everything held, as bytes (a socket leaving its group).
 *
 * The GIL is held throughout: nothing here blocks.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <sys/socket.h>
#include "ring.h"

static unsigned reap_gen;
static PyObject *s_append;

/* out.append(t): a list, or a collections.deque (the group's backlog, so that an exception raised
 * between two calls, KeyboardInterrupt say, finds every reaped CQE already there). */
static int append(PyObject *out, PyObject *t)
{
    PyObject *r;

    if (PyList_CheckExact(out))
        return PyList_Append(out, t);
    r = PyObject_CallMethodOneArg(out, s_append, t);
    Py_XDECREF(r);
    return r ? 0 : -1;
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

/* Up to max CQEs into out (multishot-receive ones onto their rxq): the count, or -1 with an exception. */
static long reap_into(struct ni_ring *r, PyObject *out, unsigned long max)
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
            t = Py_BuildValue("(KiI)", (unsigned long long)cqe->user_data, (int)cqe->res,
                              (unsigned)cqe->flags);
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
    for (unsigned i = 0; i < nq; i++) {
        struct ni_rxq *q = touched[i];

        t = Py_BuildValue("(KiI)", (unsigned long long)q->py_ud, q->end,
                          q->armed ? (unsigned)IORING_CQE_F_MORE : 0U);
        if (t == NULL || append(out, t) < 0) {
            Py_XDECREF(t);
            return -1;
        }
        Py_DECREF(t);
    }
    return PyErr_Occurred() ? -1 : (long)n;
}

/* Everything the CQ holds, overflowed CQEs included (a GETEVENTS enter moves them in). */
static long reap_all(struct ni_ring *r, PyObject *out)
{
    long n, total = 0;

    for (;;) {
        n = reap_into(r, out, 256);
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
    n = reap_into(r, args[1], max);
    return n < 0 ? NULL : PyLong_FromLong(n);
}

/* enter(ring, wait, timeout_ns, out) -> int: submit what is prepared, wait (when asked and the CQ is
 * empty) up to timeout_ns for a completion, then reap everything into out. The SQEs taken, or -errno
 * for a failure other than a timeout, a signal or a CQ overflow. The GIL is released while waiting. */
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
    if (reap_all(r, args[3]) < 0)
        return NULL;
    return PyLong_FromLong(rc);
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
    if (q->armed || n == 0)
        Py_RETURN_NONE;     /* the multishot receive reports what comes */
    for (;;) {
        ssize_t got = recv(q->fd, dst, n, MSG_DONTWAIT);

        if (got >= 0)
            return PyLong_FromSsize_t(got);
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            Py_RETURN_NONE;
        if (errno != EINTR)
            return PyErr_SetFromErrno(PyExc_OSError);
        if (PyErr_CheckSignals() < 0)
            return NULL;
    }
}

/* rx_copy(rxq, buf) -> int | None */
static PyObject *b_rx_copy(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    struct ni_rxq *q;
    Py_buffer view;
    PyObject *res;
    size_t got;

    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "rx_copy(rxq_address, buffer)");
        return NULL;
    }
    if (!(q = addr_arg(args[0], "rx_copy")))
        return NULL;
    if (PyByteArray_CheckExact(args[1])) {
        char *dst = PyByteArray_AS_STRING(args[1]);
        size_t n = (size_t)PyByteArray_GET_SIZE(args[1]);

        if (q->count) {
            got = ni_rxq_copy(q, dst, n);
            return PyLong_FromSize_t(got);
        }
        return rx_nothing_held(q, dst, n);
    }
    if (get_dest(args[1], &view) < 0)
        return NULL;
    if (q->count)
        res = PyLong_FromSize_t(ni_rxq_copy(q, view.buf, (size_t)view.len));
    else
        res = rx_nothing_held(q, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    return res;
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
    {NULL},
};

static struct PyModuleDef bridge_module = {
    PyModuleDef_HEAD_INIT, "netimpl.uring._bridge",
    "Python objects to the io_uring core and back (see bridge.c).", -1, bridge_methods,
};

PyMODINIT_FUNC PyInit__bridge(void)
{
    PyObject *m;

    s_append = PyUnicode_InternFromString("append");
    if (s_append == NULL)
        return NULL;
    m = PyModule_Create(&bridge_module);

    if (m && (PyModule_AddIntConstant(m, "UD_RECV_BIT", 63) < 0 || PyModule_AddIntConstant(m, "RX_EOF", NI_RX_EOF) < 0)) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
