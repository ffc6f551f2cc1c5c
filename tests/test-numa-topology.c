/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * NUMA topology: the injected file format (lookups, every kind of bad line
 * reported as FILE:LINE, reload keeping the old topology on error) and the
 * kernel's answers through libnuma for our own and another process's pages.
 */

#include <check.h>

#include "check-suite.h"
#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "numa-topology.h"
#include "util.h"

static char tmpdir[] = "/tmp/test-numa-topology-XXXXXX";

static const char *write_file(const char *name, const char *content) {
        static char path[512];
        FILE *f;

        snprintf(path, sizeof path, "%s/%s", tmpdir, name);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs(content, f), 0);
        ck_assert_int_eq(fclose(f), 0);
        return path;
}

START_TEST(test_parse_ok) {
        _cleanup_(numa_topology_freep) NumaTopology *t = NULL, *u = NULL;
        const char *path = write_file("ok",
                                      "# two nodes, guest RAM split in halves\n"
                                      "\n"
                                      "nodes=2\n"
                                      "default=0   # pages nobody lists\n"
                                      "range vm1/0 0 1024 0\n"
                                      "\trange  vm1/0  1024  0x400  1  \n"
                                      "range vm1/0 4096 1 1\n"
                                      "range dedupd-pool-g0-n1 0 100 1\n"
                                      "range dedupd-pool-g0-n1 100 1 0   # migrated by the kernel\n");

        ck_assert_int_eq(numa_topology_load(path, &t), 0);
        ck_assert(numa_topology_is_injected(t));
        ck_assert_int_eq(numa_topology_nodes(t), 2);
        ck_assert_uint_eq(numa_topology_generation(t), 0);

        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 0), 0);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 1023), 0);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 1024), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 2047), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 2048), 0);    /* default */
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 4096), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 4097), 0);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n1", 99), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n1", 100), 0);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm2/0", 5), 0);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1", 5), 0);
        ck_assert_int_eq(numa_topology_guest_page_nid(t, "vm1/0", 1500, 1, 0xdead000), 1);
        ck_assert_int_eq(numa_topology_pages_nid(t, 0, NULL, 0, NULL), -EOPNOTSUPP);

        /* Without default= uncovered pages are unknown. */
        path = write_file("nodefault", "nodes=4\nrange a 10 10 3\n");
        ck_assert_int_eq(numa_topology_load(path, &u), 0);
        ck_assert_int_eq(numa_topology_nodes(u), 4);
        ck_assert_int_eq(numa_topology_page_nid(u, "a", 9), -ENOENT);
        ck_assert_int_eq(numa_topology_page_nid(u, "a", 10), 3);
        ck_assert_int_eq(numa_topology_page_nid(u, "a", 20), -ENOENT);
        ck_assert_int_eq(numa_topology_page_nid(u, "b", 10), -ENOENT);
}
END_TEST

static void expect_error(const char *name, const char *content, unsigned line, const char *what) {
        NumaTopology *t = NULL;
        char err[512] = "", want[600];
        const char *path = write_file(name, content);

        ck_assert_int_eq(numa_topology_parse(path, err, sizeof err, &t), -EINVAL);
        ck_assert_ptr_null(t);
        snprintf(want, sizeof want, "%s:%u: ", path, line);
        ck_assert_msg(strncmp(err, want, strlen(want)) == 0, "%s: got '%s', want prefix '%s'", name, err, want);
        ck_assert_msg(strstr(err, what), "%s: got '%s', want '%s' in it", name, err, what);
}

