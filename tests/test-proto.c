/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests for lib/dedup-proto.[ch]: every message type round-trips over a
 * real SOCK_SEQPACKET socketpair with real fds; every validation rule is
 * rejected with a reason; receive-side truncation, oversize and excess fds
 * never leak an fd; fd type checks on real memfds, userfaultfds and others.
 */

#include <check.h>

#include "check-suite.h"
#include <dirent.h>
#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "dedup-compat.h"
#include "dedup-proto.h"

/* Messages are built in an aligned buffer, like dedup_proto_recv() targets. */
typedef union {
        struct dedup_msg_header hdr;
        uint64_t align;
        uint8_t bytes[DEDUP_PROTO_MAX_MSG + 4096];
} Buf;

static int count_fds(void) {
        DIR *d = opendir("/proc/self/fd");
        struct dirent *de;
        int n = 0;

        ck_assert_ptr_nonnull(d);
        while ((de = readdir(d)))
                if (de->d_name[0] != '.')
                        n++;
        closedir(d);
        return n - 1; /* the DIR's own fd */
}

static void pair(int sv[2]) {
        ck_assert_int_eq(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv), 0);
}

static int new_memfd(size_t size) {
        int fd = memfd_create("test-guest", MFD_CLOEXEC | MFD_ALLOW_SEALING);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, (off_t) size), 0);
        return fd;
}

/* -1 when userfaultfd is not available here (the fd tests then use a
 * substitute only where the uffd itself is not the point). */
static int new_uffd(void) {
        int fd = (int) syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) {
                int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
                if (dev >= 0) {
                        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
                        close(dev);
                }
        }
        return fd;
}

static void build_hello(Buf *b) {
        struct dedup_msg_hello *m = (void *) b;
        memset(m, 0, sizeof *m);
        dedup_proto_init_header(&m->hdr, DEDUP_MSG_HELLO, sizeof *m, 1);
        strcpy(m->name, "vm-01.test:a_b");
        strcpy(m->uuid, "0b1e6a9c-3d5f-4a7e-9c2b-1f0e3d4c5b6a");
        m->pid = 1234;
}

static void build_region(Buf *b) {
        struct dedup_msg_region *m = (void *) b;
        memset(m, 0, sizeof *m);
        dedup_proto_init_header(&m->hdr, DEDUP_MSG_REGION, sizeof *m, 2);
        m->region_id = 0;
        m->gpa = 0x100000;
        m->size = 16 * 4096;
        m->memfd_offset = 4096;
        m->hva = 0x7f0000000000;
}

static void build_pool(Buf *b) {
        struct dedup_msg_pool *m = (void *) b;
        memset(m, 0, sizeof *m);
        dedup_proto_init_header(&m->hdr, DEDUP_MSG_POOL, sizeof *m, 3);
        m->pool_id = 7;
        m->size = 1 << 20;
}

static size_t build_remap(Buf *b, uint32_t count, bool reply) {
        struct dedup_msg_remap *m = (void *) b;
        size_t len = dedup_msg_remap_size(count);
        memset(m, 0, len);
        dedup_proto_init_header(&m->hdr, reply ? DEDUP_MSG_REMAP_REPLY : DEDUP_MSG_REMAP, (uint32_t) len, 4);
        m->count = count;
        for (uint32_t i = 0; i < count; i++)
                m->entries[i] = (struct dedup_remap_entry) {
                        .region_id = i % 3,
                        .pool_id = i % 5 == 0 ? DEDUP_POOL_ZERO : 2,
                        .offset = (uint64_t) i * 8 * 4096,
                        .pool_offset = i % 5 == 0 ? 0 : (uint64_t) i * 4096,
                        .npages = 1 + i % DEDUP_PROTO_MAX_RUN,
                        .status = reply ? i % 3 : 0,
                        .cookie = 0xdead0000u + i,
                };
        return len;
}

static size_t build_ranges(Buf *b, enum dedup_msg_type type, uint32_t count) {
        struct dedup_msg_ranges *m = (void *) b;
        size_t len = dedup_msg_ranges_size(count);
        memset(m, 0, len);
        dedup_proto_init_header(&m->hdr, type, (uint32_t) len, 5);
        m->count = count;
        for (uint32_t i = 0; i < count; i++)
                m->ranges[i] = (struct dedup_range) { .region_id = i, .npages = 1 + i % 512, .offset = i * 4096ull };
        return len;
}

static void build_error(Buf *b) {
        struct dedup_msg_error *m = (void *) b;
        memset(m, 0, sizeof *m);
        dedup_proto_init_header(&m->hdr, DEDUP_MSG_ERROR, sizeof *m, 6);
        m->error = EPERM;
        strcpy(m->text, "VM name 'x' already registered");
}

