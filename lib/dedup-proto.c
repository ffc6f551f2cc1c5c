/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * dedupd wire protocol: framing, fd passing and validation.
 *
 * Both ends treat the peer as untrusted input: dedup_proto_recv() never
 * leaks an fd (every fd that arrives is either handed to the caller or
 * closed), and dedup_proto_validate() checks every byte of a message that a
 * handler will look at, so handlers index arrays by count and trust the
 * ranges they read (page-aligned, non-wrapping, bounded). What validation
 * cannot know (which region and pool ids exist, region sizes) the handler
 * checks against its own state.
 *
 * Reasons are formatted into a per-thread scratch buffer: the only static
 * storage in this file; it holds no state between calls.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include "dedup-proto.h"
#include "dedup-util.h"

#ifndef HUGETLBFS_MAGIC
#define HUGETLBFS_MAGIC 0x958458f6
#endif

_Static_assert(sizeof(struct dedup_msg_header) == 16, "header layout");
_Static_assert(sizeof(struct dedup_msg_hello) == 128, "hello layout");
_Static_assert(sizeof(struct dedup_msg_welcome) == 24, "welcome layout");
_Static_assert(sizeof(struct dedup_msg_region) == 56, "region layout");
_Static_assert(sizeof(struct dedup_msg_pool) == 32, "pool layout");
_Static_assert(sizeof(struct dedup_remap_entry) == 40, "remap entry layout");
_Static_assert(sizeof(struct dedup_msg_remap) == 24, "remap layout");
_Static_assert(sizeof(struct dedup_range) == 16, "range layout");
_Static_assert(sizeof(struct dedup_msg_ranges) == 24, "ranges layout");
_Static_assert(sizeof(struct dedup_msg_error) == 148, "error layout");
_Static_assert(sizeof(struct dedup_msg_remap) + DEDUP_PROTO_MAX_ENTRIES * sizeof(struct dedup_remap_entry)
               <= DEDUP_PROTO_MAX_MSG, "largest batch fits a message");

#define WHY_MAX 192
static _Thread_local char why_buf[WHY_MAX];

__attribute__((format(printf, 2, 3)))
static int fail(const char **ret_why, const char *fmt, ...) {
        va_list ap;

        if (ret_why) {
                va_start(ap, fmt);
                vsnprintf(why_buf, sizeof why_buf, fmt, ap);
                va_end(ap);
                *ret_why = why_buf;
        }
        return -EBADMSG;
}

static const char *const type_names[_DEDUP_MSG_MAX] = {
        [DEDUP_MSG_HELLO] = "HELLO",
        [DEDUP_MSG_WELCOME] = "WELCOME",
        [DEDUP_MSG_REGION] = "REGION",
        [DEDUP_MSG_POOL] = "POOL",
        [DEDUP_MSG_REMAP] = "REMAP",
        [DEDUP_MSG_REMAP_REPLY] = "REMAP_REPLY",
        [DEDUP_MSG_UNMERGE] = "UNMERGE",
        [DEDUP_MSG_UNMERGED] = "UNMERGED",
        [DEDUP_MSG_WRITTEN] = "WRITTEN",
        [DEDUP_MSG_BYE] = "BYE",
        [DEDUP_MSG_ERROR] = "ERROR",
        [DEDUP_MSG_ZERO_KEPT] = "ZERO_KEPT",
        [DEDUP_MSG_MERGED_KEPT] = "MERGED_KEPT",
};

const char *dedup_msg_type_to_string(int type) {
        if (type <= 0 || type >= _DEDUP_MSG_MAX)
                return NULL;
        return type_names[type];
}

void dedup_proto_init_header(struct dedup_msg_header *hdr, enum dedup_msg_type type, uint32_t length,
                             uint32_t seq) {
        *hdr = (struct dedup_msg_header) {
                .magic = DEDUP_PROTO_MAGIC,
                .version = DEDUP_PROTO_VERSION,
                .type = (uint16_t) type,
                .length = length,
                .seq = seq,
        };
}