START_TEST(test_parse_errors) {
        NumaTopology *t = NULL;
        char err[512];

        expect_error("before-nodes", "# c\nrange a 0 1 0\nnodes=2\n", 2, "before 'nodes='");
        expect_error("nodes-zero", "nodes=0\n", 1, "invalid node count '0'");
        expect_error("nodes-big", "nodes=65\n", 1, "invalid node count '65'");
        expect_error("nodes-junk", "nodes=two\n", 1, "invalid node count 'two'");
        expect_error("nodes-twice", "nodes=2\nnodes=2\n", 2, "given twice");
        expect_error("nodes-words", "nodes=2 3\n", 1, "takes no further words");
        expect_error("default-big", "nodes=2\ndefault=2\n", 2, "invalid default node '2'");
        expect_error("default-twice", "nodes=2\ndefault=1\ndefault=1\n", 3, "given twice");
        expect_error("range-words", "nodes=2\nrange a 0 1\n", 2, "expected 'range KEY FIRST NPAGES NID'");
        expect_error("range-toomany", "nodes=2\nrange a 0 1 1 1 1\n", 2, "too many words");
        expect_error("range-first", "nodes=2\n\nrange a -1 1 0\n", 3, "invalid first page '-1'");
        expect_error("range-hexjunk", "nodes=2\nrange a 0x 1 0\n", 2, "invalid first page '0x'");
        expect_error("range-zero", "nodes=2\nrange a 0 0 0\n", 2, "invalid page count '0'");
        expect_error("range-wrap", "nodes=2\nrange a 0xffffffffffffffff 2 0\n", 2, "invalid page count '2'");
        expect_error("range-overflow", "nodes=2\nrange a 99999999999999999999 1 0\n", 2, "invalid first page");
        expect_error("range-nid", "nodes=2\nrange a 0 1 2\n", 2, "invalid node '2' (0..1)");
        expect_error("overlap", "nodes=2\nrange a 0 10 0\nrange b 5 10 0\nrange a 9 1 1\n", 4,
                     "overlaps the range on line 2");
        expect_error("unknown", "nodes=2\nrnage a 0 1 0\n", 2, "unknown directive 'rnage'");
        expect_error("empty", "", 0, "no 'nodes=' line");
        expect_error("comments-only", "# nothing\n\n", 2, "no 'nodes=' line");

        /* A missing file names the path. */
        ck_assert_int_eq(numa_topology_parse("/nonexistent/topology", err, sizeof err, &t), -ENOENT);
        ck_assert_str_eq(err, "/nonexistent/topology: No such file or directory");
        ck_assert_int_eq(numa_topology_load("/nonexistent/topology", &t), -ENOENT);
        /* errbuf is optional. */
        ck_assert_int_eq(numa_topology_parse(write_file("e", "nodes=x\n"), NULL, 0, &t), -EINVAL);
}
END_TEST

