/*
 * netimpl's io_uring core, the part both compiled modules see: the ring
 * (ring.c, built by cffi) and the bridge to Python objects (bridge.c, a
 * CPython extension). Layouts and the few inline helpers they share.
 *
 * Facts about provided-buffer rings (io_uring_register_buf_ring(3),
 * io_uring_setup_buf_ring(3), io_uring_prep_recv_multishot(3)):
 *  - A buffer ring is an array of (addr, len, bid) entries in memory we map
 *    and register (IORING_REGISTER_PBUF_RING, Linux 5.19). The kernel takes
 *    entries from its head; we add at the tail, publishing the tail with a
 *    store-release (the tail overlays the first entry's resv field).
 *  - A multishot receive (IORING_OP_RECV, IORING_RECV_MULTISHOT, 6.0) with
 *    IOSQE_BUFFER_SELECT posts one CQE per chunk received, each naming the
 *    buffer it filled (IORING_CQE_F_BUFFER, bid in the upper 16 bits), with
 *    IORING_CQE_F_MORE while it stays armed. It ends (no F_MORE) at EOF
 *    (res 0), on an error (res < 0: -ENOBUFS when the ring ran dry,
 *    -ECANCELED when cancelled) and sometimes for the kernel's own reasons
 *    with res > 0: then it must be armed again.
 *  - A buffer the kernel filled is ours until we put it back in the ring.
 *    So the buffers a socket holds are its recv pipe: reads copy out of
 *    them, and each goes back to the ring once read to its end, or a
 *    read lends one whole to the caller (Sock.recv_next), and it goes back
 *    when the caller lets go of it. Lent buffers outlive their ring's
 *    unregistering: its memory is freed with the last of them. At most
 *    half a ring is lent at a time (NI_LEND_SHARE): beyond that a read
 *    copies, so views kept for long never starve the receives.
 *  - Everything that changes a buffer ring from our side runs with the GIL
 *    held (bridge.c), since a lent buffer comes back in whatever thread
 *    drops its last view; only the (un)registering syscalls do not.
 */
#ifndef NETIMPL_RING_H
#define NETIMPL_RING_H

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/syscall.h>
#include <signal.h>
#include <unistd.h>
#include <linux/io_uring.h>

#include "../copy.h"

#ifndef POLLRDHUP
#define POLLRDHUP 0x2000  /* <poll.h> has it with _GNU_SOURCE only */
#endif

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
#ifndef IORING_RECVSEND_BUNDLE
#define IORING_RECVSEND_BUNDLE (1U << 4)
#endif
#ifndef IORING_FEAT_RECVSEND_BUNDLE
#define IORING_FEAT_RECVSEND_BUNDLE (1U << 14)
#endif
#ifndef __NR_io_uring_setup
#define __NR_io_uring_setup 425
#define __NR_io_uring_enter 426
#define __NR_io_uring_register 427
#endif

#define NI_IOV_MAX 64

/* user_data of a multishot receive: its ni_rxq's address with this bit set. Every other
 * user_data is a small number of Python's op table, so the two never meet. */
#define NI_UD_RECV (1ULL << 63)

/* ni_rxq.end */
#define NI_RX_EOF 1

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
    pthread_t owner;                /* the thread that made it: with SINGLE_ISSUER, its one submitter */
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
    /* counters, for tests and for measuring */
    uint64_t n_enter, n_sqe, n_cqe;
};

/* A provided-buffer ring: `entries` buffers of `buf_size` bytes, group id `bgid`. */
struct ni_bufring {
    struct ni_ring *r;              /* the ring it is registered with */
    struct io_uring_buf_ring *ring;
    size_t ring_len;
    char *bufs;
    size_t bufs_len;
    unsigned entries, mask, buf_size, bgid;
    uint16_t tail;                  /* ours; published to ring->tail */
    unsigned avail;                 /* buffers in the ring, not yet filled by the kernel */
    /* The working set (see ni_bufring_settle): `want` buffers are kept in the ring, the other
     * free ones wait in `spare`, last freed on top. Whenever avail < want, spare is empty. */
    unsigned want;
    uint16_t *spare;
    unsigned nspare;
    unsigned low;                   /* the fewest in the ring at a settle, this window */
    unsigned taken;                 /* buffers the kernel filled, this window */
    int drained;                    /* a receive found the ring empty (ENOBUFS) since the last settle */
    uint64_t n_grow, n_shrink;      /* times `want` doubled and halved: for tests and measuring */
    int bundle;                     /* receives ask for IORING_RECVSEND_BUNDLE */
    uint16_t *pos;                  /* per bid: the ring slot it was last put in */
    unsigned lent;                  /* buffers lent to callers (ni_rxq_lend), not given back yet */
    int dead;                       /* unregistered: freed when the last lent buffer comes back */
};

