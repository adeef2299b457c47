/*
 * The io_uring floor of `python -m netimpl bench` (floor_uring.c): a plain
 * C server of the bench's two protocols on netimpl's own ring code
 * (uring/ring.c), making the kernel calls netimpl's uring backend makes
 * and nothing else. floor.c is the floor of the epoll design; this one is
 * the floor of the io_uring design, so that a row can say how much of
 * "uring against posix" is the kernel's and how much is ours.
 *
 * The kernel calls, as netimpl's uring group makes them (uring/group.py):
 *  - One ring per server: IORING_SETUP_SINGLE_ISSUER, DEFER_TASKRUN and
 *    SUBMIT_ALL (without the first two where the kernel refuses them), 256
 *    SQ entries, 8192 CQ entries, NODROP as the backstop.
 *  - A multishot ACCEPT on the listener; each accepted socket gets
 *    TCP_NODELAY and a multishot RECV into the server's provided-buffer
 *    ring: 512 buffers of 16 KiB, bundles where the kernel has them
 *    (IORING_FEAT_RECVSEND_BUNDLE), its working set sized after each reap
 *    (ni_bufring_settle) as the backend's is.
 *  - A loop pass is one io_uring_enter that waits for a completion, the
 *    reap (entering again while a reap reaches the 20 CQEs of task work an
 *    enter runs, IO_LOCAL_TW_DEFAULT_MAX), the application work of every
 *    socket that received, then the flush: with one socket to send on
 *    (DIRECT_SEND_MAX), sendmsg(2) at once; with more, one SENDMSG each,
 *    all in one enter, whose completions are reaped then.
 *  - What the kernel does not take waits for a one-shot POLL_ADD(POLLOUT)
 *    (netimpl uses a small epoll set there, for half-closed peers; the
 *    bench's clients never half-close).
 *
 * The application work is floor.c's:
 *  - rr: split each socket's received bytes into REQ-byte requests (a
 *    partial one is carried) and answer the complete ones of that pass
 *    with one RESP-byte reply each, one iovec per reply, at most NI_IOV_MAX
 *    iovecs per send as netimpl gathers them. The received bytes are in
 *    the provided buffers already (the kernel's one copy): nothing copies
 *    them again, and each buffer goes back to the ring at once.
 *  - bulk: keep one SENDMSG of FU_BULK_IOVS CHUNK-byte chunks in flight
 *    per client (MSG_WAITALL: the kernel finishes it), until the client
 *    goes.
 *
 * Facts that shape it:
 *  - A socket's slot is indexed by its fd, and the fd is closed only once
 *    its receive has ended and nothing of it is in flight, so a CQE's fd
 *    always names the socket it was for. An error on a send shuts the
 *    socket down, which ends its receive (EOF): one way to the close.
 *  - The server runs in the Python server process (cffi), as floor.c does,
 *    with the signal wakeup fd polled through the ring: a signal makes
 *    fu_run return.
 *
 * Calls return 0 or -errno. Errors on one connection close it; only errors
 * of the loop itself (the ring, accept, memory) reach the caller.
 */
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include "floor.h"
#include "ring.h"

#define FU_SQ_ENTRIES 256
#define FU_CQ_ENTRIES 8192
#define FU_PBUF_ENTRIES 512
#define FU_PBUF_SIZE (16 * 1024)
#define FU_BGID 1
#define FU_TW_MAX 20          /* IO_LOCAL_TW_DEFAULT_MAX: task work an enter runs */
#define FU_REENTER_MAX 16     /* extra enters per pass for the rest of it */
#define FU_DIRECT_SEND_MAX 1  /* uring/group.py DIRECT_SEND_MAX */
#define FU_BULK_IOVS 16

/* user_data: kind << 32 | fd; a receive's is its ni_rxq's address | NI_UD_RECV */
enum { FU_SEND = 1, FU_POLLOUT, FU_ACCEPT, FU_WAKE };
#define FU_UD(kind, fd) ((uint64_t)(kind) << 32 | (uint32_t)(fd))

struct fu_conn {
    struct ni_rxq *q;         /* NULL: the slot is free */
    uint64_t carry;           /* rr: bytes of a request not yet complete */
    uint64_t owed;            /* rr: reply bytes not yet taken by the kernel */
    uint64_t asked;           /* bytes of the send in flight */
    int inflight;             /* SENDMSGs and POLL_ADDs in the kernel */
    int ended;                /* the receive has ended: close once nothing is in flight */
    int listed;               /* on the pass's list of sockets to serve */
    struct ni_send send;      /* the SENDMSG in flight: msghdr and iovecs live until its CQE */
};

