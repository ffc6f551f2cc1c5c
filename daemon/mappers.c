/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: Foreign mapper detection
 *
 * Invariants:
 * - A process is reported as soon as one line of its maps names the inode
 *   on the same device; the file name is never trusted (a memfd's name is
 *   chosen by its creator, and deleted files show " (deleted)").
 * - A pid is reported once however many of its VMAs map the inode (a VMM
 *   with merged runs has thousands).
 * - A /proc entry that disappears or is unreadable mid-scan is skipped: the
 *   scan is advisory and periodic, never fatal.
 * - Parsing is bounded: lines longer than the buffer are skipped whole.
 */

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "mappers.h"
#include "util.h"

#define MAPS_BUF (64 * 1024)

static bool parse_hex(const char **p, uint64_t *ret) {
        const char *s = *p;
        uint64_t v = 0;

        if (!isxdigit((unsigned char) *s))
                return false;
        for (; isxdigit((unsigned char) *s); s++) {
                unsigned d = (unsigned) (*s <= '9' ? *s - '0' : (*s | 0x20) - 'a' + 10);
                if (v >> 60)
                        return false;
                v = v << 4 | d;
        }
        *p = s;
        *ret = v;
        return true;
}

static bool parse_dec(const char **p, uint64_t *ret) {
        const char *s = *p;
        uint64_t v = 0;

        if (!isdigit((unsigned char) *s))
                return false;
        for (; isdigit((unsigned char) *s); s++) {
                if (v > (UINT64_MAX - 9) / 10)
                        return false;
                v = v * 10 + (uint64_t) (*s - '0');
        }
        *p = s;
        *ret = v;
        return true;
}

static bool skip(const char **p, char c) {
        if (**p != c)
                return false;
        (*p)++;
        return true;
}

/* "start-end perms offset major:minor inode [path]": true if well-formed. */
static bool parse_line(const char *s, uint64_t *start, uint64_t *end, uint64_t *offset, unsigned *major_,
                       unsigned *minor_, uint64_t *inode) {
        uint64_t maj, min;

        if (!parse_hex(&s, start) || !skip(&s, '-') || !parse_hex(&s, end) || !skip(&s, ' '))
                return false;
        for (int i = 0; i < 4; i++)     /* perms, e.g. "rw-s" */
                if (!*s++)
                        return false;
        if (!skip(&s, ' ') || !parse_hex(&s, offset) || !skip(&s, ' ') || !parse_hex(&s, &maj) || !skip(&s, ':') ||
            !parse_hex(&s, &min) || !skip(&s, ' ') || !parse_dec(&s, inode))
                return false;
        if (*s != ' ' && *s != 0)
                return false;
        if (maj > UINT32_MAX || min > UINT32_MAX || *end < *start)
                return false;
        *major_ = (unsigned) maj;
        *minor_ = (unsigned) min;
        return true;
}

/* A parsed maps line: the file (device, inode) and its mapped range. */
typedef int (*line_fn)(void *userdata, pid_t pid, dev_t dev, uint64_t ino, uint64_t offset, uint64_t length);

/* Scan one maps file. 0, or the callback's error. */
static int scan_maps(int fd, pid_t pid, char *buf, line_fn cb, void *userdata) {
        size_t have = 0;
        bool overlong = false;

        for (;;) {
                ssize_t l = read(fd, buf + have, MAPS_BUF - 1 - have);
                char *line, *nl;

                if (l < 0 && errno == EINTR)
                        continue;
                if (l <= 0) {
                        if (have == 0 || overlong)
                                return 0;
                        buf[have++] = '\n';     /* last line without newline */
                        l = 0;
                }
                have += (size_t) l;

                for (line = buf; (nl = memchr(line, '\n', have - (size_t) (line - buf))); line = nl + 1) {
                        uint64_t start, end, offset, inode;
                        unsigned ma, mi;

                        *nl = 0;
                        if (overlong) {
                                overlong = false;
                                continue;
                        }
                        if (!parse_line(line, &start, &end, &offset, &ma, &mi, &inode))
                                continue;
                        int r = cb(userdata, pid, makedev(ma, mi), inode, offset, end - start);
                        if (r < 0)
                                return r;
                }
                have -= (size_t) (line - buf);
                memmove(buf, line, have);
                if (have == MAPS_BUF - 1) {     /* a line longer than the buffer */
                        overlong = true;
                        have = 0;
                }
                if (l == 0)
                        return 0;
        }
}

/* cb for every line of the maps of every process but skip_pid and
 * daemon_pid (either may be 0). */