static void set_field(char *f, size_t size, const char *v) {
        memset(f, 0, size);
        strncpy(f, v, size - 1);
}

/* Expect rejection with a reason containing want. */
static void reject(const void *m, size_t len, size_t nfds, const char *want) {
        const char *why = NULL;
        int r = dedup_proto_validate(m, len, nfds, &why);
        ck_assert_msg(r < 0, "accepted, expected '%s'", want);
        ck_assert_ptr_nonnull(why);
        ck_assert_msg(strstr(why, want), "reason '%s' lacks '%s'", why, want);
}

static void accept_msg(const void *m, size_t len, size_t nfds) {
        const char *why = NULL;
        int r = dedup_proto_validate(m, len, nfds, &why);
        ck_assert_msg(r == 0, "rejected: %s", why ? why : "?");
}

/* ---- round trips ---- */

static void roundtrip(const Buf *out, const int *fds, size_t nfds) {
        static Buf in;
        int sv[2], got[DEDUP_PROTO_MAX_FDS] = { -1, -1 };
        size_t ngot = 99;
        ssize_t n;

        pair(sv);
        ck_assert_int_eq(dedup_proto_send(sv[0], out, fds, nfds), 0);
        n = dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, got, DEDUP_PROTO_MAX_FDS, &ngot, 0);
        ck_assert_int_eq(n, out->hdr.length);
        ck_assert_uint_eq(ngot, nfds);
        ck_assert_int_eq(memcmp(&in, out, (size_t) n), 0);
        accept_msg(&in, (size_t) n, ngot);
        for (size_t i = 0; i < ngot; i++) {
                struct stat a, b;
                ck_assert_int_eq(fstat(fds[i], &a), 0);
                ck_assert_int_eq(fstat(got[i], &b), 0);
                ck_assert(a.st_ino == b.st_ino && a.st_dev == b.st_dev);
                ck_assert_int_eq(fcntl(got[i], F_GETFD) & FD_CLOEXEC, FD_CLOEXEC);
        }
        if (out->hdr.type == DEDUP_MSG_REGION && ngot == 2) {
                const char *why = NULL;
                const struct dedup_msg_region *m = (const void *) &in;
                ck_assert_msg(dedup_proto_check_region_fds(got[0], got[1], m->memfd_offset, m->size, &why) == 0,
                              "%s", why);
        }
        for (size_t i = 0; i < ngot; i++)
                close(got[i]);
        close(sv[0]);
        close(sv[1]);
}

START_TEST(test_roundtrip_all_types) {
        static Buf b;
        int memfd = new_memfd(32 * 4096), uffd = new_uffd();
        int fds2[2] = { memfd, uffd };
        int before = count_fds();

        if (uffd < 0)
                fds2[1] = uffd = new_memfd(4096); /* wrong type, but round trip only */

        build_hello(&b);
        roundtrip(&b, NULL, 0);

        struct dedup_msg_welcome *w = (void *) &b;
        memset(w, 0, sizeof *w);
        dedup_proto_init_header(&w->hdr, DEDUP_MSG_WELCOME, sizeof *w, 1);
        w->vm_id = 42;
        roundtrip(&b, NULL, 0);

        build_region(&b);
        roundtrip(&b, fds2, 2);

        build_pool(&b);
        roundtrip(&b, &memfd, 1);

        build_remap(&b, 1, false);
        roundtrip(&b, NULL, 0);
        build_remap(&b, DEDUP_PROTO_MAX_ENTRIES, false);
        roundtrip(&b, NULL, 0);
        build_remap(&b, DEDUP_PROTO_MAX_ENTRIES, true);
        roundtrip(&b, NULL, 0);

        build_ranges(&b, DEDUP_MSG_UNMERGE, 3);
        roundtrip(&b, NULL, 0);
        build_ranges(&b, DEDUP_MSG_UNMERGED, DEDUP_PROTO_MAX_ENTRIES);
        ((struct dedup_msg_ranges *) &b)->flags = DEDUP_RANGES_F_REPLY;
        roundtrip(&b, NULL, 0);
        build_ranges(&b, DEDUP_MSG_WRITTEN, 17);
        roundtrip(&b, NULL, 0);

        dedup_proto_init_header(&b.hdr, DEDUP_MSG_BYE, sizeof b.hdr, 9);
        roundtrip(&b, NULL, 0);

        build_error(&b);
        roundtrip(&b, NULL, 0);

        close(memfd);
        close(uffd);
        ck_assert_int_eq(count_fds(), before - 2);
}
END_TEST

