/*
 * netimpl's io_uring core: the ring from the kernel ABI, no liburing.
 *
 * Facts (io_uring_setup(2), io_uring_enter(2), liburing's barrier.h):
 *  - The SQ and CQ rings are shared memory. We own the SQ tail and the CQ
 *    head; the kernel owns the SQ head and the CQ tail. Reading the other
 *    side's index is a load-acquire, publishing ours a store-release: that
 *    orders the SQE contents before the tail the kernel reads, and our
 *    reads of CQEs before the head that lets the kernel reuse them.
 *  - The SQ index array is set to the identity once, so SQE slot i is
 *    submitted as entry i, as liburing does.
 *  - With IORING_SETUP_DEFER_TASKRUN completions are posted only when the
 *    task enters with IORING_ENTER_GETEVENTS, so every submit passes it.
 *  - With IORING_FEAT_NODROP an overflowing CQ is not lost: the kernel keeps
 *    the CQEs, sets IORING_SQ_CQ_OVERFLOW and flushes them on the next
 *    GETEVENTS enter (or answers EBUSY until the application reaps).
 *  - Python never fills an SQE: each prep call fills one whole.
 *  - ni_prep_send_bufs reads the iovecs straight from a Python list of
 *    bytes-like objects (the buffer protocol, as socket.sendmsg does):
 *    filling them field by field through cffi cost ~5x more. cffi drops the
 *    GIL around calls, so it takes it back while it touches the objects.
 *    The objects must stay alive until the CQE (their requests hold them).
 *  - ni_reap_list hands CQEs to Python as (user_data, res, flags) tuples
 *    appended to a list: one call per reap, where reading a struct array
 *    through cffi cost three attribute lookups per CQE.
 */
#include <Python.h>   /* cffi compiles this file into a CPython extension: the C API is there */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>
#include <signal.h>
#include <time.h>
#include <linux/io_uring.h>

/* What the 6.1 uapi headers on the build machine may lack. */
#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif
#ifndef IORING_SEND_ZC_REPORT_USAGE
#define IORING_SEND_ZC_REPORT_USAGE (1U << 3)
#endif
#ifndef IORING_NOTIF_USAGE_ZC_COPIED
#define IORING_NOTIF_USAGE_ZC_COPIED (1U << 31)
#endif
#ifndef IORING_CQE_F_NOTIF
#define IORING_CQE_F_NOTIF (1U << 3)
#endif
#ifndef IORING_ASYNC_CANCEL_FD
#define IORING_ASYNC_CANCEL_ALL (1U << 0)
#define IORING_ASYNC_CANCEL_FD (1U << 1)
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

#define NI_IOV_MAX 64

struct ni_send {
    struct iovec iov[NI_IOV_MAX];
    unsigned iovcnt;
    int fd;
    unsigned msg_flags;
    int zerocopy;
    uint64_t user_data;
    struct msghdr msg;
};

struct ni_ring {
    int fd;
    unsigned setup_flags;
    unsigned features;
    /* SQ */
    unsigned *sq_khead, *sq_ktail, *sq_kflags, *sq_array;
    unsigned sq_mask, sq_entries;
    unsigned sqe_tail;              /* next SQE to fill; published at submit */
    struct io_uring_sqe *sqes;
    /* CQ */
    unsigned *cq_khead, *cq_ktail;
    unsigned cq_mask, cq_entries;
    struct io_uring_cqe *cqes;
    /* mappings */
    void *sq_ptr, *cq_ptr;
    size_t sq_len, cq_len, sqes_len;
};

#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
}

static int sys_enter(int fd, unsigned to_submit, unsigned min_complete, unsigned flags, void *arg, size_t argsz)
{
    return (int)syscall(__NR_io_uring_enter, fd, to_submit, min_complete, flags, arg, argsz);
}

static int sys_register(int fd, unsigned opcode, void *arg, unsigned nr_args)
{
    return (int)syscall(__NR_io_uring_register, fd, opcode, arg, nr_args);
}

static void ring_unmap(struct ni_ring *r)
{
    if (r->sqes && r->sqes != MAP_FAILED)
        munmap(r->sqes, r->sqes_len);
    if (r->cq_ptr && r->cq_ptr != MAP_FAILED && r->cq_ptr != r->sq_ptr)
        munmap(r->cq_ptr, r->cq_len);
    if (r->sq_ptr && r->sq_ptr != MAP_FAILED)
        munmap(r->sq_ptr, r->sq_len);
}

