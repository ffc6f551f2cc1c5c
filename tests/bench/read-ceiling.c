/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * read-ceiling: the fastest a pread() scanner can go on this machine, for
 * tests/bench/scan-bench to print next to dedupd's figures.
 *
 *   tests/bench/read-ceiling MIB [THREADS]
 *
 * Fills a memfd of MIB MiB with unique pages, then THREADS threads (default
 * 1), each over its own slice, read it the way dedupd's scan threads do
 * (pread of 32 pages into a buffer), three times per mode; prints wall
 * GiB/s and GiB/s per CPU second over the last two passes:
 *   pread       the reads alone (one byte of each page looked at)
 *   pread_hash  the reads and dedup_page_hash() of every page
 * DESIGN.md §1 has dedupd read guest memory with pread, never through a
 * mapping; what the kernel's copy out of the page cache costs here, and
 * how it scales with threads (memory bandwidth), bounds what any such
 * scanner can do. */

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "dedup-engine.h"

#define PAGE 4096u
#define BATCH 32u
#define PASSES 3
#define MAX_THREADS 64u

static volatile uint64_t sink_out; /* keeps the reads and hashes from being optimised away */

static double cpu_s(void) {
        struct timespec ts;

        clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int fill(int fd, size_t size) {
        static uint64_t buf[BATCH * PAGE / sizeof(uint64_t)];
        uint64_t x = 0x9e3779b97f4a7c15u;

        for (size_t off = 0; off < size; off += sizeof buf) {
                for (size_t i = 0; i < sizeof buf / sizeof buf[0]; i++) {
                        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
                        buf[i] = x;
                }
                if (pwrite(fd, buf, sizeof buf, (off_t) off) != (ssize_t) sizeof buf)
                        return -errno;
        }
        return 0;
}

typedef struct Slice {
        int fd;
        size_t off, len;
        bool hash;
        double cpu_s;
        uint64_t sink;
        int error;
        pthread_t tid;
} Slice;

/* One thread's pass over its slice of the memfd. */
static void *read_slice(void *arg) {
        Slice *sl = arg;
        uint8_t *buf = aligned_alloc(64, BATCH * PAGE);
        double t0 = cpu_s();

        if (!buf) {
                sl->error = ENOMEM;
                return NULL;
        }
        for (size_t off = sl->off; off < sl->off + sl->len; off += BATCH * PAGE) {
                if (pread(sl->fd, buf, BATCH * PAGE, (off_t) off) != (ssize_t) (BATCH * PAGE)) {
                        sl->error = errno ? errno : EIO;
                        break;
                }
                for (unsigned p = 0; p < BATCH; p++)
                        sl->sink += sl->hash ? dedup_page_hash(buf + p * PAGE) : buf[p * PAGE];
        }
        sl->cpu_s = cpu_s() - t0;
        free(buf);
        return NULL;
}

static double wall_s(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

/* One pass of nthreads threads, each over its slice: adds the threads' CPU
 * seconds and the wall seconds. Returns 0 or an errno. */
static int pass(int fd, size_t size, unsigned nthreads, bool hash, double *cpu, double *wall) {
        Slice sl[MAX_THREADS];
        size_t per = size / nthreads / (BATCH * PAGE) * (BATCH * PAGE);
        double t0 = wall_s();
        int error = 0;

        for (unsigned i = 0; i < nthreads; i++) {
                sl[i] = (Slice) { .fd = fd, .off = i * per, .len = per, .hash = hash };
                if (pthread_create(&sl[i].tid, NULL, read_slice, &sl[i]) != 0)
                        return EAGAIN; /* the ones started are joined at exit */
        }
        for (unsigned i = 0; i < nthreads; i++) {
                pthread_join(sl[i].tid, NULL);
                *cpu += sl[i].cpu_s;
                sink_out += sl[i].sink;
                error = error ? error : sl[i].error;
        }
        *wall += wall_s() - t0;
        return error;
}

int main(int argc, char **argv) {
        const char *mode[] = { "pread", "pread_hash" };
        unsigned long nthreads = 1;
        double per_cpu[2], wall[2];
        size_t size;
        char *end;
        int fd, r;

        if (argc < 2 || argc > 3 || (size = strtoul(argv[1], &end, 10)) == 0 || *end || size > (1u << 20) ||
            (argc == 3 && ((nthreads = strtoul(argv[2], &end, 10)) == 0 || *end || nthreads > MAX_THREADS))) {
                fprintf(stderr, "usage: %s MIB [THREADS (1..%u)]\n", argv[0], MAX_THREADS);
                return 2;
        }
        size <<= 20;
        fd = memfd_create("read-ceiling", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, (off_t) size) < 0) {
                perror("read-ceiling: memfd");
                return 1;
        }
        r = fill(fd, size);
        if (r < 0) {
                fprintf(stderr, "read-ceiling: cannot fill the memfd: %s\n", strerror(-r));
                return 1;
        }
        /* What the threads read: their slices are whole batches. */
        double gib = (double) (size / nthreads / (BATCH * PAGE) * (BATCH * PAGE) * nthreads) / (1u << 30);
        for (int m = 0; m < 2; m++) {
                double cpu = 0, w = 0;

                for (int i = 0; i < PASSES; i++) {
                        double c = 0, ww = 0;

                        r = pass(fd, size, (unsigned) nthreads, m == 1, &c, &ww);
                        if (r != 0) {
                                fprintf(stderr, "read-ceiling: %s\n", strerror(r));
                                return 1;
                        }
                        if (i > 0) /* the first pass warms up */
                                cpu += c, w += ww;
                }
                per_cpu[m] = gib * (PASSES - 1) / cpu;
                wall[m] = gib * (PASSES - 1) / w;
        }
        printf("bench: phase=ceiling mib=%zu threads=%lu %s_gib_s=%.2f %s_gib_s_per_cpu=%.2f %s_gib_s=%.2f "
               "%s_gib_s_per_cpu=%.2f\n",
               size >> 20, nthreads, mode[0], wall[0], mode[0], per_cpu[0], mode[1], wall[1], mode[1], per_cpu[1]);
        return 0;
}
