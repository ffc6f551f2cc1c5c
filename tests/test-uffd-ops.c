/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * uffd-ops with real userfaultfds over real memfd mappings: protection
 * shows in pagemap (populated, cached-but-unmapped and hole pages), a
 * writer blocks until the daemon side unprotects, DONTWAKE + wake, and
 * protection of a child process's range through the uffd it sent over a
 * socket, as a VMM does. Exits 77 if userfaultfd or its WP features are
 * unavailable.
 */

#include <check.h>

#include "check-suite.h"
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <sched.h>
#include <unistd.h>

#include "dedup-compat.h"
#include "uffd-ops.h"
#include "util.h"

#define PS 4096u
#define NPAGES 16u
#define FEATURES (UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED | UFFD_FEATURE_WP_HUGETLBFS_SHMEM)

/* A non-blocking uffd (poll on a blocking one returns POLLERR) with the
 * features the agent asks for, or -errno. */
static int uffd_create(void) {
        int fd = (int) syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);

        if (fd < 0) {
                int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
                if (dev < 0)
                        return -errno;
                fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
                close(dev);
                if (fd < 0)
                        return -errno;
        }
        struct uffdio_api api = { .api = UFFD_API, .features = FEATURES };
        if (ioctl(fd, UFFDIO_API, &api) < 0) {
                int r = -errno;
                close(fd);
                return r == -EINVAL ? -EOPNOTSUPP : r;
        }
        return fd;
}

static void uffd_register_wp(int uffd, void *addr, uint64_t len) {
        struct uffdio_register reg = {
                .range = { .start = (uintptr_t) addr, .len = len },
                .mode = UFFDIO_REGISTER_MODE_WP,
        };
        ck_assert_int_eq(ioctl(uffd, UFFDIO_REGISTER, &reg), 0);
        ck_assert(reg.ioctls & (UINT64_C(1) << _UFFDIO_WRITEPROTECT));
}

static void fill(void *buf, uint64_t tag) {
        memset(buf, (int) (tag & 0xff) | 1, PS);
}

/* memfd of NPAGES: pages 0..7 hold data, 8.. are holes. */
static int make_memfd(void) {
        uint8_t buf[PS];
        int fd = memfd_create("test-uffd", MFD_CLOEXEC);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, NPAGES * PS), 0);
        for (unsigned i = 0; i < 8; i++) {
                fill(buf, i);
                ck_assert_int_eq(pwrite(fd, buf, PS, i * PS), (ssize_t) PS);
        }
        return fd;
}

static bool page_is(int fd, unsigned page, int byte) {
        uint8_t buf[PS];
        if (pread(fd, buf, PS, page * PS) != (ssize_t) PS)
                return false;
        for (unsigned i = 0; i < PS; i++)
                if (buf[i] != byte)
                        return false;
        return true;
}

/* Wait up to timeout_ms for one fault message on uffd. */
static int read_fault(int uffd, int timeout_ms, struct uffd_msg *ret) {
        struct pollfd p = { .fd = uffd, .events = POLLIN };
        int r = poll(&p, 1, timeout_ms);

        if (r < 0)
                return -errno;
        if (r == 0)
                return -ETIMEDOUT;
        if (read(uffd, ret, sizeof *ret) != sizeof *ret)
                return -errno;
        return 0;
}

typedef struct Writer {
        uint8_t *addr;
        atomic_bool done;
} Writer;

static void *writer_thread(void *p) {
        Writer *w = p;
        *(volatile uint8_t *) w->addr = 0xab;
        atomic_store(&w->done, true);
        return NULL;
}

typedef struct Handler {
        int uffd;
        int r;
        struct uffd_msg msg;
} Handler;

static void *handler_thread(void *p) {
        Handler *h = p;
        h->r = read_fault(h->uffd, 5000, &h->msg);
        return NULL;
}

static void check_wp(int pagemap, uint8_t *map, const bool *want) {
        bool wp[NPAGES];
        ck_assert_int_eq(uffd_pagemap_wp(pagemap, (uintptr_t) map, NPAGES, wp), 0);
        for (unsigned i = 0; i < NPAGES; i++)
                ck_assert_msg(wp[i] == want[i], "page %u: wp %d, want %d", i, wp[i], want[i]);
}

