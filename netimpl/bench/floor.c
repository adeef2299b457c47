/*
 * The floor of `python -m netimpl bench` (floor.c): a plain C epoll server
 * of the bench's two protocols, doing the application work the Python
 * servers in servers.py do and nothing else, so that every row can say how
 * far each contender is above what the kernel alone costs.
 *
 * The work, as the Python servers do it:
 *  - rr: read at most FL_READ_SIZE (256 KiB, the read size of netimpl's,
 *    asyncio's and uvloop's servers) per readiness event; split the stream
 *    into REQ-byte requests (a partial one is carried to the next read);
 *    answer the complete ones of that read with one RESP-byte reply each,
 *    all of them in one sendmsg of one iovec per reply, as netimpl's
 *    `writev_async(Request([resp] * count))` and uvloop's `writelines` do.
 *    What the kernel does not take waits, in order, for EPOLLOUT.
 *  - bulk: stream CHUNK-byte writes, one send per chunk as the blocking
 *    loop and asyncio's `write(chunk)` do, until the socket is full; a
 *    client that goes (readable with EOF, or a send error) is closed.
 *
 * Facts that shape it:
 *  - Level-triggered epoll, one recv per EPOLLIN event: a read that filled
 *    the buffer is reported again by the next epoll_wait, so reading to
 *    EAGAIN would only add a failing recv per event (the common case).
 *  - A send that took less than asked means the socket is full: we wait for
 *    EPOLLOUT instead of asking again for a certain EAGAIN.
 *  - Every reply and every chunk is zeros, as `bytes(n)` is in servers.py;
 *    the iovecs all point into one buffer.
 *  - The server runs inside the Python server process (cffi), so that
 *    getrusage(RUSAGE_SELF) of that process measures it exactly as it
 *    measures the other contenders. Python's signal handlers only run when
 *    fl_run returns, so the process's signal wakeup fd (signal.set_wakeup_fd)
 *    is in the epoll set: a signal makes fl_run return at once. A bulk
 *    connection sends at most FL_BULK_BATCH chunks per event, so a reader
 *    that never fills the socket cannot keep fl_run from seeing it.
 *
 * Calls return 0 or -errno. Errors on one connection close it; only errors
 * of the loop itself (epoll, accept, memory) reach the caller.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>
#include "floor.h"

#define FL_READ_SIZE (256 * 1024)
#define FL_MAX_EVENTS 64     /* netimpl's bench server polls 64 events at a time */
#define FL_IOV_MAX 1024      /* UIO_MAXIOV */
#define FL_BULK_BATCH 64

struct fl_conn {
    int open;
    int want_out;            /* EPOLLOUT is in the connection's event mask */
    uint64_t carry;          /* rr: bytes of a request not yet complete; bulk: bytes of the chunk sent */
    uint64_t owed;           /* rr: reply bytes not yet taken by the kernel */
};

struct fl {
    struct fl_work w;
    int ep;
    char *in;                /* FL_READ_SIZE */
    struct fl_conn *c;       /* by fd */
    int cap;
};

static void fl_drop(struct fl *g, int fd)
{
    close(fd);  /* also leaves the epoll set: the fd is not shared */
    g->c[fd].open = 0;
}

static int fl_watch(struct fl *g, int fd, int out)
{
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.fd = fd };

    if (epoll_ctl(g->ep, EPOLL_CTL_MOD, fd, &ev) < 0)
        return -errno;
    g->c[fd].want_out = out;
    return 0;
}

/* rr: hand the kernel what connection fd owes, one iovec per reply. */
static void rr_send(struct fl *g, int fd)
{
    struct fl_conn *c = &g->c[fd];
    int rc = fl_send_replies(fd, g->w.out, g->w.resp, &c->owed, FL_IOV_MAX);

    if (rc < 0 || (c->want_out != rc && fl_watch(g, fd, rc) < 0))  /* EPOLLOUT while it is full */
        fl_drop(g, fd);
}

static void rr_readable(struct fl *g, int fd)
{
    struct fl_conn *c = &g->c[fd];
    ssize_t k = recv(fd, g->in, FL_READ_SIZE, 0);

    if (k <= 0) {
        if (k < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        fl_drop(g, fd);
        return;
    }
    uint64_t all = c->carry + (uint64_t)k, count = all / g->w.req;
    c->carry = all % g->w.req;
    if (count) {
        int queued = c->owed != 0;  /* replies already wait for EPOLLOUT: these go behind them */
        c->owed += count * g->w.resp;
        if (!queued)
            rr_send(g, fd);
    }
}

/* bulk: up to FL_BULK_BATCH chunks, until the socket is full. */
static void bulk_send(struct fl *g, int fd)
{
    struct fl_conn *c = &g->c[fd];

    for (int i = 0; i < FL_BULK_BATCH; i++) {
        size_t asked = g->w.chunk - c->carry;
        ssize_t k = send(fd, g->w.out + c->carry, asked, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EINTR)
                fl_drop(g, fd);
            return;
        }
        c->carry = (c->carry + (uint64_t)k) % g->w.chunk;
        if ((size_t)k < asked)
            return;
    }
}

