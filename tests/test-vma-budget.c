/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * VMA budget: parsers on fake /proc files, the accounting object, and the
 * cost model checked against this process's real /proc/self/maps while we
 * map runs of "pool" pages over a "guest RAM" memfd as an agent does.
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
#include <time.h>
#include <unistd.h>

#include "util.h"
#include "vma-budget.h"

#define PS 4096u

static char tmpdir[] = "/tmp/test-vma-budget-XXXXXX";

static void write_file(const char *rel, const char *content) {
        char path[512];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_eq(fputs(content, f) >= 0, 1);
        ck_assert_int_eq(fclose(f), 0);
}

static const char *tmp_path(const char *rel) {
        static char path[512];
        snprintf(path, sizeof path, "%s/%s", tmpdir, rel);
        return path;
}

START_TEST(test_max_map_count) {
        uint64_t v = 0;

        write_file("mmc-ok", "65530\n");
        ck_assert_int_eq(vma_budget_read_max_map_count(tmp_path("mmc-ok"), &v), 0);
        ck_assert_uint_eq(v, 65530);
        write_file("mmc-big", "2147483647");
        ck_assert_int_eq(vma_budget_read_max_map_count(tmp_path("mmc-big"), &v), 0);
        ck_assert_uint_eq(v, 2147483647);

        v = 7;
        write_file("mmc-empty", "");
        ck_assert_int_eq(vma_budget_read_max_map_count(tmp_path("mmc-empty"), &v), -EINVAL);
        write_file("mmc-junk", "12x\n");
        ck_assert_int_eq(vma_budget_read_max_map_count(tmp_path("mmc-junk"), &v), -EINVAL);
        write_file("mmc-neg", "-1\n");
        ck_assert_int_eq(vma_budget_read_max_map_count(tmp_path("mmc-neg"), &v), -EINVAL);
        write_file("mmc-zero", "0\n");
        ck_assert_int_eq(vma_budget_read_max_map_count(tmp_path("mmc-zero"), &v), -EINVAL);
        ck_assert_int_eq(vma_budget_read_max_map_count(tmp_path("missing"), &v), -ENOENT);
        ck_assert_uint_eq(v, 7);        /* untouched on failure */

        /* The real one. */
        ck_assert_int_eq(vma_budget_read_max_map_count(NULL, &v), 0);
        ck_assert_uint_gt(v, 0);
}
END_TEST

START_TEST(test_count_fake) {
        char *big;
        size_t len = 0;
        uint64_t n = 0;

        ck_assert_int_eq(mkdir(tmp_path("1234"), 0755), 0);
        write_file("1234/maps",
                   "55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234                       /usr/bin/qemu\n"
                   "7f0000000000-7f0040000000 rw-s 00000000 00:01 5678                       /memfd:ram (deleted)\n"
                   "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]\n");
        ck_assert_int_eq(vma_count_pid(tmpdir, 1234, &n), 0);
        ck_assert_uint_eq(n, 3);

        /* No final newline; and a file bigger than one read. */
        ck_assert_int_eq(mkdir(tmp_path("99"), 0755), 0);
        big = malloc(200000 * 80);
        ck_assert_ptr_nonnull(big);
        for (int i = 0; i < 200000; i++)
                len += (size_t) sprintf(big + len, "%012x-%012x r--p 00000000 00:00 0%s", i * 2, i * 2 + 1,
                                        i < 199999 ? "\n" : "");
        write_file("99/maps", big);
        free(big);
        ck_assert_int_eq(vma_count_pid(tmpdir, 99, &n), 0);
        ck_assert_uint_eq(n, 200000);

        ck_assert_int_eq(mkdir(tmp_path("5"), 0755), 0);
        write_file("5/maps", "");
        ck_assert_int_eq(vma_count_pid(tmpdir, 5, &n), 0);
        ck_assert_uint_eq(n, 0);

        ck_assert_int_eq(vma_count_pid(tmpdir, 4321, &n), -ENOENT);
        ck_assert_int_eq(vma_count_pid(tmpdir, 0, &n), -EINVAL);
}
END_TEST

START_TEST(test_accounting) {
        VmaBudget b;

        vma_budget_init(&b, 1000, 100, 850);
        ck_assert_uint_eq(vma_budget_available(&b), 50);
        ck_assert(vma_budget_can_add(&b, 50));
        ck_assert(!vma_budget_can_add(&b, 51));
        for (int i = 0; i < 25; i++) {
                ck_assert(vma_budget_can_add(&b, VMA_RUN_COST));
                vma_budget_add(&b, VMA_RUN_COST);
        }
        ck_assert(!vma_budget_can_add(&b, VMA_RUN_COST));
        ck_assert(vma_budget_can_add(&b, 0));
        ck_assert_uint_eq(b.current, 900);

        /* Unmerges give VMAs back. */
        vma_budget_add(&b, -VMA_RUN_COST);
        ck_assert(vma_budget_can_add(&b, VMA_RUN_COST));

        /* Resync: runs merged better than estimated. */
        ck_assert_int_eq(vma_budget_resync(&b, 870), -28);
        ck_assert_int_eq(b.last_drift, -28);
        ck_assert_uint_eq(b.resyncs, 1);
        ck_assert_uint_eq(vma_budget_available(&b), 30);
        /* Or the VMM mapped more on its own: over budget, nothing allowed. */
        ck_assert_int_eq(vma_budget_resync(&b, 990), 120);
        ck_assert_uint_eq(vma_budget_available(&b), 0);
        ck_assert(!vma_budget_can_add(&b, 1));

        /* The operator raised vm.max_map_count. */
        vma_budget_set_limits(&b, 262144, 1000);
        ck_assert_uint_eq(vma_budget_available(&b), 262144 - 1000 - 990);

        /* The estimate never underflows. */
        vma_budget_init(&b, 10, 0, 1);
        vma_budget_add(&b, -5);
        ck_assert_uint_eq(b.current, 0);
}
END_TEST

