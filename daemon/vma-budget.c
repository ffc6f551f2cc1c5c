/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: VMA budget
 *
 * Invariants:
 * - A merge is only started when vma_budget_can_add(b, VMA_RUN_COST) holds,
 *   so by our estimate a VMM keeps at least `headroom` VMAs of its own.
 * - The estimate errs high: every run is charged as if it split a VMA in
 *   the middle. vma_budget_resync() replaces it by the real count, so the
 *   error never accumulates past one resync interval.
 * - Parsers take paths, so tests feed them fake /proc files.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"
#include "vma-budget.h"

int vma_budget_read_max_map_count(const char *path, uint64_t *ret) {
        _cleanup_close_ int fd = -EBADF;
        char buf[64], *end;
        unsigned long long v;
        ssize_t l;

        fd = open(path ?: VMA_DEFAULT_MAX_MAP_COUNT_PATH, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        l = read(fd, buf, sizeof buf - 1);
        if (l < 0)
                return negative_errno();
        buf[l] = 0;
        if (buf[0] < '0' || buf[0] > '9')
                return -EINVAL;
        errno = 0;
        v = strtoull(buf, &end, 10);
        if (errno != 0 || v == 0 || (*end != 0 && strcmp(end, "\n") != 0))
                return -EINVAL;
        *ret = v;
        return 0;
}

int vma_count_pid(const char *proc_root, pid_t pid, uint64_t *ret) {
        _cleanup_close_ int fd = -EBADF;
        char path[256], buf[64 * 1024];
        uint64_t n = 0;
        bool partial = false;

        if (pid <= 0)
                return -EINVAL;
        snprintf(path, sizeof path, "%s/%d/maps", proc_root ?: "/proc", (int) pid);
        fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
                return negative_errno();
        for (;;) {
                ssize_t l = read(fd, buf, sizeof buf);
                if (l < 0) {
                        if (errno == EINTR)
                                continue;
                        return negative_errno();
                }
                if (l == 0)
                        break;
                for (const char *p = buf, *e = buf + l; (p = memchr(p, '\n', (size_t) (e - p))); p++)
                        n++;
                partial = buf[l - 1] != '\n';
        }
        *ret = n + partial;     /* a last line without newline counts too */
        return 0;
}

void vma_budget_init(VmaBudget *b, uint64_t max, uint64_t headroom, uint64_t current) {
        *b = (VmaBudget) { .max = max, .headroom = headroom, .current = current };
}

uint64_t vma_budget_available(const VmaBudget *b) {
        uint64_t used = b->current + b->headroom;
        return used >= b->max ? 0 : b->max - used;
}

bool vma_budget_can_add(const VmaBudget *b, uint64_t n) {
        return n <= vma_budget_available(b);
}

void vma_budget_add(VmaBudget *b, int64_t delta) {
        if (delta < 0 && (uint64_t) -delta > b->current)
                b->current = 0;
        else
                b->current += (uint64_t) delta;
}

int64_t vma_budget_resync(VmaBudget *b, uint64_t actual) {
        b->last_drift = (int64_t) actual - (int64_t) b->current;
        b->current = actual;
        b->resyncs++;
        return b->last_drift;
}

void vma_budget_set_limits(VmaBudget *b, uint64_t max, uint64_t headroom) {
        b->max = max;
        b->headroom = headroom;
}