START_TEST(test_type_names) {
        ck_assert_str_eq(dedup_msg_type_to_string(DEDUP_MSG_HELLO), "HELLO");
        ck_assert_str_eq(dedup_msg_type_to_string(DEDUP_MSG_REMAP_REPLY), "REMAP_REPLY");
        ck_assert_str_eq(dedup_msg_type_to_string(DEDUP_MSG_ERROR), "ERROR");
        for (int t = 1; t < _DEDUP_MSG_MAX; t++)
                ck_assert_ptr_nonnull(dedup_msg_type_to_string(t));
        ck_assert_ptr_null(dedup_msg_type_to_string(0));
        ck_assert_ptr_null(dedup_msg_type_to_string(_DEDUP_MSG_MAX));
        ck_assert_ptr_null(dedup_msg_type_to_string(-1));
}
END_TEST

/* ---- validation: one test per message part ---- */

START_TEST(test_validate_header) {
        static Buf b;
        const char *why = NULL;

        build_hello(&b);
        reject(&b, 8, 0, "shorter than");
        reject(&b, DEDUP_PROTO_MAX_MSG + 1, 0, "longer than");

        b.hdr.magic = 0x12345678;
        reject(&b, sizeof(struct dedup_msg_hello), 0, "bad magic 0x12345678");
        build_hello(&b);

        b.hdr.version = 2;
        ck_assert_int_eq(dedup_proto_validate(&b, sizeof(struct dedup_msg_hello), 0, &why), -EPROTONOSUPPORT);
        ck_assert_ptr_nonnull(strstr(why, "version 2"));
        build_hello(&b);

        b.hdr.type = 0;
        reject(&b, sizeof(struct dedup_msg_hello), 0, "unknown message type 0");
        b.hdr.type = _DEDUP_MSG_MAX;
        reject(&b, sizeof(struct dedup_msg_hello), 0, "unknown message type");
        build_hello(&b);

        b.hdr.length = 100;
        reject(&b, sizeof(struct dedup_msg_hello), 0, "header length 100 but 128 bytes received");
        build_hello(&b);

        /* A fixed-size type with a different (consistent) length. */
        b.hdr.length = sizeof(struct dedup_msg_hello) + 8;
        reject(&b, sizeof(struct dedup_msg_hello) + 8, 0, "HELLO: length 136, must be 128");

        dedup_proto_init_header(&b.hdr, DEDUP_MSG_BYE, 20, 1);
        reject(&b, 20, 0, "BYE: length 20, must be 16");
        dedup_proto_init_header(&b.hdr, DEDUP_MSG_BYE, 16, 1);
        accept_msg(&b, 16, 0);
        reject(&b, 16, 1, "BYE: 1 fds attached, must be 0");

        /* NULL reason pointer is allowed. */
        ck_assert_int_eq(dedup_proto_validate(&b, 8, 0, NULL), -EBADMSG);
        ck_assert_int_eq(dedup_proto_validate(NULL, 16, 0, NULL), -EBADMSG);
}
END_TEST

START_TEST(test_validate_hello) {
        static Buf b;
        struct dedup_msg_hello *m = (void *) &b;
        const size_t len = sizeof *m;

        build_hello(&b);
        accept_msg(m, len, 0);
        reject(m, len, 1, "HELLO: 1 fds attached, must be 0");

        memset(m->uuid, 0, sizeof m->uuid);
        accept_msg(m, len, 0); /* empty uuid is fine */

        build_hello(&b);
        memset(m->name, 0, sizeof m->name);
        reject(m, len, 0, "name '' invalid");

        build_hello(&b);
        memset(m->name, 'a', sizeof m->name);
        reject(m, len, 0, "name not NUL-terminated");

        build_hello(&b);
        memset(m->name, 'a', 63);
        m->name[63] = 0;
        accept_msg(m, len, 0); /* 63 is the maximum */

        build_hello(&b);
        set_field(m->name, sizeof m->name, "bad/name");
        reject(m, len, 0, "name 'bad/name' invalid");
        set_field(m->name, sizeof m->name, "bad name");
        reject(m, len, 0, "invalid");
        set_field(m->name, sizeof m->name, "caf\xc3\xa9");
        reject(m, len, 0, "invalid");

        build_hello(&b);
        m->name[40] = 'x'; /* garbage after the NUL */
        reject(m, len, 0, "name not NUL-terminated and zero-filled");

        build_hello(&b);
        set_field(m->uuid, sizeof m->uuid, "0b1e6a9c-3d5f-4a7e-9c2b-1f0e3d4c5b6");
        reject(m, len, 0, "not in canonical");
        build_hello(&b);
        m->uuid[8] = 'x';
        reject(m, len, 0, "not in canonical");
        build_hello(&b);
        m->uuid[3] = 'g';
        reject(m, len, 0, "not in canonical");
        build_hello(&b);
        memset(m->uuid, 'a', sizeof m->uuid);
        reject(m, len, 0, "uuid not NUL-terminated");

        build_hello(&b);
        m->pad[2] = 1;
        reject(m, len, 0, "pad byte 2 not zero");

        build_hello(&b);
        m->pid = 0;
        reject(m, len, 0, "pid 0 invalid");

        build_hello(&b);
        m->flags = 4;
        reject(m, len, 0, "HELLO: reserved flags 0x4 set");
}
END_TEST

