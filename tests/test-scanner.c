/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The scanner on real memfds: exact content in offset order, holes (never
 * written and punched) skipped and never allocated, EOF, a callback's stop,
 * one submit per batch, and a throughput figure on 1 GiB of unique pages.
 * A ScannerTeam reads units on several threads and hands them back in
 * order, each unit read once, nothing touched after scanner_team_finish().
 *
 * `strace -f -c ./test-scanner` shows the syscalls: io_uring_enter about
 * once per batch, no pread, no mmap of the memfd.
 */

#include <check.h>

#include "check-suite.h"
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#include "scanner.h"
#include "util.h"

#define PS SCANNER_PAGE_SIZE

static void fill(void *buf, uint64_t tag) {
        uint64_t *w = buf;
        for (size_t i = 0; i < PS / sizeof *w; i++)
                w[i] = tag * 0x9e3779b97f4a7c15ull + i + 1;
}

static double now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return ts.tv_sec * 1e9 + ts.tv_nsec;
}

/* A memfd of npages pages where page i holds fill(i) if data[i], else a hole
 * (punch[i]: written then punched, like a merged page). */
static int make_memfd(uint64_t npages, const bool *data, const bool *punch) {
        uint8_t buf[PS];
        int fd = memfd_create("test-scanner", MFD_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, (off_t) (npages * PS)), 0);
        for (uint64_t i = 0; i < npages; i++) {
                if (!data[i] && !(punch && punch[i]))
                        continue;
                fill(buf, i);
                ck_assert_int_eq(pwrite(fd, buf, PS, (off_t) (i * PS)), (ssize_t) PS);
                if (punch && punch[i])
                        ck_assert_int_eq(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                                                   (off_t) (i * PS), PS), 0);
        }
        return fd;
}

typedef struct Seen {
        uint64_t first;         /* page index of the range start */
        uint64_t n;
        bool *seen;             /* by page index - first */
        uint64_t last;          /* last offset seen, for ordering */
        uint64_t bad;           /* pages with wrong content or order */
        uint64_t stop_after;    /* return -ECANCELED after this many; 0 = never */
} Seen;

static int collect(void *userdata, uint64_t offset, const void *page) {
        Seen *s = userdata;
        uint8_t want[PS];
        uint64_t idx = offset / PS;

        fill(want, idx);
        if (idx < s->first || idx >= s->first + s->n || s->seen[idx - s->first] ||
            (s->last != UINT64_MAX && offset <= s->last) || memcmp(page, want, PS) != 0)
                s->bad++;
        else
                s->seen[idx - s->first] = true;
        s->last = offset;
        if (s->stop_after && --s->stop_after == 0)
                return -ECANCELED;
        return 0;
}

/* The layout used by most cases: 1000 pages. */
#define NPAGES 1000
static void layout(bool *data, bool *punch) {
        memset(data, 0, NPAGES);
        memset(punch, 0, NPAGES);
        for (int i = 0; i < 100; i++)
                data[i] = true;
        data[200] = data[202] = data[203] = true;
        for (int i = 500; i < NPAGES; i++)
                data[i] = true;
        for (int i = 300; i < 310; i++)
                punch[i] = true;
        data[600] = data[601] = data[700] = false;
        punch[600] = punch[601] = punch[700] = true;
        data[999] = false;      /* a hole at EOF */
}

/* Sync scanners (pread, no ring) for the content-sync case. */
static bool sync_reads;

