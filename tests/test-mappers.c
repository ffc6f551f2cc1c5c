/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Foreign mapper detection on a fake /proc tree (dev/inode matching, the VMM
 * and the daemon ignored, malformed and overlong lines, truncation) and on
 * the real one with a second process mapping a memfd.
 */

#include <check.h>

#include "check-suite.h"
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "mappers.h"
#include "util.h"

static char tmpdir[] = "/tmp/test-mappers-XXXXXX";

static void write_maps(int pid, const char *content) {
        char path[512];
        FILE *f;

        snprintf(path, sizeof path, "%s/%d", tmpdir, pid);
        (void) mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/%d/maps", tmpdir, pid);
        f = fopen(path, "we");
        ck_assert_ptr_nonnull(f);
        ck_assert_int_ge(fputs(content, f), 0);
        ck_assert_int_eq(fclose(f), 0);
}

#define RAM "7f0000000000-7f0040000000 rw-s 00000000 00:01 4242                       /memfd:ram (deleted)\n"

/* (Re)write the whole tree: cases may change it, and run in any order. */
static void fake_tree(void) {
        char path[512];

        write_maps(100, "55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 1234      /usr/bin/qemu-system-x86_64\n" RAM);
        /* A vhost-user backend: maps it twice, once at an offset. */
        write_maps(200, "55d0c0a00000-55d0c0a02000 r--p 00000000 fe:01 777       /usr/libexec/virtiofsd\n"
                        "7f1000000000-7f1000100000 rw-s 00000000 00:01 4242      /memfd:ram (deleted)\n"
                        "7f2000000000-7f2000200000 rw-s 00300000 00:01 4242      /memfd:ram (deleted)\n");
        /* Same inode number on another device, same device another inode. */
        write_maps(300, "7f0000000000-7f0040000000 rw-s 00000000 00:02 4242      /memfd:other (deleted)\n"
                        "7f0000000000-7f0040000000 rw-s 00000000 00:01 42420     /memfd:other (deleted)\n"
                        "7f0000000000-7f0040000000 rw-s 00000000 00:01 424       /memfd:ram (deleted)\n");
        write_maps(400, "");    /* a kernel thread */
        write_maps(500, RAM);   /* the daemon itself */
        /* Garbage, a line without newline at EOF, a big device number. */
        write_maps(600, "garbage\n"
                        "7f00-7e00 rw-s 00000000 00:01 4242 /reversed\n"
                        "zzzz-7f00 rw-s 00000000 00:01 4242\n"
                        "\n"
                        "7f0000000000-7f0000001000 rw-s 00000000 103:1f 4242");
        /* A line longer than the parser's buffer, then a real match. */
        {
                size_t n = 200 * 1024;
                char *s = malloc(n + sizeof RAM + 200);
                ck_assert_ptr_nonnull(s);
                strcpy(s, "7f0000000000-7f0040000000 rw-s 00000000 00:01 4242 /");
                size_t l = strlen(s);
                memset(s + l, 'x', n);
                strcpy(s + l + n, "\n");
                /* The overlong line itself maps the inode but is skipped. */
                strcat(s, "7f0000000000-7f0040000000 rw-s 00000000 00:01 4243 /memfd:x\n");
                write_maps(700, s);
                free(s);
        }
        write_maps(800, RAM);
        /* Non-pid entries. */
        snprintf(path, sizeof path, "%s/self", tmpdir);
        (void) mkdir(path, 0755);
        snprintf(path, sizeof path, "%s/0", tmpdir);
        (void) mkdir(path, 0755);
}