START_TEST(test_validate_welcome_bye_error) {
        static Buf b;
        struct dedup_msg_welcome *w = (void *) &b;
        struct dedup_msg_error *e = (void *) &b;

        memset(w, 0, sizeof *w);
        dedup_proto_init_header(&w->hdr, DEDUP_MSG_WELCOME, sizeof *w, 1);
        accept_msg(w, sizeof *w, 0);
        w->flags = 1;
        reject(w, sizeof *w, 0, "WELCOME: reserved flags 0x1 set");

        build_error(&b);
        accept_msg(e, sizeof *e, 0);
        reject(e, sizeof *e, 2, "ERROR: 2 fds attached, must be 0");
        e->error = 0;
        reject(e, sizeof *e, 0, "error 0 is not a positive errno");
        e->error = -EPERM;
        reject(e, sizeof *e, 0, "is not a positive errno");
        build_error(&b);
        memset(e->text, 'x', sizeof e->text);
        reject(e, sizeof *e, 0, "ERROR: text not NUL-terminated");
}
END_TEST

START_TEST(test_validate_region) {
        static Buf b;
        struct dedup_msg_region *m = (void *) &b;
        const size_t len = sizeof *m;

        build_region(&b);
        accept_msg(m, len, 2);
        reject(m, len, 0, "REGION: 0 fds attached, must be 2");
        reject(m, len, 1, "REGION: 1 fds attached, must be 2");
        reject(m, len, 3, "REGION: 3 fds attached, must be 2");

        m->size = 0;
        reject(m, len, 2, "size 0x0 not a positive page multiple");
        m->size = 4097;
        reject(m, len, 2, "size 0x1001 not a positive page multiple");

        build_region(&b);
        m->gpa = 0x100001;
        reject(m, len, 2, "must be page-aligned");
        build_region(&b);
        m->memfd_offset = 100;
        reject(m, len, 2, "must be page-aligned");
        build_region(&b);
        m->hva = 0x7f0000000010;
        reject(m, len, 2, "must be page-aligned");

        build_region(&b);
        m->hva = UINT64_MAX - 4095;
        reject(m, len, 2, "wraps");
        build_region(&b);
        m->memfd_offset = UINT64_MAX - 4095;
        reject(m, len, 2, "wraps");

        build_region(&b);
        m->flags = 0x80;
        reject(m, len, 2, "REGION: reserved flags 0x80 set");
}
END_TEST

START_TEST(test_validate_pool) {
        static Buf b;
        struct dedup_msg_pool *m = (void *) &b;
        const size_t len = sizeof *m;

        build_pool(&b);
        accept_msg(m, len, 1);
        reject(m, len, 0, "POOL: 0 fds attached, must be 1");
        reject(m, len, 2, "POOL: 2 fds attached, must be 1");

        m->pool_id = DEDUP_POOL_ZERO;
        reject(m, len, 1, "reserved for the zero overlay");
        build_pool(&b);
        m->size = 0;
        reject(m, len, 1, "POOL 7: size 0x0 not a positive page multiple");
        m->size = 12345;
        reject(m, len, 1, "not a positive page multiple");
        build_pool(&b);
        m->flags = 2;
        reject(m, len, 1, "POOL 7: reserved flags 0x2 set");
}
END_TEST

