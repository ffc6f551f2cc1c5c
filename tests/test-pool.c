/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Pools on real memfds: allocation with run contiguity, stable pointers
 * across growth, punching, the read-only fd a VMM gets (checked as an
 * unprivileged user), NUMA placement, restart adoption, and figures for
 * alloc / write / punch costs.
 */

#include <check.h>

#include "check-suite.h"
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"
#include "util.h"

#define PS POOL_PAGE_SIZE
#define KIB 1024u

static const PoolConfig small = { .reserve_bytes = 16 * 256 * KIB, .chunk_bytes = 256 * KIB };

static void fill(void *buf, uint64_t tag) {
        uint64_t *w = buf;
        for (size_t i = 0; i < PS / sizeof *w; i++)
                w[i] = tag * 0x9e3779b97f4a7c15ull + i;
}

static double now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e9 + ts.tv_nsec;
}

START_TEST(test_create) {
        _cleanup_(pool_freep) Pool *p = NULL;
        struct stat st;
        char link[256], path[64];
        ssize_t l;

        ck_assert_int_eq(pool_new(3, -1, &p), 0);
        ck_assert_str_eq(pool_name(p), "dedupd-pool-g3");
        ck_assert_int_eq(pool_group(p), 3);
        ck_assert_int_eq(pool_nid(p), -1);
        ck_assert(!pool_is_bound(p));

        ck_assert_int_eq(fstat(pool_fd(p), &st), 0);
        ck_assert_int_eq(st.st_mode & 07777, 0400);
        ck_assert_int_eq(fcntl(pool_fd(p), F_GET_SEALS) & F_SEAL_SHRINK, F_SEAL_SHRINK);
        ck_assert(fcntl(pool_fd(p), F_GETFD) & FD_CLOEXEC);
        ck_assert(fcntl(pool_ro_fd(p), F_GETFD) & FD_CLOEXEC);
        ck_assert_int_eq(fcntl(pool_ro_fd(p), F_GETFL) & O_ACCMODE, O_RDONLY);

        snprintf(path, sizeof path, "/proc/self/fd/%d", pool_ro_fd(p));
        l = readlink(path, link, sizeof link - 1);
        ck_assert_int_gt(l, 0);
        link[l] = 0;
        ck_assert_str_eq(link, "/memfd:dedupd-pool-g3 (deleted)");

        /* Grow, then try to shrink: the seal refuses. */
        uint64_t off;
        ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
        ck_assert_int_eq(ftruncate(pool_fd(p), 0), -1);
        ck_assert_int_eq(errno, EPERM);
}
END_TEST