static void check_range(unsigned depth, unsigned batch, uint64_t first, uint64_t n) {
        const ScannerConfig config = { .queue_depth = depth, .batch_pages = batch, .sync = sync_reads };
        _cleanup_(scanner_freep) Scanner *sc = NULL;
        _cleanup_close_ int fd = -EBADF;
        bool data[NPAGES], punch[NPAGES], seen[NPAGES] = {};
        Seen s = { .first = first, .n = n, .seen = seen, .last = UINT64_MAX };
        ScannerStats st;
        uint64_t want = 0;
        struct stat before, after;

        layout(data, punch);
        fd = make_memfd(NPAGES, data, punch);
        ck_assert_int_eq(scanner_new_full(&config, &sc), 0);
        ck_assert_int_eq(fstat(fd, &before), 0);
        ck_assert_int_eq(scanner_read(sc, fd, first * PS, (uint32_t) n, collect, &s), 0);
        ck_assert_int_eq(fstat(fd, &after), 0);

        ck_assert_uint_eq(s.bad, 0);
        for (uint64_t i = first; i < first + n && i < NPAGES; i++) {
                ck_assert_msg(seen[i - first] == data[i], "page %llu: seen %d, data %d", (unsigned long long) i,
                              seen[i - first], data[i]);
                want += data[i];
        }
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(st.pages_delivered, want);
        ck_assert_uint_eq(st.pages_delivered + st.pages_hole, n);
        if (n <= 32)    /* read whole, unasked: holes too, up to EOF */
                ck_assert_uint_eq(st.bytes_read, (MIN(first + n, (uint64_t) NPAGES) - MIN(first, (uint64_t) NPAGES)) * PS);
        else
                ck_assert_uint_eq(st.bytes_read, want * PS);
        ck_assert_uint_le(st.submits, st.batches);
        /* Holes were not read, so not allocated either. */
        ck_assert_int_eq(after.st_blocks, before.st_blocks);
}

START_TEST(test_content) {
        /* Batch sizes around the hole layout, shallow and deep queues. */
        check_range(4, 16, 0, NPAGES);
        check_range(1, 1, 0, NPAGES);
        check_range(2, 7, 0, NPAGES);
        check_range(8, 256, 0, NPAGES);
        check_range(64, 4096, 0, NPAGES);
}
END_TEST

/* The same with pread() instead of io_uring; the depth is ignored. */
START_TEST(test_content_sync) {
        sync_reads = true;
        check_range(1, 16, 0, NPAGES);
        check_range(1, 1, 0, NPAGES);
        check_range(4, 7, 3, 500);
        check_range(1, 4096, 0, NPAGES + 10);
        sync_reads = false;
}
END_TEST

START_TEST(test_subrange) {
        check_range(4, 16, 150, 500);   /* starts in a hole, ends in data */
        check_range(4, 16, 50, 152);    /* data, hole, 3 pages of data */
        check_range(3, 5, 201, 1);      /* a single hole */
        check_range(3, 5, 202, 1);      /* a single data page */
        check_range(3, 5, 599, 4);      /* data, 2 punched, data */
        check_range(2, 32, 0, 0);       /* nothing */
}
END_TEST

START_TEST(test_eof) {
        /* The range runs past the end of the file: those pages are holes. */
        check_range(4, 16, 900, 300);
        check_range(4, 16, 2000, 10);
}
END_TEST

START_TEST(test_sparse) {
        _cleanup_(scanner_freep) Scanner *sc = NULL;
        _cleanup_close_ int fd = memfd_create("test-scanner-sparse", MFD_CLOEXEC);
        const uint64_t npages = UINT64_C(16) << 20;     /* 64 GiB */
        uint64_t idx[] = { 1, 4096, 123457, npages - 2 };
        bool seen[4] = {};
        uint8_t buf[PS];
        ScannerStats st;
        double t0;

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, (off_t) (npages * PS)), 0);
        for (size_t i = 0; i < ELEMENTSOF(idx); i++) {
                fill(buf, idx[i]);
                ck_assert_int_eq(pwrite(fd, buf, PS, (off_t) (idx[i] * PS)), (ssize_t) PS);
        }
        ck_assert_int_eq(scanner_new(4, 64, &sc), 0);

        Seen s = { .first = 0, .n = npages, .last = UINT64_MAX };
        s.seen = calloc(npages, 1);
        ck_assert_ptr_nonnull(s.seen);
        t0 = now_ns();
        ck_assert_int_eq(scanner_read(sc, fd, 0, (uint32_t) npages, collect, &s), 0);
        printf("scanner: 64 GiB memfd with 4 data pages scanned in %.2f ms\n", (now_ns() - t0) / 1e6);
        ck_assert_uint_eq(s.bad, 0);
        for (size_t i = 0; i < ELEMENTSOF(idx); i++)
                seen[i] = s.seen[idx[i]];
        free(s.seen);
        for (size_t i = 0; i < ELEMENTSOF(idx); i++)
                ck_assert(seen[i]);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(st.pages_delivered, 4);
        ck_assert_uint_eq(st.pages_hole, npages - 4);
        ck_assert_uint_le(st.seeks, 16);
}
END_TEST