/* One socket's receive: the buffers it holds, oldest first, and how its stream ended. */
struct ni_rxq {
    struct ni_bufring *br;
    int fd;
    uint64_t py_ud;                 /* the user_data Python's op table knows this receive by */
    uint64_t bytes;                 /* unread bytes held */
    int armed;                      /* a multishot receive (or, poll set, its readiness poll) is in the kernel */
    int end;                        /* 0, NI_RX_EOF, or -errno: delivered after the held bytes */
    int nobufs;                     /* the last multishot ended for want of buffers */
    /* Direct receive (ni_rxq_note): a socket whose reads return a buffer's worth or more on
     * average is watched by a multishot poll instead, and read by recv(2) into the caller's buffer. */
    int adaptive;                   /* reads may switch it (UringOpts.direct_recv) */
    int bulk;                       /* the mode its reads want: 1 direct, 0 the multishot receive */
    int poll;                       /* the mode it is in: the operation armed (or last armed) is the poll */
    int more;                       /* poll: readiness reported since a read last drained the socket */
    int hup;                        /* poll: the peer shut down or the socket failed; readable for good */
    int switching;                  /* Python cancelled the armed operation to change modes */
    int64_t avg;                    /* ni_rxq_note's average of the bytes a read returns */
    uint64_t switches;              /* times the wanted mode changed: for tests and measuring */
    unsigned gen;                   /* the reap that last reported it */
    uint64_t direct;                /* bytes read by recv(2) straight into a caller's buffer (ni_rxq_read) */
    uint64_t direct_calls;          /* recv(2) calls reads made (those, and with no receive armed) */
    void *sock;                     /* bridge.c's: the socket (a PyObject *, borrowed, while in its
                                     * group) a poll's reap files readable itself; NULL until bound */
    unsigned head, count, cap;      /* the held buffers: a ring of cap (bid, len) */
    uint32_t off;                   /* bytes of the head buffer already read */
    uint16_t *bid;
    uint32_t *len;
};

/* ring.c's calls, for C that links it (the bench's io_uring floor, bench/floor_uring.c); Python
 * sees them through ring.cdef. Each int-returning call returns 0 or a count, or -errno. */
int ni_ring_create(struct ni_ring **out, unsigned entries, unsigned cq_entries, unsigned flags);
void ni_ring_destroy(struct ni_ring *r);
unsigned ni_ring_features(struct ni_ring *r);
unsigned ni_sq_space(struct ni_ring *r);
int ni_cq_overflowed(struct ni_ring *r);
int ni_prep_poll_add(struct ni_ring *r, int fd, unsigned mask, uint64_t user_data);
int ni_bufring_create(struct ni_ring *r, unsigned bgid, unsigned entries, unsigned buf_size,
                      struct ni_bufring **out);
void ni_bufring_set_bundle(struct ni_bufring *br, int on);
int ni_rxq_create(struct ni_bufring *br, int fd, uint64_t py_ud, struct ni_rxq **out);
int ni_prep_recv_multishot(struct ni_ring *r, struct ni_rxq *q);
int ni_prep_accept_multishot(struct ni_ring *r, int fd, unsigned accept_flags, uint64_t user_data);

#define load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)

static inline struct io_uring_sqe *ni_get_sqe(struct ni_ring *r)
{
    struct io_uring_sqe *sqe;

    if (r->sqe_tail - load_acquire(r->sq_khead) >= r->sq_entries)
        return NULL;
    sqe = &r->sqes[r->sqe_tail & r->sq_mask];
    r->sqe_tail++;
    memset(sqe, 0, sizeof(*sqe));
    return sqe;
}