START_TEST(test_alloc) {
        _cleanup_(pool_freep) Pool *p = NULL;
        PoolStats s;
        uint64_t off;

        ck_assert_int_eq(pool_new_full(1, -1, &small, &p), 0);
        for (uint64_t i = 0; i < 10; i++) {
                ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
                ck_assert_uint_eq(off, i * PS);
        }
        /* Freed pages are reused, lowest first. */
        ck_assert_int_eq(pool_free_page(p, 7 * PS), 0);
        ck_assert_int_eq(pool_free_page(p, 3 * PS), 0);
        ck_assert_int_eq(pool_free_page(p, 3 * PS), -EINVAL);
        ck_assert(!pool_is_allocated(p, 3 * PS));
        ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
        ck_assert_uint_eq(off, 3 * PS);
        /* A free hint is honoured... */
        ck_assert_int_eq(pool_alloc(p, 40 * PS, &off), 0);
        ck_assert_uint_eq(off, 40 * PS);
        ck_assert_int_eq(pool_alloc(p, 41 * PS, &off), 0);
        ck_assert_uint_eq(off, 41 * PS);
        /* ...a taken or misaligned one falls back to the lowest free page. */
        ck_assert_int_eq(pool_alloc(p, 41 * PS, &off), 0);
        ck_assert_uint_eq(off, 7 * PS);
        ck_assert_int_eq(pool_alloc(p, 5, &off), 0);
        ck_assert_uint_eq(off, 10 * PS);

        /* A hint at the end of the capacity grows the pool. */
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.capacity_pages, 64);
        ck_assert_int_eq(pool_alloc(p, 64 * PS, &off), 0);
        ck_assert_uint_eq(off, 64 * PS);
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.capacity_pages, 128);
        ck_assert_uint_eq(s.pages_allocated, 14);
        ck_assert_uint_eq(s.allocs_hinted, 3);
        /* A hint far past the end is not: no huge sparse growth. */
        ck_assert_int_eq(pool_alloc(p, 1000 * PS, &off), 0);
        ck_assert_uint_eq(off, 11 * PS);

        /* Runs: first fit of adjacent free pages. */
        ck_assert_int_eq(pool_alloc_run(p, 20, &off), 0);
        ck_assert_uint_eq(off, 12 * PS);        /* 12..31 free */
        ck_assert_int_eq(pool_alloc_run(p, 10, &off), 0);
        ck_assert_uint_eq(off, 42 * PS);        /* 32..39 too short */
        ck_assert_int_eq(pool_alloc_run(p, 100, &off), 0);
        ck_assert_uint_eq(off, 65 * PS);        /* the free tail, grown */
        for (uint64_t i = 0; i < 100; i++)
                ck_assert(pool_is_allocated(p, off + i * PS));
        ck_assert_int_eq(pool_alloc_run(p, 0, &off), -EINVAL);

        /* Out of reservation. */
        ck_assert_int_eq(pool_alloc_run(p, 16 * 64, &off), -ENOSPC);
        for (;;) {
                int r = pool_alloc(p, POOL_NO_HINT, &off);
                if (r < 0) {
                        ck_assert_int_eq(r, -ENOSPC);
                        break;
                }
        }
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.pages_allocated, 16 * 64);
        ck_assert_uint_eq(s.capacity_pages, s.reserve_pages);
}
END_TEST

START_TEST(test_odd_chunk) {
        _cleanup_(pool_freep) Pool *p = NULL;
        /* Growth steps need not be powers of two; they are rounded to whole
         * bitmap words (64 pages) and the reservation to whole steps. */
        const PoolConfig odd = { .reserve_bytes = 2048 * KIB, .chunk_bytes = 700 * KIB };
        PoolStats s;
        uint64_t off;

        ck_assert_int_eq(pool_new_full(1, -1, &odd, &p), 0);
        ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.capacity_pages, 192);       /* 768 KiB */
        ck_assert_uint_eq(s.reserve_pages, 576);        /* 3 steps */
        ck_assert_int_eq(pool_alloc_run(p, 200, &off), 0);
        ck_assert_uint_eq(off, PS);
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.capacity_pages, 384);
        ck_assert_int_eq(pool_claim(p, 500 * PS), 0);
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.capacity_pages, 576);
        ck_assert_int_eq(pool_claim(p, 576 * PS), -ERANGE);
        ck_assert_int_eq(pool_alloc_run(p, 500, &off), -ENOSPC);
}
END_TEST

START_TEST(test_write_read) {
        _cleanup_(pool_freep) Pool *p = NULL;
        uint8_t buf[PS], back[PS];
        const void *first;
        uint64_t off;
        PoolStats s;

        ck_assert_int_eq(pool_new_full(1, -1, &small, &p), 0);
        ck_assert_int_eq(pool_write(p, 0, buf), -EINVAL);       /* not allocated */
        ck_assert_ptr_null(pool_page(p, 0));

        ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
        fill(buf, 1);
        ck_assert_int_eq(pool_write(p, off, buf), 0);
        first = pool_page(p, off);
        ck_assert_ptr_nonnull(first);
        ck_assert_int_eq(memcmp(first, buf, PS), 0);

        /* Grow through every chunk: the first pointer stays valid. */
        for (uint64_t i = 1; i < 16 * 64; i++) {
                ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
                fill(buf, i + 1);
                ck_assert_int_eq(pool_write(p, off, buf), 0);
        }
        fill(buf, 1);
        ck_assert_int_eq(memcmp(first, buf, PS), 0);
        for (uint64_t i = 0; i < 16 * 64; i++) {
                fill(buf, i + 1);
                ck_assert_int_eq(memcmp(pool_page(p, i * PS), buf, PS), 0);
                ck_assert_int_eq(pread(pool_ro_fd(p), back, PS, (off_t) (i * PS)), (ssize_t) PS);
                ck_assert_int_eq(memcmp(back, buf, PS), 0);
                memset(back, 0, PS);
                ck_assert_int_eq(pool_read(p, i * PS, back), 0);
                ck_assert_int_eq(memcmp(back, buf, PS), 0);
        }
        ck_assert_int_eq(pool_read(p, 16 * 64 * PS, back), -EINVAL);
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.bytes_used, 16 * 64 * PS);
}
END_TEST