START_TEST(test_validate_remap) {
        static Buf b;
        struct dedup_msg_remap *m = (void *) &b;
        size_t len;

        len = build_remap(&b, 8, false);
        accept_msg(m, len, 0);
        reject(m, len, 1, "REMAP: 1 fds attached, must be 0");

        m->entries[3].npages = 0;
        reject(m, len, 0, "REMAP entry 3: npages 0 out of range 1..512");
        m->entries[3].npages = DEDUP_PROTO_MAX_RUN + 1;
        reject(m, len, 0, "REMAP entry 3: npages 513 out of range 1..512");
        m->entries[3].npages = DEDUP_PROTO_MAX_RUN;
        accept_msg(m, len, 0);

        build_remap(&b, 8, false);
        m->entries[2].offset += 8;
        reject(m, len, 0, "REMAP entry 2: offset 0x10008 not page-aligned");
        build_remap(&b, 8, false);
        m->entries[2].offset = UINT64_MAX & ~4095ull;
        reject(m, len, 0, "REMAP entry 2: offset");
        build_remap(&b, 8, false);
        m->entries[2].pool_offset += 1;
        reject(m, len, 0, "REMAP entry 2: pool_offset 0x2001 not page-aligned");
        build_remap(&b, 8, false);
        m->entries[2].pool_offset = UINT64_MAX & ~4095ull;
        reject(m, len, 0, "wraps");
        build_remap(&b, 8, false);
        m->entries[5].pool_offset = 4096; /* entry 5 is a zero overlay */
        reject(m, len, 0, "REMAP entry 5: zero overlay with pool_offset 0x1000");
        build_remap(&b, 8, false);
        m->entries[1].status = DEDUP_REMAP_ABORTED;
        reject(m, len, 0, "REMAP entry 1: status 1 invalid");
        build_remap(&b, 8, false);
        m->flags = 1;
        reject(m, len, 0, "REMAP: reserved flags 0x1 set");

        /* count vs. length */
        build_remap(&b, 8, false);
        m->count = 0;
        reject(m, len, 0, "REMAP: count 0 out of range 1..1024");
        m->count = DEDUP_PROTO_MAX_ENTRIES + 1;
        reject(m, len, 0, "count 1025 out of range");
        m->count = 7;
        reject(m, len, 0, "does not match count 7");
        m->count = 8;
        m->hdr.length = (uint32_t) (len - 8);
        reject(m, len - 8, 0, "does not match count 8");
        m->hdr.length = 20;
        reject(m, 20, 0, "shorter than");

        /* REMAP_REPLY: statuses allowed up to FAILED */
        len = build_remap(&b, 9, true);
        accept_msg(m, len, 0);
        m->entries[4].status = 3;
        reject(m, len, 0, "REMAP_REPLY entry 4: status 3 invalid");
}
END_TEST

/* MERGED_KEPT: REMAP's layout, pool_id 0 (the pool is named by the inode in
 * cookie), and only the last message may be empty. */
START_TEST(test_validate_merged_kept) {
        static Buf b;
        struct dedup_msg_remap *m = (void *) &b;
        size_t len = build_remap(&b, 6, false);

        m->hdr.type = DEDUP_MSG_MERGED_KEPT;
        for (uint32_t i = 0; i < m->count; i++)
                m->entries[i].pool_id = 0;
        accept_msg(m, len, 0);
        m->flags = DEDUP_KEPT_F_LAST;
        accept_msg(m, len, 0);
        m->flags = 2;
        reject(m, len, 0, "MERGED_KEPT: reserved flags 0x2 set");
        m->flags = 0;
        m->entries[3].pool_id = 2;
        reject(m, len, 0, "MERGED_KEPT entry 3: pool_id 2 set");
        m->entries[3].pool_id = 0;
        m->entries[3].status = 1;
        reject(m, len, 0, "MERGED_KEPT entry 3: status 1 invalid");

        len = dedup_msg_remap_size(0);
        m->count = 0;
        m->hdr.length = (uint32_t) len;
        reject(m, len, 0, "MERGED_KEPT: count 0 out of range 1..1024");
        m->flags = DEDUP_KEPT_F_LAST;
        accept_msg(m, len, 0);

        /* Found by the fuzzer: flags were read before the length check. */
        m->hdr.length = sizeof m->hdr;
        reject(m, sizeof m->hdr, 0, "MERGED_KEPT: length 16 shorter than 24");
}
END_TEST