int dedup_proto_send(int sock, const void *msg, const int *fds, size_t nfds) {
        const struct dedup_msg_header *hdr = msg;
        union {
                struct cmsghdr cmsg;
                char buf[CMSG_SPACE(sizeof(int) * DEDUP_PROTO_MAX_FDS)];
        } control;
        struct iovec iov;
        struct msghdr mh = { .msg_iov = &iov, .msg_iovlen = 1 };
        ssize_t n;

        if (!msg || hdr->length < sizeof(*hdr) || hdr->length > DEDUP_PROTO_MAX_MSG)
                return -EMSGSIZE;
        if (nfds > DEDUP_PROTO_MAX_FDS || (nfds > 0 && !fds))
                return -EMSGSIZE;

        iov = (struct iovec) { .iov_base = (void *) msg, .iov_len = hdr->length };
        if (nfds > 0) {
                memset(&control, 0, sizeof control);
                mh.msg_control = &control;
                mh.msg_controllen = CMSG_SPACE(sizeof(int) * nfds);
                struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
                c->cmsg_level = SOL_SOCKET;
                c->cmsg_type = SCM_RIGHTS;
                c->cmsg_len = CMSG_LEN(sizeof(int) * nfds);
                memcpy(CMSG_DATA(c), fds, sizeof(int) * nfds);
        }

        do
                n = sendmsg(sock, &mh, MSG_NOSIGNAL);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;
        if ((size_t) n != hdr->length) /* cannot happen on SOCK_SEQPACKET */
                return -EIO;
        return 0;
}

/* Close every fd carried by the control messages of mh. */
static void close_cmsg_fds(struct msghdr *mh) {
        for (struct cmsghdr *c = CMSG_FIRSTHDR(mh); c; c = CMSG_NXTHDR(mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                for (size_t i = 0; i < n; i++) {
                        int fd;
                        memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                        safe_close(fd);
                }
        }
}

ssize_t dedup_proto_recv(int sock, void *buf, size_t size, int *fds, size_t max_fds, size_t *ret_nfds, int flags) {
        /* Room for more fds than we accept so that an excess is seen (and
         * closed) instead of being silently dropped by MSG_CTRUNC. */
        union {
                struct cmsghdr cmsg;
                char buf[CMSG_SPACE(sizeof(int) * 16)];
        } control;
        struct iovec iov = { .iov_base = buf, .iov_len = size };
        struct msghdr mh = {
                .msg_iov = &iov,
                .msg_iovlen = 1,
                .msg_control = &control,
                .msg_controllen = sizeof control,
        };
        size_t total = 0;
        ssize_t n;

        if (!buf || size == 0 || (max_fds > 0 && !fds))
                return -EINVAL;

        do
                n = recvmsg(sock, &mh, MSG_CMSG_CLOEXEC | flags);
        while (n < 0 && errno == EINTR);
        if (n < 0)
                return -errno;

        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c))
                if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS)
                        total += (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);

        if (mh.msg_flags & MSG_TRUNC) {
                close_cmsg_fds(&mh);
                return -EMSGSIZE;
        }
        if ((mh.msg_flags & MSG_CTRUNC) || total > max_fds) {
                close_cmsg_fds(&mh);
                return -EBADMSG;
        }

        size_t k = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
                if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                        continue;
                size_t m = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                memcpy(fds + k, CMSG_DATA(c), m * sizeof(int));
                k += m;
        }
        if (ret_nfds)
                *ret_nfds = k;
        else
                for (size_t i = 0; i < k; i++)
                        safe_close(fds[i]);
        return n;
}

/* ---- validation ---- */

static bool name_char_ok(char ch) {
        return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
               ch == '_' || ch == '.' || ch == ':' || ch == '-';
}

int dedup_proto_check_name(const char *name) {
        size_t n;

        if (!name)
                return -EINVAL;
        n = strnlen(name, 64);
        if (n < 1 || n > 63)
                return -EINVAL;
        for (size_t i = 0; i < n; i++)
                if (!name_char_ok(name[i]))
                        return -EINVAL;
        return 0;
}