/* Runs: one pwrite and one punch for adjacent pages, refused whole if
 * any page of the run is not allocated. */
START_TEST(test_runs) {
        _cleanup_(pool_freep) Pool *p = NULL;
        uint8_t buf[4 * PS], back[PS];
        uint64_t off;
        PoolStats s;

        ck_assert_int_eq(pool_new_full(1, -1, &small, &p), 0);
        for (uint64_t i = 0; i < 4; i++) {
                ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
                ck_assert_uint_eq(off, i * PS);
                fill(buf + i * PS, 10 + i);
        }
        ck_assert_int_eq(pool_write_run(p, PS, buf, 4), -EINVAL);      /* page 4 is free */
        ck_assert_int_eq(pool_write_run(p, 0, buf, 4), 0);
        for (uint64_t i = 0; i < 4; i++) {
                ck_assert_int_eq(pool_read(p, i * PS, back), 0);
                ck_assert_int_eq(memcmp(back, buf + i * PS, PS), 0);
        }
        ck_assert_int_eq(pool_free_run(p, 2 * PS, 3), -EINVAL);
        ck_assert_int_eq(pool_free_run(p, PS, 2), 0);
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.bytes_used, 2 * PS);
        ck_assert_uint_eq(s.pages_allocated, 2);
        ck_assert_uint_eq(s.frees, 2);
        ck_assert_int_eq(pool_read(p, 3 * PS, back), 0);
        ck_assert_int_eq(memcmp(back, buf + 3 * PS, PS), 0);
}
END_TEST

START_TEST(test_free_punches) {
        _cleanup_(pool_freep) Pool *p = NULL;
        uint8_t buf[PS], back[PS], zero[PS] = {};
        uint64_t off;
        PoolStats s;

        ck_assert_int_eq(pool_new_full(1, -1, &small, &p), 0);
        for (uint64_t i = 0; i < 8; i++) {
                ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
                fill(buf, i);
                ck_assert_int_eq(pool_write(p, off, buf), 0);
        }
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.bytes_used, 8 * PS);

        ck_assert_int_eq(pool_free_page(p, 2 * PS), 0);
        ck_assert_int_eq(pool_free_page(p, 5 * PS), 0);
        ck_assert_int_eq(pool_stats(p, &s), 0);
        ck_assert_uint_eq(s.bytes_used, 6 * PS);
        ck_assert_uint_eq(s.pages_allocated, 6);
        ck_assert_uint_eq(s.frees, 2);
        ck_assert_int_eq(lseek(pool_fd(p), 2 * PS, SEEK_HOLE), 2 * PS);
        ck_assert_int_eq(pread(pool_ro_fd(p), back, PS, 5 * PS), (ssize_t) PS);
        ck_assert_int_eq(memcmp(back, zero, PS), 0);
        fill(buf, 4);
        ck_assert_int_eq(memcmp(pool_page(p, 4 * PS), buf, PS), 0);

        /* A reused page starts out as a hole and takes new content. */
        ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
        ck_assert_uint_eq(off, 2 * PS);
        fill(buf, 99);
        ck_assert_int_eq(pool_write(p, off, buf), 0);
        ck_assert_int_eq(memcmp(pool_page(p, off), buf, PS), 0);
}
END_TEST

/* What a VMM can do with the fd it gets, run as an unprivileged user when we
 * are root (as root, DAC would not stop us; as the pool's non-root owner,
 * only the fchmod check does not apply). Exits 0 on success, else the
 * number of the failed check. */