struct fu {
    struct fl_work w;
    struct ni_ring *r;
    struct ni_bufring *br;
    int woken, wake_armed, accept_armed;
    struct fu_conn *c;        /* by fd */
    int *todo, ntodo;         /* the sockets to serve this pass: they received, or a send of theirs ended */
    int *owing;               /* of those, the ones to send on */
    int cap;
};

/* An SQE for the caller: submits what is prepared when the SQ is full. */
static int fu_room(struct fu *g)
{
    if (ni_sq_space(g->r))
        return 0;
    int rc = ni_submit_inline(g->r, 0, -1);
    return rc < 0 && rc != -EBUSY && rc != -EINTR ? rc : 0;
}

static void fu_list(struct fu *g, int fd)
{
    if (!g->c[fd].listed) {
        g->c[fd].listed = 1;
        g->todo[g->ntodo++] = fd;
    }
}

static void fu_close_fd(struct fu *g, int fd)
{
    struct fu_conn *c = &g->c[fd];

    ni_rxq_free(c->q);  /* its receive has ended: the held buffers go back to the ring */
    c->q = NULL;
    close(fd);
}

/* A send failed or the peer went: end the receive, which closes the socket. */
static void fu_fail(struct fu_conn *c, int fd)
{
    c->owed = 0;
    shutdown(fd, SHUT_RDWR);
}

static int fu_arm_recv(struct fu *g, struct fu_conn *c)
{
    int rc = fu_room(g);
    return rc < 0 ? rc : ni_prep_recv_multishot(g->r, c->q);
}

static int fu_arm_pollout(struct fu *g, int fd)
{
    int rc = fu_room(g);

    if (rc < 0 || (rc = ni_prep_poll_add(g->r, fd, POLLOUT, FU_UD(FU_POLLOUT, fd))) < 0)
        return rc;
    g->c[fd].inflight++;
    return 0;
}

/* rr, the direct flush: sendmsg(2) until c owes nothing or the socket is full. */
static int fu_send_direct(struct fu *g, int fd)
{
    struct fu_conn *c = &g->c[fd];
    int rc = fl_send_replies(fd, g->w.out, g->w.resp, &c->owed, NI_IOV_MAX);

    if (rc < 0)
        fu_fail(c, fd);
    else if (rc)
        return fu_arm_pollout(g, fd);
    return 0;
}

/* A SENDMSG of what c owes (rr) or of FU_BULK_IOVS chunks (bulk). */
static int fu_send_ring(struct fu *g, int fd)
{
    struct fu_conn *c = &g->c[fd];
    struct ni_send *s = &c->send;
    int rc;

    if (g->w.bulk) {
        for (s->iovcnt = 0; s->iovcnt < FU_BULK_IOVS; s->iovcnt++) {
            s->iov[s->iovcnt].iov_base = g->w.out;
            s->iov[s->iovcnt].iov_len = g->w.chunk;
        }
        c->asked = (uint64_t)FU_BULK_IOVS * g->w.chunk;
        s->msg_flags = MSG_NOSIGNAL | MSG_WAITALL;
    } else {
        c->asked = fl_gather_replies(g->w.out, g->w.resp, c->owed, s->iov, NI_IOV_MAX, &s->iovcnt);  /* as netimpl gathers */
        s->msg_flags = MSG_NOSIGNAL;
    }
    s->fd = fd;
    s->zerocopy = 0;
    s->user_data = FU_UD(FU_SEND, fd);
    if ((rc = fu_room(g)) < 0 || (rc = ni_prep_send_inline(g->r, s)) < 0)
        return rc;
    c->inflight++;
    return 0;
}

static int fu_grow(struct fu *g, int fd)
{
    int rc;

    int cap = fl_grown_cap(g->cap, fd);

    if ((rc = fl_grow_array((void **)&g->c, sizeof(*g->c), g->cap, cap)) < 0 ||
        (rc = fl_grow_array((void **)&g->todo, sizeof(*g->todo), g->cap, cap)) < 0 ||
        (rc = fl_grow_array((void **)&g->owing, sizeof(*g->owing), g->cap, cap)) < 0)
        return rc;
    g->cap = cap;
    return 0;
}

static int fu_accepted(struct fu *g, int fd)
{
    int one = 1, rc;

    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if ((fd >= g->cap && (rc = fu_grow(g, fd)) < 0) ||
        (rc = ni_rxq_create(g->br, fd, 0, &g->c[fd].q)) < 0) {
        close(fd);
        return rc;
    }
    struct fu_conn *c = &g->c[fd];
    c->carry = c->owed = 0;
    c->inflight = c->ended = c->listed = 0;
    if ((rc = fu_arm_recv(g, c)) < 0)
        return rc;
    return g->w.bulk ? fu_send_ring(g, fd) : 0;
}

