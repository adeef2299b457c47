/*
 * A load generator for `python -m netimpl bench`, in C so that it is never
 * what is measured: one thread, epoll, non-blocking sockets.
 *
 * Request/response mode: each of `active` connections (out of `conns`, all
 * connected) keeps `depth` requests of `req_size` bytes outstanding and
 * counts responses of `resp_size` bytes; when `active` < `conns`, a
 * connection that completed a response hands its slot to the next idle
 * connection, so the server sees traffic move across all of them. Each
 * response's round trip is recorded (ns) while room remains.
 *
 * Sink mode: one connection; the server streams, we count bytes.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <fcntl.h>

#define LG_MAX_DEPTH 256

struct lg_conn {
    int fd;
    int active;
    uint32_t outstanding;    /* requests sent (or owed) whose response is not complete */
    uint64_t owed;           /* request bytes not yet written */
    uint64_t resp_got;       /* bytes of the current response */
    uint64_t sent_at[LG_MAX_DEPTH];  /* ring of send times, oldest first */
    uint32_t head, tail;
    int want_out;
};

struct lg {
    int ep;
    int nconns, depth, active, sink;
    uint32_t req_size, resp_size;
    struct lg_conn *c;
    int next_idle;
    char *buf;
    size_t buflen;
};

struct lg_stats {
    uint64_t responses;
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t latencies;
    double seconds;
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static int connect_one(const char *ip, int port)
{
    struct sockaddr_in a4;
    struct sockaddr_in6 a6;
    struct sockaddr *sa;
    socklen_t len;
    int fd, one = 1, fam;

    memset(&a4, 0, sizeof(a4));
    memset(&a6, 0, sizeof(a6));
    if (inet_pton(AF_INET, ip, &a4.sin_addr) == 1) {
        a4.sin_family = AF_INET;
        a4.sin_port = htons(port);
        sa = (struct sockaddr *)&a4;
        len = sizeof(a4);
        fam = AF_INET;
    } else if (inet_pton(AF_INET6, ip, &a6.sin6_addr) == 1) {
        a6.sin6_family = AF_INET6;
        a6.sin6_port = htons(port);
        sa = (struct sockaddr *)&a6;
        len = sizeof(a6);
        fam = AF_INET6;
    } else {
        return -EINVAL;
    }
    fd = socket(fam, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, sa, len) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    return fd;
}

static void lg_free(struct lg *g)
{
    if (!g)
        return;
    if (g->c) {
        for (int i = 0; i < g->nconns; i++)
            if (g->c[i].fd >= 0)
                close(g->c[i].fd);
        free(g->c);
    }
    if (g->ep >= 0)
        close(g->ep);
    free(g->buf);
    free(g);
}

void lg_close(struct lg *g) { lg_free(g); }

static int lg_alloc(struct lg **out, int nconns, size_t buflen)
{
    struct lg *g = calloc(1, sizeof(*g));

    *out = NULL;
    if (!g)
        return -ENOMEM;
    g->ep = epoll_create1(EPOLL_CLOEXEC);
    g->c = calloc(nconns, sizeof(*g->c));
    g->buflen = buflen;
    g->buf = calloc(1, buflen);
    g->nconns = nconns;
    if (g->ep < 0 || !g->c || !g->buf) {
        int err = g->ep < 0 ? -errno : -ENOMEM;
        lg_free(g);
        return err;
    }
    for (int i = 0; i < nconns; i++)
        g->c[i].fd = -1;
    *out = g;
    return 0;
}

static int watch(struct lg *g, int i, int out)
{
    struct epoll_event ev = { .events = EPOLLIN | (out ? EPOLLOUT : 0), .data.u32 = (uint32_t)i };
    return epoll_ctl(g->ep, EPOLL_CTL_MOD, g->c[i].fd, &ev) < 0 ? -errno : 0;
}

/* Write what connection i owes; 0 or -errno. */
static int pump_out(struct lg *g, int i, struct lg_stats *st)
{
    struct lg_conn *c = &g->c[i];

    while (c->owed) {
        size_t n = c->owed < g->buflen ? c->owed : g->buflen;
        ssize_t k = send(c->fd, g->buf, n, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EAGAIN) {
                if (!c->want_out) {
                    c->want_out = 1;
                    return watch(g, i, 1);
                }
                return 0;
            }
            if (errno == EINTR)
                continue;
            return -errno;
        }
        c->owed -= k;
        st->bytes_out += k;
    }
    if (c->want_out) {
        c->want_out = 0;
        return watch(g, i, 0);
    }
    return 0;
}

static void issue(struct lg *g, int i, uint64_t t)
{
    struct lg_conn *c = &g->c[i];

    c->sent_at[c->tail++ % LG_MAX_DEPTH] = t;
    c->outstanding++;
    c->owed += g->req_size;
}

