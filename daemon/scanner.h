/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Reading guest memory: io_uring reads from a VM's memfd into registered
 * buffers (or pread() into plain ones: ScannerConfig.sync), never through
 * a mapping (reading a shmem hole through a mapping would allocate a
 * page). Holes — never-touched pages and pages already
 * merged or punched — are found with cachestat()/lseek(SEEK_DATA/SEEK_HOLE)
 * and not read at all. See scanner.c for the invariants.
 *
 * A Scanner must be used by the thread that created it (its ring is
 * IORING_SETUP_SINGLE_ISSUER where the kernel supports it; a sync one has
 * no ring).
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCANNER_PAGE_SIZE 4096u

typedef struct Scanner Scanner;

typedef struct ScannerConfig {
        unsigned queue_depth;   /* batches in flight (buffers), 1..64; 0 = 4 */
        unsigned batch_pages;   /* pages per batch (one submit), 1..4096; 0 = 256 */
        bool async;             /* IOSQE_ASYNC: copy on io_uring workers, overlapping the
                                 * callbacks on another CPU, instead of inline in submit */
        bool sync;              /* no io_uring: pread() each extent on the calling thread,
                                 * one batch at a time (queue_depth is ignored), so pages
                                 * are copied on the CPU that then reads them, while they
                                 * are in its cache; for threads that each scan a share */
} ScannerConfig;

typedef struct ScannerStats {
        uint64_t bytes_read;            /* bytes read into buffers */
        uint64_t pages_delivered;       /* callbacks made */
        uint64_t pages_hole;            /* pages skipped as holes (or past EOF) */
        uint64_t batches;               /* batches with at least one read */
        uint64_t submits;               /* io_uring_enter() calls that submitted reads */
        uint64_t reads;                 /* SQEs: contiguous data extents read */
        uint64_t seeks;                 /* lseek() calls */
        uint64_t cachestats;            /* cachestat() calls */
} ScannerStats;

/* Called for each data page in offset order; page is valid only during the
 * call. Return 0 to go on, or a negative errno to stop scanner_read(), which
 * then returns it. Content may be torn or stale if the guest writes the page
 * meanwhile, and a page punched while being read reads as zeros: the caller
 * confirms under write protection before merging. */
typedef int (*scanner_page_fn)(void *userdata, uint64_t offset, const void *page);

/* -EINVAL for out-of-range parameters, -ENOMEM, or io_uring_queue_init's
 * error (-ENOSYS, -EPERM when io_uring is disabled). */
int scanner_new(unsigned queue_depth, unsigned batch_pages, Scanner **ret);
int scanner_new_full(const ScannerConfig *config, Scanner **ret);

Scanner *scanner_free(Scanner *s);       /* NULL-safe; returns NULL */
static inline void scanner_freep(Scanner **s) {
        if (*s)
                scanner_free(*s);
}

/* Read [offset, offset + npages pages) of fd (page-aligned offset), calling
 * cb for every page that is not a hole. 0, the callback's error, -EINVAL, or
 * the read's -errno (pages before it were delivered). */
int scanner_read(Scanner *s, int fd, uint64_t offset, uint32_t npages, scanner_page_fn cb, void *userdata);

/* The same, for a range the caller expects to be all data (every page was,
 * the last time it looked): read whole, without asking first where the
 * holes are. A page that reads as zeros is still asked about alone, and not
 * delivered if it is a hole. */
int scanner_read_data(Scanner *s, int fd, uint64_t offset, uint32_t npages, scanner_page_fn cb, void *userdata);

/* Cumulative since scanner_new() or scanner_reset_stats(). */
void scanner_get_stats(const Scanner *s, ScannerStats *ret);
void scanner_reset_stats(Scanner *s);
void scanner_stats_add(ScannerStats *a, const ScannerStats *b);
/* True if reads use registered buffers (READ_FIXED); false after a fallback
 * to plain reads because registering failed (RLIMIT_MEMLOCK). */
bool scanner_uses_fixed_buffers(const Scanner *s);

/*
 * A team of threads that read in parallel, each with a Scanner of its own.
 * The caller cuts its work into units (e.g. 2 MiB of one memfd each) and
 * takes them back in order: scanner_team_wait(u) returns once unit u is
 * done, and while it waits the calling thread reads units nobody has taken
 * yet with its own Scanner. So the caller can consume unit u (feed the
 * engine) while the team reads the following ones, and a team of one
 * thread (no worker threads at all) reads everything on the caller's.
 *
 * Units are taken in order, each by exactly one thread; everything a unit's
 * function wrote is visible to the caller once scanner_team_wait() for it
 * returned. A team must be used by the thread that created it.
 */

typedef struct ScannerTeam ScannerTeam;

/* Threads in a team, the caller's included, at most. */
#define SCANNER_TEAM_MAX 64u

/* Read unit number unit with s (the calling thread's own Scanner). Runs on
 * any thread of the team: touch nothing but the unit's own memory. Returns
 * 0 or -errno, handed back by scanner_team_wait(). */
typedef int (*scanner_unit_fn)(void *userdata, Scanner *s, size_t unit);

/* nthreads readers, the calling thread included (so nthreads - 1 threads
 * are started, named "dedupd-scan"); own is the caller's Scanner, not taken
 * over. -EINVAL, -ENOMEM, or the error of a thread or its scanner_new_full(). */
int scanner_team_new(unsigned nthreads, Scanner *own, const ScannerConfig *config, ScannerTeam **ret);
/* Stops and joins the threads (after scanner_team_finish()). NULL-safe. */
ScannerTeam *scanner_team_free(ScannerTeam *t);
static inline void scanner_team_freep(ScannerTeam **t) {
        if (*t)
                scanner_team_free(*t);
}
unsigned scanner_team_size(const ScannerTeam *t);
/* What the team's threads' scanners did (own not included): their stats
 * are added up as each unit is done. */
void scanner_team_get_stats(ScannerTeam *t, ScannerStats *ret);

/* Start a job of n units; the previous one must be finished. -ENOMEM. */
int scanner_team_start(ScannerTeam *t, size_t n, scanner_unit_fn fn, void *userdata);
/* Wait for unit unit of the job, reading untaken ones meanwhile; its
 * function's return value. */
int scanner_team_wait(ScannerTeam *t, size_t unit);
/* Drop the units nobody has taken and wait for those being read: after
 * this nothing of the job is touched any more. */
void scanner_team_finish(ScannerTeam *t);