START_TEST(test_fake_proc) {
        pid_t pids[8];
        size_t n = 99;

        fake_tree();
        ck_assert_int_eq(mappers_find(tmpdir, makedev(0, 1), 4242, 100, 500, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 2);
        /* readdir order is not sorted: accept either. */
        ck_assert((pids[0] == 200 && pids[1] == 800) || (pids[0] == 800 && pids[1] == 200));

        /* The daemon is a mapper too when not excluded. */
        ck_assert_int_eq(mappers_find(tmpdir, makedev(0, 1), 4242, 100, 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 3);

        /* Big device numbers are hex. */
        ck_assert_int_eq(mappers_find(tmpdir, makedev(0x103, 0x1f), 4242, 0, 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_int_eq(pids[0], 600);

        /* The line after an overlong one is parsed. */
        ck_assert_int_eq(mappers_find(tmpdir, makedev(0, 1), 4243, 0, 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_int_eq(pids[0], 700);

        /* Nobody. */
        ck_assert_int_eq(mappers_find(tmpdir, makedev(0, 1), 1, 0, 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 0);

        /* Truncation: the count is still right. */
        ck_assert_int_eq(mappers_find(tmpdir, makedev(0, 1), 4242, 0, 0, pids, 1, &n), 0);
        ck_assert_uint_eq(n, 4);
        ck_assert_int_eq(mappers_find(tmpdir, makedev(0, 1), 4242, 0, 0, NULL, 0, &n), 0);
        ck_assert_uint_eq(n, 4);

        ck_assert_int_eq(mappers_find("/nonexistent-proc", makedev(0, 1), 4242, 0, 0, pids, 1, &n), -ENOENT);
}
END_TEST

typedef struct Counts {
        uint64_t vmas[1000];
        unsigned calls[1000];
} Counts;

static void count_cb(void *userdata, pid_t pid, uint64_t vmas) {
        Counts *c = userdata;

        ck_assert_int_lt(pid, 1000);
        c->vmas[pid] = vmas;
        c->calls[pid]++;
}

/* One pass for several files gives what a pass per file gives, with each
 * owner excluded from its own file only, and every process's VMAs counted
 * once (the daemon's not at all). */
START_TEST(test_scan_files) {
        static Counts c;
        MappedFile f[] = {
                { .dev = makedev(0, 1), .ino = 4242, .owner = 100 },
                { .dev = makedev(0, 1), .ino = 4242, .owner = 800 },
                { .dev = makedev(0, 1), .ino = 4243, .owner = 700 },
                { .dev = makedev(0x103, 0x1f), .ino = 4242, .owner = 0 },
                { .dev = makedev(0, 2), .ino = 4242, .owner = 300 },
                { .dev = makedev(0, 1), .ino = 1, .owner = 0 },
        };

        fake_tree();
        memset(&c, 0, sizeof c);
        ck_assert_int_eq(mappers_scan_files(tmpdir, f, ELEMENTSOF(f), 500, count_cb, &c), 0);
        ck_assert_uint_eq(f[0].n_foreign, 2);           /* 200 and 800 */
        ck_assert(f[0].foreign == 200 || f[0].foreign == 800);
        ck_assert_uint_eq(f[1].n_foreign, 2);           /* 100 and 200 */
        ck_assert(f[1].foreign == 100 || f[1].foreign == 200);
        ck_assert_uint_eq(f[2].n_foreign, 0);           /* only its owner */
        ck_assert_uint_eq(f[3].n_foreign, 1);
        ck_assert_int_eq(f[3].foreign, 600);
        ck_assert_uint_eq(f[4].n_foreign, 0);
        ck_assert_uint_eq(f[5].n_foreign, 0);
        ck_assert_uint_eq(c.vmas[100], 2);
        ck_assert_uint_eq(c.vmas[200], 3);
        ck_assert_uint_eq(c.vmas[300], 3);
        ck_assert_uint_eq(c.calls[500], 0);             /* the daemon is not read */
        ck_assert_uint_eq(c.calls[400], 0);             /* no lines: nothing to count */
        for (unsigned pid = 100; pid <= 800; pid += 100)
                ck_assert_uint_le(c.calls[pid], 1);

        ck_assert_int_eq(mappers_scan_files("/nonexistent-proc", f, 1, 0, NULL, NULL), -ENOENT);
}
END_TEST

typedef struct Ranges {
        uint64_t off[4], len[4];
        size_t n;
} Ranges;

static int range_cb(void *userdata, pid_t pid, uint64_t offset, uint64_t length) {
        Ranges *r = userdata;
        if (pid != 200 || r->n >= ELEMENTSOF(r->off))
                return -EBADMSG;
        r->off[r->n] = offset;
        r->len[r->n++] = length;
        return 0;
}

static int stop_cb(void *userdata, pid_t pid, uint64_t offset, uint64_t length) {
        return -ECANCELED;
}

START_TEST(test_scan_ranges) {
        Ranges r = {};

        fake_tree();
        ck_assert_int_eq(mappers_scan(tmpdir, makedev(0, 1), 4242, 100, 500, range_cb, &r), -EBADMSG);  /* 800 */
        r = (Ranges) {};
        /* Exclude 800 through the daemon slot to see just 200's ranges. */
        ck_assert_int_eq(mappers_scan(tmpdir, makedev(0, 1), 4242, 800, 500, range_cb, &r), -EBADMSG);  /* 100 */
        r = (Ranges) {};
        write_maps(100, "");
        write_maps(800, "");
        ck_assert_int_eq(mappers_scan(tmpdir, makedev(0, 1), 4242, 0, 500, range_cb, &r), 0);
        ck_assert_uint_eq(r.n, 2);
        ck_assert_uint_eq(r.off[0], 0);
        ck_assert_uint_eq(r.len[0], 0x100000);
        ck_assert_uint_eq(r.off[1], 0x300000);
        ck_assert_uint_eq(r.len[1], 0x200000);
        ck_assert_int_eq(mappers_scan(tmpdir, makedev(0, 1), 4242, 0, 500, stop_cb, NULL), -ECANCELED);
}
END_TEST

START_TEST(test_real_process) {
        _cleanup_close_ int memfd = memfd_create("guest-ram", MFD_CLOEXEC);
        int go[2], ready[2], status;
        pid_t pids[4], child;
        size_t n = 99;
        void *mine;
        char c;
        struct timespec t0, t1;

        ck_assert_int_ge(memfd, 0);
        ck_assert_int_eq(ftruncate(memfd, 1 << 20), 0);
        mine = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        ck_assert(mine != MAP_FAILED);

        /* We are the VMM; nobody else maps it yet. */
        ck_assert_int_eq(mappers_find_fd(NULL, memfd, getpid(), 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 0);
        ck_assert_int_eq(mappers_find_fd(NULL, memfd, 0, 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 1);
        ck_assert_int_eq(pids[0], getpid());

        ck_assert_int_eq(pipe2(go, O_CLOEXEC), 0);
        ck_assert_int_eq(pipe2(ready, O_CLOEXEC), 0);
        child = fork();
        ck_assert_int_ge(child, 0);
        if (child == 0) {
                /* A second process: drops the inherited mapping, keeps the fd,
                 * then maps part of it when told to. */
                munmap(mine, 1 << 20);
                if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1)
                        _exit(1);
                if (mmap(NULL, 8192, PROT_READ, MAP_SHARED, memfd, 4096) == MAP_FAILED)
                        _exit(2);
                if (write(ready[1], "m", 1) != 1 || read(go[0], &c, 1) != 1)
                        _exit(3);
                _exit(0);
        }
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        /* Holding the fd is not mapping. */
        ck_assert_int_eq(mappers_find_fd(NULL, memfd, getpid(), 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 0);

        ck_assert_int_eq(write(go[1], "g", 1), 1);
        ck_assert_int_eq(read(ready[0], &c, 1), 1);
        clock_gettime(CLOCK_MONOTONIC, &t0);
        ck_assert_int_eq(mappers_find_fd(NULL, memfd, getpid(), 0, pids, ELEMENTSOF(pids), &n), 0);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        ck_assert_uint_eq(n, 1);
        ck_assert_int_eq(pids[0], child);
        printf("mappers: scanned /proc/*/maps in %.2f ms\n",
               ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / 1e6);
        /* Ignoring it as "the daemon" hides it. */
        ck_assert_int_eq(mappers_find_fd(NULL, memfd, getpid(), child, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 0);

        ck_assert_int_eq(write(go[1], "x", 1), 1);
        ck_assert_int_eq(waitpid(child, &status, 0), child);
        ck_assert(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        ck_assert_int_eq(mappers_find_fd(NULL, memfd, getpid(), 0, pids, ELEMENTSOF(pids), &n), 0);
        ck_assert_uint_eq(n, 0);
        munmap(mine, 1 << 20);
}
END_TEST

static Suite *mappers_suite(void) {
        const CheckCase cases[] = {
                { "fake-proc", test_fake_proc },
                { "scan-ranges", test_scan_ranges },
                { "scan-files", test_scan_files },
                { "real-process", test_real_process },
        };

        return check_suite("mappers", cases, ELEMENTSOF(cases), 0, NULL);
}

int main(void) {
        int failed;
        char cmd[600];

        if (!mkdtemp(tmpdir)) {
                perror("mkdtemp");
                return EXIT_FAILURE;
        }
        failed = check_run(mappers_suite()) != EXIT_SUCCESS;
        snprintf(cmd, sizeof cmd, "rm -rf -- '%s'", tmpdir);
        if (system(cmd) != 0)
                fprintf(stderr, "could not remove %s\n", tmpdir);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
