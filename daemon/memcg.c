/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: the daemon's memory cgroup (memcg.h)
 *
 * cgroup v2: "0::/PATH" in /proc/self/cgroup, files memory.max ("max" or
 * bytes) and memory.current under ROOT/PATH. v1: the "memory" controller's
 * line, files memory.limit_in_bytes (a huge number when unlimited) and
 * memory.usage_in_bytes under ROOT/memory/PATH. Both are re-read at each
 * memcg_room(): a cheap read of two small files, done once per scan batch.
 */

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "memcg.h"
#include "util.h"

struct MemCg {
        char path[PATH_MAX];    /* directory of the cgroup */
        const char *limit, *usage;
};

static int read_u64(const char *dir, const char *file, uint64_t *ret) {
        char path[PATH_MAX + 64], buf[64];
        ssize_t n;
        int fd;

        snprintf(path, sizeof(path), "%s/%s", dir, file);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return -errno;
        n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0)
                return n < 0 ? -errno : -EIO;
        buf[n] = 0;
        if (strncmp(buf, "max", 3) == 0) {
                *ret = UINT64_MAX;
                return 0;
        }
        errno = 0;
        *ret = strtoull(buf, NULL, 10);
        return errno ? -errno : 0;
}

int memcg_open(const char *root, const char *proc_self, MemCg **ret) {
        char path[PATH_MAX], line[PATH_MAX + 64], v2[PATH_MAX] = "", v1[PATH_MAX] = "";
        MemCg *c;
        FILE *f;

        snprintf(path, sizeof(path), "%s/cgroup", proc_self);
        f = fopen(path, "re");
        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f)) {
                char *ctrl = strchr(line, ':'), *p = ctrl ? strchr(ctrl + 1, ':') : NULL;
                if (!p)
                        continue;
                *p++ = 0;
                p[strcspn(p, "\n")] = 0;
                if (strcmp(ctrl + 1, "") == 0 && strncmp(line, "0", 2) == 0)
                        snprintf(v2, sizeof(v2), "%s", p);
                else if (strstr(ctrl + 1, "memory"))
                        snprintf(v1, sizeof(v1), "%s", p);
        }
        fclose(f);

        c = calloc(1, sizeof(*c));
        if (!c)
                return -ENOMEM;
        if (v1[0]) {
                snprintf(c->path, sizeof(c->path), "%s/memory%s", root, v1);
                c->limit = "memory.limit_in_bytes";
                c->usage = "memory.usage_in_bytes";
        } else if (v2[0]) {
                snprintf(c->path, sizeof(c->path), "%s%s", root, v2);
                c->limit = "memory.max";
                c->usage = "memory.current";
        }
        if (!c->limit || access(c->path, R_OK) < 0) {
                free(c);
                return -ENOENT;
        }
        *ret = c;
        return 0;
}

MemCg *memcg_free(MemCg *c) {
        free(c);
        return NULL;
}

int memcg_room(MemCg *c, uint64_t *ret) {
        uint64_t limit, usage;
        int r;

        r = read_u64(c->path, c->limit, &limit);
        if (r >= 0)
                r = read_u64(c->path, c->usage, &usage);
        if (r < 0)
                return r;
        /* v1 says "unlimited" with a page-rounded LONG_MAX. */
        if (limit >= (uint64_t) LONG_MAX - 4096 * 2)
                *ret = UINT64_MAX;
        else
                *ret = limit > usage ? limit - usage : 0;
        return 0;
}

const char *memcg_path(const MemCg *c) {
        return c->path;
}
