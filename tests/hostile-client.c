/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * hostile-client: a VMM that lies. Each case connects to dedupd, sends
 * something wrong and expects an ERROR reply and the connection closed.
 * Usage: hostile-client SOCKET [PID-OF-ANOTHER-VMM FD-OF-ITS-MEMFD [FD-OF-A-POOL]]
 * Prints one line per case; exits 1 if any case was not refused.
 */

#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "dedup-proto.h"

static const char *sock_path;
static pid_t other_pid;
static int other_fd = -1;
static int pool_fd = -1;
static int failures;

static int connect_daemon(void) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        int fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);

        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock_path);
        if (fd < 0 || connect(fd, (struct sockaddr *) &sa, sizeof(sa)) < 0) {
                perror("connect");
                exit(2);
        }
        return fd;
}

static void hello(int fd, pid_t pid, const char *name) {
        struct dedup_msg_hello h = {};
        _Alignas(8) uint8_t buf[DEDUP_PROTO_MAX_MSG];
        size_t nfds;

        dedup_proto_init_header(&h.hdr, DEDUP_MSG_HELLO, sizeof(h), 1);
        snprintf(h.name, sizeof(h.name), "%s", name);
        h.pid = (uint32_t) pid;
        if (dedup_proto_send(fd, &h, NULL, 0) < 0)
                exit(2);
        if (pid == getpid() &&
            (dedup_proto_recv(fd, buf, sizeof(buf), NULL, 0, &nfds, 0) <= 0 ||
             ((struct dedup_msg_header *) buf)->type != DEDUP_MSG_WELCOME)) {
                fprintf(stderr, "no WELCOME for a valid HELLO\n");
                exit(2);
        }
}

/* The daemon must answer ERROR and close within 2 s. With unread messages
 * left in its queue the close resets the connection, and the kernel then
 * reports ECONNRESET before the ERROR: closing is what counts there. */
static void expect_closed(int fd, const char *what, bool need_error) {
        _Alignas(8) uint8_t buf[DEDUP_PROTO_MAX_MSG];
        struct pollfd p = { .fd = fd, .events = POLLIN };
        bool got_error = false, closed = false;
        int fds[2];
        size_t nfds;

        while (!closed && poll(&p, 1, 2000) > 0) {
                ssize_t n = dedup_proto_recv(fd, buf, sizeof(buf), fds, 2, &nfds, 0);
                if (n <= 0)
                        closed = true;
                else if (((struct dedup_msg_header *) buf)->type == DEDUP_MSG_ERROR) {
                        got_error = true;
                        printf("  %-44s refused: %s\n", what, ((struct dedup_msg_error *) buf)->text);
                }
        }
        if (!got_error && closed && !need_error)
                printf("  %-44s refused: connection reset\n", what);
        if ((need_error && !got_error) || !closed) {
                printf("  %-44s NOT refused (error=%d closed=%d)\n", what, got_error, closed);
                failures++;
        }
        close(fd);
}

static void expect_refused(int fd, const char *what) {
        expect_closed(fd, what, true);
}

/* Pages a VMM claims to keep on a pool dedupd does not have (or not for
 * its group) come back in an UNMERGE flagged KEPT, and the VM stays. */
static void expect_kept_returned(int fd, const char *what, const struct dedup_range *want) {
        _Alignas(8) uint8_t buf[DEDUP_PROTO_MAX_MSG];
        struct pollfd p = { .fd = fd, .events = POLLIN };
        const struct dedup_msg_ranges *m = (const void *) buf;
        int fds[2];
        size_t nfds;

        while (poll(&p, 1, 2000) > 0) {
                ssize_t n = dedup_proto_recv(fd, buf, sizeof(buf), fds, 2, &nfds, 0);
                if (n <= 0)
                        break;
                for (size_t i = 0; i < nfds; i++)
                        close(fds[i]);
                if (m->hdr.type != DEDUP_MSG_UNMERGE || !(m->flags & DEDUP_RANGES_F_KEPT))
                        continue;
                if (m->count == 1 && memcmp(&m->ranges[0], want, sizeof *want) == 0) {
                        printf("  %-44s returned to the agent\n", what);
                        close(fd);
                        return;
                }
                break;
        }
        printf("  %-44s NOT returned as it should\n", what);
        failures++;
        close(fd);
}

