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
 * Logging: log_<level>(fmt, ...) and log_<level>_errno(r, fmt, ...) print one
 * line to stderr and the _errno forms return -abs(r), so a caller writes
 * `return log_error_errno(r, "Failed to open '%s': %m", path);`. errno is set
 * to abs(r) while formatting, so %m names r. When stderr is a journal stream
 * (systemd sets $JOURNAL_STREAM) each line starts with "<N>" so journald
 * stores the priority; otherwise with the level's name. Messages above
 * $DEDUPD_LOG_LEVEL (a syslog level name or number, default "info") are
 * dropped. The level is read once per translation unit and cached; there is
 * no process-wide logging state to set up.
 */

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "dedup-util.h"  /* _cleanup_, TAKE_PTR/TAKE_FD, safe_close, MIN/MAX */

#define _printf_(a, b) __attribute__((format(printf, a, b)))
#define DIV_ROUND_UP(x, y) (((x) + (y) - 1) / (y))
#define ALIGN_TO(x, a) (((x) + (a) - 1) & ~((__typeof__(x)) (a) - 1))

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

/* ---- logging ---- */

static inline int log_parse_level(const char *s) {
        static const char *const names[] = { "emerg", "alert", "crit", "err",
                                             "warning", "notice", "info", "debug" };
        if (!s || !*s)
                return -EINVAL;
        if (s[0] >= '0' && s[0] <= '7' && s[1] == 0)
                return s[0] - '0';
        for (size_t i = 0; i < ELEMENTSOF(names); i++)
                if (strcasecmp(s, names[i]) == 0)
                        return (int) i;
        if (strcasecmp(s, "error") == 0)
                return LOG_ERR;
        if (strcasecmp(s, "warn") == 0)
                return LOG_WARNING;
        return -EINVAL;
}

/* Cached per translation unit: -1 = not read yet. */
static int log_max_level_cached _unused_ = -1;

static inline int log_get_max_level(void) {
        if (log_max_level_cached < 0) {
                int l = log_parse_level(getenv("DEDUPD_LOG_LEVEL"));
                log_max_level_cached = l >= 0 ? l : LOG_INFO;
        }
        return log_max_level_cached;
}

/* True when stderr is the journal stream systemd gave us ($JOURNAL_STREAM
 * is "dev:ino" of that stream), so "<N>" prefixes are understood. */
static inline int log_stderr_is_journal(void) {
        static int cached = -1;
        if (cached < 0) {
                const char *e = getenv("JOURNAL_STREAM");
                unsigned long long dev, ino;
                struct stat st;
                cached = e && sscanf(e, "%llu:%llu", &dev, &ino) == 2 && fstat(STDERR_FILENO, &st) == 0 &&
                         st.st_dev == (dev_t) dev && st.st_ino == (ino_t) ino;
        }
        return cached;
}

_printf_(3, 4) static inline int log_internal(int level, int error, const char *fmt, ...) {
        static const char *const prefix[] = { "emerg", "alert", "crit", "error",
                                              "warning", "notice", "info", "debug" };
        int saved = errno;
        int r = error < 0 ? error : -error;

        if (level > log_get_max_level()) {
                errno = saved;
                return r;
        }

        char buf[2048];
        va_list ap;
        errno = -r;     /* so %m prints strerror(error) */
        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);

        if (log_stderr_is_journal())
                fprintf(stderr, "<%d>%s\n", level, buf);
        else
                fprintf(stderr, "%s: %s\n", prefix[level & 7], buf);
        errno = saved;
        return r;
}

#define log_full_errno(level, error, ...) log_internal((level), (error), __VA_ARGS__)
#define log_debug_errno(error, ...) log_full_errno(LOG_DEBUG, (error), __VA_ARGS__)
#define log_info_errno(error, ...) log_full_errno(LOG_INFO, (error), __VA_ARGS__)
#define log_notice_errno(error, ...) log_full_errno(LOG_NOTICE, (error), __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, (error), __VA_ARGS__)
#define log_error_errno(error, ...) log_full_errno(LOG_ERR, (error), __VA_ARGS__)

#define log_debug(...) (void) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) (void) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) (void) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) (void) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) (void) log_full_errno(LOG_ERR, 0, __VA_ARGS__)

/* Out of memory: logged, returns -ENOMEM. */
#define log_oom() log_error_errno(ENOMEM, "Out of memory.")