/* Protect everything through a dup of the uffd; a write to `page` blocks
 * until it is unprotected (with wake, or DONTWAKE then uffd_wake()). */
static void blocked_writer(unsigned page, bool dontwake) {
        _cleanup_close_ int memfd = make_memfd(), uffd = uffd_create(), pagemap = -EBADF, dupfd = -EBADF;
        uint8_t *map;
        bool want[NPAGES];
        pthread_t wt, ht;
        Writer w = {};
        Handler h = {};
        volatile uint8_t sink = 0;

        ck_assert_int_ge(uffd, 0);
        map = mmap(NULL, NPAGES * PS, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        ck_assert(map != MAP_FAILED);
        for (unsigned i = 0; i < 4; i++)        /* ptes for pages 0..3 only */
                sink += map[i * PS];
        uffd_register_wp(uffd, map, NPAGES * PS);

        dupfd = fcntl(uffd, F_DUPFD_CLOEXEC, 3);
        ck_assert_int_ge(dupfd, 0);
        ck_assert_int_eq(uffd_fd_is_userfaultfd(dupfd), 1);
        ck_assert_int_eq(uffd_wp(dupfd, (uintptr_t) map, NPAGES * PS), 0);

        /* Populated, cached-but-unmapped and hole pages all show as protected. */
        pagemap = uffd_pagemap_open(NULL, 0);
        ck_assert_int_ge(pagemap, 0);
        for (unsigned i = 0; i < NPAGES; i++)
                want[i] = true;
        check_wp(pagemap, map, want);

        h.uffd = uffd;
        w.addr = map + page * PS;
        ck_assert_int_eq(pthread_create(&ht, NULL, handler_thread, &h), 0);
        ck_assert_int_eq(pthread_create(&wt, NULL, writer_thread, &w), 0);
        ck_assert_int_eq(pthread_join(ht, NULL), 0);
        ck_assert_int_eq(h.r, 0);
        ck_assert_int_eq(h.msg.event, UFFD_EVENT_PAGEFAULT);
        ck_assert(h.msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP);
        ck_assert(h.msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WRITE);
        ck_assert_uint_eq(h.msg.arg.pagefault.address & ~(uint64_t) (PS - 1), (uintptr_t) w.addr);

        /* The writer stays blocked and the page unchanged. */
        usleep(50 * 1000);
        ck_assert(!atomic_load(&w.done));
        ck_assert(page_is(memfd, page, page < 8 ? (page | 1) : 0));

        if (dontwake) {
                ck_assert_int_eq(uffd_writeprotect(dupfd, (uintptr_t) w.addr, PS, false, false), 0);
                usleep(50 * 1000);
                ck_assert(!atomic_load(&w.done));       /* unprotected but not woken */
                ck_assert_int_eq(uffd_wake(dupfd, (uintptr_t) w.addr, PS), 0);
        } else
                ck_assert_int_eq(uffd_unwp(dupfd, (uintptr_t) w.addr, PS), 0);
        ck_assert_int_eq(pthread_join(wt, NULL), 0);
        ck_assert(atomic_load(&w.done));
        ck_assert_uint_eq(*(uint8_t *) w.addr, 0xab);
        ck_assert_uint_eq(page < 8 ? (page | 1) : 0, map[page * PS + 1]);
        {
                uint8_t b;
                ck_assert_int_eq(pread(memfd, &b, 1, page * PS), 1);
                ck_assert_uint_eq(b, 0xab);
        }
        want[page] = false;
        check_wp(pagemap, map, want);
        munmap(map, NPAGES * PS);
        (void) sink;
}

START_TEST(test_populated) {
        blocked_writer(2, false);
}
END_TEST

START_TEST(test_unmapped) {
        blocked_writer(6, false);       /* in the page cache, no pte */
}
END_TEST

START_TEST(test_hole) {
        blocked_writer(10, false);      /* never written: a hole */
}
END_TEST

START_TEST(test_dontwake) {
        blocked_writer(3, true);
}
END_TEST

START_TEST(test_errors) {
        _cleanup_close_ int memfd = make_memfd(), uffd = uffd_create();
        uint8_t *map, *other;

        ck_assert_int_ge(uffd, 0);
        map = mmap(NULL, NPAGES * PS, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        other = mmap(NULL, PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert(map != MAP_FAILED && other != MAP_FAILED);
        uffd_register_wp(uffd, map, 8 * PS);

        ck_assert_int_eq(uffd_wp(uffd, (uintptr_t) map, 8 * PS), 0);
        ck_assert_int_eq(uffd_wp(uffd, (uintptr_t) other, PS), -ENOENT);          /* not registered */
        ck_assert_int_eq(uffd_wp(uffd, (uintptr_t) map, NPAGES * PS), -ENOENT);   /* partly */
        ck_assert_int_eq(uffd_wp(uffd, (uintptr_t) map + 1, PS), -EINVAL);
        ck_assert_int_eq(uffd_wp(uffd, (uintptr_t) map, 100), -EINVAL);
        ck_assert_int_eq(uffd_wp(uffd, (uintptr_t) map, 0), -EINVAL);
        ck_assert_int_eq(uffd_wp(memfd, (uintptr_t) map, PS), -EINVAL);          /* not a uffd */
        ck_assert_int_eq(uffd_wp(-1, (uintptr_t) map, PS), -EINVAL);
        ck_assert_int_eq(uffd_fd_is_userfaultfd(memfd), 0);
        ck_assert_int_eq(uffd_unwp(uffd, (uintptr_t) map, 8 * PS), 0);
        munmap(map, NPAGES * PS);
        /* Unmapped after registration. */
        ck_assert_int_eq(uffd_wp(uffd, (uintptr_t) map, PS), -ENOENT);
}
END_TEST

static int send_fd(int sock, int fd, const void *data, size_t len) {
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } c = {};
        struct iovec iov = { .iov_base = (void *) data, .iov_len = len };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof c.buf };
        struct cmsghdr *cm = CMSG_FIRSTHDR(&m);

        cm->cmsg_level = SOL_SOCKET;
        cm->cmsg_type = SCM_RIGHTS;
        cm->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(cm), &fd, sizeof fd);
        return sendmsg(sock, &m, MSG_NOSIGNAL) == (ssize_t) len ? 0 : -errno;
}