static int vmm_side(int ro_fd, const void *expect) {
        bool other_user = geteuid() == 0;
        char path[64];
        uint8_t back[PS];
        void *m;

        if (other_user) {
                if (setgid(65534) < 0 || setuid(65534) < 0)
                        return 100;
                /* Changing credentials makes us non-dumpable, which would
                 * hide /proc/self/fd behind a different EACCES. */
                if (prctl(PR_SET_DUMPABLE, 1) < 0)
                        return 101;
        }
        snprintf(path, sizeof path, "/proc/self/fd/%d", ro_fd);
        if (open(path, O_RDWR | O_CLOEXEC) >= 0 || errno != EACCES)
                return 1;
        if (other_user && fchmod(ro_fd, 0600) == 0)    /* the owner may, a VMM may not */
                return 2;
        if (write(ro_fd, back, 1) >= 0 || errno != EBADF)
                return 3;
        if (fallocate(ro_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0, PS) == 0)
                return 4;
        if (ftruncate(ro_fd, 0) == 0)
                return 5;
        if (mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_SHARED, ro_fd, 0) != MAP_FAILED || errno != EACCES)
                return 6;
        m = mmap(NULL, PS, PROT_READ, MAP_SHARED, ro_fd, 0);
        if (m == MAP_FAILED)
                return 7;
        if (mprotect(m, PS, PROT_READ | PROT_WRITE) == 0 || errno != EACCES)
                return 8;
        if (memcmp(m, expect, PS) != 0)
                return 9;
        munmap(m, PS);

        /* The way agents map it: a private write copies. */
        m = mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_PRIVATE, ro_fd, 0);
        if (m == MAP_FAILED)
                return 10;
        if (memcmp(m, expect, PS) != 0)
                return 11;
        memset(m, 0xee, PS);
        if (pread(ro_fd, back, PS, 0) != (ssize_t) PS || memcmp(back, expect, PS) != 0)
                return 12;
        return 0;
}

START_TEST(test_ro_fd) {
        _cleanup_(pool_freep) Pool *p = NULL;
        uint8_t buf[PS];
        uint64_t off;
        int status;
        pid_t pid;

        ck_assert_int_eq(pool_new_full(1, -1, &small, &p), 0);
        ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
        fill(buf, 7);
        ck_assert_int_eq(pool_write(p, off, buf), 0);

        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0)
                _exit(vmm_side(pool_ro_fd(p), buf));
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        ck_assert_msg(WEXITSTATUS(status) == 0, "VMM-side check %d failed", WEXITSTATUS(status));

        /* The child's private write did not reach the pool. */
        ck_assert_int_eq(memcmp(pool_page(p, off), buf, PS), 0);
}
END_TEST

START_TEST(test_numa) {
        _cleanup_(pool_freep) Pool *p = NULL, *q = NULL;
        uint8_t buf[PS];
        unsigned long mask = 0;
        int mode = -1;
        uint64_t off;

        if (numa_available() < 0) {
                printf("test_numa: skipped, libnuma reports no NUMA support\n");
                return;
        }
        ck_assert_int_eq(pool_new_full(0, 0, &small, &p), 0);
        ck_assert_str_eq(pool_name(p), "dedupd-pool-g0-n0");
        ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
        ck_assert(pool_is_bound(p));
        fill(buf, 3);
        ck_assert_int_eq(pool_write(p, off, buf), 0);
        ck_assert_int_eq(pool_page_nid(p, off), 0);
        ck_assert_int_eq(get_mempolicy(&mode, &mask, sizeof mask * 8, (void *) pool_page(p, off), MPOL_F_ADDR), 0);
        ck_assert_int_eq(mode, MPOL_PREFERRED);
        ck_assert_uint_eq(mask, 1);
        ck_assert_int_eq(pool_page_nid(p, off + PS), -EINVAL);  /* not allocated */

        /* A node this machine lacks: the pool works, unbound. */
        ck_assert_int_eq(pool_new_full(0, numa_max_node() + 1, &small, &q), 0);
        ck_assert_int_eq(pool_alloc(q, POOL_NO_HINT, &off), 0);
        ck_assert(!pool_is_bound(q));
        ck_assert_int_eq(pool_write(q, off, buf), 0);
        ck_assert_int_ge(pool_page_nid(q, off), 0);
}
END_TEST