START_TEST(test_stop) {
        _cleanup_(scanner_freep) Scanner *sc = NULL;
        _cleanup_close_ int fd = -EBADF;
        bool data[NPAGES], punch[NPAGES], seen[NPAGES] = {};
        Seen s = { .first = 0, .n = NPAGES, .seen = seen, .last = UINT64_MAX, .stop_after = 150 };
        ScannerStats st;

        layout(data, punch);
        fd = make_memfd(NPAGES, data, punch);
        ck_assert_int_eq(scanner_new(4, 8, &sc), 0);
        ck_assert_int_eq(scanner_read(sc, fd, 0, NPAGES, collect, &s), -ECANCELED);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(st.pages_delivered, 150);
        ck_assert_uint_eq(s.bad, 0);

        /* Still usable afterwards, buffers intact. */
        memset(seen, 0, sizeof seen);
        s = (Seen) { .first = 0, .n = NPAGES, .seen = seen, .last = UINT64_MAX };
        scanner_reset_stats(sc);
        ck_assert_int_eq(scanner_read(sc, fd, 0, NPAGES, collect, &s), 0);
        ck_assert_uint_eq(s.bad, 0);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(st.pages_delivered, 100 + 3 + 500 - 4);

        /* Bad parameters. */
        ck_assert_int_eq(scanner_read(sc, fd, 1, 1, collect, &s), -EINVAL);
        ck_assert_int_eq(scanner_read(sc, -1, 0, 1, collect, &s), -EINVAL);
        ck_assert_int_eq(scanner_new(0, 8, &sc), -EINVAL);
        ck_assert_int_eq(scanner_new(65, 8, &sc), -EINVAL);
        ck_assert_int_eq(scanner_new(4, 4097, &sc), -EINVAL);
}
END_TEST

static int count_only(void *userdata, uint64_t offset, const void *page) {
        (*(uint64_t *) userdata)++;
        return 0;
}

START_TEST(test_one_submit_per_batch) {
        _cleanup_(scanner_freep) Scanner *sc = NULL;
        _cleanup_close_ int fd = memfd_create("test-scanner-dense", MFD_CLOEXEC);
        const uint32_t npages = 4096;
        uint8_t *buf = malloc((size_t) npages * PS);
        ScannerStats st;
        uint64_t n = 0;

        ck_assert_ptr_nonnull(buf);
        for (uint32_t i = 0; i < npages; i++)
                fill(buf + (size_t) i * PS, i);
        ck_assert_int_eq(pwrite(fd, buf, (size_t) npages * PS, 0), (ssize_t) npages * PS);
        free(buf);

        ck_assert_int_eq(scanner_new(4, 64, &sc), 0);
        /* Registering may fail on RLIMIT_MEMLOCK without CAP_IPC_LOCK. */
        ck_assert(scanner_uses_fixed_buffers(sc) || geteuid() != 0);
        ck_assert_int_eq(scanner_read(sc, fd, 0, npages, count_only, &n), 0);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(n, npages);
        ck_assert_uint_eq(st.batches, npages / 64);
        ck_assert_uint_eq(st.reads, npages / 64);      /* dense: one read per batch */
        ck_assert_uint_le(st.submits, st.batches);
        ck_assert_uint_eq(st.seeks, 0);                 /* cachestat said "all data" */
        ck_assert_uint_eq(st.cachestats, 1);            /* once for the range, not per batch */
        printf("scanner: dense 16 MiB: %llu batches, %llu submits, %llu cachestat, %llu lseek\n",
               (unsigned long long) st.batches, (unsigned long long) st.submits,
               (unsigned long long) st.cachestats, (unsigned long long) st.seeks);
}
END_TEST

/* A range of 32 pages or fewer is read whole without asking where its holes
 * are; a page that reads as zeros is then asked about alone: a hole (never
 * written, or punched) is not delivered, a page of written zeros is. */