int lg_open(struct lg **out, const char *ip, int port, int conns, int depth, int active,
            uint32_t req_size, uint32_t resp_size)
{
    struct lg *g;
    int rc;

    if (conns <= 0 || depth <= 0 || depth > LG_MAX_DEPTH || active <= 0 || active > conns || !req_size || !resp_size)
        return -EINVAL;
    rc = lg_alloc(&g, conns, 1 << 20);
    if (rc < 0)
        return rc;
    g->depth = depth;
    g->active = active;
    g->req_size = req_size;
    g->resp_size = resp_size;
    for (int i = 0; i < conns; i++) {
        struct epoll_event ev = { .events = EPOLLIN, .data.u32 = (uint32_t)i };
        int fd = connect_one(ip, port);
        if (fd < 0) {
            lg_free(g);
            return fd;
        }
        g->c[i].fd = fd;
        if (epoll_ctl(g->ep, EPOLL_CTL_ADD, fd, &ev) < 0) {
            rc = -errno;
            lg_free(g);
            return rc;
        }
    }
    g->next_idle = active % conns;
    *out = g;
    return 0;
}

int lg_open_sink(struct lg **out, const char *ip, int port)
{
    struct lg *g;
    struct epoll_event ev = { .events = EPOLLIN, .data.u32 = 0 };
    int rc = lg_alloc(&g, 1, 4 << 20);

    if (rc < 0)
        return rc;
    g->sink = 1;
    g->c[0].fd = connect_one(ip, port);
    if (g->c[0].fd < 0 || epoll_ctl(g->ep, EPOLL_CTL_ADD, g->c[0].fd, &ev) < 0) {
        rc = g->c[0].fd < 0 ? g->c[0].fd : -errno;
        lg_free(g);
        return rc;
    }
    *out = g;
    return 0;
}

/* Hand connection i's slot to the next idle connection. */
static int rotate(struct lg *g, int i, uint64_t t, struct lg_stats *st)
{
    int j, tries = g->nconns;

    g->c[i].active = 0;
    for (j = g->next_idle; tries--; j = (j + 1) % g->nconns)
        if (!g->c[j].active && j != i)
            break;
    if (tries < 0)
        j = i;
    g->next_idle = (j + 1) % g->nconns;
    g->c[j].active = 1;
    issue(g, j, t);
    return pump_out(g, j, st);
}

static int on_readable(struct lg *g, int i, uint32_t *lat, uint64_t cap, struct lg_stats *st)
{
    struct lg_conn *c = &g->c[i];

    for (;;) {
        ssize_t k = recv(c->fd, g->buf, g->buflen, 0);
        if (k < 0) {
            if (errno == EAGAIN)
                return 0;
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (k == 0)
            return -ECONNRESET;
        st->bytes_in += k;
        if (g->sink)
            continue;
        c->resp_got += k;
        while (c->resp_got >= g->resp_size && c->outstanding) {
            uint64_t t = now_ns();
            c->resp_got -= g->resp_size;
            c->outstanding--;
            if (st->latencies < cap)
                lat[st->latencies++] = (uint32_t)(t - c->sent_at[c->head % LG_MAX_DEPTH] > 0xffffffffu
                                                   ? 0xffffffffu : t - c->sent_at[c->head % LG_MAX_DEPTH]);
            c->head++;
            st->responses++;
            if (g->active < g->nconns) {
                int rc = rotate(g, i, t, st);
                if (rc < 0)
                    return rc;
            } else {
                issue(g, i, t);
            }
        }
        if (c->owed) {
            int rc = pump_out(g, i, st);
            if (rc < 0)
                return rc;
        }
    }
}

int lg_run(struct lg *g, double seconds, uint32_t *lat_ns, uint64_t lat_cap, struct lg_stats *st)
{
    struct epoll_event evs[256];
    uint64_t start = now_ns(), end = start + (uint64_t)(seconds * 1e9);
    int rc;

    memset(st, 0, sizeof(*st));
    if (!g->sink) {
        /* Top every active connection up to its depth (first run, or after a previous window). */
        int want = g->active;
        for (int i = 0; i < g->nconns && want; i++) {
            if (g->c[i].active || g->c[i].outstanding) {
                g->c[i].active = 1;
                want--;
            }
        }
        for (int i = 0; i < g->nconns && want; i++) {
            if (!g->c[i].active) {
                g->c[i].active = 1;
                want--;
            }
        }
        for (int i = 0; i < g->nconns; i++) {
            uint64_t t = now_ns();
            int per = g->active < g->nconns ? 1 : g->depth;
            while (g->c[i].active && g->c[i].outstanding < (uint32_t)per)
                issue(g, i, t);
            if (g->c[i].owed && (rc = pump_out(g, i, st)) < 0)
                return rc;
        }
    }
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end)
            break;
        int n = epoll_wait(g->ep, evs, 256, (int)((end - t) / 1000000) + 1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        for (int k = 0; k < n; k++) {
            int i = (int)evs[k].data.u32;
            if (evs[k].events & EPOLLOUT && (rc = pump_out(g, i, st)) < 0)
                return rc;
            if (evs[k].events & (EPOLLIN | EPOLLERR | EPOLLHUP) && (rc = on_readable(g, i, lat_ns, lat_cap, st)) < 0)
                return rc;
        }
    }
    st->seconds = (now_ns() - start) / 1e9;
    return 0;
}