START_TEST(test_reload) {
        _cleanup_(numa_topology_freep) NumaTopology *t = NULL, *real = NULL;
        const char *path;

        path = write_file("reload", "nodes=2\nrange dedupd-pool-g0-n0 0 64 0\n");
        ck_assert_int_eq(numa_topology_load(path, &t), 0);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n0", 5), 0);

        /* The "kernel" migrates pool page 5 to node 1. */
        write_file("reload", "nodes=2\nrange dedupd-pool-g0-n0 0 5 0\nrange dedupd-pool-g0-n0 5 1 1\n"
                             "range dedupd-pool-g0-n0 6 58 0\n");
        ck_assert_int_eq(numa_topology_reload(t), 0);
        ck_assert_uint_eq(numa_topology_generation(t), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n0", 4), 0);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n0", 5), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n0", 6), 0);

        /* A broken edit keeps the last good topology. */
        write_file("reload", "nodes=2\nrange dedupd-pool-g0-n0 0 5 7\n");
        ck_assert_int_eq(numa_topology_reload(t), -EINVAL);
        ck_assert_uint_eq(numa_topology_generation(t), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n0", 5), 1);
        unlink(path);
        ck_assert_int_eq(numa_topology_reload(t), -ENOENT);
        ck_assert_int_eq(numa_topology_page_nid(t, "dedupd-pool-g0-n0", 5), 1);

        /* Reloading the real topology does nothing. */
        ck_assert_int_eq(numa_topology_new_real(&real), 0);
        ck_assert_int_eq(numa_topology_reload(real), 0);
}
END_TEST

START_TEST(test_real) {
        _cleanup_(numa_topology_freep) NumaTopology *t = NULL;
        uint8_t *m;
        void *addrs[2];
        int nids[2], ready[2], status;
        pid_t child;
        char c;

        ck_assert_int_eq(numa_topology_new_real(&t), 0);
        ck_assert(!numa_topology_is_injected(t));
        ck_assert_int_ge(numa_topology_nodes(t), 1);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm1/0", 0), -EOPNOTSUPP);
        if (numa_available() < 0) {
                printf("test_real: libnuma reports no NUMA support; node queries not tested\n");
                ck_assert_int_eq(numa_topology_nodes(t), 1);
                return;
        }
        ck_assert_int_eq(numa_topology_nodes(t), numa_max_node() + 1);

        m = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert(m != MAP_FAILED);
        m[0] = 1;       /* page 0 populated, page 1 not */
        addrs[0] = m;
        addrs[1] = m + 4096;
        ck_assert_int_eq(numa_topology_pages_nid(t, 0, addrs, 2, nids), 0);
        ck_assert_int_ge(nids[0], 0);
        ck_assert_int_lt(nids[0], numa_topology_nodes(t));
        ck_assert_int_eq(nids[1], -ENOENT);

        /* Another process's page, by pid and address: what the daemon asks
         * about a VMM's guest RAM. */
        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        child = fork();
        ck_assert_int_ge(child, 0);
        if (child == 0) {
                m[4096] = 1;
                if (write(ready[1], "r", 1) != 1)
                        _exit(1);
                pause();
                _exit(0);
        }
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        ck_assert_int_ge(numa_topology_guest_page_nid(t, NULL, 0, child, (uintptr_t) (m + 4096)), 0);
        ck_assert_int_eq(numa_topology_guest_page_nid(t, NULL, 0, child, 4096), -EFAULT);
        kill(child, SIGKILL);
        ck_assert_int_eq(waitpid(child, &status, 0), child);
        ck_assert_int_eq(numa_topology_guest_page_nid(t, NULL, 0, child, (uintptr_t) (m + 4096)), -ESRCH);
        munmap(m, 2 * 4096);
}
END_TEST

/* Figure: lookup cost with many keys and ranges. */
START_TEST(test_lookup_bench) {
        _cleanup_(numa_topology_freep) NumaTopology *t = NULL;
        const unsigned keys = 100, ranges = 100;
        char path[512];
        FILE *f;
        struct timespec t0, t1;
        long sum = 0;
        const unsigned n = 1000000;

        snprintf(path, sizeof path, "%s/big", tmpdir);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        fprintf(f, "nodes=8\n");
        for (unsigned k = 0; k < keys; k++)
                for (unsigned r = 0; r < ranges; r++)
                        fprintf(f, "range vm%u/0 %u 512 %u\n", k, r * 1024, (k + r) % 8);
        ck_assert_int_eq(fclose(f), 0);
        ck_assert_int_eq(numa_topology_load(path, &t), 0);

        ck_assert_int_eq(numa_topology_page_nid(t, "vm7/0", 3 * 1024 + 511), (7 + 3) % 8);
        ck_assert_int_eq(numa_topology_page_nid(t, "vm7/0", 3 * 1024 + 512), -ENOENT);

        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (unsigned i = 0; i < n; i++) {
                char key[16];
                snprintf(key, sizeof key, "vm%u/0", i % keys);
                sum += numa_topology_page_nid(t, key, (i * 7919u) % (ranges * 1024));
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        printf("numa-topology: %u keys x %u ranges: %.0f ns per lookup (incl. snprintf of the key) (%ld)\n", keys,
               ranges, ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n, sum & 1);
}
END_TEST

static Suite *numa_topology_suite(void) {
        const CheckCase cases[] = {
                { "parse-ok", test_parse_ok },
                { "parse-errors", test_parse_errors },
                { "reload", test_reload },
                { "real", test_real },
                { "lookup-bench", test_lookup_bench },
        };

        return check_suite("numa-topology", cases, ELEMENTSOF(cases), 0, NULL);
}

int main(void) {
        int failed;
        char cmd[600];

        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }
        failed = check_run(numa_topology_suite()) != EXIT_SUCCESS;
        snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", tmpdir);
        if (system(cmd) != 0)
                fprintf(stderr, "could not remove %s\n", tmpdir);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