START_TEST(test_short_range) {
        _cleanup_(scanner_freep) Scanner *sc = NULL;
        _cleanup_close_ int fd = memfd_create("test-scanner-short", MFD_CLOEXEC);
        static const uint8_t zeros[PS];
        uint8_t buf[PS];
        ScannerStats st;
        struct stat before, after;
        uint64_t n = 0;

        /* Pages 0-31: data, except hole 3, punched 10-11, zeros 20 and 31. */
        ck_assert_int_eq(ftruncate(fd, 32 * PS), 0);
        for (unsigned i = 0; i < 32; i++) {
                fill(buf, i);
                ck_assert_int_eq(pwrite(fd, i == 20 || i == 31 ? zeros : buf, PS, (off_t) i * PS), (ssize_t) PS);
        }
        ck_assert_int_eq(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 3 * PS, PS), 0);
        ck_assert_int_eq(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 10 * PS, 2 * PS), 0);

        ck_assert_int_eq(scanner_new(2, 64, &sc), 0);
        ck_assert_int_eq(fstat(fd, &before), 0);
        ck_assert_int_eq(scanner_read(sc, fd, 0, 32, count_only, &n), 0);
        ck_assert_int_eq(fstat(fd, &after), 0);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(n, 29);                       /* 27 of data, 2 of zeros */
        ck_assert_uint_eq(st.pages_hole, 3);
        ck_assert_uint_eq(st.cachestats, 5);            /* one per page of zeros */
        ck_assert_uint_eq(st.seeks, 0);
        ck_assert_uint_eq(st.reads, 1);
        ck_assert_int_eq(after.st_blocks, before.st_blocks); /* reading holes allocated nothing */

        /* 33 pages: asked first (its holes are seeked, never read). */
        ck_assert_int_eq(ftruncate(fd, 33 * PS), 0);
        scanner_reset_stats(sc);
        n = 0;
        ck_assert_int_eq(scanner_read(sc, fd, 0, 33, count_only, &n), 0);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(n, 29);
        ck_assert_uint_eq(st.pages_hole, 4);
        ck_assert_uint_eq(st.bytes_read, 29 * PS);

        /* The same 33 pages as data the caller expects: read whole like a
         * short range, whatever the length. */
        scanner_reset_stats(sc);
        n = 0;
        ck_assert_int_eq(scanner_read_data(sc, fd, 0, 33, count_only, &n), 0);
        ck_assert_int_eq(fstat(fd, &after), 0);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(n, 29);
        ck_assert_uint_eq(st.pages_hole, 4);
        ck_assert_uint_eq(st.cachestats, 6);            /* one per page of zeros */
        ck_assert_uint_eq(st.seeks, 0);
        ck_assert_uint_eq(st.reads, 1);
        ck_assert_int_eq(after.st_blocks, before.st_blocks);
}
END_TEST

/* Every other page a hole, deep queue of big batches: more reads in flight
 * than the ring's 4096 SQEs, so reads are submitted as the SQ fills. */
START_TEST(test_fragmented_deep) {
        _cleanup_(scanner_freep) Scanner *sc = NULL;
        _cleanup_close_ int fd = -EBADF;
        const uint64_t npages = 16 * 1024 * 2;
        bool *data = calloc(npages, 1), *seen = calloc(npages, 1);
        ScannerStats st;

        ck_assert_ptr_nonnull(data);
        ck_assert_ptr_nonnull(seen);
        for (uint64_t i = 0; i < npages; i += 2)
                data[i] = true;
        fd = make_memfd(npages, data, NULL);
        ck_assert_int_eq(scanner_new(16, 1024, &sc), 0);

        Seen s = { .first = 0, .n = npages, .seen = seen, .last = UINT64_MAX };
        ck_assert_int_eq(scanner_read(sc, fd, 0, (uint32_t) npages, collect, &s), 0);
        ck_assert_uint_eq(s.bad, 0);
        for (uint64_t i = 0; i < npages; i++)
                ck_assert(seen[i] == data[i]);
        scanner_get_stats(sc, &st);
        ck_assert_uint_eq(st.pages_delivered, npages / 2);
        ck_assert_uint_eq(st.pages_hole, npages / 2);
        ck_assert_uint_eq(st.reads, npages / 2);
        printf("scanner: fragmented %llu pages: %llu batches, %llu submits, %llu reads\n",
               (unsigned long long) npages, (unsigned long long) st.batches, (unsigned long long) st.submits,
               (unsigned long long) st.reads);
        free(data);
        free(seen);
}
END_TEST