static bool is_hex(char ch) {
        return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

int dedup_proto_check_uuid(const char *uuid) {
        if (!uuid)
                return -EINVAL;
        if (strnlen(uuid, 37) != 36)
                return -EINVAL;
        for (size_t i = 0; i < 36; i++) {
                bool dash = i == 8 || i == 13 || i == 18 || i == 23;
                if (dash ? uuid[i] != '-' : !is_hex(uuid[i]))
                        return -EINVAL;
        }
        return 0;
}

/* A fixed char field must hold a NUL and only zeros after it. Returns the
 * string length or -1. */
static ssize_t field_strlen(const char *f, size_t size) {
        size_t n = strnlen(f, size);

        if (n == size)
                return -1;
        for (size_t i = n; i < size; i++)
                if (f[i] != 0)
                        return -1;
        return (ssize_t) n;
}

static bool wraps(uint64_t base, uint64_t size) {
        return base + size < base;
}

static int check_run(const char **ret_why, const char *what, uint32_t i, uint32_t npages, uint64_t offset) {
        if (npages < 1 || npages > DEDUP_PROTO_MAX_RUN)
                return fail(ret_why, "%s %" PRIu32 ": npages %" PRIu32 " out of range 1..%u", what, i, npages,
                            DEDUP_PROTO_MAX_RUN);
        if (!DEDUP_PAGE_ALIGNED(offset))
                return fail(ret_why, "%s %" PRIu32 ": offset 0x%" PRIx64 " not page-aligned", what, i, offset);
        if (wraps(offset, (uint64_t) npages * DEDUP_PROTO_PAGE_SIZE))
                return fail(ret_why, "%s %" PRIu32 ": offset 0x%" PRIx64 " + %" PRIu32 " pages wraps", what, i,
                            offset, npages);
        return 0;
}

static int validate_remap(const struct dedup_msg_remap *m, size_t len, const char **ret_why) {
        const char *tn = dedup_msg_type_to_string(m->hdr.type);
        bool reply = m->hdr.type == DEDUP_MSG_REMAP_REPLY, kept = m->hdr.type == DEDUP_MSG_MERGED_KEPT;
        uint32_t min;
        char what[32];
        int r;

        if (len < sizeof *m)
                return fail(ret_why, "%s: length %zu shorter than %zu", tn, len, sizeof *m);
        min = kept && m->flags == DEDUP_KEPT_F_LAST ? 0 : 1;
        if (m->flags & ~(kept ? DEDUP_KEPT_F_LAST : 0))
                return fail(ret_why, "%s: reserved flags 0x%" PRIx32 " set", tn, m->flags);
        if (m->count < min || m->count > DEDUP_PROTO_MAX_ENTRIES)
                return fail(ret_why, "%s: count %" PRIu32 " out of range %" PRIu32 "..%u", tn, m->count, min,
                            DEDUP_PROTO_MAX_ENTRIES);
        if (len != dedup_msg_remap_size(m->count))
                return fail(ret_why, "%s: length %zu does not match count %" PRIu32 " (%zu)", tn, len, m->count,
                            dedup_msg_remap_size(m->count));

        snprintf(what, sizeof what, "%s entry", tn);
        for (uint32_t i = 0; i < m->count; i++) {
                const struct dedup_remap_entry *e = &m->entries[i];

                r = check_run(ret_why, what, i, e->npages, e->offset);
                if (r < 0)
                        return r;
                if (kept && e->pool_id != 0)
                        return fail(ret_why, "%s %" PRIu32 ": pool_id %" PRIu32 " set", what, i, e->pool_id);
                if (e->pool_id == DEDUP_POOL_ZERO) {
                        if (e->pool_offset != 0)
                                return fail(ret_why, "%s %" PRIu32 ": zero overlay with pool_offset 0x%" PRIx64,
                                            what, i, e->pool_offset);
                } else {
                        if (!DEDUP_PAGE_ALIGNED(e->pool_offset))
                                return fail(ret_why, "%s %" PRIu32 ": pool_offset 0x%" PRIx64 " not page-aligned",
                                            what, i, e->pool_offset);
                        if (wraps(e->pool_offset, (uint64_t) e->npages * DEDUP_PROTO_PAGE_SIZE))
                                return fail(ret_why, "%s %" PRIu32 ": pool_offset 0x%" PRIx64 " + %" PRIu32
                                            " pages wraps", what, i, e->pool_offset, e->npages);
                }
                if (reply ? e->status >= _DEDUP_REMAP_STATUS_MAX : e->status != 0)
                        return fail(ret_why, "%s %" PRIu32 ": status %" PRIu32 " invalid", what, i, e->status);
        }
        return 0;
}

static int validate_ranges(const struct dedup_msg_ranges *m, size_t len, const char **ret_why) {
        const char *tn = dedup_msg_type_to_string(m->hdr.type);
        char what[32];
        uint32_t allowed = m->hdr.type == DEDUP_MSG_UNMERGED ? DEDUP_RANGES_F_REPLY | DEDUP_RANGES_F_KEPT
                           : m->hdr.type == DEDUP_MSG_UNMERGE ? DEDUP_RANGES_F_KEPT
                                                               : 0;
        int r;

        if (len < sizeof *m)
                return fail(ret_why, "%s: length %zu shorter than %zu", tn, len, sizeof *m);
        if (m->flags & ~allowed)
                return fail(ret_why, "%s: reserved flags 0x%" PRIx32 " set", tn, m->flags & ~allowed);
        if (m->count < 1 || m->count > DEDUP_PROTO_MAX_ENTRIES)
                return fail(ret_why, "%s: count %" PRIu32 " out of range 1..%u", tn, m->count,
                            DEDUP_PROTO_MAX_ENTRIES);
        if (len != dedup_msg_ranges_size(m->count))
                return fail(ret_why, "%s: length %zu does not match count %" PRIu32 " (%zu)", tn, len, m->count,
                            dedup_msg_ranges_size(m->count));

        snprintf(what, sizeof what, "%s range", tn);
        for (uint32_t i = 0; i < m->count; i++) {
                r = check_run(ret_why, what, i, m->ranges[i].npages, m->ranges[i].offset);
                if (r < 0)
                        return r;
        }
        return 0;
}

static const size_t fixed_size[_DEDUP_MSG_MAX] = {
        [DEDUP_MSG_HELLO] = sizeof(struct dedup_msg_hello),
        [DEDUP_MSG_WELCOME] = sizeof(struct dedup_msg_welcome),
        [DEDUP_MSG_REGION] = sizeof(struct dedup_msg_region),
        [DEDUP_MSG_POOL] = sizeof(struct dedup_msg_pool),
        [DEDUP_MSG_BYE] = sizeof(struct dedup_msg_header),
        [DEDUP_MSG_ERROR] = sizeof(struct dedup_msg_error),
        /* 0: variable length (batches) */
};

static const uint8_t fds_needed[_DEDUP_MSG_MAX] = {
        [DEDUP_MSG_REGION] = 2,
        [DEDUP_MSG_POOL] = 1,
};

int dedup_proto_validate(const void *buf, size_t len, size_t nfds, const char **ret_why) {
        struct dedup_msg_header hdr;
        const char *tn;

        if (!buf)
                return fail(ret_why, "no message");
        if (len < sizeof hdr)
                return fail(ret_why, "message of %zu bytes shorter than the %zu-byte header", len, sizeof hdr);
        if (len > DEDUP_PROTO_MAX_MSG)
                return fail(ret_why, "message of %zu bytes longer than %u", len, DEDUP_PROTO_MAX_MSG);
        /* Every struct is at most 8-byte aligned; a misaligned buffer is a
         * caller bug, not peer input, but never read through it. */
        if ((uintptr_t) buf % _Alignof(struct dedup_remap_entry) != 0)
                return fail(ret_why, "message buffer misaligned");
        memcpy(&hdr, buf, sizeof hdr);

        if (hdr.magic != DEDUP_PROTO_MAGIC)
                return fail(ret_why, "bad magic 0x%08" PRIx32, hdr.magic);
        if (hdr.version != DEDUP_PROTO_VERSION) {
                (void) fail(ret_why, "protocol version %u not supported (want %u)", hdr.version,
                            DEDUP_PROTO_VERSION);
                return -EPROTONOSUPPORT;
        }
        tn = dedup_msg_type_to_string(hdr.type);
        if (!tn)
                return fail(ret_why, "unknown message type %u", hdr.type);
        if (hdr.length != len)
                return fail(ret_why, "%s: header length %" PRIu32 " but %zu bytes received", tn, hdr.length, len);
        if (fixed_size[hdr.type] != 0 && len != fixed_size[hdr.type])
                return fail(ret_why, "%s: length %zu, must be %zu", tn, len, fixed_size[hdr.type]);
        if (nfds != fds_needed[hdr.type])
                return fail(ret_why, "%s: %zu fds attached, must be %u", tn, nfds, fds_needed[hdr.type]);

        switch (hdr.type) {
        case DEDUP_MSG_HELLO: {
                const struct dedup_msg_hello *m = buf;
                ssize_t n;

                n = field_strlen(m->name, sizeof m->name);
                if (n < 0)
                        return fail(ret_why, "HELLO: name not NUL-terminated and zero-filled");
                if (dedup_proto_check_name(m->name) < 0)
                        return fail(ret_why, "HELLO: name '%s' invalid: need 1..63 of [A-Za-z0-9_.:-]", m->name);
                n = field_strlen(m->uuid, sizeof m->uuid);
                if (n < 0)
                        return fail(ret_why, "HELLO: uuid not NUL-terminated and zero-filled");
                if (n != 0 && dedup_proto_check_uuid(m->uuid) < 0)
                        return fail(ret_why, "HELLO: uuid '%s' not in canonical 8-4-4-4-12 form", m->uuid);
                for (size_t i = 0; i < sizeof m->pad; i++)
                        if (m->pad[i] != 0)
                                return fail(ret_why, "HELLO: pad byte %zu not zero", i);
                if (m->pid == 0 || m->pid > INT_MAX)
                        return fail(ret_why, "HELLO: pid %" PRIu32 " invalid", m->pid);
                if (m->flags != 0)
                        return fail(ret_why, "HELLO: reserved flags 0x%" PRIx32 " set", m->flags);
                return 0;
        }
        case DEDUP_MSG_WELCOME: {
                const struct dedup_msg_welcome *m = buf;
                if (m->flags != 0)
                        return fail(ret_why, "WELCOME: reserved flags 0x%" PRIx32 " set", m->flags);
                return 0;
        }
        case DEDUP_MSG_REGION: {
                const struct dedup_msg_region *m = buf;
                if (m->flags != 0)
                        return fail(ret_why, "REGION: reserved flags 0x%" PRIx32 " set", m->flags);
                if (m->size == 0 || !DEDUP_PAGE_ALIGNED(m->size))
                        return fail(ret_why, "REGION %" PRIu32 ": size 0x%" PRIx64 " not a positive page multiple",
                                    m->region_id, m->size);
                if (!DEDUP_PAGE_ALIGNED(m->gpa) || !DEDUP_PAGE_ALIGNED(m->memfd_offset) ||
                    !DEDUP_PAGE_ALIGNED(m->hva))
                        return fail(ret_why, "REGION %" PRIu32 ": gpa 0x%" PRIx64 ", memfd_offset 0x%" PRIx64
                                    ", hva 0x%" PRIx64 " must be page-aligned", m->region_id, m->gpa,
                                    m->memfd_offset, m->hva);
                if (wraps(m->gpa, m->size) || wraps(m->memfd_offset, m->size) || wraps(m->hva, m->size) ||
                    m->memfd_offset + m->size > (uint64_t) INT64_MAX)
                        return fail(ret_why, "REGION %" PRIu32 ": range of size 0x%" PRIx64 " wraps",
                                    m->region_id, m->size);
                return 0;
        }
        case DEDUP_MSG_POOL: {
                const struct dedup_msg_pool *m = buf;
                if (m->pool_id == DEDUP_POOL_ZERO)
                        return fail(ret_why, "POOL: pool_id 0x%" PRIx32 " is reserved for the zero overlay",
                                    m->pool_id);
                if (m->flags != 0)
                        return fail(ret_why, "POOL %" PRIu32 ": reserved flags 0x%" PRIx32 " set", m->pool_id,
                                    m->flags);
                if (m->size == 0 || !DEDUP_PAGE_ALIGNED(m->size) || m->size > (uint64_t) INT64_MAX)
                        return fail(ret_why, "POOL %" PRIu32 ": size 0x%" PRIx64 " not a positive page multiple",
                                    m->pool_id, m->size);
                return 0;
        }
        case DEDUP_MSG_REMAP:
        case DEDUP_MSG_REMAP_REPLY:
        case DEDUP_MSG_MERGED_KEPT:
                return validate_remap(buf, len, ret_why);
        case DEDUP_MSG_UNMERGE:
        case DEDUP_MSG_UNMERGED:
        case DEDUP_MSG_WRITTEN:
        case DEDUP_MSG_ZERO_KEPT:
                return validate_ranges(buf, len, ret_why);
        case DEDUP_MSG_BYE:
                return 0;
        case DEDUP_MSG_ERROR: {
                const struct dedup_msg_error *m = buf;
                if (m->error <= 0 || m->error >= 4096)
                        return fail(ret_why, "ERROR: error %" PRId32 " is not a positive errno", m->error);
                if (strnlen(m->text, sizeof m->text) == sizeof m->text)
                        return fail(ret_why, "ERROR: text not NUL-terminated");
                return 0;
        }
        }
        return fail(ret_why, "unknown message type %u", hdr.type); /* not reached */
}

/* ---- fd checks ---- */

static int fd_link(int fd, char *buf, size_t size) {
        char path[64];
        ssize_t n;

        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        n = readlink(path, buf, size - 1);
        if (n < 0)
                return -errno;
        buf[n] = 0;
        return 0;
}

static int fd_fail(const char **ret_why, int error, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int fd_fail(const char **ret_why, int error, const char *fmt, ...) {
        va_list ap;

        if (ret_why) {
                va_start(ap, fmt);
                vsnprintf(why_buf, sizeof why_buf, fmt, ap);
                va_end(ap);
                *ret_why = why_buf;
        }
        return error;
}

int dedup_proto_check_memfd(int memfd, uint64_t memfd_offset, uint64_t size, const char **ret_why) {
        char link[PATH_MAX];
        struct stat st;
        struct statfs sfs;
        int r;

        if (memfd < 0)
                return fd_fail(ret_why, -EBADF, "memfd %d invalid", memfd);
        r = fd_link(memfd, link, sizeof link);
        if (r < 0)
                return fd_fail(ret_why, r, "memfd %d: cannot read its /proc/self/fd link: %s", memfd, strerror(-r));
        if (strncmp(link, "/memfd:", 7) != 0)
                return fd_fail(ret_why, -EINVAL, "fd %d is '%s', not a memfd", memfd, link);
        if (fstat(memfd, &st) < 0)
                return fd_fail(ret_why, -errno, "memfd %d: fstat failed: %m", memfd);
        if (!S_ISREG(st.st_mode))
                return fd_fail(ret_why, -EINVAL, "memfd %d is not a regular file", memfd);
        if (fstatfs(memfd, &sfs) < 0)
                return fd_fail(ret_why, -errno, "memfd %d: fstatfs failed: %m", memfd);
        if ((unsigned long) sfs.f_type == (unsigned long) HUGETLBFS_MAGIC)
                return fd_fail(ret_why, -EINVAL, "memfd %d is on hugetlbfs, not supported", memfd);
        if (size == 0 || !DEDUP_PAGE_ALIGNED(size) || !DEDUP_PAGE_ALIGNED(memfd_offset))
                return fd_fail(ret_why, -EINVAL, "memfd range 0x%" PRIx64 "+0x%" PRIx64 " not page-aligned",
                               memfd_offset, size);
        if (wraps(memfd_offset, size) || memfd_offset + size > (uint64_t) st.st_size)
                return fd_fail(ret_why, -EINVAL, "memfd range 0x%" PRIx64 "+0x%" PRIx64
                               " outside the memfd's size 0x%" PRIx64, memfd_offset, size, (uint64_t) st.st_size);
        return 0;
}

int dedup_proto_check_region_fds(int memfd, int uffd, uint64_t memfd_offset, uint64_t size, const char **ret_why) {
        char link[PATH_MAX];
        int r;

        r = dedup_proto_check_memfd(memfd, memfd_offset, size, ret_why);
        if (r < 0)
                return r;
        if (uffd < 0)
                return fd_fail(ret_why, -EBADF, "uffd %d invalid", uffd);
        r = fd_link(uffd, link, sizeof link);
        if (r < 0)
                return fd_fail(ret_why, r, "uffd %d: cannot read its /proc/self/fd link: %s", uffd, strerror(-r));
        if (strcmp(link, "anon_inode:[userfaultfd]") != 0)
                return fd_fail(ret_why, -EINVAL, "fd %d is '%s', not a userfaultfd", uffd, link);
        return 0;
}
