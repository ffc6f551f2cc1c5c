/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * read-ceiling: the fastest a pread() scanner can go on this machine, for
 * tests/bench/scan-bench to print next to dedupd's figures.
 *
 *   tests/bench/read-ceiling MIB [THREADS]
 *   tests/bench/read-ceiling FILE...
 *
 * Fills a memfd of MIB MiB with unique pages (or takes the files, a running
 * guest's memfd as /proc/PID/fd/N, say, and reads them one after the other
 * with one thread), then THREADS threads (default 1), each over its own
 * slice, read it the way dedupd's scan threads do (pread of 32 pages into a
 * buffer), three times per mode; prints wall GiB/s and GiB/s per CPU second
 * over the last two passes:
 *   pread       the reads alone (one byte of each page looked at)
 *   pread_hash  the reads and dedup_page_hash() of every page
 * DESIGN.md §1 has dedupd read guest memory with pread, never through a
 * mapping; what the kernel's copy out of the page cache costs here, and
 * how it scales with threads (memory bandwidth), bounds what any such
 * scanner can do. It also depends on where the pages are: on a 2-CPU test
 * VM, 4 memfds of 1 GiB filled a page of each in turn read at 3.6 GiB/s per
 * CPU, filled 1 MiB of each in turn at 4.5, one of 4 GiB at 4.8 (the
 * host's translation of guest-physical memory, presumably). Where a
 * guest's pages are depends on how it filled them: reading its own memfd
 * tells what its scan is up against. */

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dedup-engine.h"

#define PAGE 4096u
#define BATCH 32u
#define PASSES 3
#define MAX_THREADS 64u
#define MAX_FILES 64u

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

/* Guest memory to read: fds[n] and their sizes. */
typedef struct Target {
        int fds[MAX_FILES];
        size_t sizes[MAX_FILES];
        unsigned n;
} Target;

/* A fresh memfd of size bytes filled with unique pages. */
static int target_fill(Target *t, size_t size) {
        int fd = memfd_create("read-ceiling", MFD_CLOEXEC), r;

        if (fd < 0 || ftruncate(fd, (off_t) size) < 0) {
                fprintf(stderr, "read-ceiling: memfd: %s\n", strerror(errno));
                return -1;
        }
        r = fill(fd, size);
        if (r < 0) {
                fprintf(stderr, "read-ceiling: cannot fill the memfd: %s\n", strerror(-r));
                return -1;
        }
        *t = (Target) { .fds = { fd }, .sizes = { size }, .n = 1 };
        return 0;
}

/* Files that exist, as they are: a running guest's memfd
 * (/proc/PID/fd/N) reads as fast as its pages' placement allows, which
 * differs from a memfd filled in one go. Nothing is written. */
static int target_open(Target *t, char **paths, unsigned n) {
        struct stat st;

        t->n = 0;
        for (unsigned i = 0; i < n; i++) {
                int fd = open(paths[i], O_RDONLY | O_CLOEXEC);

                if (fd < 0 || fstat(fd, &st) < 0) {
                        fprintf(stderr, "read-ceiling: %s: %s\n", paths[i], strerror(errno));
                        return -1;
                }
                t->fds[t->n] = fd;
                t->sizes[t->n++] = (size_t) st.st_size;
        }
        return 0;
}

static int usage(const char *argv0) {
        fprintf(stderr, "usage: %s MIB [THREADS (1..%u)]\n       %s FILE... (up to %u files)\n", argv0, MAX_THREADS,
                argv0, MAX_FILES);
        return 2;
}

int main(int argc, char **argv) {
        const char *mode[] = { "pread", "pread_hash" };
        unsigned long nthreads = 1;
        double per_cpu[2], wall[2], gib = 0;
        size_t size = 0;
        Target t;
        char *end;
        int r;

        if (argc >= 2 && strchr(argv[1], '/')) {
                if ((unsigned) argc - 1 > MAX_FILES)
                        return usage(argv[0]);
                if (target_open(&t, argv + 1, (unsigned) argc - 1) < 0)
                        return 1;
        } else {
                if (argc < 2 || argc > 3 || (size = strtoul(argv[1], &end, 10)) == 0 || *end || size > (1u << 20) ||
                    (argc == 3 && ((nthreads = strtoul(argv[2], &end, 10)) == 0 || *end || nthreads > MAX_THREADS)))
                        return usage(argv[0]);
                if (target_fill(&t, size << 20) < 0)
                        return 1;
        }
        /* What the threads read: their slices are whole batches. */
        for (unsigned i = 0; i < t.n; i++)
                gib += (double) (t.sizes[i] / nthreads / (BATCH * PAGE) * (BATCH * PAGE) * nthreads) / (1u << 30);
        for (int m = 0; m < 2; m++) {
                double cpu = 0, w = 0;

                for (int i = 0; i < PASSES; i++) {
                        double c = 0, ww = 0;

                        for (unsigned f = 0; f < t.n; f++) {
                                r = pass(t.fds[f], t.sizes[f], (unsigned) nthreads, m == 1, &c, &ww);
                                if (r != 0) {
                                        fprintf(stderr, "read-ceiling: %s\n", strerror(r));
                                        return 1;
                                }
                        }
                        if (i > 0) /* the first pass warms up */
                                cpu += c, w += ww;
                }
                per_cpu[m] = gib * (PASSES - 1) / cpu;
                wall[m] = gib * (PASSES - 1) / w;
        }
        printf("bench: phase=ceiling %s=%.0f threads=%lu %s_gib_s=%.2f %s_gib_s_per_cpu=%.2f %s_gib_s=%.2f "
               "%s_gib_s_per_cpu=%.2f\n",
               size ? "mib" : "guest_mib", gib * 1024, nthreads, mode[0], wall[0], mode[0], per_cpu[0], mode[1],
               wall[1], mode[1], per_cpu[1]);
        return 0;
}