/* --- ScannerTeam --- */

#define UNIT 64u

typedef struct TeamUnit {
        int fd;
        uint64_t first;
        uint32_t n;                     /* pages delivered */
        uint64_t offsets[UNIT];
        uint64_t hashes[UNIT];
        pid_t tid;
        atomic_int runs;
} TeamUnit;

static int team_page(void *userdata, uint64_t offset, const void *page) {
        TeamUnit *u = userdata;

        u->offsets[u->n] = offset;
        u->hashes[u->n++] = XXH3_64bits(page, PS);
        return 0;
}

static int team_unit(void *userdata, Scanner *s, size_t unit) {
        TeamUnit *u = &((TeamUnit *) userdata)[unit];

        atomic_fetch_add(&u->runs, 1);
        u->tid = gettid();
        u->n = 0;
        return scanner_read(s, u->fd, u->first * PS, UNIT, team_page, u);
}

/* Every unit of the layout, in order, read once, right. */
static void check_team(unsigned nthreads) {
        _cleanup_(scanner_freep) Scanner *own = NULL;
        _cleanup_(scanner_team_freep) ScannerTeam *t = NULL;
        _cleanup_close_ int fd = -EBADF;
        bool data[NPAGES], punch[NPAGES];
        const size_t nunits = DIV_ROUND_UP(NPAGES, UNIT);
        TeamUnit *units = calloc(nunits, sizeof(TeamUnit));
        uint8_t want[PS];
        pid_t tids[4] = {};
        unsigned ntids = 0;

        ck_assert_ptr_nonnull(units);
        layout(data, punch);
        fd = make_memfd(NPAGES, data, punch);
        ck_assert_int_eq(scanner_new(4, 16, &own), 0);
        ck_assert_int_eq(scanner_team_new(nthreads, own, NULL, &t), 0);
        ck_assert_uint_eq(scanner_team_size(t), nthreads);

        for (int round = 0; round < 3; round++) {
                uint64_t page = 0;

                for (size_t i = 0; i < nunits; i++)
                        units[i] = (TeamUnit) { .fd = fd, .first = i * UNIT };
                ck_assert_int_eq(scanner_team_start(t, nunits, team_unit, units), 0);
                for (size_t i = 0; i < nunits; i++) {
                        TeamUnit *u = &units[i];
                        unsigned k = 0;

                        ck_assert_int_eq(scanner_team_wait(t, i), 0);
                        ck_assert_int_eq(atomic_load(&u->runs), 1);
                        for (; page < MIN((i + 1) * UNIT, (uint64_t) NPAGES); page++) {
                                if (!data[page])
                                        continue;
                                fill(want, page);
                                ck_assert_uint_lt(k, u->n);
                                ck_assert_uint_eq(u->offsets[k], page * PS);
                                ck_assert_uint_eq(u->hashes[k], XXH3_64bits(want, PS));
                                k++;
                        }
                        ck_assert_uint_eq(k, u->n);
                        for (unsigned j = 0; j < ntids && u->tid; j++)
                                if (tids[j] == u->tid)
                                        u->tid = 0;
                        if (u->tid && ntids < ELEMENTSOF(tids))
                                tids[ntids++] = u->tid;
                }
                scanner_team_finish(t);
        }
        printf("scanner team of %u: units read by %u threads\n", nthreads, ntids);

        /* The stats of own and of the threads' scanners add up to the pages. */
        ScannerStats st, team;
        uint64_t ndata = 0;
        for (unsigned i = 0; i < NPAGES; i++)
                ndata += data[i];
        scanner_get_stats(own, &st);
        scanner_team_get_stats(t, &team);
        scanner_stats_add(&st, &team);
        ck_assert_uint_eq(st.pages_delivered, 3 * ndata);
        ck_assert(nthreads > 1 || team.pages_delivered == 0);
        ck_assert(ntids < 2 || team.pages_delivered > 0);      /* a thread read a unit */

        /* Stopping early: units taken are finished, the rest never start. */
        for (size_t i = 0; i < nunits; i++)
                units[i] = (TeamUnit) { .fd = fd, .first = i * UNIT };
        ck_assert_int_eq(scanner_team_start(t, nunits, team_unit, units), 0);
        ck_assert_int_eq(scanner_team_wait(t, 1), 0);
        scanner_team_finish(t);
        for (size_t i = 0; i < nunits; i++)
                ck_assert_int_le(atomic_load(&units[i].runs), 1);
        usleep(10000);
        for (size_t i = 0, runs = 0; i < nunits; i++) {
                ck_assert_int_le(atomic_load(&units[i].runs), 1);
                runs += (size_t) atomic_load(&units[i].runs);
                ck_assert_uint_ge(runs, i < 2 ? i + 1 : 2);
        }
        free(units);
}

