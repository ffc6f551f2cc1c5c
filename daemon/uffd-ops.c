/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: userfaultfd write protection from the daemon
 *
 * UFFDIO_WRITEPROTECT acts on the address space the uffd was created in,
 * whoever calls it: the daemon protects a VMM's pages through a dup of the
 * VMM's uffd. Invariants:
 *
 * - uffd_wp() returning 0 means every pte in the range carries the uffd-wp
 *   bit (or, with WP_UNPOPULATED, a marker for a pte not yet populated): a
 *   write from then on faults to the agent, populated or not.
 * - uffd_unwp() always wakes: a guest thread blocked on a transient
 *   protection must never wait for anyone but us.
 * - Nothing here reads the uffd (see uffd-ops.h).
 */

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <unistd.h>

#include "dedup-compat.h"
#include "uffd-ops.h"
#include "util.h"

#define PS 4096u

int uffd_writeprotect(int uffd, uint64_t addr, uint64_t len, bool wp, bool wake) {
        struct uffdio_writeprotect w = {
                .range = { .start = addr, .len = len },
                /* The kernel refuses WP|DONTWAKE: waking is for unprotect only. */
                .mode = wp ? UFFDIO_WRITEPROTECT_MODE_WP : wake ? 0 : UFFDIO_WRITEPROTECT_MODE_DONTWAKE,
        };

        if (uffd < 0 || len == 0 || addr % PS != 0 || len % PS != 0)
                return -EINVAL;
        if (ioctl(uffd, UFFDIO_WRITEPROTECT, &w) < 0) {
                /* Not a uffd at all: ENOTTY; report it as bad input. */
                if (errno == ENOTTY)
                        return -EINVAL;
                return negative_errno();
        }
        return 0;
}

int uffd_wp(int uffd, uint64_t addr, uint64_t len) {
        return uffd_writeprotect(uffd, addr, len, true, false);
}

int uffd_unwp(int uffd, uint64_t addr, uint64_t len) {
        return uffd_writeprotect(uffd, addr, len, false, true);
}

int uffd_wake(int uffd, uint64_t addr, uint64_t len) {
        struct uffdio_range r = { .start = addr, .len = len };

        if (uffd < 0 || len == 0 || addr % PS != 0 || len % PS != 0)
                return -EINVAL;
        if (ioctl(uffd, UFFDIO_WAKE, &r) < 0)
                return errno == ENOTTY ? -EINVAL : negative_errno();
        return 0;
}

int uffd_fd_is_userfaultfd(int fd) {
        char path[64], link[64];
        ssize_t l;

        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        l = readlink(path, link, sizeof link - 1);
        if (l < 0)
                return negative_errno();
        link[l] = 0;
        return strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

int uffd_pagemap_open(const char *proc_root, pid_t pid) {
        char path[256];
        int fd;

        if (pid > 0)
                snprintf(path, sizeof path, "%s/%d/pagemap", proc_root ?: "/proc", (int) pid);
        else
                snprintf(path, sizeof path, "%s/self/pagemap", proc_root ?: "/proc");
        fd = open(path, O_RDONLY | O_CLOEXEC);
        return fd < 0 ? negative_errno() : fd;
}

int uffd_pagemap_wp(int pagemap_fd, uint64_t addr, size_t npages, bool *ret) {
        uint64_t e[512];

        if (addr % PS != 0)
                return -EINVAL;
        for (size_t done = 0; done < npages;) {
                size_t n = MIN(npages - done, ELEMENTSOF(e));
                ssize_t l = pread(pagemap_fd, e, n * sizeof e[0], (off_t) ((addr / PS + done) * sizeof e[0]));
                if (l < 0)
                        return negative_errno();
                if ((size_t) l != n * sizeof e[0])
                        return -EIO;
                for (size_t i = 0; i < n; i++)
                        ret[done + i] = e[i] & PM_UFFD_WP;
                done += n;
        }
        return 0;
}