START_TEST(test_validate_ranges) {
        static Buf b;
        struct dedup_msg_ranges *m = (void *) &b;
        size_t len;

        len = build_ranges(&b, DEDUP_MSG_UNMERGE, 4);
        accept_msg(m, len, 0);
        reject(m, len, 1, "UNMERGE: 1 fds attached");
        m->flags = DEDUP_RANGES_F_REPLY;
        reject(m, len, 0, "UNMERGE: reserved flags 0x1 set");
        m->flags = DEDUP_RANGES_F_KEPT;
        accept_msg(m, len, 0);

        len = build_ranges(&b, DEDUP_MSG_UNMERGED, 4);
        m->flags = DEDUP_RANGES_F_REPLY;
        accept_msg(m, len, 0);
        m->flags = DEDUP_RANGES_F_REPLY | DEDUP_RANGES_F_KEPT;
        accept_msg(m, len, 0);
        m->flags = 4;
        reject(m, len, 0, "UNMERGED: reserved flags 0x4 set");

        len = build_ranges(&b, DEDUP_MSG_WRITTEN, 4);
        m->flags = DEDUP_RANGES_F_REPLY;
        reject(m, len, 0, "WRITTEN: reserved flags 0x1 set");
        m->flags = DEDUP_RANGES_F_KEPT;
        reject(m, len, 0, "WRITTEN: reserved flags 0x2 set");

        len = build_ranges(&b, DEDUP_MSG_WRITTEN, 4);
        m->ranges[2].npages = 0;
        reject(m, len, 0, "WRITTEN range 2: npages 0 out of range 1..512");
        m->ranges[2].npages = 600;
        reject(m, len, 0, "WRITTEN range 2: npages 600 out of range");
        build_ranges(&b, DEDUP_MSG_WRITTEN, 4);
        m->ranges[1].offset = 4095;
        reject(m, len, 0, "WRITTEN range 1: offset 0xfff not page-aligned");

        len = build_ranges(&b, DEDUP_MSG_UNMERGED, 0);
        reject(m, len, 0, "count 0 out of range 1..1024");
        m->flags = DEDUP_RANGES_F_REPLY;
        reject(m, len, 0, "count 0 out of range");

        len = build_ranges(&b, DEDUP_MSG_UNMERGE, 3);
        m->count = 4;
        reject(m, len, 0, "does not match count 4");
}
END_TEST

/* ---- receive side ---- */

START_TEST(test_recv_truncated_and_oversized) {
        static Buf b, in;
        int sv[2], fds[2], memfd = new_memfd(4096);
        size_t nfds;
        int before;

        pair(sv);
        before = count_fds();

        /* Buffer smaller than the message: -EMSGSIZE, the fd closed. */
        build_pool(&b);
        ck_assert_int_eq(dedup_proto_send(sv[0], &b, &memfd, 1), 0);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, 16, fds, 2, &nfds, 0), -EMSGSIZE);
        ck_assert_int_eq(count_fds(), before);

        /* Larger than DEDUP_PROTO_MAX_MSG (raw send bypasses our checks). */
        memset(&b, 0, sizeof b);
        dedup_proto_init_header(&b.hdr, DEDUP_MSG_REMAP, DEDUP_PROTO_MAX_MSG + 100, 1);
        ck_assert_int_eq(send(sv[0], &b, DEDUP_PROTO_MAX_MSG + 100, 0), DEDUP_PROTO_MAX_MSG + 100);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, &nfds, 0), -EMSGSIZE);

        /* Short garbage arrives fine but does not validate. */
        ck_assert_int_eq(send(sv[0], "DDUP", 4, 0), 4);
        ssize_t n = dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, &nfds, 0);
        ck_assert_int_eq(n, 4);
        ck_assert_int_eq(nfds, 0);
        reject(&in, 4, 0, "shorter than");

        /* The sender refuses what it must not send. */
        b.hdr.length = DEDUP_PROTO_MAX_MSG + 1;
        ck_assert_int_eq(dedup_proto_send(sv[0], &b, NULL, 0), -EMSGSIZE);
        b.hdr.length = 4;
        ck_assert_int_eq(dedup_proto_send(sv[0], &b, NULL, 0), -EMSGSIZE);
        build_pool(&b);
        int three[3] = { memfd, memfd, memfd };
        ck_assert_int_eq(dedup_proto_send(sv[0], &b, three, 3), -EMSGSIZE);

        /* Nothing pending: EAGAIN on a non-blocking socket. */
        fcntl(sv[1], F_SETFL, O_NONBLOCK);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, &nfds, 0), -EAGAIN);

        /* EOF reads as 0. */
        close(sv[0]);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, &nfds, 0), 0);
        close(sv[1]);
        close(memfd);
}
END_TEST

static void send_raw_fds(int sock, const void *msg, size_t len, const int *fds, size_t nfds) {
        char control[CMSG_SPACE(sizeof(int) * 64)];
        struct iovec iov = { .iov_base = (void *) msg, .iov_len = len };
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control,
                             .msg_controllen = CMSG_SPACE(sizeof(int) * nfds) };
        struct cmsghdr *c = CMSG_FIRSTHDR(&mh);

        memset(control, 0, sizeof control);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
        memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
        ck_assert_int_eq(sendmsg(sock, &mh, 0), (ssize_t) len);
}