START_TEST(test_team) {
        _cleanup_(scanner_freep) Scanner *own = NULL;
        ScannerTeam *t = NULL;

        check_team(1);
        check_team(3);
        ck_assert_int_eq(scanner_new(1, 1, &own), 0);
        ck_assert_int_eq(scanner_team_new(0, own, NULL, &t), -EINVAL);
        ck_assert_int_eq(scanner_team_new(65, own, NULL, &t), -EINVAL);
        ck_assert_int_eq(scanner_team_new(2, NULL, NULL, &t), -EINVAL);
        ck_assert_ptr_null(t);
}
END_TEST

static int hash_page(void *userdata, uint64_t offset, const void *page) {
        *(uint64_t *) userdata ^= XXH3_64bits(page, PS);
        return 0;
}

static int touch_page(void *userdata, uint64_t offset, const void *page) {
        *(uint64_t *) userdata += *(const uint64_t *) page;
        return 0;
}

typedef struct BenchUnit {
        int fd;
        uint64_t off;
        uint64_t sink;
} BenchUnit;

static int bench_unit(void *userdata, Scanner *s, size_t unit) {
        BenchUnit *u = &((BenchUnit *) userdata)[unit];

        return scanner_read(s, u->fd, u->off, 512, hash_page, &u->sink);
}

/* A team reading and hashing 1 GiB in units of 2 MiB, as dedupd's scan
 * threads do; GiB/s for 1 thread up to the CPUs there are (at most 4). */
static void bench_team(int fd, uint64_t size, const ScannerConfig *config) {
        size_t nunits = size / (512 * PS);
        BenchUnit *units = calloc(nunits, sizeof(BenchUnit));
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);

        ck_assert_ptr_nonnull(units);
        for (unsigned n = 1; n <= MIN(cpus, 4L); n++) {
                _cleanup_(scanner_freep) Scanner *own = NULL;
                _cleanup_(scanner_team_freep) ScannerTeam *t = NULL;
                double t0;

                ck_assert_int_eq(scanner_new_full(config, &own), 0);
                ck_assert_int_eq(scanner_team_new(n, own, config, &t), 0);
                for (size_t i = 0; i < nunits; i++)
                        units[i] = (BenchUnit) { .fd = fd, .off = i * 512 * PS };
                t0 = now_ns();
                ck_assert_int_eq(scanner_team_start(t, nunits, bench_unit, units), 0);
                for (size_t i = 0; i < nunits; i++)
                        ck_assert_int_eq(scanner_team_wait(t, i), 0);
                scanner_team_finish(t);
                printf("scanner bench: team of %u, units of 2 MiB, %s batch %4u: %.2f GiB/s with xxh3\n", n,
                       config->sync ? "pread   " : "io_uring", config->batch_pages,
                       1e9 * ((double) size / (1 << 30)) / (now_ns() - t0));
        }
        free(units);
}

