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
 *  - Nothing here touches a Python object: what does (filling iovecs from
 *    a list of buffers, reaping CQEs into a list, copying received bytes
 *    into a caller's buffer) is bridge.c, a CPython extension whose
 *    arguments are declared Python objects. cffi cannot declare a
 *    PyObject * parameter, and ffi.from_buffer per iovec cost ~5x more.
 *  - Layouts both see, and the facts about provided buffers, are in ring.h.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <signal.h>
#include <time.h>
#include "ring.h"

static int sys_setup(unsigned entries, struct io_uring_params *p)
{
    return (int)syscall(__NR_io_uring_setup, entries, p);
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
    r->owner = pthread_self();

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

int ni_prep_nop(struct ni_ring *r, uint64_t user_data)
{
    struct io_uring_sqe *sqe = ni_get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_NOP;
    sqe->user_data = user_data;
    return 0;
}

int ni_prep_poll_add(struct ni_ring *r, int fd, unsigned mask, uint64_t user_data)
{
    struct io_uring_sqe *sqe = ni_get_sqe(r);

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
    struct io_uring_sqe *sqe = ni_get_sqe(r);

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
    struct io_uring_sqe *sqe = ni_get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_ASYNC_CANCEL;
    sqe->fd = -1;
    sqe->addr = target;
    sqe->user_data = user_data;
    return 0;
}

int ni_prep_send(struct ni_ring *r, struct ni_send *s) { return ni_prep_send_inline(r, s); }

int ni_submit(struct ni_ring *r, unsigned wait_nr, int64_t timeout_ns) { return ni_submit_inline(r, wait_nr, timeout_ns); }

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

void ni_ring_counters(struct ni_ring *r, uint64_t out[3])
{
    out[0] = r->n_enter;
    out[1] = r->n_sqe;
    out[2] = r->n_cqe;
}

/* -- provided buffers and multishot operations -------------------------- */

int ni_bufring_create(struct ni_ring *r, unsigned bgid, unsigned entries, unsigned buf_size,
                      struct ni_bufring **out)
{
    struct io_uring_buf_reg reg;
    struct ni_bufring *br;
    long page = sysconf(_SC_PAGESIZE);
    int err;

    *out = NULL;
    if (entries == 0 || entries > 32768 || (entries & (entries - 1)) || buf_size == 0)
        return -EINVAL;
    br = calloc(1, sizeof(*br));
    if (!br)
        return -ENOMEM;
    br->ring_len = ((entries * sizeof(struct io_uring_buf)) + page - 1) & ~(size_t)(page - 1);
    br->ring = mmap(NULL, br->ring_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br->ring == MAP_FAILED) {
        err = -errno;
        free(br);
        return err;
    }
    /* The buffers: touched only as data lands, so an idle group costs address space only. */
    br->bufs_len = (size_t)entries * buf_size;
    br->bufs = mmap(NULL, br->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (br->bufs == MAP_FAILED) {
        err = -errno;
        munmap(br->ring, br->ring_len);
        free(br);
        return err;
    }
    br->pos = calloc(entries, sizeof(*br->pos));
    br->spare = calloc(entries, sizeof(*br->spare));
    if (!br->pos || !br->spare) {
        free(br->pos);
        free(br->spare);
        munmap(br->bufs, br->bufs_len);
        munmap(br->ring, br->ring_len);
        free(br);
        return -ENOMEM;
    }
    br->r = r;
    br->entries = entries;
    br->mask = entries - 1;
    br->buf_size = buf_size;
    br->bgid = bgid;
    br->want = br->low = entries < NI_BUF_WANT_MIN ? entries : NI_BUF_WANT_MIN;
    memset(&reg, 0, sizeof(reg));
    reg.ring_addr = (uint64_t)(uintptr_t)br->ring;
    reg.ring_entries = entries;
    reg.bgid = (uint16_t)bgid;
    if (sys_register(r->fd, IORING_REGISTER_PBUF_RING, &reg, 1) < 0) {
        err = -errno;
        free(br->pos);
        free(br->spare);
        munmap(br->bufs, br->bufs_len);
        munmap(br->ring, br->ring_len);
        free(br);
        return err;
    }
    for (unsigned i = 0; i < entries; i++)  /* the first `want` into the ring, the rest spare */
        ni_bufring_put(br, (uint16_t)i);
    *out = br;
    return 0;
}

/* Unregister br from r; its memory stays until _bridge.bufring_free. Only the syscall: this
 * runs without the GIL (cffi releases it), so it must not touch what a lent buffer's return does. */
void ni_bufring_unregister(struct ni_ring *r, struct ni_bufring *br)
{
    struct io_uring_buf_reg reg;

    memset(&reg, 0, sizeof(reg));
    reg.bgid = (uint16_t)br->bgid;
    sys_register(r->fd, IORING_UNREGISTER_PBUF_RING, &reg, 1);
}

void ni_bufring_set_bundle(struct ni_bufring *br, int on) { br->bundle = on; }

unsigned ni_bufring_avail(struct ni_bufring *br) { return br->avail; }

unsigned ni_bufring_lent(struct ni_bufring *br) { return br->lent; }

void ni_bufring_working_set(struct ni_bufring *br, uint64_t out[4])
{
    out[0] = br->want;
    out[1] = br->nspare;
    out[2] = br->n_grow;
    out[3] = br->n_shrink;
}

int ni_rxq_create(struct ni_bufring *br, int fd, uint64_t py_ud, struct ni_rxq **out)
{
    struct ni_rxq *q = calloc(1, sizeof(*q));

    *out = NULL;
    if (!q)
        return -ENOMEM;
    q->bid = calloc(br->entries, sizeof(*q->bid));
    q->len = calloc(br->entries, sizeof(*q->len));
    if (!q->bid || !q->len) {
        free(q->bid);
        free(q->len);
        free(q);
        return -ENOMEM;
    }
    q->br = br;
    q->fd = fd;
    q->py_ud = py_ud;
    q->cap = br->entries;
    *out = q;
    return 0;
}

uint64_t ni_rxq_user_data(struct ni_rxq *q) { return (uint64_t)(uintptr_t)q | NI_UD_RECV; }

/* Copy and consume up to n held bytes (bridge.c does this for Python buffers). */
size_t ni_rxq_take(struct ni_rxq *q, char *dst, size_t n) { return ni_rxq_copy(q, dst, n); }

int ni_prep_recv_multishot(struct ni_ring *r, struct ni_rxq *q)
{
    struct io_uring_sqe *sqe = ni_get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_RECV;
    sqe->fd = q->fd;
    sqe->ioprio = IORING_RECV_MULTISHOT | (q->br->bundle ? IORING_RECVSEND_BUNDLE : 0);
    sqe->flags = IOSQE_BUFFER_SELECT;
    sqe->buf_group = (uint16_t)q->br->bgid;
    sqe->user_data = ni_rxq_user_data(q);
    q->armed = 1;
    q->nobufs = 0;
    q->poll = 0;
    return 0;
}

/* Direct receive's watch on q's socket: a multishot POLL_ADD (IORING_POLL_ADD_MULTI, 5.13), its
 * CQEs reaped onto q as the receive's are (the same user_data). Only once q's receive has ended:
 * -EALREADY while it (or the poll) is armed, whose buffers would fill behind the reads' backs. */
int ni_prep_rxq_poll(struct ni_ring *r, struct ni_rxq *q)
{
    struct io_uring_sqe *sqe;

    if (q->armed)
        return -EALREADY;
    if (!(sqe = ni_get_sqe(r)))
        return -EBUSY;
    sqe->opcode = IORING_OP_POLL_ADD;
    sqe->fd = q->fd;
    sqe->poll32_events = POLLIN | POLLRDHUP;  /* (the kernel adds POLLERR and POLLHUP) */
    sqe->len = IORING_POLL_ADD_MULTI;
    sqe->user_data = ni_rxq_user_data(q);
    q->armed = 1;
    q->poll = 1;
    q->more = 0;
    return 0;
}

int ni_prep_accept_multishot(struct ni_ring *r, int fd, unsigned accept_flags, uint64_t user_data)
{
    struct io_uring_sqe *sqe = ni_get_sqe(r);

    if (!sqe)
        return -EBUSY;
    sqe->opcode = IORING_OP_ACCEPT;
    sqe->fd = fd;
    sqe->ioprio = IORING_ACCEPT_MULTISHOT;
    sqe->accept_flags = accept_flags;
    sqe->user_data = user_data;
    return 0;
}