static int fu_arm_accept(struct fu *g)
{
    int rc = fu_room(g);

    if (rc < 0 || (rc = ni_prep_accept_multishot(g->r, g->w.lfd, SOCK_NONBLOCK | SOCK_CLOEXEC,
                                                 FU_UD(FU_ACCEPT, g->w.lfd))) < 0)
        return rc;
    g->accept_armed = 1;
    return 0;
}

static int fu_cqe(struct fu *g, uint64_t ud, int res, unsigned flags)
{
    if (ud & NI_UD_RECV) {
        struct ni_rxq *q = (struct ni_rxq *)(uintptr_t)(ud & ~NI_UD_RECV);

        ni_rxq_cqe(q, res, flags);
        fu_list(g, q->fd);
        return 0;
    }
    int fd = (int)(uint32_t)ud;
    struct fu_conn *c = fd < g->cap ? &g->c[fd] : NULL;

    switch (ud >> 32) {
    case FU_ACCEPT:
        if (!(flags & IORING_CQE_F_MORE))
            g->accept_armed = 0;
        if (res >= 0)
            return fu_accepted(g, res);
        return res == -EAGAIN || res == -EINTR || res == -ECONNABORTED || res == -ECANCELED ? 0 : res;
    case FU_WAKE: {
        char drain[64];

        while (read(g->w.wfd, drain, sizeof(drain)) > 0)
            ;
        g->wake_armed = 0;
        g->woken = 1;
        return 0;
    }
    case FU_SEND:
        c->inflight--;
        if (res < 0 && res != -EAGAIN && res != -EINTR) {
            fu_fail(c, fd);
        } else if (g->w.bulk) {
            if (!c->ended)
                return fu_send_ring(g, fd);  /* the next chunks (the rest of a cut one too: zeros) */
        } else {
            uint64_t took = res > 0 ? (uint64_t)res : 0;

            c->owed -= took;
            if (c->owed && took < c->asked)
                return fu_arm_pollout(g, fd);  /* full */
        }
        fu_list(g, fd);  /* the rest it owes (replies that came meanwhile), or its close */
        return 0;
    case FU_POLLOUT:
        c->inflight--;
        fu_list(g, fd);
        return 0;
    }
    return -EPROTO;
}

/* Every CQE available, including overflowed ones. The count, or -errno. */
static int fu_reap(struct fu *g)
{
    struct ni_ring *r = g->r;
    int n = 0, rc;

    for (;;) {
        unsigned head = *r->cq_khead, tail = load_acquire(r->cq_ktail);

        if (head == tail) {
            if (!ni_cq_overflowed(r)) {
                ni_bufring_settle(g->br);  /* size its working set, as backend uring's reap does */
                return n;
            }
            if ((rc = ni_submit_inline(r, 0, -1)) < 0 && rc != -EBUSY && rc != -EINTR)
                return rc;
            continue;
        }
        for (; head != tail; head++, n++) {
            struct io_uring_cqe *cqe = &r->cqes[head & r->cq_mask];
            uint64_t ud = cqe->user_data;
            int res = cqe->res;
            unsigned flags = cqe->flags;

            store_release(r->cq_khead, head + 1);
            r->n_cqe++;
            if ((rc = fu_cqe(g, ud, res, flags)) < 0)
                return rc;
        }
    }
}

/* Enter, submitting what is prepared and, with wait, waiting up to timeout_ns (-1: for ever) for a
 * completion; then reap, entering again while a reap reaches the task work an enter runs.
 * The CQEs reaped, or -errno. */
static int fu_enter(struct fu *g, int wait, int64_t timeout_ns)
{
    int rc = ni_submit_inline(g->r, wait ? 1 : 0, timeout_ns), n = 0;

    if (rc < 0 && rc != -ETIME && rc != -EINTR && rc != -EBUSY)
        return rc;
    for (int i = 0; i <= FU_REENTER_MAX; i++) {
        int k = fu_reap(g);

        if (k < 0)
            return k;
        n += k;
        if (k < FU_TW_MAX)
            break;
        if ((rc = ni_submit_inline(g->r, 0, -1)) < 0 && rc != -EINTR && rc != -EBUSY)
            return rc;
    }
    return n;
}