START_TEST(test_recv_excess_fds) {
        static Buf b, in;
        int sv[2], fds[2], many[40];
        int memfd = new_memfd(4096);
        size_t nfds;
        int before;

        for (size_t i = 0; i < 40; i++)
                many[i] = memfd;
        pair(sv);
        before = count_fds();

        /* Three fds where two fit: all closed, -EBADMSG. */
        build_region(&b);
        send_raw_fds(sv[0], &b, b.hdr.length, many, 3);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, &nfds, 0), -EBADMSG);
        ck_assert_int_eq(count_fds(), before);

        /* An fd where none is expected. */
        dedup_proto_init_header(&b.hdr, DEDUP_MSG_BYE, sizeof b.hdr, 1);
        send_raw_fds(sv[0], &b, b.hdr.length, many, 1);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, NULL, 0, &nfds, 0), -EBADMSG);
        ck_assert_int_eq(count_fds(), before);

        /* So many that the control buffer truncates (MSG_CTRUNC). */
        send_raw_fds(sv[0], &b, b.hdr.length, many, 40);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, &nfds, 0), -EBADMSG);
        ck_assert_int_eq(count_fds(), before);

        /* A valid-looking message with fewer fds than its type needs is
         * received, then refused by validation. */
        build_region(&b);
        send_raw_fds(sv[0], &b, b.hdr.length, many, 1);
        ssize_t n = dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, &nfds, 0);
        ck_assert_int_eq(n, sizeof(struct dedup_msg_region));
        ck_assert_int_eq(nfds, 1);
        reject(&in, (size_t) n, nfds, "REGION: 1 fds attached, must be 2");
        close(fds[0]);

        /* ret_nfds NULL: fds are not wanted, so they are closed. */
        build_pool(&b);
        send_raw_fds(sv[0], &b, b.hdr.length, many, 1);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, fds, 2, NULL, 0), b.hdr.length);
        ck_assert_int_eq(count_fds(), before);

        close(sv[0]);
        close(sv[1]);
        close(memfd);
}
END_TEST

/* ---- fd checks ---- */

START_TEST(test_region_fds) {
        int memfd = new_memfd(64 * 4096), uffd = new_uffd();
        const char *why = NULL;
        char tmpl[] = "/tmp/test-proto-XXXXXX";
        int regular, pfd[2];

        if (uffd < 0) {
                fprintf(stderr, "test_region_fds: userfaultfd unavailable, uffd checks skipped\n");
        } else {
                ck_assert_msg(dedup_proto_check_region_fds(memfd, uffd, 0, 64 * 4096, &why) == 0, "%s", why);
                ck_assert_int_eq(dedup_proto_check_region_fds(memfd, uffd, 4096, 63 * 4096, NULL), 0);
        }
        ck_assert_int_eq(dedup_proto_check_memfd(memfd, 0, 64 * 4096, NULL), 0);

        /* Region beyond the memfd's real size. */
        ck_assert_int_eq(dedup_proto_check_memfd(memfd, 4096, 64 * 4096, &why), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "outside the memfd's size"));
        ck_assert_int_eq(dedup_proto_check_memfd(memfd, UINT64_MAX & ~4095ull, 8192, &why), -EINVAL);
        ck_assert_int_eq(dedup_proto_check_memfd(memfd, 0, 0, &why), -EINVAL);
        ck_assert_int_eq(dedup_proto_check_memfd(memfd, 100, 4096, &why), -EINVAL);

        /* A regular file is not a memfd. */
        regular = mkstemp(tmpl);
        ck_assert_int_ge(regular, 0);
        unlink(tmpl);
        ck_assert_int_eq(ftruncate(regular, 64 * 4096), 0);
        ck_assert_int_eq(dedup_proto_check_memfd(regular, 0, 4096, &why), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "not a memfd"));

        /* Pipes are neither. */
        ck_assert_int_eq(pipe2(pfd, O_CLOEXEC), 0);
        ck_assert_int_eq(dedup_proto_check_memfd(pfd[0], 0, 4096, &why), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "not a memfd"));
        ck_assert_int_eq(dedup_proto_check_region_fds(memfd, pfd[0], 0, 4096, &why), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "not a userfaultfd"));
        /* A memfd where the uffd belongs. */
        ck_assert_int_eq(dedup_proto_check_region_fds(memfd, memfd, 0, 4096, &why), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "not a userfaultfd"));
        /* Swapped fds. */
        if (uffd >= 0) {
                ck_assert_int_eq(dedup_proto_check_region_fds(uffd, memfd, 0, 4096, &why), -EINVAL);
                ck_assert_ptr_nonnull(strstr(why, "not a memfd"));
        }
        /* Closed fds. */
        ck_assert_int_eq(dedup_proto_check_memfd(-1, 0, 4096, &why), -EBADF);
        ck_assert_int_lt(dedup_proto_check_region_fds(memfd, 999999, 0, 4096, &why), 0);

        /* hugetlbfs memfds cannot be remapped page by page. */
        int huge = memfd_create("test-huge", MFD_CLOEXEC | MFD_HUGETLB);
        if (huge >= 0) {
                if (ftruncate(huge, 2 << 20) == 0) {
                        ck_assert_int_eq(dedup_proto_check_memfd(huge, 0, 4096, &why), -EINVAL);
                        ck_assert_ptr_nonnull(strstr(why, "hugetlbfs"));
                }
                close(huge);
        }

        close(pfd[0]);
        close(pfd[1]);
        close(regular);
        close(memfd);
        if (uffd >= 0)
                close(uffd);
}
END_TEST