static void bulk_readable(struct fl *g, int fd)
{
    ssize_t k = recv(fd, g->in, FL_READ_SIZE, 0);  /* the client only reads: readable means it went */

    if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
        fl_drop(g, fd);
}

static int fl_grow(struct fl *g, int fd)
{
    int cap = fl_grown_cap(g->cap, fd), rc = fl_grow_array((void **)&g->c, sizeof(*g->c), g->cap, cap);

    if (rc == 0)
        g->cap = cap;
    return rc;
}

static int fl_accept(struct fl *g)
{
    for (;;) {
        int one = 1, rc, fd = accept4(g->w.lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EAGAIN || errno == EINTR)
                return 0;
            if (errno == ECONNABORTED)
                continue;
            return -errno;
        }
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        if (fd >= g->cap && (rc = fl_grow(g, fd)) < 0) {
            close(fd);
            return rc;
        }
        struct epoll_event ev = { .events = EPOLLIN | (g->w.bulk ? EPOLLOUT : 0), .data.fd = fd };
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            rc = -errno;
            close(fd);
            return rc;
        }
        g->c[fd] = (struct fl_conn){ .open = 1, .want_out = g->w.bulk };
        if (g->w.bulk)
            bulk_send(g, fd);
    }
}

void fl_close(struct fl *g)
{
    if (!g)
        return;
    for (int fd = 0; g->c && fd < g->cap; fd++)
        if (g->c[fd].open)
            close(fd);
    if (g->ep >= 0)
        close(g->ep);
    free(g->c);
    free(g->in);
    fl_work_free(&g->w);
    free(g);
}

int fl_open(struct fl **out, int listen_fd, int wake_fd, int bulk, uint32_t a, uint32_t b)
{
    struct fl *g;
    int rc;

    *out = NULL;
    g = calloc(1, sizeof(*g));
    if (!g)
        return -ENOMEM;
    g->ep = -1;
    if ((rc = fl_work_init(&g->w, listen_fd, wake_fd, bulk, a, b)) < 0) {
        fl_close(g);
        return rc;
    }
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    g->cap = 64;
    g->c = calloc((size_t)g->cap, sizeof(*g->c));
    g->in = malloc(FL_READ_SIZE);
    if (g->ep < 0 || !g->c || !g->in) {
        rc = g->ep < 0 ? -errno : -ENOMEM;
        fl_close(g);
        return rc;
    }
    struct epoll_event ev = { .events = EPOLLIN, .data.fd = listen_fd };
    if (epoll_ctl(g->ep, EPOLL_CTL_ADD, listen_fd, &ev) < 0)
        goto fail;
    if (wake_fd >= 0) {
        ev.data.fd = wake_fd;
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, wake_fd, &ev) < 0)
            goto fail;
    }
    *out = g;
    return 0;
fail:
    rc = -errno;
    fl_close(g);
    return rc;
}

int fl_run(struct fl *g, int timeout_ms)
{
    struct epoll_event evs[FL_MAX_EVENTS];
    int rc, woken = 0;

    for (;;) {
        int n = epoll_wait(g->ep, evs, FL_MAX_EVENTS, timeout_ms);
        if (n < 0)
            return errno == EINTR ? 0 : -errno;
        if (n == 0)
            return 0;
        for (int k = 0; k < n; k++) {
            int fd = evs[k].data.fd;
            uint32_t e = evs[k].events;
            if (fd == g->w.wfd) {
                char drain[64];
                while (read(fd, drain, sizeof(drain)) > 0)
                    ;
                woken = 1;
            } else if (fd == g->w.lfd) {
                if ((rc = fl_accept(g)) < 0)
                    return rc;
            } else if (g->w.bulk) {
                if (e & (EPOLLIN | EPOLLERR | EPOLLHUP))
                    bulk_readable(g, fd);
                if (e & EPOLLOUT && g->c[fd].open)
                    bulk_send(g, fd);
            } else {
                if (e & EPOLLOUT)
                    rr_send(g, fd);
                if (e & (EPOLLIN | EPOLLERR | EPOLLHUP) && g->c[fd].open)
                    rr_readable(g, fd);
            }
        }
        if (woken)
            return 0;
    }
}