int ni_ring_create(struct ni_ring **out, unsigned entries, unsigned cq_entries, unsigned flags)
{
    struct io_uring_params p;
    struct ni_ring *r;
    int err;

    *out = NULL;
    r = calloc(1, sizeof(*r));
    if (!r)
        return -ENOMEM;
    memset(&p, 0, sizeof(p));
    p.flags = flags;
    if (cq_entries) {
        p.flags |= IORING_SETUP_CQSIZE;
        p.cq_entries = cq_entries;
    }
    r->fd = sys_setup(entries, &p);
    if (r->fd < 0) {
        err = -errno;
        free(r);
        return err;
    }
    r->setup_flags = p.flags;
    r->features = p.features;

    r->sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    r->cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        if (r->cq_len > r->sq_len)
            r->sq_len = r->cq_len;
        r->cq_len = r->sq_len;
    }
    r->sq_ptr = mmap(NULL, r->sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQ_RING);
    if (r->sq_ptr == MAP_FAILED)
        goto fail;
    if (p.features & IORING_FEAT_SINGLE_MMAP) {
        r->cq_ptr = r->sq_ptr;
    } else {
        r->cq_ptr = mmap(NULL, r->cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_CQ_RING);
        if (r->cq_ptr == MAP_FAILED)
            goto fail;
    }
    r->sqes_len = p.sq_entries * sizeof(struct io_uring_sqe);
    r->sqes = mmap(NULL, r->sqes_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, r->fd, IORING_OFF_SQES);
    if (r->sqes == MAP_FAILED)
        goto fail;

    r->sq_khead = (unsigned *)((char *)r->sq_ptr + p.sq_off.head);
    r->sq_ktail = (unsigned *)((char *)r->sq_ptr + p.sq_off.tail);
    r->sq_kflags = (unsigned *)((char *)r->sq_ptr + p.sq_off.flags);
    r->sq_array = (unsigned *)((char *)r->sq_ptr + p.sq_off.array);
    r->sq_mask = *(unsigned *)((char *)r->sq_ptr + p.sq_off.ring_mask);
    r->sq_entries = *(unsigned *)((char *)r->sq_ptr + p.sq_off.ring_entries);
    r->cq_khead = (unsigned *)((char *)r->cq_ptr + p.cq_off.head);
    r->cq_ktail = (unsigned *)((char *)r->cq_ptr + p.cq_off.tail);
    r->cq_mask = *(unsigned *)((char *)r->cq_ptr + p.cq_off.ring_mask);
    r->cq_entries = *(unsigned *)((char *)r->cq_ptr + p.cq_off.ring_entries);
    r->cqes = (struct io_uring_cqe *)((char *)r->cq_ptr + p.cq_off.cqes);
    for (unsigned i = 0; i < r->sq_entries; i++)
        r->sq_array[i] = i;
    r->sqe_tail = *r->sq_ktail;
    *out = r;
    return 0;
fail:
    err = -errno;
    ring_unmap(r);
    close(r->fd);
    free(r);
    return err;
}

void ni_ring_destroy(struct ni_ring *r)
{
    if (!r)
        return;
    ring_unmap(r);
    close(r->fd);   /* the kernel cancels whatever is still in flight */
    free(r);
}

int ni_ring_fd(struct ni_ring *r) { return r->fd; }
unsigned ni_ring_setup_flags(struct ni_ring *r) { return r->setup_flags; }
unsigned ni_ring_features(struct ni_ring *r) { return r->features; }
unsigned ni_ring_sq_entries(struct ni_ring *r) { return r->sq_entries; }
unsigned ni_ring_cq_entries(struct ni_ring *r) { return r->cq_entries; }

unsigned ni_sq_space(struct ni_ring *r)
{
    return r->sq_entries - (r->sqe_tail - load_acquire(r->sq_khead));
}

unsigned ni_sq_pending(struct ni_ring *r)
{
    return r->sqe_tail - load_acquire(r->sq_khead);
}

int ni_cq_overflowed(struct ni_ring *r)
{
    return (load_acquire(r->sq_kflags) & IORING_SQ_CQ_OVERFLOW) != 0;
}

int ni_cq_ready(struct ni_ring *r)
{
    return (int)(load_acquire(r->cq_ktail) - *r->cq_khead);
}

static struct io_uring_sqe *get_sqe(struct ni_ring *r)
{
    struct io_uring_sqe *sqe;