START_TEST(test_region_fds_received) {
        /* The daemon's view: check the fds as they arrive over the socket. */
        static Buf b, in;
        int memfd = new_memfd(32 * 4096), uffd = new_uffd(), sv[2], got[2];
        size_t ngot;
        const char *why;

        if (uffd < 0)
                return;
        pair(sv);
        build_region(&b);
        int wrong[2] = { uffd, memfd };
        ck_assert_int_eq(dedup_proto_send(sv[0], &b, wrong, 2), 0);
        ck_assert_int_eq(dedup_proto_recv(sv[1], &in, DEDUP_PROTO_MAX_MSG, got, 2, &ngot, 0), sizeof(struct dedup_msg_region));
        accept_msg(&in, sizeof(struct dedup_msg_region), ngot); /* validation cannot see types... */
        ck_assert_int_eq(dedup_proto_check_region_fds(got[0], got[1], 4096, 16 * 4096, &why), -EINVAL);
        ck_assert_ptr_nonnull(strstr(why, "not a memfd")); /* ...the fd check does */
        close(got[0]);
        close(got[1]);
        close(sv[0]);
        close(sv[1]);
        close(memfd);
        close(uffd);
}
END_TEST

START_TEST(test_names) {
        ck_assert_int_eq(dedup_proto_check_name("a"), 0);
        ck_assert_int_eq(dedup_proto_check_name("Vm_1.2:3-4"), 0);
        ck_assert_int_eq(dedup_proto_check_name(""), -EINVAL);
        ck_assert_int_eq(dedup_proto_check_name(NULL), -EINVAL);
        ck_assert_int_eq(dedup_proto_check_name("a b"), -EINVAL);
        char longname[80];
        memset(longname, 'x', sizeof longname);
        longname[63] = 0;
        ck_assert_int_eq(dedup_proto_check_name(longname), 0);
        longname[63] = 'x';
        longname[64] = 0;
        ck_assert_int_eq(dedup_proto_check_name(longname), -EINVAL);

        ck_assert_int_eq(dedup_proto_check_uuid("0B1E6A9C-3D5F-4A7E-9C2B-1F0E3D4C5B6A"), 0);
        ck_assert_int_eq(dedup_proto_check_uuid("0b1e6a9c3d5f4a7e9c2b1f0e3d4c5b6a"), -EINVAL);
        ck_assert_int_eq(dedup_proto_check_uuid("0b1e6a9c-3d5f-4a7e-9c2b-1f0e3d4c5b6a0"), -EINVAL);
        ck_assert_int_eq(dedup_proto_check_uuid(""), -EINVAL);
}
END_TEST

static Suite *proto_suite(void) {
        const CheckCase cases[] = {
                { "roundtrip", test_roundtrip_all_types },
                { "type-names", test_type_names },
                { "validate-header", test_validate_header },
                { "validate-hello", test_validate_hello },
                { "validate-welcome-bye-error", test_validate_welcome_bye_error },
                { "validate-region", test_validate_region },
                { "validate-pool", test_validate_pool },
                { "validate-remap", test_validate_remap },
                { "validate-merged-kept", test_validate_merged_kept },
                { "validate-ranges", test_validate_ranges },
                { "recv-truncated-oversized", test_recv_truncated_and_oversized },
                { "recv-excess-fds", test_recv_excess_fds },
                { "region-fds", test_region_fds },
                { "region-fds-received", test_region_fds_received },
                { "names", test_names },
        };

        return check_suite("proto", cases, ELEMENTSOF(cases), 0, NULL);
}

int main(void) {
        return check_run(proto_suite());
}