START_TEST(test_loc) {
        uint16_t id;
        uint64_t off, loc;

        loc = pool_loc_make(7, 123 * PS);
        pool_loc_split(loc, &id, &off);
        ck_assert_uint_eq(id, 7);
        ck_assert_uint_eq(off, 123 * PS);

        loc = pool_loc_make(POOL_ID_MAX, POOL_LOC_OFFSET_MASK & ~(uint64_t) (PS - 1));
        ck_assert(loc != UINT64_MAX);
        pool_loc_split(loc, &id, &off);
        ck_assert_uint_eq(id, POOL_ID_MAX);
        ck_assert_uint_eq(off, POOL_LOC_OFFSET_MASK & ~(uint64_t) (PS - 1));
}
END_TEST

START_TEST(test_adopt) {
        _cleanup_(pool_freep) Pool *p = NULL, *q = NULL;
        _cleanup_close_ int other = -EBADF;
        uint8_t buf[PS];
        uint64_t off;
        PoolStats s;
        int fd;

        ck_assert_int_eq(pool_new_full(9, 1, &small, &p), 0);
        for (uint64_t i = 0; i < 100; i++) {
                ck_assert_int_eq(pool_alloc(p, POOL_NO_HINT, &off), 0);
                fill(buf, i);
                ck_assert_int_eq(pool_write(p, off, buf), 0);
        }
        fd = fcntl(pool_fd(p), F_DUPFD_CLOEXEC, 3);
        ck_assert_int_ge(fd, 0);
        p = pool_free(p);

        ck_assert_int_eq(pool_adopt(fd, &small, &q), 0);
        ck_assert_int_eq(pool_group(q), 9);
        ck_assert_int_eq(pool_nid(q), 1);
        ck_assert_str_eq(pool_name(q), "dedupd-pool-g9-n1");
        ck_assert_int_eq(pool_stats(q, &s), 0);
        ck_assert_uint_eq(s.capacity_pages, 128);
        ck_assert_uint_eq(s.pages_allocated, 0);
        ck_assert_uint_eq(s.bytes_used, 100 * PS);

        /* Claiming: agents may map any page, so nothing is handed out and
         * nothing punched until the trim. */
        ck_assert(pool_is_claiming(q));
        ck_assert_int_eq(pool_alloc(q, POOL_NO_HINT, &off), -EBUSY);
        ck_assert_int_eq(pool_alloc_run(q, 2, &off), -EBUSY);

        /* Agents report pages 10..20 in use; 20's sharer leaves at once. */
        for (uint64_t i = 10; i <= 20; i++)
                ck_assert_int_eq(pool_claim(q, i * PS), 0);
        ck_assert_int_eq(pool_claim(q, 10 * PS), -EBUSY);
        ck_assert_int_eq(pool_claim(q, 1), -EINVAL);
        ck_assert_int_eq(pool_claim(q, 128 * PS), -ERANGE);     /* past the memfd: nobody maps it */
        ck_assert_int_eq(pool_free_page(q, 20 * PS), 0);
        ck_assert_int_eq(pool_stats(q, &s), 0);
        ck_assert_uint_eq(s.bytes_used, 100 * PS);
        ck_assert_int_eq(pool_trim(q), 0);
        ck_assert(!pool_is_claiming(q));
        ck_assert_int_eq(pool_stats(q, &s), 0);
        ck_assert_uint_eq(s.bytes_used, 10 * PS);
        for (uint64_t i = 10; i < 20; i++) {
                fill(buf, i);
                ck_assert_int_eq(memcmp(pool_page(q, i * PS), buf, PS), 0);
        }
        /* New allocations avoid claimed pages. */
        ck_assert_int_eq(pool_alloc_run(q, 12, &off), 0);
        ck_assert_uint_eq(off, 20 * PS);

        /* Not a pool. */
        other = memfd_create("guest-ram", MFD_CLOEXEC);
        ck_assert_int_ge(other, 0);
        ck_assert_int_eq(pool_adopt(other, NULL, &p), -EINVAL);
        ck_assert_int_ge(fcntl(other, F_GETFD), 0);     /* still open */
}
END_TEST