/* SENDMSG or SENDMSG_ZC of s's iovecs. */
static inline int ni_prep_send_inline(struct ni_ring *r, struct ni_send *s)
{
    struct io_uring_sqe *sqe;

    if (s->iovcnt == 0 || s->iovcnt > NI_IOV_MAX)
        return -EINVAL;
    sqe = ni_get_sqe(r);
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

/* Publish the prepared SQEs and enter (GETEVENTS always: DEFER_TASKRUN posts completions only then);
 * with wait_nr, wait up to timeout_ns for that many CQEs. The SQEs taken, or -errno. */
static inline int ni_submit_inline(struct ni_ring *r, unsigned wait_nr, int64_t timeout_ns)
{
    struct io_uring_getevents_arg arg;
    struct __kernel_timespec ts;
    unsigned to_submit, flags = IORING_ENTER_GETEVENTS;
    void *argp = NULL;
    size_t argsz = 0;
    int ret;

    to_submit = r->sqe_tail - load_acquire(r->sq_khead);
    store_release(r->sq_ktail, r->sqe_tail);
    r->n_enter++;
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
    ret = (int)syscall(__NR_io_uring_enter, r->fd, to_submit, wait_nr, flags, argp, argsz);
    if (ret < 0)
        return -errno;
    r->n_sqe += (unsigned)ret;
    return ret;
}

/* The fewest buffers a ring keeps published (all of them in a smaller ring). */
#define NI_BUF_WANT_MIN 64
/* `want` halves when, over a window of NI_BUF_WINDOW x want buffers filled, the ring never
 * fell below half full at a settle. */
#define NI_BUF_WINDOW 4

static inline void ni_bufring_publish(struct ni_bufring *br, uint16_t bid)
{
    struct io_uring_buf *b = &br->ring->bufs[br->tail & br->mask];

    b->addr = (uint64_t)(uintptr_t)(br->bufs + (size_t)bid * br->buf_size);
    b->len = br->buf_size;
    b->bid = bid;
    br->pos[bid] = br->tail;
    br->tail++;
    br->avail++;
    store_release(&br->ring->tail, br->tail);
}

/* A free buffer: into the ring while it holds fewer than `want`, else onto the spare stack. */
static inline void ni_bufring_put(struct ni_bufring *br, uint16_t bid)
{
    if (br->avail < br->want)
        ni_bufring_publish(br, bid);
    else
        br->spare[br->nspare++] = bid;
}

/* Publish spare buffers, the last freed (the likeliest still in cache) first, up to `want`. */
static inline void ni_bufring_top_up(struct ni_bufring *br)
{
    while (br->avail < br->want && br->nspare)
        ni_bufring_publish(br, br->spare[--br->nspare]);
}

/*
 * After a reap: size the working set. The kernel takes provided buffers in ring order, so a
 * ring that published all its buffers would have every receive land in the one least recently
 * used: with 512 x 16 KiB that is 8 MiB swept through for every 8 MiB received, and both
 * copies (the kernel's in, ours out) miss the cache. So the ring publishes only `want`
 * buffers, as many as its receives have lately needed between two reaps: doubled when a reap
 * found it drained (a receive may have ended with ENOBUFS, and is re-armed) and spare ones
 * are left, halved when for a window it never fell below half.
 */
static inline void ni_bufring_settle(struct ni_bufring *br)
{
    if (br->avail == 0 || br->drained) {
        if (br->want < br->entries && br->nspare) {  /* with none spare, the rest are held: nothing to add */
            br->want = br->want * 2 < br->entries ? br->want * 2 : br->entries;
            br->n_grow++;
        }
        br->drained = 0;
        br->low = 0;
    } else if (br->avail < br->low) {
        br->low = br->avail;
    }
    if (br->taken >= NI_BUF_WINDOW * br->want) {
        if (br->low > br->want / 2 && br->want > NI_BUF_WANT_MIN) {
            br->want /= 2;
            br->n_shrink++;
        }
        br->taken = 0;
        br->low = br->want;
    }
    ni_bufring_top_up(br);
}

/* k buffers the kernel filled (settled after the reap). */
static inline void ni_bufring_took(struct ni_bufring *br, unsigned k)
{
    br->avail -= k;
    br->taken += k;
}

static inline void ni_rxq_hold(struct ni_rxq *q, uint16_t bid, uint32_t len)
{
    unsigned i = (q->head + q->count) % q->cap;

    q->bid[i] = bid;
    q->len[i] = len;
    q->count++;
    q->bytes += len;
}

/* A CQE of q's multishot receive (keep its buffers, note how it ended) or of its readiness
 * poll (note the socket readable).
 * A bundle (IORING_RECVSEND_BUNDLE) names only its first buffer: the kernel took
 * consecutive ring slots from there, each filled whole but the last, so the slots
 * from that bid's position give the others (the ring entries keep their bids). */
static inline void ni_rxq_cqe(struct ni_rxq *q, int res, unsigned flags)
{
    if (q->poll) {  /* the readiness poll's: res is a poll mask, or -errno once it ended */
        if (res != -ECANCELED)
            q->more = 1;  /* readable, or a failure a read reports */
        if (res > 0 && (res & (POLLRDHUP | POLLHUP | POLLERR)))
            q->hup = 1;   /* an EOF or error behind the bytes: no read drains that */
        if (!(flags & IORING_CQE_F_MORE))
            q->armed = q->switching = 0;
        return;
    }
    if (flags & IORING_CQE_F_BUFFER) {
        struct ni_bufring *br = q->br;
        uint16_t bid = (uint16_t)(flags >> IORING_CQE_BUFFER_SHIFT);

        if (res <= 0) {
            ni_bufring_took(br, 1);
            ni_bufring_put(br, bid);
        } else if (res <= (int)br->buf_size) {
            ni_bufring_took(br, 1);
            ni_rxq_hold(q, bid, (uint32_t)res);
        } else {
            uint16_t slot = br->pos[bid];
            uint32_t left = (uint32_t)res;

            while (left) {
                uint32_t k = left < br->buf_size ? left : br->buf_size;

                ni_bufring_took(br, 1);
                ni_rxq_hold(q, br->ring->bufs[slot & br->mask].bid, k);
                slot++;
                left -= k;
            }
        }
    }
    if (!(flags & IORING_CQE_F_MORE)) {
        q->armed = 0;
        q->switching = 0;
        if (res == 0) {
            if (!q->end)
                q->end = NI_RX_EOF;
        } else if (res == -ENOBUFS) {
            q->nobufs = 1;
            q->br->drained = 1;
        } else if (res < 0 && res != -ECANCELED && res != -EINTR && !q->end) {
            q->end = res;
        }
    }
}

/* Lend no more than entries / NI_LEND_SHARE of a ring's buffers at a time. */
#define NI_LEND_SHARE 2

/* q's oldest held buffer (q must hold one): where its unread part starts, *len bytes of it. */
static inline char *ni_rxq_peek(struct ni_rxq *q, uint16_t *bid, uint32_t *len)
{
    unsigned h = q->head;

    *bid = q->bid[h];
    *len = q->len[h] - q->off;
    return q->br->bufs + (size_t)q->bid[h] * q->br->buf_size + q->off;
}

/* Lend q's oldest held buffer (the one ni_rxq_peek names) to the caller: q forgets it, and it
 * is the ring's again only through ni_bufring_return. */
static inline void ni_rxq_lend(struct ni_rxq *q)
{
    q->bytes -= q->len[q->head] - q->off;
    q->head = (q->head + 1) % q->cap;
    q->count--;
    q->off = 0;
    q->br->lent++;
}

static inline void ni_bufring_free(struct ni_bufring *br)
{
    munmap(br->bufs, br->bufs_len);
    munmap(br->ring, br->ring_len);
    free(br->pos);
    free(br->spare);
    free(br);
}

/* A lent buffer given back: into the ring, or, the ring being gone, its memory freed with the
 * last (then 1, else 0). */
static inline int ni_bufring_return(struct ni_bufring *br, uint16_t bid)
{
    br->lent--;
    if (!br->dead) {
        ni_bufring_put(br, bid);
    } else if (!br->lent) {
        ni_bufring_free(br);
        return 1;
    }
    return 0;
}

/* Hand every buffer q holds back to the ring, unread: the bytes they held. */
static inline uint64_t ni_rxq_discard(struct ni_rxq *q)
{
    uint64_t n = q->bytes;

    while (q->count) {
        ni_bufring_put(q->br, q->bid[q->head]);
        q->head = (q->head + 1) % q->cap;
        q->count--;
    }
    q->bytes = 0;
    q->off = 0;
    return n;
}

/* Free q, its held buffers back to the ring. Its receive must have ended. With the GIL held
 * (_bridge.rxq_free), as every change to a buffer ring that a lent buffer's return makes too. */
static inline void ni_rxq_free(struct ni_rxq *q)
{
    ni_rxq_discard(q);
    free(q->bid);
    free(q->len);
    free(q);
}

/* Copy up to n held bytes to dst, handing each buffer read to its end back to the ring. */
static inline size_t ni_rxq_copy(struct ni_rxq *q, char *dst, size_t n)
{
    size_t got = 0;

    while (got < n && q->count) {
        unsigned h = q->head;
        uint32_t left = q->len[h] - q->off;
        size_t k = n - got < left ? n - got : left;

        ni_copy(dst + got, q->br->bufs + (size_t)q->bid[h] * q->br->buf_size + q->off, k);
        got += k;
        if (k == left) {
            ni_bufring_put(q->br, q->bid[h]);
            q->head = (h + 1) % q->cap;
            q->count--;
            q->off = 0;
        } else {
            q->off += (uint32_t)k;
        }
    }
    q->bytes -= got;
    return got;
}

/*
 * Whether recv(2) on q's socket returns, now, only bytes that come after every byte the ring
 * has filled for it. With DEFER_TASKRUN the kernel fills provided buffers only in task work,
 * run inside an io_uring_enter of the ring's one submitter (SINGLE_ISSUER: the thread that made
 * it); every CQE such an enter posted has been reaped onto its rxq once the CQ is empty and none
 * waits in overflow. So on that thread, which is not inside an enter while it runs this, with
 * the CQ empty, the socket holds only bytes no buffer has taken.
 */
static inline int ni_rxq_direct_ok(struct ni_rxq *q)
{
    struct ni_ring *r = q->br->r;

    return !q->end && (r->setup_flags & IORING_SETUP_DEFER_TASKRUN) && pthread_equal(r->owner, pthread_self()) &&
           *r->cq_khead == load_acquire(r->cq_ktail) && !(load_acquire(r->sq_kflags) & IORING_SQ_CQ_OVERFLOW);
}

/*
 * What a read of `got` bytes says about the mode q should be in (q->bulk). Through the buffers
 * every byte costs two copies, the kernel's and ours, and out of buffers that a fast stream
 * sweeps through the cache; in direct mode it costs the kernel's alone, but every read is a
 * system call, where the multishot receive takes many small messages with none. So the mode
 * follows the bytes a read returns, averaged (1/8 each, a read counted up to 4 buffers' worth):
 * direct from a buffer's worth (bulk payloads read into large buffers: NBD's writes, the
 * bench's write-like rows), the buffers again below a quarter of one (the hysteresis keeps a
 * socket from flapping between them).
 */
static inline void ni_rxq_note(struct ni_rxq *q, size_t got)
{
    int64_t bs = q->br->buf_size, n = (int64_t)got;

    if (!q->adaptive || !got)
        return;
    if (n > 4 * bs)
        n = 4 * bs;
    q->avg += (n - q->avg) / 8;
    if (q->bulk ? q->avg < bs / 4 : q->avg >= bs) {
        q->bulk = !q->bulk;
        q->switches++;
    }
}

/* q has something for a read: held bytes, its stream's end, or readiness not read yet (poll). */
static inline int ni_rxq_readable(const struct ni_rxq *q)
{
    return q->bytes || q->end || (q->poll && q->more);
}

/* recv(2) of up to n > 0 bytes into dst: the count, or -errno. In poll mode a read that found
 * fewer bytes than it had room for drained the socket: it is readable again when the poll says. */
static inline ssize_t ni_rxq_recv(struct ni_rxq *q, char *dst, size_t n)
{
    ssize_t k = recv(q->fd, dst, n, MSG_DONTWAIT);

    q->direct_calls++;
    if (k < 0)
        k = -errno;
    else
        q->direct += (uint64_t)k;
    /* (EOF and errors leave it, and so does a short read once the peer has shut down: the socket
     * stays readable, as a level-triggered epoll says) */
    if (q->poll && ((k > 0 && (size_t)k < n && !q->hup) || k == -EAGAIN || k == -EWOULDBLOCK))
        q->more = 0;
    return k;
}

/*
 * Up to n bytes into dst: the held ones, then recv(2) straight into the rest: always in poll
 * mode (no receive fills buffers, so the socket's bytes come after every held one), and through
 * the buffers when those were at least a whole buffer and dst has room for another. A receive
 * that filled a whole buffer says the stream runs faster than one buffer per pass, so more is
 * likely waiting in the socket: read into the caller's buffer, it costs the kernel's copy alone,
 * where through the provided buffers it costs that and ours (SPDK reads large receives past its
 * recv pipe too). EOF or an error met there is held as q's end, delivered after what this returns.
 */
static inline size_t ni_rxq_read(struct ni_rxq *q, char *dst, size_t n)
{
    size_t got = ni_rxq_copy(q, dst, n), bs = q->br->buf_size;
    int direct;
    ssize_t k;

    if (q->poll)
        direct = got < n && !q->end;
    else
        direct = got >= bs && n - got >= bs && ni_rxq_direct_ok(q);
    if (direct) {
        k = ni_rxq_recv(q, dst + got, n - got);
        if (k > 0)
            got += (size_t)k;
        else if (k == 0)
            q->end = NI_RX_EOF;
        else if (k != -EAGAIN && k != -EWOULDBLOCK && k != -EINTR)
            q->end = (int)k;
    }
    ni_rxq_note(q, got);
    return got;
}

#endif