/* No ck_assert between a mapping change and its count: every assertion
 * logs through Check, which may allocate and so map memory (seen under
 * ASan). Errors are collected and asserted at the end. */
static uint64_t count_self(void) {
        uint64_t n = 0;
        if (vma_count_pid(NULL, getpid(), &n) < 0)
                return UINT64_MAX;
        return n;
}

/* Map `npages` pool pages starting at pool page `pool_page` over guest page
 * `page`, page by page as the agent does for a run. */
static int map_run(uint8_t *ram, unsigned page, int pool_fd, unsigned pool_page, unsigned npages) {
        for (unsigned i = 0; i < npages; i++)
                if (mmap(ram + (page + i) * PS, PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, pool_fd,
                         (off_t) (pool_page + i) * PS) == MAP_FAILED)
                        return -errno;
        return 0;
}

static int unmap_run(uint8_t *ram, unsigned page, int ram_fd, unsigned npages) {
        if (mmap(ram + page * PS, npages * PS, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, ram_fd,
                 (off_t) page * PS) == MAP_FAILED)
                return -errno;
        return 0;
}

START_TEST(test_real_process) {
        _cleanup_close_ int ram_fd = memfd_create("guest-ram", MFD_CLOEXEC);
        _cleanup_close_ int pool_fd = memfd_create("dedupd-pool-g0", MFD_CLOEXEC);
        const unsigned n = 30000;       /* 60k VMAs: near the default limit */
        uint64_t base, mapped, split, unmapped, last;
        int64_t drift[5];
        uint8_t *ram, *many;
        VmaBudget b;
        struct timespec t0, t1;
        int r = 0;

        ck_assert_int_eq(ftruncate(ram_fd, 256 * PS), 0);
        ck_assert_int_eq(ftruncate(pool_fd, 256 * PS), 0);
        ram = mmap(NULL, 256 * PS, PROT_READ | PROT_WRITE, MAP_SHARED, ram_fd, 0);
        ck_assert(ram != MAP_FAILED);

        /* N separate mappings are N VMAs: alternate protections. */
        base = count_self();
        many = mmap(NULL, 2 * n * PS, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        mapped = count_self();
        for (unsigned i = 0; many != MAP_FAILED && i < n; i++)
                r |= mprotect(many + (2 * i + 1) * PS, PS, PROT_NONE);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        split = count_self();
        clock_gettime(CLOCK_MONOTONIC, &t1);
        r |= munmap(many, 2 * n * PS);
        unmapped = count_self();

        ck_assert(many != MAP_FAILED);
        ck_assert_int_eq(r, 0);
        ck_assert_uint_ne(base, UINT64_MAX);
        ck_assert_uint_eq(mapped, base + 1);
        ck_assert_uint_eq(split, base + 2 * n);
        ck_assert_uint_eq(unmapped, base);
        printf("vma-budget: counted %llu VMAs in %.0f us\n", (unsigned long long) split,
               ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e3);

        /* The cost model against the kernel. */
        vma_budget_init(&b, 65530, 1000, count_self());

        r |= map_run(ram, 100, pool_fd, 10, 4); /* a run in the middle: +2, one VMA for 4 pages */
        vma_budget_add(&b, VMA_RUN_COST);
        drift[0] = vma_budget_resync(&b, count_self());

        r |= map_run(ram, 200, pool_fd, 50, 1); /* an isolated page: +2 */
        vma_budget_add(&b, VMA_RUN_COST);
        drift[1] = vma_budget_resync(&b, count_self());

        r |= map_run(ram, 0, pool_fd, 70, 3);   /* at the region's start: really +1 */
        vma_budget_add(&b, VMA_RUN_COST);
        drift[2] = vma_budget_resync(&b, count_self());

        r |= map_run(ram, 104, pool_fd, 14, 2); /* continues the first run's pool pages: really +0 */
        vma_budget_add(&b, VMA_RUN_COST);
        drift[3] = vma_budget_resync(&b, count_self());

        r |= unmap_run(ram, 200, ram_fd, 1);    /* un-merge: the memfd VMAs merge again, -2 */
        vma_budget_add(&b, -VMA_RUN_COST);
        drift[4] = vma_budget_resync(&b, count_self());

        r |= unmap_run(ram, 100, ram_fd, 6);
        r |= unmap_run(ram, 0, ram_fd, 3);
        last = count_self();

        ck_assert_int_eq(r, 0);
        ck_assert_int_eq(drift[0], 0);
        ck_assert_int_eq(drift[1], 0);
        ck_assert_int_eq(drift[2], -1);
        ck_assert_int_eq(drift[3], -2);
        ck_assert_int_eq(drift[4], 0);
        ck_assert_uint_eq(b.resyncs, 5);
        ck_assert_uint_eq(last, base);
        munmap(ram, 256 * PS);
}
END_TEST

static Suite *vma_budget_suite(void) {
        const CheckCase cases[] = {
                { "max-map-count", test_max_map_count },
                { "count-fake-proc", test_count_fake },
                { "accounting", test_accounting },
                { "real-process", test_real_process },
        };

        return check_suite("vma-budget", cases, ELEMENTSOF(cases), 0, NULL);
}

int main(void) {
        int failed;
        char cmd[600];

        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }
        failed = check_run(vma_budget_suite()) != EXIT_SUCCESS;
        snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", tmpdir);
        if (system(cmd) != 0)
                fprintf(stderr, "could not remove %s\n", tmpdir);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
