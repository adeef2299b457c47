/*
 * netimpl/copy.h: the copy the receive paths use for large blocks.
 *
 * Why not plain memcpy: glibc copies large blocks with `rep movsb`, which on
 * AMD Zen runs 4-5x slower when the destination's page offset is a few bytes
 * past the source's (measured on the 2-core EPYC VM the bench runs on: 16 KiB
 * copies at 2 GB/s with the destination 8-31 bytes ahead, 9-10 GB/s otherwise).
 * A receive hits exactly that case all the time: a CPython bytearray's buffer
 * starts 16 bytes into its page (malloc's chunk header), and the buffers it is
 * filled from (provided buffers, the recv pipe) start on a page. In that
 * window a loop of 64-byte moves, which the compiler keeps as vector loads and
 * stores, copies at full speed; everywhere else memcpy stays.
 * No Python here: ring.h (built by cffi too) includes it.
 */
#ifndef NETIMPL_COPY_H
#define NETIMPL_COPY_H

#include <stdint.h>
#include <string.h>

/* Below this, memcpy does not use `rep movsb`. */
#define NI_COPY_LOOP_MIN 2048

__attribute__((optimize("no-tree-loop-distribute-patterns")))  /* the loop must not become a memcpy call */
static inline void ni_copy(void *dst, const void *src, size_t n)
{
    char *d = dst;
    const char *s = src;
    size_t skew = ((uintptr_t)d - (uintptr_t)s) & 4095, i = 0;

    if (n < NI_COPY_LOOP_MIN || skew == 0 || skew >= 64) {
        memcpy(d, s, n);
        return;
    }
    for (; i + 64 <= n; i += 64)
        __builtin_memcpy(d + i, s + i, 64);
    memcpy(d + i, s + i, n - i);
}

#endif
