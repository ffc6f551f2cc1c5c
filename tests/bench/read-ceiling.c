/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * read-ceiling: the fastest a pread() scanner can go on this machine, per
 * CPU second, for tests/bench/scan-bench to print next to dedupd's figure.
 *
 *   tests/bench/read-ceiling MIB
 *
 * Fills a memfd of MIB MiB with unique pages, then reads it the way
 * dedupd's scan threads do (pread of 32 pages into a buffer) three times
 * per mode, and prints the mean of the last two passes:
 *   pread       the reads alone (one byte of each page looked at)
 *   pread_hash  the reads and dedup_page_hash() of every page
 * DESIGN.md §1 has dedupd read guest memory with pread, never through a
 * mapping; what the kernel's copy out of the page cache costs here bounds
 * what any such scanner can do.
 */

#include <errno.h>
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

/* One pass over the memfd; returns CPU seconds, or < 0 on a read error. */
static double pass(int fd, size_t size, bool hash, uint64_t *sink) {
        static uint8_t buf[BATCH * PAGE] __attribute__((aligned(64)));
        double t0 = cpu_s();

        for (size_t off = 0; off < size; off += sizeof buf) {
                if (pread(fd, buf, sizeof buf, (off_t) off) != (ssize_t) sizeof buf)
                        return -1;
                for (unsigned p = 0; p < BATCH; p++)
                        *sink += hash ? dedup_page_hash(buf + p * PAGE) : buf[p * PAGE];
        }
        return cpu_s() - t0;
}

int main(int argc, char **argv) {
        const char *mode[] = { "pread", "pread_hash" };
        double rate[2];
        uint64_t sink = 0;
        size_t size;
        char *end;
        int fd, r;

        if (argc != 2 || (size = strtoul(argv[1], &end, 10)) == 0 || *end || size > (1u << 20)) {
                fprintf(stderr, "usage: %s MIB\n", argv[0]);
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
        for (int m = 0; m < 2; m++) {
                double t = 0;
                for (int i = 0; i < PASSES; i++) {
                        double s = pass(fd, size, m == 1, &sink);
                        if (s < 0) {
                                perror("read-ceiling: pread");
                                return 1;
                        }
                        if (i > 0)
                                t += s;
                }
                rate[m] = (double) size * (PASSES - 1) / (1u << 30) / t;
        }
        sink_out = sink;
        printf("bench: phase=ceiling mib=%zu %s_gib_s_per_cpu=%.2f %s_gib_s_per_cpu=%.2f\n", size >> 20, mode[0],
               rate[0], mode[1], rate[1]);
        return 0;
}
