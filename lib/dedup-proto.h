/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The dedupd wire protocol between the daemon and a VMM's agent.
 *
 * Transport: one AF_UNIX SOCK_SEQPACKET connection per VMM, one message per
 * packet, structs in native byte order and layout (both ends run on the same
 * host), file descriptors passed with SCM_RIGHTS. Every message starts with
 * struct dedup_msg_header; hdr.length is the length of the whole packet.
 *
 * Conversation:
 *
 *   agent → daemon   HELLO (name, uuid, pid)                 no fds
 *   daemon → agent   WELCOME (vm id)  or  ERROR (errno, text), then close
 *   agent → daemon   REGION per RAM block                    fds [memfd, uffd]
 *   daemon → agent   POOL per pool the VM may map            fd  [pool, O_RDONLY]
 *   daemon → agent   REMAP batch  → agent answers REMAP_REPLY (same entries,
 *                                    same order, status filled)
 *   daemon → agent   UNMERGE batch → agent answers UNMERGED with
 *                                    DEDUP_RANGES_F_REPLY
 *   agent → daemon   UNMERGED (copy-on-write break by a guest write) and
 *                    WRITTEN (a write hit a page the daemon had protected)
 *   either           BYE, then close
 *
 * Back after a daemon restart, an agent sends after its REGIONs what it
 * still has merged: ZERO_KEPT (zero overlays) and MERGED_KEPT (pages mapped
 * from the previous daemon's pools, which the new one got back from
 * systemd's fd store). The daemon answers pages it cannot take with an
 * UNMERGE flagged DEDUP_RANGES_F_KEPT.
 *
 * Sequence numbers: each side numbers the messages it originates, from 1.
 * An answer (WELCOME or ERROR to HELLO, REMAP_REPLY, the UNMERGED answering
 * an UNMERGE) carries the seq of the message it answers. seq is never
 * validated: it only pairs answers with requests.
 *
 * Who punches: on DEDUP_REMAP_DONE the *agent* has already punched the run
 * out of the memfd (fallocate PUNCH_HOLE|KEEP_SIZE), after mapping the pool
 * and write-protecting it. The daemon must not punch guest memfds itself: a
 * guest write may un-merge the page (agent pwrite()s it back into the memfd)
 * before the daemon reads the reply, and a late punch would erase it.
 *
 * Pools: a POOL fd must be a memfd sealed with F_SEAL_SHRINK (a shrinking
 * pool would SIGBUS the VMM). A pool may grow: the agent fstat()s the fd
 * when a REMAP reaches past the size it knows. Sending POOL again for a
 * known pool_id replaces the fd.
 *
 * All reserved fields, flags and padding must be zero; strings are
 * NUL-terminated and zero-filled after the NUL. dedup_proto_validate()
 * enforces all of it; a receiver drops the connection on any failure.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define DEDUP_PROTO_MAGIC 0x50554444u   /* "DDUP" */
#define DEDUP_PROTO_VERSION 1
#define DEDUP_PROTO_MAX_MSG 65536
#define DEDUP_PROTO_MAX_ENTRIES 1024    /* entries per batch message */
#define DEDUP_PROTO_MAX_RUN 512         /* pages per run entry */
#define DEDUP_PROTO_MAX_FDS 2           /* fds per message (REGION) */
#define DEDUP_PROTO_PAGE_SIZE 4096u
#define DEDUP_POOL_ZERO UINT32_MAX      /* remap entry onto an anonymous zero overlay */

enum dedup_msg_type {
        DEDUP_MSG_HELLO = 1,
        DEDUP_MSG_WELCOME,
        DEDUP_MSG_REGION,
        DEDUP_MSG_POOL,
        DEDUP_MSG_REMAP,
        DEDUP_MSG_REMAP_REPLY,
        DEDUP_MSG_UNMERGE,
        DEDUP_MSG_UNMERGED,
        DEDUP_MSG_WRITTEN,
        DEDUP_MSG_BYE,
        DEDUP_MSG_ERROR,
        DEDUP_MSG_ZERO_KEPT,
        DEDUP_MSG_MERGED_KEPT,
        _DEDUP_MSG_MAX,
};

struct dedup_msg_header {
        uint32_t magic;         /* DEDUP_PROTO_MAGIC */
        uint16_t version;       /* DEDUP_PROTO_VERSION */
        uint16_t type;          /* enum dedup_msg_type */
        uint32_t length;        /* whole message, header included */
        uint32_t seq;           /* see above */
};

/* agent → daemon, no fds. name: 1..63 bytes of [A-Za-z0-9_.:-]; uuid: ""
 * or canonical 8-4-4-4-12 hex. flags: none defined. */
struct dedup_msg_hello {
        struct dedup_msg_header hdr;
        char name[64];
        char uuid[37];
        uint8_t pad[3];
        uint32_t pid;
        uint32_t flags;
};

/* daemon → agent, no fds; seq = the HELLO's. */
struct dedup_msg_welcome {
        struct dedup_msg_header hdr;
        uint32_t vm_id;
        uint32_t flags;
};

/* agent → daemon, fds [memfd, uffd]. gpa, size (> 0), memfd_offset and hva
 * page-aligned; none of the ranges wraps around. */
struct dedup_msg_region {
        struct dedup_msg_header hdr;
        uint32_t region_id;
        uint32_t flags;
        uint64_t gpa, size, memfd_offset, hva;
};

/* daemon → agent, fd [read-only pool memfd]. pool_id != DEDUP_POOL_ZERO,
 * size page-aligned and > 0. */
struct dedup_msg_pool {
        struct dedup_msg_header hdr;
        uint32_t pool_id;
        uint32_t flags;
        uint64_t size;
};

/* One run of npages (1..DEDUP_PROTO_MAX_RUN) guest pages at offset (bytes,
 * in the region) to be mapped from pool_id at pool_offset (bytes; 0 for
 * DEDUP_POOL_ZERO). status is 0 in REMAP and filled in REMAP_REPLY. cookie
 * is the daemon's, echoed untouched. */
struct dedup_remap_entry {
        uint32_t region_id;
        uint32_t pool_id;
        uint64_t offset;
        uint64_t pool_offset;
        uint32_t npages;
        uint32_t status;
        uint64_t cookie;
};

enum {
        DEDUP_REMAP_DONE = 0,   /* mapped from the pool, write-protected, memfd run punched */
        DEDUP_REMAP_ABORTED = 1,/* a write reached the run after the daemon protected it; nothing changed */
        DEDUP_REMAP_FAILED = 2, /* mmap/ioctl failed or page unusable; original mapping in place */
        _DEDUP_REMAP_STATUS_MAX,
};

/* REMAP (daemon → agent) and REMAP_REPLY (agent → daemon: same entries in
 * the same order, status filled, seq = the REMAP's). 1..MAX_ENTRIES entries.
 *
 * MERGED_KEPT (agent → daemon) uses the same layout: each entry a run of
 * guest pages still mapped from consecutive pages of a pool of the previous
 * daemon, named by its inode number in cookie (st_ino of the pool fd; the
 * new daemon's pool ids mean nothing to the agent yet); pool_id and status
 * are 0. The agent sends 0..MAX_ENTRIES entries per message and flags the
 * last message DEDUP_KEPT_F_LAST (possibly with no entry): until then the
 * daemon must not punch any page of the pools it got back. */
#define DEDUP_KEPT_F_LAST 0x1u

struct dedup_msg_remap {
        struct dedup_msg_header hdr;
        uint32_t count;
        uint32_t flags;
        struct dedup_remap_entry entries[];
};

struct dedup_range {
        uint32_t region_id;
        uint32_t npages;        /* 1..DEDUP_PROTO_MAX_RUN */
        uint64_t offset;        /* bytes, in the region, page-aligned */
};

/* Set on the UNMERGED that answers an UNMERGE: seq = the UNMERGE's, and the
 * ranges are the UNMERGE's, same count and order; every page in them is
 * now backed by the memfd again (or was not merged). Without the flag an
 * UNMERGED reports copy-on-write breaks by guest writes. */
#define DEDUP_RANGES_F_REPLY 0x1u
/* On an UNMERGE: pages of a MERGED_KEPT the daemon did not take; the agent
 * copies them back into the memfd and echoes the flag on its reply. */
#define DEDUP_RANGES_F_KEPT 0x2u

/* UNMERGE (daemon → agent), UNMERGED, WRITTEN and ZERO_KEPT (agent →
 * daemon). 1..MAX_ENTRIES ranges. ZERO_KEPT follows an agent's REGIONs when
 * it comes back to a (new) daemon: pages it still has merged onto zero
 * overlays and keeps so, their memfd pages holes; the daemon takes them as
 * zero pages. */
struct dedup_msg_ranges {
        struct dedup_msg_header hdr;
        uint32_t count;
        uint32_t flags;
        struct dedup_range ranges[];
};

/* Either direction, no fds; error is a positive errno, text a reason. */
struct dedup_msg_error {
        struct dedup_msg_header hdr;
        int32_t error;
        char text[128];
};

/* BYE is a bare struct dedup_msg_header. */

static inline size_t dedup_msg_remap_size(uint32_t count) {
        return sizeof(struct dedup_msg_remap) + (size_t) count * sizeof(struct dedup_remap_entry);
}
static inline size_t dedup_msg_ranges_size(uint32_t count) {
        return sizeof(struct dedup_msg_ranges) + (size_t) count * sizeof(struct dedup_range);
}

const char *dedup_msg_type_to_string(int type);

/* Fill magic, version, type, length and seq. */
void dedup_proto_init_header(struct dedup_msg_header *hdr, enum dedup_msg_type type,
                             uint32_t length, uint32_t seq);

/* Send one message (hdr.length bytes) with nfds (≤ DEDUP_PROTO_MAX_FDS)
 * fds attached. MSG_NOSIGNAL; blocks unless the socket is O_NONBLOCK.
 * 0, -EAGAIN, -EPIPE, -EMSGSIZE (bad length or too many fds), ... */
int dedup_proto_send(int sock, const void *msg, const int *fds, size_t nfds);

/* Receive one message into buf (size should be DEDUP_PROTO_MAX_MSG) and up
 * to max_fds fds (O_CLOEXEC). Returns the message length, 0 at EOF (a
 * zero-length packet reads as EOF too), or: -EMSGSIZE if the message did
 * not fit, -EBADMSG if the fds were truncated by the kernel or more than
 * max_fds came, -EAGAIN, -ECONNRESET... On any error every fd that arrived
 * is closed; on success *ret_nfds is set and the caller owns fds[0..n).
 * flags: more recvmsg() flags, such as MSG_DONTWAIT on a blocking socket. */
ssize_t dedup_proto_recv(int sock, void *buf, size_t size, int *fds, size_t max_fds, size_t *ret_nfds, int flags);

/* Fully validate a received message of len bytes with nfds fds attached.
 * 0 if good; -EBADMSG (or -EPROTONOSUPPORT for another version) with
 * *ret_why set to a human-readable reason, e.g. "REMAP entry 3: npages 0
 * out of range 1..512". The reason lives in a per-thread buffer, valid
 * until the next call from the same thread. ret_why may be NULL. */
int dedup_proto_validate(const void *buf, size_t len, size_t nfds, const char **ret_why);

/* Check the fds of a REGION: memfd is a regular shmem memfd ("/memfd:..."
 * in /proc/self/fd, not hugetlbfs) and [memfd_offset, +size) lies inside
 * its current size; uffd is a userfaultfd. 0 or -EINVAL/-EBADF with
 * *ret_why (same lifetime as above). */
int dedup_proto_check_region_fds(int memfd, int uffd, uint64_t memfd_offset, uint64_t size,
                                 const char **ret_why);

/* The memfd half of the above. */
int dedup_proto_check_memfd(int memfd, uint64_t memfd_offset, uint64_t size, const char **ret_why);

/* Name and uuid rules of HELLO, for callers that build one. */
int dedup_proto_check_name(const char *name);
int dedup_proto_check_uuid(const char *uuid);