/* Figures, not assertions: pool_alloc() cost, pool_write() of a fresh page,
 * and pool_free_page() (one punch each). */
START_TEST(test_bench) {
        _cleanup_(pool_freep) Pool *p = NULL;
        const uint64_t n = 1u << 18;    /* 1 GiB of pages */
        uint8_t buf[PS];
        uint64_t off;
        double t0, t_alloc, t_write, t_read, t_free, t_free_mapped, t_refill;
        unsigned sum = 0;
        int r = 0;

        /* No ck_assert in the timed loops: each one costs a write to
         * Check's log (mark_point). Errors are OR-ed and checked after. */
        ck_assert_int_eq(pool_new(0, -1, &p), 0);
        fill(buf, 5);

        t0 = now_ns();
        for (uint64_t i = 0; i < n; i++)
                r |= pool_alloc(p, POOL_NO_HINT, &off);
        t_alloc = now_ns() - t0;
        ck_assert_int_eq(r, 0);

        t0 = now_ns();
        for (uint64_t i = 0; i < n; i++)
                r |= pool_write(p, i * PS, buf);
        t_write = now_ns() - t0;
        ck_assert_int_eq(r, 0);

        t0 = now_ns();
        for (uint64_t i = 0; i < n; i++)
                r |= pool_read(p, i * PS, buf);
        t_read = now_ns() - t0;
        ck_assert_int_eq(r, 0);

        t0 = now_ns();
        for (uint64_t i = 0; i < n; i++)
                r |= pool_free_page(p, i * PS);
        t_free = now_ns() - t0;
        ck_assert_int_eq(r, 0);

        /* Punching pages the daemon mapped through pool_page() costs more. */
        for (uint64_t i = 0; i < n / 4; i++) {
                r |= pool_alloc(p, POOL_NO_HINT, &off);
                r |= pool_write(p, off, buf);
                sum += *(const volatile uint8_t *) pool_page(p, off);
        }
        ck_assert_int_eq(r, 0);
        t0 = now_ns();
        for (uint64_t i = 0; i < n / 4; i++)
                r |= pool_free_page(p, i * PS);
        t_free_mapped = now_ns() - t0;
        ck_assert_int_eq(r, 0);

        /* Refill a fragmented pool: every other page taken. */
        for (uint64_t i = 0; i < n; i++)
                r |= pool_alloc(p, POOL_NO_HINT, &off);
        for (uint64_t i = 0; i < n; i += 2)
                r |= pool_free_page(p, i * PS);
        ck_assert_int_eq(r, 0);
        t0 = now_ns();
        for (uint64_t i = 0; i < n / 2; i++)
                r |= pool_alloc(p, POOL_NO_HINT, &off);
        t_refill = now_ns() - t0;
        ck_assert_int_eq(r, 0);

        printf("pool bench (%llu pages): alloc %.1f ns/page, alloc in a fragmented pool %.1f ns/page, "
               "write (new page) %.2f us/page, read %.2f us/page, free (punch) %.2f us/page, "
               "free of a page read through pool_page() %.2f us/page (%u)\n",
               (unsigned long long) n, t_alloc / n, t_refill / (n / 2), t_write / n / 1000, t_read / n / 1000,
               t_free / n / 1000, t_free_mapped / (n / 4) / 1000, sum & 1);
}
END_TEST

static Suite *pool_suite(void) {
        const CheckCase cases[] = {
                { "create", test_create },
                { "alloc", test_alloc },
                { "odd-chunk", test_odd_chunk },
                { "write-read", test_write_read },
                { "free-punches", test_free_punches },
                { "runs", test_runs },
                { "ro-fd", test_ro_fd },
                { "numa", test_numa },
                { "loc", test_loc },
                { "adopt", test_adopt },
                { "bench", test_bench },
        };

        return check_suite("pool", cases, ELEMENTSOF(cases), 120, NULL);
}

int main(void) {
        return check_run(pool_suite());
}
