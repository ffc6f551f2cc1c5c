/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Tiny generic helpers for lib/ (after systemd's macro.h and fd-util.h):
 * _cleanup_ attributes, TAKE_PTR()/TAKE_FD() to hand a resource over, and
 * page arithmetic. Header-only, no state.
 */

#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <unistd.h>

#define _cleanup_(f) __attribute__((cleanup(f)))
#define _unused_ __attribute__((unused))
#define _likely_(x) __builtin_expect(!!(x), 1)
#define _unlikely_(x) __builtin_expect(!!(x), 0)

#ifndef ELEMENTSOF
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#endif

#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#endif
#ifndef MAX
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif

/* dedupd works in 4 KiB pages everywhere (guest RAM on hugetlbfs is refused). */
#define DEDUP_PAGE_SIZE 4096u
#define DEDUP_PAGE_SHIFT 12
#define DEDUP_PAGE_ALIGNED(x) ((((uint64_t) (x)) & (DEDUP_PAGE_SIZE - 1)) == 0)

/* All zeros? p is 8-byte aligned and len a multiple of 8 (a page, say);
 * stops at the first word that is not zero. */
static inline bool mem_is_zero(const void *p, size_t len) {
        const uint64_t *q = p;

        for (size_t i = 0; i < len / sizeof *q; i++)
                if (q[i])
                        return false;
        return true;
}

#define TAKE_PTR(p)                               \
        ({                                        \
                __typeof__(p) *_pp_ = &(p);       \
                __typeof__(p) _p_ = *_pp_;        \
                *_pp_ = NULL;                     \
                _p_;                              \
        })
#define TAKE_FD(fd)                               \
        ({                                        \
                int *_fdp_ = &(fd);               \
                int _fd_ = *_fdp_;                \
                *_fdp_ = -EBADF;                  \
                _fd_;                             \
        })

static inline void dedup_freep(void *p) {
        free(*(void **) p);
}
#define _cleanup_free_ _cleanup_(dedup_freep)

/* close() that keeps errno and accepts negative fds; returns -EBADF to
 * assign: fd = safe_close(fd). */
static inline int safe_close(int fd) {
        if (fd >= 0) {
                int saved = errno;
                (void) close(fd);
                errno = saved;
        }
        return -EBADF;
}
static inline void safe_closep(int *fd) {
        safe_close(*fd);
}
#define _cleanup_close_ _cleanup_(safe_closep)