static int recv_fd(int sock, void *data, size_t len) {
        union {
                struct cmsghdr h;
                char buf[CMSG_SPACE(sizeof(int))];
        } c = {};
        struct iovec iov = { .iov_base = data, .iov_len = len };
        struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = c.buf, .msg_controllen = sizeof c.buf };
        struct cmsghdr *cm;
        int fd;

        if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) != (ssize_t) len)
                return -EIO;
        cm = CMSG_FIRSTHDR(&m);
        if (!cm || cm->cmsg_type != SCM_RIGHTS)
                return -EBADMSG;
        memcpy(&fd, CMSG_DATA(cm), sizeof fd);
        return fd;
}

/* The "VMM": maps the memfd, registers it on its own uffd, sends the uffd
 * and the address, then writes page 2 when told to. Exit status: 0 or the
 * failed step. */
static int vmm_child(int sock, int memfd) {
        uint8_t *map;
        uintptr_t addr;
        char c;
        int uffd;

        map = mmap(NULL, NPAGES * PS, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (map == MAP_FAILED)
                return 1;
        uffd = uffd_create();
        if (uffd < 0)
                return 2;
        struct uffdio_register reg = {
                .range = { .start = (uintptr_t) map, .len = NPAGES * PS },
                .mode = UFFDIO_REGISTER_MODE_WP,
        };
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
                return 3;
        addr = (uintptr_t) map;
        if (send_fd(sock, uffd, &addr, sizeof addr) < 0)
                return 4;
        close(uffd);    /* the daemon holds it now; nobody here reads faults */

        if (read(sock, &c, 1) != 1 || c != 'w')
                return 5;
        map[2 * PS] = 0xcd;     /* blocks while protected */
        if (write(sock, "d", 1) != 1)
                return 6;
        if (read(sock, &c, 1) != 1 || c != 'x')
                return 7;
        return 0;
}

START_TEST(test_child) {
        _cleanup_close_ int memfd = make_memfd(), uffd = -EBADF, pagemap = -EBADF;
        int sv[2], status;
        struct uffd_msg msg;
        struct pollfd p;
        uintptr_t addr = 0;
        bool wp[NPAGES];
        pid_t pid;
        char c;

        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
        pid = fork();
        ck_assert_int_ge(pid, 0);
        if (pid == 0) {
                close(sv[0]);
                _exit(vmm_child(sv[1], memfd));
        }
        close(sv[1]);

        uffd = recv_fd(sv[0], &addr, sizeof addr);
        ck_assert_int_ge(uffd, 0);
        ck_assert_int_eq(uffd_fd_is_userfaultfd(uffd), 1);

        /* Protect page 2 of the child's mapping from here. */
        ck_assert_int_eq(uffd_wp(uffd, addr, NPAGES * PS), 0);
        pagemap = uffd_pagemap_open(NULL, pid);
        ck_assert_int_ge(pagemap, 0);
        ck_assert_int_eq(uffd_pagemap_wp(pagemap, addr, NPAGES, wp), 0);
        for (unsigned i = 0; i < NPAGES; i++)
                ck_assert(wp[i]);

        ck_assert_int_eq(write(sv[0], "w", 1), 1);
        /* Our copy of the uffd gets the child's fault (the agent would read it). */
        ck_assert_int_eq(read_fault(uffd, 5000, &msg), 0);
        ck_assert_int_eq(msg.event, UFFD_EVENT_PAGEFAULT);
        ck_assert(msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP);
        ck_assert_uint_eq(msg.arg.pagefault.address & ~(uint64_t) (PS - 1), addr + 2 * PS);

        /* The child is blocked: no "done", page unchanged. */
        p = (struct pollfd) { .fd = sv[0], .events = POLLIN };
        ck_assert_int_eq(poll(&p, 1, 100), 0);
        ck_assert(page_is(memfd, 2, 2 | 1));

        ck_assert_int_eq(uffd_unwp(uffd, addr + 2 * PS, PS), 0);
        p = (struct pollfd) { .fd = sv[0], .events = POLLIN };
        ck_assert_int_eq(poll(&p, 1, 5000), 1);
        ck_assert_int_eq(read(sv[0], &c, 1), 1);
        ck_assert_int_eq(c, 'd');
        {
                uint8_t b;
                ck_assert_int_eq(pread(memfd, &b, 1, 2 * PS), 1);
                ck_assert_uint_eq(b, 0xcd);
        }
        ck_assert_int_eq(uffd_pagemap_wp(pagemap, addr, NPAGES, wp), 0);
        for (unsigned i = 0; i < NPAGES; i++)
                ck_assert(wp[i] == (i != 2));

        ck_assert_int_eq(uffd_unwp(uffd, addr, NPAGES * PS), 0);
        ck_assert_int_eq(write(sv[0], "x", 1), 1);
        ck_assert_int_eq(waitpid(pid, &status, 0), pid);
        ck_assert(WIFEXITED(status));
        ck_assert_int_eq(WEXITSTATUS(status), 0);

        /* The VMM is gone. */
        ck_assert_int_eq(uffd_wp(uffd, addr, PS), -ESRCH);
        close(sv[0]);
}
END_TEST

/* Race: guest writers hammer their pages while the "daemon" protects runs,
 * reads them twice and unprotects, and an "agent" thread answers every
 * write fault by unprotecting (a transient protection). Checked: no write is
 * lost (every byte against the writers' shadow copies), nobody hangs, and a
 * page still protected after the second read did not change between the
 * reads — the invariant step 4 of the merge protocol relies on. */
#define RACE_PAGES 64u
#define RACE_WRITERS 2u

typedef struct Race {
        uint8_t *map;
        int uffd;
        atomic_bool stop;
        atomic_ulong faults;
        uint8_t shadow[RACE_PAGES][PS];
} Race;

typedef struct RaceWriter {
        Race *race;
        unsigned id;
        unsigned long writes;
} RaceWriter;

static void *race_writer(void *p) {
        RaceWriter *w = p;
        Race *r = w->race;
        unsigned seed = w->id * 7919u + 1;

        while (!atomic_load(&r->stop)) {
                /* Writer id owns pages id, id + RACE_WRITERS, ... */
                unsigned page = (rand_r(&seed) % (RACE_PAGES / RACE_WRITERS)) * RACE_WRITERS + w->id;
                unsigned at = rand_r(&seed) % (PS / 8) * 8;
                uint64_t v = ((uint64_t) w->id << 56) | ++w->writes;

                *(volatile uint64_t *) (r->map + page * PS + at) = v;
                memcpy(&r->shadow[page][at], &v, sizeof v);
        }
        return NULL;
}

static void *race_agent(void *p) {
        Race *r = p;

        while (!atomic_load(&r->stop)) {
                struct uffd_msg msg;
                int k = read_fault(r->uffd, 20, &msg);
                if (k == -ETIMEDOUT || k == -EAGAIN)
                        continue;
                if (k < 0 || msg.event != UFFD_EVENT_PAGEFAULT)
                        break;
                atomic_fetch_add(&r->faults, 1);
                (void) uffd_unwp(r->uffd, msg.arg.pagefault.address & ~(uint64_t) (PS - 1), PS);
        }
        return NULL;
}

START_TEST(test_race) {
        _cleanup_close_ int memfd = memfd_create("test-uffd-race", MFD_CLOEXEC), pagemap = -EBADF;
        Race *r = calloc(1, sizeof(Race));
        RaceWriter w[RACE_WRITERS] = {};
        pthread_t wt[RACE_WRITERS], at;
        unsigned seed = 42;
        unsigned long rounds = 0, stable = 0, written = 0, writes = 0;
        uint8_t *a = malloc(4 * PS), *b = malloc(4 * PS);
        struct timespec start, now;

        ck_assert_ptr_nonnull(r);
        ck_assert_ptr_nonnull(a);
        ck_assert_ptr_nonnull(b);
        ck_assert_int_ge(memfd, 0);
        ck_assert_int_eq(ftruncate(memfd, RACE_PAGES * PS), 0);
        r->map = mmap(NULL, RACE_PAGES * PS, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        ck_assert(r->map != MAP_FAILED);
        r->uffd = uffd_create();
        ck_assert_int_ge(r->uffd, 0);
        uffd_register_wp(r->uffd, r->map, RACE_PAGES * PS);
        pagemap = uffd_pagemap_open(NULL, 0);
        ck_assert_int_ge(pagemap, 0);

        ck_assert_int_eq(pthread_create(&at, NULL, race_agent, r), 0);
        for (unsigned i = 0; i < RACE_WRITERS; i++) {
                w[i] = (RaceWriter) { .race = r, .id = i };
                ck_assert_int_eq(pthread_create(&wt[i], NULL, race_writer, &w[i]), 0);
        }

        clock_gettime(CLOCK_MONOTONIC, &start);
        do {
                unsigned n = 1 + rand_r(&seed) % 4;
                unsigned page = rand_r(&seed) % (RACE_PAGES - n + 1);
                uint64_t addr = (uintptr_t) r->map + page * PS;
                bool wp[4];
                int k;

                k = uffd_wp(r->uffd, addr, n * PS);
                if (k < 0)
                        ck_abort_msg("uffd_wp: %s", strerror(-k));
                if (pread(memfd, a, n * PS, page * PS) != (ssize_t) (n * PS))
                        ck_abort_msg("pread");
                sched_yield();
                if (pread(memfd, b, n * PS, page * PS) != (ssize_t) (n * PS))
                        ck_abort_msg("pread");
                if (uffd_pagemap_wp(pagemap, addr, n, wp) < 0)
                        ck_abort_msg("pagemap");
                for (unsigned i = 0; i < n; i++) {
                        if (wp[i]) {
                                if (memcmp(a + i * PS, b + i * PS, PS) != 0)
                                        ck_abort_msg("page %u changed while write-protected", page + i);
                                stable++;
                        } else
                                written++;
                }
                k = uffd_unwp(r->uffd, addr, n * PS);
                if (k < 0)
                        ck_abort_msg("uffd_unwp: %s", strerror(-k));
                rounds++;
                clock_gettime(CLOCK_MONOTONIC, &now);
        } while (now.tv_sec - start.tv_sec < 2);

        atomic_store(&r->stop, true);
        for (unsigned i = 0; i < RACE_WRITERS; i++) {
                ck_assert_int_eq(pthread_join(wt[i], NULL), 0);
                writes += w[i].writes;
        }
        ck_assert_int_eq(pthread_join(at, NULL), 0);

        for (unsigned i = 0; i < RACE_PAGES; i++) {
                ck_assert_int_eq(pread(memfd, a, PS, i * PS), (ssize_t) PS);
                ck_assert_msg(memcmp(a, r->shadow[i], PS) == 0, "page %u lost a write", i);
        }
        printf("uffd race: %lu protect rounds, %lu pages stable while protected, %lu written through, "
               "%lu writes, %lu write faults\n",
               rounds, stable, written, writes, (unsigned long) atomic_load(&r->faults));
        ck_assert_uint_gt(atomic_load(&r->faults), 0);
        ck_assert_uint_gt(stable, 0);
        munmap(r->map, RACE_PAGES * PS);
        close(r->uffd);
        free(r);
        free(a);
        free(b);
}
END_TEST

/* Figures: what protecting costs the daemon, per call. */
START_TEST(test_bench) {
        _cleanup_close_ int memfd = make_memfd(), uffd = uffd_create();
        const unsigned n = 20000, big = 512;
        struct timespec t0, t1, t2;
        uint8_t *map;
        int r = 0;

        ck_assert_int_ge(uffd, 0);
        ck_assert_int_eq(ftruncate(memfd, big * PS), 0);
        map = mmap(NULL, big * PS, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        ck_assert(map != MAP_FAILED);
        for (unsigned i = 0; i < big; i++)
                map[i * PS] = 1;
        uffd_register_wp(uffd, map, big * PS);

        clock_gettime(CLOCK_MONOTONIC, &t0);
        for (unsigned i = 0; i < n; i++) {
                uint64_t addr = (uintptr_t) map + (i % big) * PS;
                r |= uffd_wp(uffd, addr, PS);
                r |= uffd_unwp(uffd, addr, PS);
        }
        clock_gettime(CLOCK_MONOTONIC, &t1);
        for (unsigned i = 0; i < n / 100; i++) {
                r |= uffd_wp(uffd, (uintptr_t) map, big * PS);
                r |= uffd_unwp(uffd, (uintptr_t) map, big * PS);
        }
        clock_gettime(CLOCK_MONOTONIC, &t2);
        ck_assert_int_eq(r, 0);
        printf("uffd bench: wp+unwp of one page %.2f us, of a %u-page run %.2f us\n",
               ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n / 1e3, big,
               ((t2.tv_sec - t1.tv_sec) * 1e9 + (t2.tv_nsec - t1.tv_nsec)) / (n / 100) / 1e3);
        munmap(map, big * PS);
}
END_TEST

static Suite *uffd_suite(void) {
        const CheckCase cases[] = {
                { "protect-populated", test_populated },
                { "protect-unmapped", test_unmapped },
                { "protect-hole", test_hole },
                { "unprotect-dontwake", test_dontwake },
                { "errors", test_errors },
                { "child-process", test_child },
                { "race-writers", test_race },
                { "bench", test_bench },
        };

        return check_suite("uffd-ops", cases, ELEMENTSOF(cases), 30, NULL);
}

int main(void) {
        int fd, failed;

        fd = uffd_create();
        if (fd == -EOPNOTSUPP) {
                fprintf(stderr, "userfaultfd lacks PAGEFAULT_FLAG_WP|WP_UNPOPULATED|WP_HUGETLBFS_SHMEM "
                                "(needs Linux 6.4+): skipping\n");
                return 77;
        }
        if (fd < 0) {
                fprintf(stderr, "userfaultfd unavailable (%s; as non-root set vm.unprivileged_userfaultfd=1 "
                                "or give access to /dev/userfaultfd): skipping\n", strerror(-fd));
                return 77;
        }
        close(fd);

        failed = check_run(uffd_suite()) != EXIT_SUCCESS;
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