static int scan_procs(const char *proc_root, pid_t skip_pid, pid_t daemon_pid, line_fn cb, void *userdata) {
        _cleanup_closedir_ DIR *d = NULL;
        _cleanup_free_ char *buf = NULL;
        struct dirent *de;

        d = opendir(proc_root ?: "/proc");
        if (!d)
                return negative_errno();
        buf = malloc(MAPS_BUF);
        if (!buf)
                return -ENOMEM;

        while ((errno = 0, de = readdir(d))) {
                _cleanup_close_ int fd = -EBADF;
                char path[NAME_MAX + 16], *end;
                unsigned long v;
                pid_t pid;
                int r;

                if (!isdigit((unsigned char) de->d_name[0]))
                        continue;
                v = strtoul(de->d_name, &end, 10);
                if (*end != 0 || v == 0 || v > INT32_MAX)
                        continue;
                pid = (pid_t) v;
                if (pid == skip_pid || pid == daemon_pid)
                        continue;

                snprintf(path, sizeof path, "%s/maps", de->d_name);
                fd = openat(dirfd(d), path, O_RDONLY | O_CLOEXEC);
                if (fd < 0)
                        continue;       /* gone, or not ours to read */
                r = scan_maps(fd, pid, buf, cb, userdata);
                if (r < 0)
                        return r;
        }
        if (errno != 0)
                return negative_errno();
        return 0;
}

typedef struct OneFile {
        dev_t dev;
        uint64_t ino;
        mappers_fn cb;
        void *userdata;
} OneFile;

static int one_file_line(void *userdata, pid_t pid, dev_t dev, uint64_t ino, uint64_t offset, uint64_t length) {
        OneFile *f = userdata;

        if (ino != f->ino || dev != f->dev)
                return 0;
        return f->cb(f->userdata, pid, offset, length);
}

int mappers_scan(const char *proc_root, dev_t dev, ino_t ino, pid_t self_vmm_pid, pid_t daemon_pid, mappers_fn cb,
                 void *userdata) {
        OneFile f = { .dev = dev, .ino = (uint64_t) ino, .cb = cb, .userdata = userdata };

        return scan_procs(proc_root, self_vmm_pid, daemon_pid, one_file_line, &f);
}

typedef struct FileSet {
        MappedFile *files;
        size_t n;
        pid_t pid;              /* whose lines are being counted */
        uint64_t lines;
        mappers_count_fn count;
        void *userdata;
} FileSet;

static void count_done(FileSet *s) {
        if (s->pid > 0 && s->count)
                s->count(s->userdata, s->pid, s->lines);
}

static int file_set_line(void *userdata, pid_t pid, dev_t dev, uint64_t ino, uint64_t offset, uint64_t length) {
        FileSet *s = userdata;

        if (pid != s->pid) {
                count_done(s);
                s->pid = pid;
                s->lines = 0;
        }
        s->lines++;
        if (ino == 0)
                return 0;
        for (size_t i = 0; i < s->n; i++) {
                MappedFile *f = &s->files[i];

                if (ino != (uint64_t) f->ino || dev != f->dev || pid == f->owner || pid == f->last)
                        continue;
                if (f->n_foreign == 0)
                        f->foreign = pid;
                f->n_foreign++;
                f->last = pid;
        }
        return 0;
}

int mappers_scan_files(const char *proc_root, MappedFile *files, size_t n, pid_t daemon_pid, mappers_count_fn count,
                       void *userdata) {
        FileSet s = { .files = files, .n = n, .count = count, .userdata = userdata };
        int r;

        for (size_t i = 0; i < n; i++) {
                files[i].foreign = files[i].last = 0;
                files[i].n_foreign = 0;
        }
        r = scan_procs(proc_root, 0, daemon_pid, file_set_line, &s);
        if (r >= 0)
                count_done(&s);
        return r;
}

typedef struct FindState {
        pid_t *pids;
        size_t max;
        size_t n;
        pid_t last;
} FindState;

static int find_cb(void *userdata, pid_t pid, uint64_t offset, uint64_t length) {
        FindState *s = userdata;

        /* A process's lines come together: one entry per pid. */
        if (s->n > 0 && s->last == pid)
                return 0;
        if (s->n < s->max)
                s->pids[s->n] = pid;
        s->n++;
        s->last = pid;
        return 0;
}

int mappers_find(const char *proc_root, dev_t dev, ino_t ino, pid_t self_vmm_pid, pid_t daemon_pid,
                 pid_t *ret_pids, size_t max, size_t *ret_n) {
        FindState s = { .pids = ret_pids, .max = max };
        int r;

        r = mappers_scan(proc_root, dev, ino, self_vmm_pid, daemon_pid, find_cb, &s);
        if (r < 0)
                return r;
        *ret_n = s.n;
        return 0;
}

int mappers_find_fd(const char *proc_root, int fd, pid_t self_vmm_pid, pid_t daemon_pid, pid_t *ret_pids,
                    size_t max, size_t *ret_n) {
        struct stat st;

        if (fstat(fd, &st) < 0)
                return negative_errno();
        return mappers_find(proc_root, st.st_dev, st.st_ino, self_vmm_pid, daemon_pid, ret_pids, max, ret_n);
}
