/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* DOC: the one logging state of the process: maximum level and target. */

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <systemd/sd-journal.h>
#include <unistd.h>

#include "log.h"

static const char *const level_names[] = { "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug" };
static const char *const target_names[] = { "console", "journal", "null" };
enum { TARGET_CONSOLE, TARGET_JOURNAL, TARGET_NULL };

static int max_level = -1;      /* -1: not read from the environment yet */
static int target = TARGET_CONSOLE;

int log_level_from_string(const char *s) {
        if (!s || !*s)
                return -EINVAL;
        if (s[0] >= '0' && s[0] <= '7' && s[1] == 0)
                return s[0] - '0';
        for (size_t i = 0; i < ELEMENTSOF(level_names); i++)
                if (strcasecmp(s, level_names[i]) == 0)
                        return (int) i;
        if (strcasecmp(s, "error") == 0)
                return LOG_ERR;
        if (strcasecmp(s, "warn") == 0)
                return LOG_WARNING;
        return -EINVAL;
}

const char *log_level_to_string(int level) {
        return level_names[level & 7];
}

int log_get_max_level(void) {
        if (max_level < 0) {
                int l = log_level_from_string(getenv("DEDUPD_LOG_LEVEL"));
                max_level = l >= 0 ? l : LOG_INFO;
        }
        return max_level;
}

void log_set_max_level(int level) {
        max_level = level & 7;
}

const char *log_get_target(void) {
        return target_names[target];
}

int log_set_target(const char *t) {
        for (size_t i = 0; i < ELEMENTSOF(target_names); i++)
                if (strcmp(t, target_names[i]) == 0) {
                        target = (int) i;
                        return 0;
                }
        return -EINVAL;
}

/* True when stderr is the journal stream systemd gave us ($JOURNAL_STREAM
 * is "dev:ino" of that stream), so "<N>" prefixes are understood. */
static int stderr_is_journal(void) {
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

int log_internal(int level, int error, const char *fmt, ...) {
        int saved = errno;
        int r = error < 0 ? error : -error;
        char buf[2048];
        va_list ap;

        if (level > log_get_max_level() || target == TARGET_NULL) {
                errno = saved;
                return r;
        }
        errno = -r;     /* so %m prints strerror(error) */
        va_start(ap, fmt);
        (void) vsnprintf(buf, sizeof buf, fmt, ap);
        va_end(ap);

        if (target == TARGET_JOURNAL)
                (void) sd_journal_send("MESSAGE=%s", buf, "PRIORITY=%d", level, "SYSLOG_IDENTIFIER=dedupd", NULL);
        else if (stderr_is_journal())
                fprintf(stderr, "<%d>%s\n", level, buf);
        else
                fprintf(stderr, "%s: %s\n", level == LOG_ERR ? "error" : level_names[level & 7], buf);
        errno = saved;
        return r;
}