static int new_uffd(void) {
        struct uffdio_api api = { .api = UFFD_API };
        int fd = (int) syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);

        if (fd < 0 || ioctl(fd, UFFDIO_API, &api) < 0) {
                perror("userfaultfd");
                exit(77);
        }
        return fd;
}

static void send_region(int fd, int memfd, uint64_t size, void *hva) {
        struct dedup_msg_region r = {};
        int fds[2] = { memfd, new_uffd() };

        dedup_proto_init_header(&r.hdr, DEDUP_MSG_REGION, sizeof(r), 2);
        r.region_id = 1;
        r.size = size;
        r.hva = (uint64_t) (uintptr_t) hva;
        (void) dedup_proto_send(fd, &r, fds, 2);
        close(fds[1]);
}

int main(int argc, char **argv) {
        int fd, memfd, p[2];
        void *hva;

        if (argc < 2 || argc == 3 || argc > 5) {
                fprintf(stderr, "usage: hostile-client SOCKET [OTHER-PID OTHER-MEMFD-FD [POOL-FD]]\n");
                return 2;
        }
        sock_path = argv[1];
        if (argc >= 4) {
                char path[64];
                other_pid = atoi(argv[2]);
                snprintf(path, sizeof(path), "/proc/%d/fd/%s", (int) other_pid, argv[3]);
                other_fd = open(path, O_RDWR | O_CLOEXEC);
                if (other_fd < 0) {
                        perror(path);
                        return 2;
                }
                if (argc == 5) {
                        /* The pool fd a VMM holds is read-only: reopen it so. */
                        snprintf(path, sizeof(path), "/proc/%d/fd/%s", (int) other_pid, argv[4]);
                        pool_fd = open(path, O_RDONLY | O_CLOEXEC);
                        if (pool_fd < 0) {
                                perror(path);
                                return 2;
                        }
                }
        }
        memfd = memfd_create("hostile", MFD_CLOEXEC);
        if (memfd < 0 || ftruncate(memfd, 1 << 20) < 0)
                return 2;
        hva = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
        if (hva == MAP_FAILED)
                return 2;

        fd = connect_daemon();
        (void) !write(fd, "GET / HTTP/1.0\r\n\r\n", 18);
        expect_refused(fd, "garbage instead of a message");

        fd = connect_daemon();
        {
                struct dedup_msg_hello h = {};
                dedup_proto_init_header(&h.hdr, DEDUP_MSG_HELLO, sizeof(h) + 8, 1);
                (void) !send(fd, &h, sizeof(h), 0);
        }
        expect_refused(fd, "length field lies");

        fd = connect_daemon();
        send_region(fd, memfd, 1 << 20, hva);
        expect_refused(fd, "REGION before HELLO");

        fd = connect_daemon();
        hello(fd, 1, "liar");
        expect_refused(fd, "HELLO claiming another pid");

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-past-end");
        send_region(fd, memfd, 4 << 20, hva);
        expect_refused(fd, "region past the memfd's end");

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-pipe");
        if (pipe(p) < 0)
                return 2;
        send_region(fd, p[0], 1 << 20, hva);
        expect_refused(fd, "a pipe instead of a memfd");

        if (other_fd >= 0) {
                fd = connect_daemon();
                hello(fd, getpid(), "hostile-thief");
                send_region(fd, other_fd, 1 << 20, hva);
                expect_refused(fd, "memfd of another VM");
        }

        if (pool_fd >= 0) {
                fd = connect_daemon();
                hello(fd, getpid(), "hostile-pool");
                send_region(fd, pool_fd, 1 << 20, hva);
                expect_refused(fd, "a dedupd pool as guest RAM");
        }

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-reply");
        {
                _Alignas(8) uint8_t buf[sizeof(struct dedup_msg_remap) + sizeof(struct dedup_remap_entry)] = {};
                struct dedup_msg_remap *m = (void *) buf;
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_REMAP_REPLY, sizeof(buf), 2);
                m->count = 1;
                m->entries[0] = (struct dedup_remap_entry) { .region_id = 1, .npages = 1, .cookie = 12345 };
                (void) dedup_proto_send(fd, m, NULL, 0);
        }
        expect_refused(fd, "REMAP reply for a remap never asked");

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-count");
        {
                _Alignas(8) uint8_t buf[sizeof(struct dedup_msg_ranges) + sizeof(struct dedup_range)] = {};
                struct dedup_msg_ranges *m = (void *) buf;
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_WRITTEN, sizeof(buf), 2);
                m->count = 1u << 30;
                (void) !send(fd, m, sizeof(buf), 0);
        }
        expect_refused(fd, "huge entry count");

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-zero-kept");
        {
                _Alignas(8) uint8_t buf[sizeof(struct dedup_msg_ranges) + sizeof(struct dedup_range)] = {};
                struct dedup_msg_ranges *m = (void *) buf;
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_ZERO_KEPT, sizeof(buf), 2);
                m->count = 1;
                m->ranges[0] = (struct dedup_range) { .region_id = 0, .npages = 1 };
                (void) dedup_proto_send(fd, m, NULL, 0);
        }
        expect_refused(fd, "ZERO_KEPT for a region never registered");

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-merged-kept");
        {
                _Alignas(8) uint8_t buf[sizeof(struct dedup_msg_remap) + sizeof(struct dedup_remap_entry)] = {};
                struct dedup_msg_remap *m = (void *) buf;
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_MERGED_KEPT, sizeof(buf), 2);
                m->count = 1;
                m->entries[0] = (struct dedup_remap_entry) { .region_id = 1, .npages = 1 };
                (void) dedup_proto_send(fd, m, NULL, 0);
        }
        expect_refused(fd, "MERGED_KEPT for a region never registered");

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-pool-claim");
        send_region(fd, memfd, 1 << 20, hva);
        {
                _Alignas(8) uint8_t buf[sizeof(struct dedup_msg_remap) + sizeof(struct dedup_remap_entry)] = {};
                struct dedup_msg_remap *m = (void *) buf;
                struct stat st = {};
                if (pool_fd >= 0 && fstat(pool_fd, &st) < 0)
                        return 2;
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_MERGED_KEPT, sizeof(buf), 3);
                m->count = 1;
                m->flags = DEDUP_KEPT_F_LAST;
                /* A pool of this run (or a made-up inode): never one to keep. */
                m->entries[0] = (struct dedup_remap_entry) { .region_id = 1, .offset = 8 * 4096, .npages = 4,
                                                             .cookie = pool_fd >= 0 ? st.st_ino : 424242 };
                (void) dedup_proto_send(fd, m, NULL, 0);
        }
        expect_kept_returned(fd, "MERGED_KEPT on a pool not kept",
                             &(struct dedup_range) { .region_id = 1, .npages = 4, .offset = 8 * 4096 });

        fd = connect_daemon();
        hello(fd, getpid(), "hostile-flood");
        for (int i = 0; i < 10000; i++) {
                _Alignas(8) uint8_t buf[sizeof(struct dedup_msg_ranges) + sizeof(struct dedup_range)] = {};
                struct dedup_msg_ranges *m = (void *) buf;
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_WRITTEN, sizeof(buf), (uint32_t) i + 2);
                m->count = 1;
                m->ranges[0] = (struct dedup_range) { .region_id = 99, .npages = 1 };
                if (send(fd, m, sizeof(buf), MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
                        break;
        }
        expect_closed(fd, "flood of ranges of an unknown region", false);

        printf("hostile-client: %d case(s) not refused\n", failures);
        return failures ? 1 : 0;
}