    if (r->sqe_tail - load_acquire(r->sq_khead) >= r->sq_entries)
        return NULL;
    sqe = &r->sqes[r->sqe_tail & r->sq_mask];
    r->sqe_tail++;
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

int ni_prep_nop(struct ni_ring *r, uint64_t user_data)
{
    struct io_uring_sqe *sqe = get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_NOP;
    sqe->user_data = user_data;
    return 0;
}

int ni_prep_poll_add(struct ni_ring *r, int fd, unsigned mask, uint64_t user_data)
{
    struct io_uring_sqe *sqe = get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = fd;
    sqe->poll32_events = mask;   /* little-endian hosts only, as this library */
    sqe->user_data = user_data;
    return 0;
}

int ni_prep_cancel_fd(struct ni_ring *r, int fd, uint64_t user_data)
{
    struct io_uring_sqe *sqe = get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = fd;
    sqe->cancel_flags = IORING_ASYNC_CANCEL_FD | IORING_ASYNC_CANCEL_ALL;
    sqe->user_data = user_data;
    return 0;
}

int ni_prep_cancel(struct ni_ring *r, uint64_t target, uint64_t user_data)
{
    struct io_uring_sqe *sqe = get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = user_data;
    return 0;
}

int ni_prep_send(struct ni_ring *r, struct ni_send *s)
{
    struct io_uring_sqe *sqe;

    if (s->iovcnt == 0 || s->iovcnt > NI_IOV_MAX)
        return -EINVAL;
    sqe = get_sqe(r);
    if (!sqe)
        return -EBUSY;
    memset(&s->msg, 0, sizeof(s->msg));
    s->msg.msg_iov = s->iov;
    s->msg.msg_iovlen = s->iovcnt;
    sqe->opcode = s->zerocopy ? IORING_OP_SENDMSG_ZC : IORING_OP_SENDMSG;
    sqe->fd = s->fd;
    sqe->addr = (uint64_t)(uintptr_t)&s->msg;
    sqe->len = 1;
    sqe->msg_flags = s->msg_flags;
    if (s->zerocopy)
        sqe->ioprio = IORING_SEND_ZC_REPORT_USAGE;
    sqe->user_data = s->user_data;
    return 0;
}

int ni_prep_send_bufs(struct ni_ring *r, struct ni_send *s, uintptr_t buf_list)
{
    PyGILState_STATE gil;
    PyObject *list = (PyObject *)buf_list;
    Py_ssize_t n, i;
    int rc = 0;

    if (ni_sq_space(r) == 0)
        return -EBUSY;
    gil = PyGILState_Ensure();
    if (!PyList_CheckExact(list)) {
        rc = -EINVAL;
        goto out;
    }
    n = PyList_GET_SIZE(list);
    if (n == 0 || n > NI_IOV_MAX) {
        rc = -EINVAL;
        goto out;
    }
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
            rc = -EINVAL;
            goto out;
        }
        s->iov[i].iov_base = view.buf;
        s->iov[i].iov_len = (size_t)view.len;
        PyBuffer_Release(&view);
    }
    s->iovcnt = (unsigned)n;
out:
    PyGILState_Release(gil);
    return rc ? rc : ni_prep_send(r, s);
}

int ni_submit(struct ni_ring *r, unsigned wait_nr, int64_t timeout_ns)
{
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    unsigned to_submit, flags = IORING_ENTER_GETEVENTS;
    void *argp = NULL;
    size_t argsz = 0;
    int ret;

    to_submit = r->sqe_tail - load_acquire(r->sq_khead);
    store_release(r->sq_ktail, r->sqe_tail);
    if (wait_nr && timeout_ns >= 0) {
        memset(&arg, 0, sizeof(arg));
        ts.tv_sec = timeout_ns / 1000000000;
        ts.tv_nsec = timeout_ns % 1000000000;
        arg.ts = (uint64_t)(uintptr_t)&ts;
        arg.sigmask_sz = _NSIG / 8;
        argp = &arg;
        argsz = sizeof(arg);
        flags |= IORING_ENTER_EXT_ARG;
    }
    ret = sys_enter(r->fd, to_submit, wait_nr, flags, argp, argsz);
    return ret < 0 ? -errno : ret;
}

int ni_reap_list(struct ni_ring *r, uintptr_t list_id, unsigned max)
{
    PyObject *list = (PyObject *)list_id;
    PyGILState_STATE gil = PyGILState_Ensure();
    unsigned head = *r->cq_khead, tail = load_acquire(r->cq_ktail), n = 0;
    int rc = 0;

    if (!PyList_CheckExact(list)) {
        rc = -EINVAL;
        goto out;
    }
    while (head != tail && n < max) {
        struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];
        PyObject *t = Py_BuildValue("(KiI)", (unsigned long long)cqe->user_data, (int)cqe->res,
                                    (unsigned)cqe->flags);

        if (t == NULL || PyList_Append(list, t) < 0) {
            /* Out of memory: this CQE stays in the ring for the next reap, and
             * the ones already appended are reported, not lost with an error. */
            Py_XDECREF(t);
            PyErr_Clear();
            if (n == 0)
                rc = -ENOMEM;
            break;
        }
        Py_DECREF(t);
        head++;
        n++;
    }
    store_release(r->cq_khead, head);
out:
    PyGILState_Release(gil);
    return rc ? rc : (int)n;
}

int ni_register_eventfd(struct ni_ring *r, int efd)
{
    return sys_register(r->fd, IORING_REGISTER_EVENTFD, &efd, 1) < 0 ? -errno : 0;
}

int ni_probe_opcode(struct ni_ring *r, unsigned opcode)
{
    size_t len = sizeof(struct io_uring_probe) + 256 * sizeof(struct io_uring_probe_op);
    struct io_uring_probe *probe = calloc(1, len);
    int ret;

    if (!probe)
        return -ENOMEM;
    ret = sys_register(r->fd, IORING_REGISTER_PROBE, probe, 256);
    if (ret < 0) {
        ret = -errno;
    } else if (opcode > probe->last_op) {
        ret = 0;
    } else {
        ret = (probe->ops[opcode].flags & IO_URING_OP_SUPPORTED) ? 1 : 0;
    }
    free(probe);
    return ret;
}