/* The application work of the listed sockets; the ones that owe replies go on g->owing. Their count. */
static int fu_serve(struct fu *g)
{
    int nowe = 0, rc;

    for (int i = 0; i < g->ntodo; i++) {
        int fd = g->todo[i];
        struct fu_conn *c = &g->c[fd];
        struct ni_rxq *q = c->q;

        c->listed = 0;
        if (q->bytes) {
            uint64_t all = c->carry + ni_rxq_discard(q);  /* read: the buffers go back */

            if (!g->w.bulk && !c->ended) {
                c->owed += all / g->w.req * g->w.resp;
                c->carry = all % g->w.req;
            }
        }
        if (!q->armed && !c->ended) {
            if (q->end)
                c->ended = 1;
            else if ((rc = fu_arm_recv(g, c)) < 0)  /* ended for the kernel's reasons, or for want of buffers */
                return rc;
        }
        if (c->ended && c->inflight)
            fu_fail(c, fd);  /* what is in flight completes at once */
        if (c->ended && !c->inflight && !q->armed) {
            fu_close_fd(g, fd);
            continue;
        }
        if (c->owed && !c->inflight && !c->ended)
            g->owing[nowe++] = fd;
    }
    g->ntodo = 0;
    return nowe;
}

void fu_close(struct fu *g)
{
    if (!g)
        return;
    /* The ring first: closing it cancels what is in flight, so no receive reports into a freed queue. */
    if (g->r)
        ni_ring_destroy(g->r);
    for (int fd = 0; g->c && fd < g->cap; fd++)
        if (g->c[fd].q) {
            ni_rxq_free(g->c[fd].q);
            close(fd);
        }
    if (g->br)
        ni_bufring_free(g->br);  /* its ring is gone: nothing to unregister from */
    free(g->c);
    free(g->todo);
    free(g->owing);
    fl_work_free(&g->w);
    free(g);
}

int fu_open(struct fu **out, int listen_fd, int wake_fd, int bulk, uint32_t a, uint32_t b)
{
    unsigned flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN | IORING_SETUP_SUBMIT_ALL;
    struct fu *g;
    int rc;

    *out = NULL;
    if ((g = calloc(1, sizeof(*g))) == NULL)
        return -ENOMEM;
    if ((rc = fl_work_init(&g->w, listen_fd, wake_fd, bulk, a, b)) < 0) {
        fu_close(g);
        return rc;
    }
    if (fcntl(listen_fd, F_GETFD) < 0) {  /* as epoll_ctl tells floor.c: the ACCEPT would say so only later */
        rc = -errno;
        fu_close(g);
        return rc;
    }
    g->cap = 64;
    g->c = calloc((size_t)g->cap, sizeof(*g->c));
    g->todo = calloc((size_t)g->cap, sizeof(*g->todo));
    g->owing = calloc((size_t)g->cap, sizeof(*g->owing));
    if (!g->c || !g->todo || !g->owing) {
        fu_close(g);
        return -ENOMEM;
    }
    rc = ni_ring_create(&g->r, FU_SQ_ENTRIES, FU_CQ_ENTRIES, flags);
    if (rc == -EINVAL)
        rc = ni_ring_create(&g->r, FU_SQ_ENTRIES, FU_CQ_ENTRIES, IORING_SETUP_SUBMIT_ALL);
    if (rc < 0 || (rc = ni_bufring_create(g->r, FU_BGID, FU_PBUF_ENTRIES, FU_PBUF_SIZE, &g->br)) < 0 ||
        (rc = fu_arm_accept(g)) < 0) {
        fu_close(g);
        return rc;
    }
    ni_bufring_set_bundle(g->br, (ni_ring_features(g->r) & IORING_FEAT_RECVSEND_BUNDLE) != 0);
    *out = g;
    return 0;
}

int fu_run(struct fu *g, int timeout_ms)
{
    int64_t timeout_ns = timeout_ms < 0 ? -1 : (int64_t)timeout_ms * 1000000;
    int rc, n;

    g->woken = 0;
    for (;;) {
        if (!g->accept_armed && (rc = fu_arm_accept(g)) < 0)
            return rc;
        if (g->w.wfd >= 0 && !g->wake_armed) {
            if ((rc = fu_room(g)) < 0 || (rc = ni_prep_poll_add(g->r, g->w.wfd, POLLIN, FU_UD(FU_WAKE, g->w.wfd))) < 0)
                return rc;
            g->wake_armed = 1;
        }
        /* Wait only with nothing left to serve (a send that ended in the flush leaves its socket listed). */
        if ((rc = fu_enter(g, !g->ntodo, timeout_ns)) < 0)
            return rc;
        if (rc == 0 && !g->ntodo)
            return 0;  /* the timeout, or a signal */
        if ((n = fu_serve(g)) < 0)
            return n;
        if (n <= FU_DIRECT_SEND_MAX) {
            for (int i = 0; i < n; i++)
                if ((rc = fu_send_direct(g, g->owing[i])) < 0)
                    return rc;
        } else {
            for (int i = 0; i < n; i++)
                if ((rc = fu_send_ring(g, g->owing[i])) < 0)
                    return rc;
            if ((rc = fu_enter(g, 0, -1)) < 0)  /* the flush: sends that find room complete in it */
                return rc;
        }
        if (g->woken)
            return 0;
    }
}
