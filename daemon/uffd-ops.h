/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The daemon's side of write protection: UFFDIO_WRITEPROTECT on a VMM's
 * guest RAM through the VMM's own userfaultfd, received over the
 * registration socket (SCM_RIGHTS). This is step 1 of the merge protocol
 * (DESIGN.md §2): once uffd_wp() returned 0, every guest write to the range
 * blocks in a fault that the VMM's agent reads and answers.
 *
 * The daemon's copy of the uffd is the same file as the agent's: the daemon
 * must never read or poll it, or it would steal the agent's fault events.
 *
 * Errors (-errno, never logged here):
 *   -ENOENT  part of the range is not mapped or not registered for WP
 *            (the VMM unmapped or remapped it);
 *   -ESRCH   the VMM's address space is gone (it exited);
 *   -EAGAIN  the VMM's address space is changing (fork/mremap events):
 *            try again later;
 *   -EINVAL  addr/len not page-aligned, len 0, or not a userfaultfd.
 */

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

/* Protect [addr, addr + len) of the uffd's process (UFFDIO_WRITEPROTECT_MODE_WP). */
int uffd_wp(int uffd, uint64_t addr, uint64_t len);
/* Unprotect it and wake threads blocked on a write fault in it (mode 0). */
int uffd_unwp(int uffd, uint64_t addr, uint64_t len);
/* Either; wake only matters when unprotecting (wake=false: MODE_DONTWAKE,
 * the caller wakes later, e.g. after a batch). */
int uffd_writeprotect(int uffd, uint64_t addr, uint64_t len, bool wp, bool wake);

/* 1 if fd is a userfaultfd ("anon_inode:[userfaultfd]"), 0 if not, -errno.
 * For validating the fd a VMM sent. */
int uffd_fd_is_userfaultfd(int fd);

/* Open /proc/<pid>/pagemap (pid 0: self) for uffd_pagemap_wp(); proc_root
 * NULL means "/proc". Returns the fd or -errno (-EACCES/-EPERM without
 * ptrace read access to pid). */
int uffd_pagemap_open(const char *proc_root, pid_t pid);
/* Whether the page at addr is write-protected now (pagemap bit 57,
 * PM_UFFD_WP), for every page of [addr, addr + npages pages): ret[i]. */
int uffd_pagemap_wp(int pagemap_fd, uint64_t addr, size_t npages, bool *ret);

/* Wake threads blocked on faults in the range (UFFDIO_WAKE), after
 * unprotecting with wake=false. */
int uffd_wake(int uffd, uint64_t addr, uint64_t len);
