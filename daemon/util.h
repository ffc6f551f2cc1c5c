/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Small helpers shared by the daemon's modules, after systemd's
 * basic/macro.h, fd-util.h and log.h.
 *
 * Cleanup: lib/dedup-util.h's _cleanup_free_, _cleanup_close_, TAKE_PTR()
 * and TAKE_FD(), plus _cleanup_fclose_, _cleanup_closedir_ and
 * _cleanup_(x_freep) for the daemon's own types.
 *
 * Logging: see log.h.
 */

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "dedup-util.h"  /* _cleanup_, TAKE_PTR/TAKE_FD, safe_close, MIN/MAX */

#define DIV_ROUND_UP(x, y) (((x) + (y) - 1) / (y))
#define ALIGN_TO(x, a) (((x) + (a) - 1) & ~((__typeof__(x)) (a) - 1))

static inline uint64_t now_usec(clockid_t clock) {
        struct timespec ts;

        clock_gettime(clock, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static inline void fclosep(FILE **f) {
        if (*f)
                (void) fclose(*f);
}
#define _cleanup_fclose_ _cleanup_(fclosep)

static inline void closedirp(DIR **d) {
        if (*d)
                (void) closedir(*d);
}
#define _cleanup_closedir_ _cleanup_(closedirp)

/* Define x_freep() for a type with x_free(X *) accepting NULL. */
#define DEFINE_TRIVIAL_CLEANUP_FUNC(type, func) \
        static inline void func##p(type *p) {   \
                if (*p)                         \
                        func(*p);               \
        }

/* -errno of the last failed libc call; never 0, so a caller can return it. */
static inline int negative_errno(void) {
        return errno > 0 ? -errno : -EIO;
}

#include "log.h"

/* Out of memory: logged, returns -ENOMEM. */
#define log_oom() log_error_errno(ENOMEM, "Out of memory.")

/* qsort()/bsearch() order of uint64_t values (pool locations). */
static inline int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

        return x < y ? -1 : x > y;
}
