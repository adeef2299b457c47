/* The bench's floor servers (floor.cdef says the same to Python). Calls return 0, or -errno. */
#ifndef NETIMPL_FLOOR_H
#define NETIMPL_FLOOR_H

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>

/* floor.c: on epoll */
struct fl;
int fl_open(struct fl **out, int listen_fd, int wake_fd, int bulk, uint32_t a, uint32_t b);
int fl_run(struct fl *g, int timeout_ms);
void fl_close(struct fl *g);

/* floor_uring.c: on io_uring, through netimpl's ring code */
struct fu;
int fu_open(struct fu **out, int listen_fd, int wake_fd, int bulk, uint32_t a, uint32_t b);
int fu_run(struct fu *g, int timeout_ms);
void fu_close(struct fu *g);

/* Both servers' work, shared. */

/* What a server is asked to do, as fl_open and fu_open take it. */
struct fl_work {
    int lfd, wfd, bulk;          /* the listening socket, the signal wakeup fd (or -1), the mode */
    uint32_t req, resp, chunk;   /* rr: the request and reply sizes; bulk: the chunk's */
    char *out;                   /* one reply (rr) or one chunk (bulk) of zeros */
};

/* 0, -EINVAL for a size of 0, or -ENOMEM; fl_work_free undoes it. */
static inline int fl_work_init(struct fl_work *w, int lfd, int wfd, int bulk, uint32_t a, uint32_t b)
{
    if (!a || (!bulk && !b))
        return -EINVAL;
    *w = (struct fl_work){ .lfd = lfd, .wfd = wfd, .bulk = bulk, .req = bulk ? 0 : a, .resp = bulk ? 0 : b,
                           .chunk = bulk ? a : 0 };
    w->out = calloc(1, bulk ? a : b);
    return w->out ? 0 : -ENOMEM;
}

static inline void fl_work_free(struct fl_work *w)
{
    free(w->out);
    w->out = NULL;
}

/* rr: the iovecs of `owed` reply bytes, one per RESP-byte reply of zeros at `reply` (the first the
 * unsent tail of a reply a short send cut), at most `max`: *n of them, holding the bytes returned. */
static inline uint64_t fl_gather_replies(char *reply, uint32_t resp, uint64_t owed, struct iovec *iov,
                                         unsigned max, unsigned *n)
{
    uint32_t head = (uint32_t)(owed % resp);
    uint64_t asked = 0;

    *n = 0;
    if (head) {
        iov[0].iov_base = reply + resp - head;
        iov[(*n)++].iov_len = head;
        owed -= head;
        asked += head;
    }
    for (; owed && *n < max; (*n)++, owed -= resp, asked += resp) {
        iov[*n].iov_base = reply;
        iov[*n].iov_len = resp;
    }
    return asked;
}

/* rr: sendmsg(2) on fd what *owed says, at most `max` iovecs a call, until it is sent (then 0), the
 * socket is full (1) or the send failed (-errno); *owed counts down what the kernel took. */
static inline int fl_send_replies(int fd, char *reply, uint32_t resp, uint64_t *owed, unsigned max)
{
    struct iovec iov[max];
    struct msghdr msg = { .msg_iov = iov };

    while (*owed) {
        unsigned n;
        uint64_t asked = fl_gather_replies(reply, resp, *owed, iov, max, &n);

        msg.msg_iovlen = n;
        ssize_t k = sendmsg(fd, &msg, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno != EAGAIN && errno != EINTR)
                return -errno;
            k = 0;
        }
        *owed -= (uint64_t)k;
        if ((uint64_t)k < asked)
            return 1;
    }
    return 0;
}

/* The capacity, doubled from cap, of a table indexed by fd that holds fd. */
static inline int fl_grown_cap(int cap, int fd)
{
    while (cap <= fd)
        cap *= 2;
    return cap;
}

/* Grow *arr, a table of cap elements of elem bytes, to want of them, the new ones zeroed; the
 * caller updates its capacity once all its tables grew. 0 or -ENOMEM. */
static inline int fl_grow_array(void **arr, size_t elem, int cap, int want)
{
    char *p = realloc(*arr, (size_t)want * elem);

    if (!p)
        return -ENOMEM;
    memset(p + (size_t)cap * elem, 0, (size_t)(want - cap) * elem);
    *arr = p;
    return 0;
}

#endif