/* Figures: GiB/s over 1 GiB of unique pages, per configuration. */
START_TEST(test_bench) {
        _cleanup_close_ int fd = memfd_create("test-scanner-bench", MFD_CLOEXEC);
        const uint64_t size = UINT64_C(1) << 30;
        const size_t chunk = 4u << 20;
        uint8_t *buf = malloc(chunk);
        static const ScannerConfig configs[] = {
                { 4, 64, false }, { 4, 256, false }, { 2, 1024, false }, { 8, 64, false },
                { 4, 64, true },  { 4, 256, true },  { 16, 64, true },
        };
        static const ScannerConfig team_configs[] = {
                { .queue_depth = 2, .batch_pages = 256 }, { .batch_pages = 64, .sync = true },
                { .batch_pages = 256, .sync = true },
        };
        uint64_t sink = 0;
        double t0;

        ck_assert_ptr_nonnull(buf);
        for (uint64_t off = 0; off < size; off += chunk) {
                for (size_t i = 0; i < chunk / PS; i++)
                        fill(buf + i * PS, off / PS + i);
                ck_assert_int_eq(pwrite(fd, buf, chunk, (off_t) off), (ssize_t) chunk);
        }

        /* Baseline: one pread per page. */
        t0 = now_ns();
        for (uint64_t off = 0; off < size; off += PS)
                if (pread(fd, buf, PS, (off_t) off) != PS)
                        ck_abort_msg("pread failed");
        printf("scanner bench: pread 4 KiB per call: %.2f GiB/s\n", 1e9 / (now_ns() - t0));
        free(buf);

        for (size_t c = 0; c < ELEMENTSOF(configs); c++) {
                _cleanup_(scanner_freep) Scanner *sc = NULL;
                ScannerStats st;
                double t_touch, t_hash;

                ck_assert_int_eq(scanner_new_full(&configs[c], &sc), 0);
                t0 = now_ns();
                ck_assert_int_eq(scanner_read(sc, fd, 0, (uint32_t) (size / PS), touch_page, &sink), 0);
                t_touch = now_ns() - t0;
                t0 = now_ns();
                ck_assert_int_eq(scanner_read(sc, fd, 0, (uint32_t) (size / PS), hash_page, &sink), 0);
                t_hash = now_ns() - t0;
                scanner_get_stats(sc, &st);
                ck_assert_uint_eq(st.bytes_read, 2 * size);
                printf("scanner bench: depth %2u batch %4u%s: %.2f GiB/s read only, %.2f GiB/s with xxh3 "
                       "(%llu submits, %llu reads for 2 GiB)\n",
                       configs[c].queue_depth, configs[c].batch_pages, configs[c].async ? " async" : "      ",
                       1e9 / t_touch, 1e9 / t_hash, (unsigned long long) st.submits, (unsigned long long) st.reads);
        }
        for (size_t c = 0; c < ELEMENTSOF(team_configs); c++)
                bench_team(fd, size, &team_configs[c]);
        t0 = now_ns();
        {
                uint8_t *p = mmap(NULL, size, PROT_READ, MAP_SHARED, fd, 0);
                ck_assert(p != MAP_FAILED);
                t0 = now_ns();
                for (uint64_t off = 0; off < size; off += PS)
                        sink ^= XXH3_64bits(p + off, PS);
                printf("scanner bench: xxh3 through a mapping (for comparison, not how dedupd reads): %.2f GiB/s\n",
                       1e9 / (now_ns() - t0));
                munmap(p, size);
        }
        printf("(%llu)\n", (unsigned long long) (sink & 1));
}
END_TEST

static Suite *scanner_suite(void) {
        const CheckCase cases[] = {
                { "content", test_content },
                { "content-sync", test_content_sync },
                { "subrange", test_subrange },
                { "eof", test_eof },
                { "sparse", test_sparse },
                { "stop", test_stop },
                { "one-submit-per-batch", test_one_submit_per_batch },
                { "short-range", test_short_range },
                { "fragmented-deep", test_fragmented_deep },
                { "team", test_team },
                { "bench", test_bench },
        };

        return check_suite("scanner", cases, ELEMENTSOF(cases), 300, NULL);
}

int main(void) {
        Scanner *probe = NULL;
        int r, failed;

        r = scanner_new(1, 1, &probe);
        if (r < 0) {
                fprintf(stderr, "io_uring unavailable (%s): skipping\n", strerror(-r));
                return 77;
        }
        scanner_free(probe);

        failed = check_run(scanner_suite()) != EXIT_SUCCESS;
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
