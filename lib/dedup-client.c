/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libdedup agent: the part of dedupd that lives inside the VMM.
 *
 * DOC: Overview
 *
 * The agent owns one synchronous userfaultfd (WP mode) over every exported
 * region, an async one (WP_ASYNC) over the merged pages, and a
 * SOCK_SEQPACKET connection to dedupd. The daemon holds a dup of the
 * synchronous uffd and write-protects pages it wants to merge; the agent does
 * everything that needs to happen inside the VMM's address space: map pool
 * pages over guest RAM (REMAP), map the memfd back (UNMERGE and guest
 * writes), and answer every write fault.
 *
 * One thread, one poll loop, one lock (c->lock, held while handling events,
 * never while sleeping in poll). Because faults and remaps are handled by the
 * same thread in order, no write can slip between a check and the mapping
 * change that depends on it, except in the window between mmap and
 * protect described at remap_entry(), which is closed by checking the run
 * again afterwards.
 *
 * Page states, per region page (bitmaps r->merged and r->detached):
 *
 *   plain     MAP_SHARED from the memfd at its own offset (the VMM's
 *             original mapping or one we restored). Registered on the uffd;
 *             the daemon may protect it at any time.
 *   merged    MAP_PRIVATE from a pool page or the anonymous zero overlay,
 *             write-protected by us, memfd offset punched. The memfd does
 *             not hold the data: only the mapping does. Normally on the
 *             async uffd (bit r->async): a write waits for nobody, the
 *             kernel copies the page into an anonymous one in the writing
 *             thread, and a sweep later copies that into the memfd and maps
 *             the memfd back (see sweep_region()). While being put back
 *             (freeze()) they are on the synchronous uffd instead: a write
 *             faults and waits until rehome() has mapped the memfd back.
 *   detached  MAP_PRIVATE but *not* protected: a fallback when we could not
 *             map the memfd back (VMA limit, memory). The data is correct in
 *             the private mapping; the memfd copy is stale, so such pages are
 *             never remapped again (REMAP answers FAILED).
 *
 * Invariants:
 *   - Guest memory always reads what the guest last wrote. A mapping change
 *     happens only while the pages are write-protected (faulting writers
 *     wait for us) or was verified afterwards (window check).
 *   - No guest thread ever waits on the daemon: every fault is answered by
 *     this thread from local state; the daemon only ever receives news.
 *     A write to a merged page waits for no one at all.
 *   - Fail-safe: on EOF, any socket error, an ERROR/BYE, or any message that
 *     fails validation, the agent unprotects and unregisters all regions,
 *     closes the socket and from then on only answers stray faults with a
 *     wake. Merged pages stay mapped; later writes are ordinary private COW.
 *   - Reconnect: unless the daemon sent ERROR or garbage, the agent then
 *     tries the socket again (250 ms, doubling to 5 s). Once a daemon
 *     answers HELLO, every private page is protected again and looked at
 *     (rehome_region()): zero overlays and pool pages the guest did not
 *     write since stay merged and are reported after the REGIONs
 *     (ZERO_KEPT, MERGED_KEPT), so the new daemon, which got its pools back
 *     from systemd's fd store, keeps the savings without merging again.
 *     Everything else (written, detached) is copied back into the memfd
 *     first, and so are kept pages the daemon answers with an UNMERGE
 *     (a daemon without the fd store does so for every pool page).
 *   - The library prints nothing and never exits; errors are returned.
 */

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include "dedup-client-internal.h"
#include "dedup-compat.h"
#include "dedup-proto.h"
#include "dedup-util.h"
#include "dedup.h"

#ifndef PM_SWAP
#define PM_SWAP (UINT64_C(1) << 62)
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
/* Bits 0-54 of a pagemap entry: the pfn of a present page, or for a swap
 * entry its type (bits 0-4) and offset. Only visible with CAP_SYS_ADMIN. */
#define PM_FRAME_MASK ((UINT64_C(1) << 55) - 1)
#define PM_SWAP_TYPE_MASK 0x1fu
/* A uffd-wp pte marker (a protected pte with nothing mapped) shows in
 * pagemap as a swap entry of type SWP_PTE_MARKER, which is the highest
 * 5-bit type (32 - SWP_PTE_MARKER_NUM) on every kernel with markers. */
#define PM_SWAP_TYPE_PTE_MARKER 31u
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(0xAA, 0x00)
#endif

#define PAGE DEDUP_PAGE_SIZE
/* Long enough for systemd to start a socket-activated dedupd on a busy host. */
#define HANDSHAKE_TIMEOUT_MS 30000
/* Queued outgoing messages beyond this mean the daemon stopped reading:
 * treated like a dead daemon. */
#define OUT_QUEUE_MAX 4096
#define PENDING_MAX (2 * DEDUP_PROTO_MAX_ENTRIES)
#define SOCKET_MSGS_PER_WAKEUP 64
#define RECONNECT_MIN_MS 250
#define RECONNECT_MAX_MS 5000

typedef struct Region {
        uint32_t id;                    /* index in c->regions, sent in REGION */
        int memfd;                      /* our dup */
        uint64_t memfd_offset, size, gpa;
        uint8_t *hva;
        uint64_t npages;
        DedupVmaFlags *vmf;             /* madvise flags by sub-range, from smaps at export */
        size_t n_vmf;
        bool registered;                /* [hva, +size) registered: merged pages on c->uffd_async, the rest on c->uffd */
        uint64_t *merged;               /* bit per page: see "Page states" */
        uint64_t *detached;             /* lazily allocated */
        uint64_t *zero;                 /* merged onto an anonymous zero overlay; lazily */
        uint64_t *async;                /* merged and on c->uffd_async */
        uint64_t n_async;               /* bits set in async */
} Region;

typedef struct PoolFd {
        uint32_t id;
        int fd;                         /* O_RDONLY memfd, F_SEAL_SHRINK */
        uint64_t size;                  /* bytes known to exist (refreshed by fstat) */
} PoolFd;

typedef struct Pending {
        uint16_t type;                  /* DEDUP_MSG_UNMERGED or DEDUP_MSG_WRITTEN */
        struct dedup_range range;
} Pending;

typedef struct OutMsg {
        struct OutMsg *next;
        int fds[DEDUP_PROTO_MAX_FDS];   /* not owned: region memfd and uffd live as long as c */
        size_t nfds;
        union {
                struct dedup_msg_header hdr;
                uint64_t align;
        } msg[];                        /* hdr.length bytes */
} OutMsg;

struct dedup_client {
        pthread_mutex_t lock;           /* everything below, except what is set before the thread starts */
        char *socket_path;
        char name[64];
        char uuid[37];

        Region **regions;
        size_t n_regions;
        PoolFd *pools;
        size_t n_pools;

        int uffd;                       /* ours; the daemon has a dup */
        int uffd_async;                 /* WP_ASYNC, over merged pages only; ours alone */
        int sock;
        int pagemap_fd;                 /* /proc/self/pagemap */
        bool pagemap_frames;            /* pagemap shows frames: pte markers are recognisable */
        int event_fd;                   /* kicks the agent: stop or new output queued */

        pthread_t thread;
        bool thread_started;
        bool started;                   /* dedup_client_start() succeeded */
        bool connected;                 /* socket up, regions registered: not fail-safe */
        bool stopping;
        bool retry;                     /* fail-safe, but try the daemon again at retry_at */
        uint64_t retry_at;              /* CLOCK_MONOTONIC ms */
        unsigned retry_ms;              /* current backoff */

        uint32_t vm_id;
        uint32_t seq;                   /* last seq we originated */

        Pending *pending;               /* UNMERGED/WRITTEN news, coalesced, in order */
        size_t n_pending;
        OutMsg *out_head, **out_tail;
        size_t n_out;

        /* Sweeps for merged pages the guest wrote (see sweep_tick()). */
        int statm_fd;                   /* /proc/self/statm */
        uint64_t anon_seen;             /* anonymous pages at the last sweep, less those it freed */
        uint64_t sweep_not_before;      /* CLOCK_MONOTONIC us */
        uint64_t sweep_by;
        uint64_t tick_at;

        uint64_t pm[DEDUP_PROTO_MAX_RUN];       /* pagemap scratch */
        uint8_t page_buf[PAGE];                 /* window-check scratch */
        void *rx;                               /* DEDUP_PROTO_MAX_MSG receive buffer */

        dedup_client_stats stats;

        /* Tests only (dedup-client-internal.h): called in window A. */
        void (*window_hook)(void *addr, size_t len, void *userdata);
        void *window_hook_userdata;
};

void dedup_client_set_window_hook(dedup_client *c, void (*hook)(void *addr, size_t len, void *userdata),
                                  void *userdata) {
        pthread_mutex_lock(&c->lock);
        c->window_hook = hook;
        c->window_hook_userdata = userdata;
        pthread_mutex_unlock(&c->lock);
}

/* ---- small helpers ---- */

static inline bool bit_test(const uint64_t *b, uint64_t i) {
        return b && (b[i / 64] >> (i % 64)) & 1;
}

/* Set/clear bits [first, first+n); return how many changed. */
static uint64_t bits_set(uint64_t *b, uint64_t first, uint64_t n) {
        uint64_t changed = 0;
        for (uint64_t i = first; i < first + n; i++)
                if (!((b[i / 64] >> (i % 64)) & 1)) {
                        b[i / 64] |= UINT64_C(1) << (i % 64);
                        changed++;
                }
        return changed;
}

static uint64_t bits_clear(uint64_t *b, uint64_t first, uint64_t n) {
        uint64_t changed = 0;
        if (!b)
                return 0;
        for (uint64_t i = first; i < first + n; i++)
                if ((b[i / 64] >> (i % 64)) & 1) {
                        b[i / 64] &= ~(UINT64_C(1) << (i % 64));
                        changed++;
                }
        return changed;
}

/* The end of the run of equal bits that starts at s, at most end. */
static uint64_t bits_run_end(const uint64_t *b, uint64_t s, uint64_t end) {
        uint64_t e = s + 1;
        while (e < end && bit_test(b, e) == bit_test(b, s))
                e++;
        return e;
}

static bool bits_any(const uint64_t *b, uint64_t first, uint64_t n) {
        if (!b)
                return false;
        for (uint64_t i = first; i < first + n; i++)
                if (bit_test(b, i))
                        return true;
        return false;
}

static int pwrite_full(int fd, const void *buf, size_t len, uint64_t off) {
        const uint8_t *p = buf;
        while (len > 0) {
                ssize_t n = pwrite(fd, p, len, (off_t) off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;
                p += n;
                len -= (size_t) n;
                off += (uint64_t) n;
        }
        return 0;
}

static int pread_full(int fd, void *buf, size_t len, uint64_t off) {
        uint8_t *p = buf;
        while (len > 0) {
                ssize_t n = pread(fd, p, len, (off_t) off);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return -errno;
                }
                if (n == 0)
                        return -EIO;
                p += n;
                len -= (size_t) n;
                off += (uint64_t) n;
        }
        return 0;
}

/* ---- userfaultfd ---- */

static int uffd_register(int uffd, void *addr, size_t len) {
        struct uffdio_register reg = {
                .range = { .start = (uintptr_t) addr, .len = len },
                .mode = UFFDIO_REGISTER_MODE_WP,
        };
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
                return -errno;
        if (!(reg.ioctls & (UINT64_C(1) << _UFFDIO_WRITEPROTECT)))
                return -EOPNOTSUPP;
        return 0;
}

static int uffd_unregister(int uffd, void *addr, size_t len) {
        struct uffdio_range range = { .start = (uintptr_t) addr, .len = len };
        return ioctl(uffd, UFFDIO_UNREGISTER, &range) < 0 ? -errno : 0;
}

static int uffd_protect(int uffd, void *addr, size_t len, bool protect) {
        struct uffdio_writeprotect wp = {
                .range = { .start = (uintptr_t) addr, .len = len },
                .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0, /* unprotect also wakes */
        };
        return ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

static void uffd_wake(int uffd, void *addr, size_t len) {
        struct uffdio_range range = { .start = (uintptr_t) addr, .len = len };
        (void) ioctl(uffd, UFFDIO_WAKE, &range);
}

/* Let whoever waits on [addr, +len) go on. Unprotect fails with ENOENT
 * where part of the range is not registered (any more); wake anyway. */
static void unprotect_or_wake(int uffd, void *addr, size_t len) {
        if (uffd_protect(uffd, addr, len, false) < 0)
                uffd_wake(uffd, addr, len);
}

static int uffd_open(void) {
        int fd, dev, r;

        fd = (int) syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        if (fd >= 0)
                return fd;
        r = -errno;
        if (r != -EPERM)
                return r;
        /* vm.unprivileged_userfaultfd=0 without CAP_SYS_PTRACE: the device
         * node gives the same (kernel-fault capable) uffd to its users. */
        dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
        if (dev < 0)
                return r;
        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
        r = fd < 0 ? -errno : fd;
        safe_close(dev);
        return r;
}

/* Never EVENT_REMAP/UNMAP: our own mmap would block until the event is
 * read (DESIGN §5). async: WP_ASYNC, the kernel resolves write faults
 * itself and only pagemap tells which pages were written; for merged pages
 * only (see "Page states"). */
static int uffd_new(bool async) {
        struct uffdio_api api = {
                .api = UFFD_API,
                .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED |
                            UFFD_FEATURE_WP_HUGETLBFS_SHMEM | (async ? UFFD_FEATURE_WP_ASYNC : 0),
        };
        int fd = uffd_open();

        if (fd < 0)
                return fd;
        if (ioctl(fd, UFFDIO_API, &api) < 0) {
                int r = errno == EINVAL ? -EOPNOTSUPP : -errno;
                safe_close(fd);
                return r;
        }
        return fd;
}

/* ---- regions and pools ---- */

static Region *region_free(Region *r) {
        if (!r)
                return NULL;
        safe_close(r->memfd);
        free(r->vmf);
        free(r->merged);
        free(r->detached);
        free(r->zero);
        free(r->async);
        free(r);
        return NULL;
}

static Region *region_find(dedup_client *c, uint64_t addr) {
        for (size_t i = 0; i < c->n_regions; i++) {
                Region *r = c->regions[i];
                if (addr >= (uintptr_t) r->hva && addr - (uintptr_t) r->hva < r->size)
                        return r;
        }
        return NULL;
}

static PoolFd *pool_find(dedup_client *c, uint32_t id) {
        for (size_t i = 0; i < c->n_pools; i++)
                if (c->pools[i].id == id)
                        return &c->pools[i];
        return NULL;
}

/* madvise flags the VMM had on [addr, +len), re-applied after our mmap. */
static void region_apply_vmflags(Region *r, uint8_t *addr, size_t len) {
        uint64_t s = (uintptr_t) addr, e = s + len;
        for (size_t i = 0; i < r->n_vmf; i++) {
                uint64_t a = MAX(s, r->vmf[i].start), b = MIN(e, r->vmf[i].end);
                if (a < b && r->vmf[i].flags)
                        dedup_vma_apply((void *) (uintptr_t) a, b - a, r->vmf[i].flags);
        }
}

/* Map the memfd back MAP_SHARED over [first, +n) and register it (without
 * protection). The caller made sure the memfd holds the content. */
static int region_map_shared(dedup_client *c, Region *r, uint64_t first, uint64_t n) {
        uint8_t *a = r->hva + first * PAGE;
        size_t len = n * PAGE;
        void *p;

        p = mmap(a, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, r->memfd,
                 (off_t) (r->memfd_offset + first * PAGE));
        if (p == MAP_FAILED)
                return -errno;
        region_apply_vmflags(r, a, len);
        /* Failure to register only means the daemon cannot protect these
         * pages again (its WRITEPROTECT gets ENOENT): safe. */
        (void) uffd_register(c->uffd, a, len);
        return 0;
}

static void stats_merged(dedup_client *c, int64_t delta) {
        c->stats.merged_pages += (uint64_t) delta;
}

/* Give up on [first, +n) being merged: unprotect (the guest's writes then
 * COW privately inside our mapping) and remember that the memfd is stale. */
static void region_detach(dedup_client *c, Region *r, uint64_t first, uint64_t n) {
        if (!r->detached)
                r->detached = calloc((r->npages + 63) / 64, sizeof(uint64_t));
        if (r->detached)
                bits_set(r->detached, first, n);
        bits_clear(r->zero, first, n);
        stats_merged(c, -(int64_t) bits_clear(r->merged, first, n));
        unprotect_or_wake(c->uffd, r->hva + first * PAGE, n * PAGE);
}

/* ---- merged pages on the async uffd ---- */

/* Take the async uffd off the pages of [first, +n) that are on it, which
 * also clears their protection. Returns the first error. */
static int async_release(dedup_client *c, Region *r, uint64_t first, uint64_t n) {
        int ret = 0;

        for (uint64_t s = first, e; s < first + n; s = e) {
                e = bits_run_end(r->async, s, first + n);
                if (!bit_test(r->async, s))
                        continue;
                int q = uffd_unregister(c->uffd_async, r->hva + s * PAGE, (e - s) * PAGE);
                if (q < 0 && ret == 0)
                        ret = q;
                r->n_async -= bits_clear(r->async, s, e - s);
        }
        return ret;
}

/* Make writers to the merged pages [first, +n) wait for us again, as
 * anything that copies them needs: an async protection stops no write.
 * Pages on the async uffd move to the synchronous one, protected; the
 * others are protected there already. */
static int freeze(dedup_client *c, Region *r, uint64_t first, uint64_t n) {
        for (uint64_t s = first, e; s < first + n; s = e) {
                uint8_t *a = r->hva + s * PAGE;
                int q;

                e = bits_run_end(r->async, s, first + n);
                if (!bit_test(r->async, s))
                        continue;
                q = async_release(c, r, s, e - s);
                if (q >= 0)
                        q = uffd_register(c->uffd, a, (e - s) * PAGE);
                if (q >= 0)
                        q = uffd_protect(c->uffd, a, (e - s) * PAGE, true);
                if (q < 0)
                        return q;
        }
        return 0;
}

/* ---- outgoing messages ---- */

static void out_drop_all(dedup_client *c) {
        while (c->out_head) {
                OutMsg *m = c->out_head;
                c->out_head = m->next;
                free(m);
        }
        c->out_tail = &c->out_head;
        c->n_out = 0;
        c->n_pending = 0;
}

static int out_queue(dedup_client *c, const void *msg, const int *fds, size_t nfds) {
        const struct dedup_msg_header *hdr = msg;
        OutMsg *m;

        if (c->n_out >= OUT_QUEUE_MAX)
                return -ENOBUFS;
        m = malloc(sizeof *m + hdr->length);
        if (!m)
                return -ENOMEM;
        m->next = NULL;
        m->nfds = nfds;
        for (size_t i = 0; i < nfds; i++)
                m->fds[i] = fds[i];
        memcpy(m->msg, msg, hdr->length);
        *c->out_tail = m;
        c->out_tail = &m->next;
        c->n_out++;
        return 0;
}

/* Turn pending news into UNMERGED/WRITTEN messages, keeping their order. */
static int pending_flush(dedup_client *c) {
        size_t i = 0;
        int r;

        while (i < c->n_pending) {
                uint16_t type = c->pending[i].type;
                size_t j = i;
                while (j < c->n_pending && c->pending[j].type == type && j - i < DEDUP_PROTO_MAX_ENTRIES)
                        j++;

                size_t len = dedup_msg_ranges_size((uint32_t) (j - i));
                _cleanup_free_ struct dedup_msg_ranges *m = calloc(1, len);
                if (!m)
                        return -ENOMEM;
                dedup_proto_init_header(&m->hdr, type, (uint32_t) len, ++c->seq);
                m->count = (uint32_t) (j - i);
                for (size_t k = i; k < j; k++)
                        m->ranges[k - i] = c->pending[k].range;
                r = out_queue(c, m, NULL, 0);
                if (r < 0)
                        return r;
                i = j;
        }
        c->n_pending = 0;
        return 0;
}

static int pending_add(dedup_client *c, uint16_t type, Region *r, uint64_t first, uint64_t n) {
        uint64_t off = first * PAGE;

        if (!c->connected)
                return 0;
        while (n > 0) {
                Pending *last = c->n_pending ? &c->pending[c->n_pending - 1] : NULL;

                if (last && last->type == type && last->range.region_id == r->id &&
                    last->range.offset + (uint64_t) last->range.npages * PAGE == off &&
                    last->range.npages < DEDUP_PROTO_MAX_RUN) {
                        uint64_t k = MIN(n, (uint64_t) (DEDUP_PROTO_MAX_RUN - last->range.npages));
                        last->range.npages += (uint32_t) k;
                        off += k * PAGE;
                        n -= k;
                        continue;
                }
                if (c->n_pending == PENDING_MAX) {
                        int q = pending_flush(c);
                        if (q < 0)
                                return q;
                }
                uint64_t k = MIN(n, (uint64_t) DEDUP_PROTO_MAX_RUN);
                c->pending[c->n_pending++] = (Pending) {
                        .type = type,
                        .range = { .region_id = r->id, .npages = (uint32_t) k, .offset = off },
                };
                off += k * PAGE;
                n -= k;
        }
        return 0;
}

static void failsafe(dedup_client *c, bool retry);

/* Send what is queued without blocking; the rest waits for POLLOUT. */
static void out_flush(dedup_client *c) {
        int r;

        if (!c->connected)
                return;
        for (;;) {
                while (c->out_head) {
                        OutMsg *m = c->out_head;
                        r = dedup_proto_send(c->sock, m->msg, m->fds, m->nfds);
                        if (r == -EAGAIN)
                                return;
                        if (r < 0)
                                goto fail;
                        c->out_head = m->next;
                        if (!c->out_head)
                                c->out_tail = &c->out_head;
                        c->n_out--;
                        free(m);
                }
                /* News becomes messages only once the socket takes them:
                 * while the daemon is behind, it coalesces in c->pending
                 * instead of growing the queue a message per fault. */
                if (c->n_pending == 0)
                        return;
                r = pending_flush(c);
                if (r < 0)
                        goto fail;
        }
fail:
        failsafe(c, true);
}

static void kick(dedup_client *c) {
        uint64_t one = 1;
        if (c->event_fd >= 0)
                (void) !write(c->event_fd, &one, sizeof one);
}

/* ---- fail-safe ---- */

static uint64_t now_us(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000 + (uint64_t) ts.tv_nsec / 1000;
}

static uint64_t now_ms(void) {
        return now_us() / 1000;
}

/* The daemon is gone or misbehaved: make every guest write succeed from now
 * on without us, and forget the daemon. Merged pages stay mapped (private
 * mappings: later writes are plain kernel copy-on-write). Unregistering
 * also clears any protection left (6.2+) and wakes every waiting thread;
 * the explicit unprotect first is for kernels that do not. retry: the
 * daemon died or stopped rather than refused us; try it again later. */
static void failsafe(dedup_client *c, bool retry) {
        if (!c->connected)
                return;
        c->connected = false;
        c->stats.connected = 0;
        c->retry = retry && !c->stopping;
        c->retry_ms = RECONNECT_MIN_MS;
        c->retry_at = now_ms() + c->retry_ms;

        for (size_t i = 0; i < c->n_regions; i++) {
                Region *r = c->regions[i];
                (void) async_release(c, r, 0, r->npages);
                if (!r->registered)
                        continue;
                (void) uffd_protect(c->uffd, r->hva, r->size, false);
                (void) uffd_unregister(c->uffd, r->hva, r->size);
                uffd_wake(c->uffd, r->hva, r->size);
                r->registered = false;
        }
        c->sock = safe_close(c->sock);
        out_drop_all(c);
}

/* ---- copy-on-write break ---- */

/* Pages [first, +n) are merged and write-protected (so nobody else changes
 * them): copy what the guest sees into the memfd (or, if zero, punch it),
 * map the memfd back, wake writers. Falls back to detaching when the memfd
 * cannot take the data or the mapping cannot be made. Returns 0 if
 * re-homed into the memfd. */
static int rehome(dedup_client *c, Region *r, uint64_t first, uint64_t n, bool zero) {
        uint8_t *a = r->hva + first * PAGE;
        size_t len = n * PAGE;
        uint64_t off = r->memfd_offset + first * PAGE;
        int q;

        if (zero)
                q = fallocate(r->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) off, (off_t) len) < 0
                            ? -errno : 0;
        else
                q = pwrite_full(r->memfd, a, len, off);
        if (q >= 0)
                q = region_map_shared(c, r, first, n);
        if (q < 0) {
                region_detach(c, r, first, n);
                return q;
        }
        bits_clear(r->zero, first, n);
        stats_merged(c, -(int64_t) bits_clear(r->merged, first, n));
        uffd_wake(c->uffd, a, len);
        return 0;
}

/* Put the private pages [first, +n) back into the memfd: freeze them, then
 * copy them, or punch them if hole and they are all zeros once frozen
 * (before, the async protection let writes through). */
static void unmerge_run(dedup_client *c, Region *r, uint64_t first, uint64_t n, bool hole) {
        if (freeze(c, r, first, n) < 0)
                region_detach(c, r, first, n);
        else
                (void) rehome(c, r, first, n, hole && mem_is_zero(r->hva + first * PAGE, n * PAGE));
}

/* The guest wrote the merged pages [first, +n) (or is waiting to): they
 * are its own again. */
static void cow_break(dedup_client *c, Region *r, uint64_t first, uint64_t n) {
        unmerge_run(c, r, first, n, false);
        c->stats.cow_breaks += n;
        (void) pending_add(c, DEDUP_MSG_UNMERGED, r, first, n);
}

/* ---- sweeps: merged pages the guest wrote ---- */

/* Merged pages are write-protected on the async uffd: a guest write to one
 * does not wait for us. The kernel resolves it in the writing thread (a
 * WP_ASYNC fault only clears the protection) and copies the page into an
 * anonymous one, as for any private mapping: KSM's copy-on-write, a few
 * microseconds. Nothing tells us, so sweeps look for such pages with
 * PAGEMAP_SCAN (a page no longer protected counts as written; only VMAs on
 * the async uffd are walked) and cow_break() puts them back into the memfd.
 * Until then the guest's data is right in its own mapping; only the
 * memfd and the daemon's count are behind.
 *
 * A sweep walks every merged VMA, tens of milliseconds for tens of
 * thousands, so one is made only when the process's anonymous memory
 * changed (every such write adds a page: /proc/self/statm, a read every
 * SWEEP_TICK_MS), and at least every SWEEP_MAX_MS in case another change
 * hid it; never more than 1/SWEEP_COST_SHARE of the time. (A kernel whose
 * statm reads the per-CPU RSS counters without summing them shows a lone
 * write late, up to SWEEP_MAX_MS here; 6.18 shows each one at once,
 * measured. Only the memfd and the daemon's count wait.) */
#define SWEEP_TICK_MS 10
#define SWEEP_MAX_MS 10000
#define SWEEP_COST_SHARE 50

static uint64_t anon_pages(dedup_client *c) {
        unsigned long long size, resident, shared;
        char buf[128];
        ssize_t n = pread(c->statm_fd, buf, sizeof buf - 1, 0);

        if (n <= 0)
                return UINT64_MAX;
        buf[n] = 0;
        if (sscanf(buf, "%llu %llu %llu", &size, &resident, &shared) != 3)
                return UINT64_MAX;
        return resident - shared;
}

static void sweep_region(dedup_client *c, Region *r) {
        struct page_region v[64];
        struct pm_scan_arg arg = {
                .size = sizeof arg,
                .start = (uintptr_t) r->hva,
                .end = (uintptr_t) r->hva + r->size,
                .vec = (uintptr_t) v,
                .vec_len = ELEMENTSOF(v),
                .category_mask = PAGE_IS_WPALLOWED | PAGE_IS_WRITTEN,
                .return_mask = PAGE_IS_WRITTEN,
        };

        while (r->n_async > 0) {
                long n = ioctl(c->pagemap_fd, PAGEMAP_SCAN, &arg);
                if (n < 0)
                        return;
                for (long i = 0; i < n; i++) {
                        uint64_t first = (v[i].start - (uintptr_t) r->hva) / PAGE;
                        uint64_t end = (v[i].end - (uintptr_t) r->hva) / PAGE;
                        for (uint64_t s = first, e; s < end; s = e) {
                                e = bits_run_end(r->async, s, end);
                                if (bit_test(r->async, s))
                                        cow_break(c, r, s, e - s);
                        }
                }
                if (arg.walk_end >= arg.end)
                        return;
                arg.start = arg.walk_end;
        }
}

/* Called every time round the agent's loop; returns the poll timeout it
 * needs (-1: none). */
static int sweep_tick(dedup_client *c) {
        uint64_t now = now_us(), anon, breaks;
        bool any = false;

        for (size_t i = 0; c->connected && i < c->n_regions; i++)
                any = any || c->regions[i]->n_async > 0;
        if (!any)
                return -1;
        if (now < c->tick_at)
                return (int) ((c->tick_at - now + 999) / 1000);
        c->tick_at = now + SWEEP_TICK_MS * 1000;
        if (now < c->sweep_not_before)
                return SWEEP_TICK_MS;
        anon = anon_pages(c);
        if (anon == c->anon_seen && now < c->sweep_by)
                return SWEEP_TICK_MS;

        /* A write during the sweep, behind it, must still change what the
         * next tick reads: count from before, less the anonymous copies
         * the sweep put back (each freed when the memfd was mapped over). */
        breaks = c->stats.cow_breaks;
        for (size_t i = 0; i < c->n_regions; i++)
                sweep_region(c, c->regions[i]);
        breaks = c->stats.cow_breaks - breaks;
        c->anon_seen = anon - MIN(anon, breaks);
        uint64_t end = now_us();
        c->sweep_not_before = end + MAX((uint64_t) SWEEP_TICK_MS * 1000, (end - now) * SWEEP_COST_SHARE);
        c->sweep_by = end + (uint64_t) SWEEP_MAX_MS * 1000;
        return SWEEP_TICK_MS;
}

/* ---- faults ---- */

static void handle_fault(dedup_client *c, const struct uffd_msg *m) {
        uint64_t addr;
        Region *r;

        if (m->event != UFFD_EVENT_PAGEFAULT)
                return; /* no other event is enabled */
        addr = m->arg.pagefault.address & ~(uint64_t) (PAGE - 1);
        r = region_find(c, addr);
        if (!r || !c->connected || !(m->arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP)) {
                unprotect_or_wake(c->uffd, (void *) (uintptr_t) addr, PAGE);
                return;
        }

        uint64_t idx = (addr - (uintptr_t) r->hva) / PAGE;
        if (bit_test(r->merged, idx)) {
                cow_break(c, r, idx, 1);
        } else {
                /* The daemon's transient protection (merge step 1), or a
                 * duplicate fault on a page already handled. */
                unprotect_or_wake(c->uffd, (void *) (uintptr_t) addr, PAGE);
                c->stats.written_faults++;
                if (!bit_test(r->detached, idx))
                        (void) pending_add(c, DEDUP_MSG_WRITTEN, r, idx, 1);
        }
}

static void handle_uffd(dedup_client *c) {
        struct uffd_msg msgs[32];

        for (;;) {
                ssize_t n = read(c->uffd, msgs, sizeof msgs);
                if (n < 0) {
                        if (errno == EINTR)
                                continue;
                        return; /* EAGAIN: drained */
                }
                for (size_t i = 0; i < (size_t) n / sizeof msgs[0]; i++)
                        handle_fault(c, &msgs[i]);
                if ((size_t) n < sizeof msgs)
                        return;
        }
}

/* ---- REMAP ---- */

static int pagemap_read(dedup_client *c, const uint8_t *a, uint64_t n) {
        return pread_full(c->pagemap_fd, c->pm, n * sizeof(uint64_t), ((uintptr_t) a / PAGE) * sizeof(uint64_t));
}

/* Does the page at a (just mapped from pool/zero and now protected) hold
 * exactly the canonical content? */
static bool page_is_canonical(dedup_client *c, const uint8_t *a, const PoolFd *pool, uint64_t pool_off) {
        if (!pool)
                return mem_is_zero(a, PAGE);
        if (pread_full(pool->fd, c->page_buf, PAGE, pool_off) < 0)
                return false;
        return memcmp(a, c->page_buf, PAGE) == 0;
}

static bool pm_is_marker(dedup_client *c, uint64_t pm) {
        return c->pagemap_frames && !(pm & PM_PRESENT) && (pm & PM_SWAP) &&
               (pm & PM_SWAP_TYPE_MASK) == PM_SWAP_TYPE_PTE_MARKER;
}

/* Window check of remap_entry(): did a write land in the freshly mapped,
 * now protected run at a before we protected it? A written page is
 * anonymous: present without PM_FILE, or swapped out / migrating (a swap
 * entry without PM_FILE). A protected unpopulated pte is a swap entry too
 * (a pte marker); when pagemap hides frames we cannot tell it from a
 * swapped page, so we populate the run read-only (maps the pool pages or
 * zero pages, faults nothing to us) and look again. An anonymous page is
 * harmless iff it holds the canonical content. */
static bool run_written(dedup_client *c, const uint8_t *a, uint64_t n, const PoolFd *pool, uint64_t pool_off) {
        bool ambiguous = false;

        if (pagemap_read(c, a, n) < 0)
                return true; /* cannot verify: be safe */
        for (uint64_t i = 0; i < n; i++) {
                uint64_t pm = c->pm[i];
                if (pm & PM_FILE)
                        continue;
                if (pm & PM_PRESENT) {
                        if (!page_is_canonical(c, a + i * PAGE, pool, pool_off + i * PAGE))
                                return true;
                } else if ((pm & PM_SWAP) && !pm_is_marker(c, pm))
                        ambiguous = true;
        }
        if (!ambiguous)
                return false;

        if (madvise((void *) a, n * PAGE, MADV_POPULATE_READ) < 0 || pagemap_read(c, a, n) < 0)
                memset(c->pm, 0, n * sizeof(uint64_t)); /* compare everything below */
        for (uint64_t i = 0; i < n; i++)
                if (!(c->pm[i] & PM_FILE) &&
                    !page_is_canonical(c, a + i * PAGE, pool, pool_off + i * PAGE))
                        return true;
        return false;
}

/*
 * Map one run onto its pool pages (or the zero overlay). The daemon has
 * write-protected the run and compared it with the canonical pages.
 *
 * 1. Every page must still be protected (pagemap bit 57). A write that hit
 *    the run after the daemon protected it was answered by handle_fault()
 *    (which unprotects), and the caller drained the uffd just before: so a
 *    missing bit means "written", ABORTED, nothing changed.
 * 2. mmap(MAP_PRIVATE|MAP_FIXED) + register + protect, on the async uffd.
 *    Between mmap and protect the new VMA is not ours: a guest write there
 *    silently copies-on-write into an anonymous page (window A), which the
 *    protection then hides from sweeps. A write fault queued against the
 *    old mapping during all this is answered later by handle_fault(): the
 *    page is merged by then, the COW break copies the (identical) pool
 *    content back and the write proceeds. A write after the protection is
 *    a sweep's business.
 * 3. Window check (run_written()): an anonymous page in the run was
 *    written in window A, or is a zero page, or (kernels without a shared
 *    zero page) a zeroed page allocated by a read. It is fine iff it holds
 *    the canonical content; otherwise freeze the run (so nobody writes it
 *    now), copy it back into the memfd, map the memfd back, ABORTED.
 * 4. Punch the memfd run (see "Who punches" in dedup-proto.h), DONE.
 */
static uint32_t remap_entry(dedup_client *c, Region *r, PoolFd *pool, const struct dedup_remap_entry *e) {
        uint64_t first = e->offset / PAGE, n = e->npages;
        uint8_t *a = r->hva + e->offset;
        size_t len = n * PAGE;
        void *p;
        int q;

        if (bits_any(r->detached, first, n))
                return DEDUP_REMAP_FAILED;

        if (pagemap_read(c, a, n) < 0)
                return DEDUP_REMAP_FAILED;
        for (uint64_t i = 0; i < n; i++)
                if (!(c->pm[i] & PM_UFFD_WP))
                        return DEDUP_REMAP_ABORTED;

        if (pool)
                p = mmap(a, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, pool->fd, (off_t) e->pool_offset);
        else
                p = mmap(a, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
        if (p == MAP_FAILED) {
                /* Linux restores the old VMAs when MAP_FIXED fails; if it
                 * did not, put the memfd back (it still holds the data). */
                unsigned char vec;
                if (mincore(a, PAGE, &vec) < 0 && errno == ENOMEM)
                        (void) region_map_shared(c, r, first, n);
                return DEDUP_REMAP_FAILED;
        }
        region_apply_vmflags(r, a, len);
        if (c->window_hook)
                c->window_hook(a, len, c->window_hook_userdata);
        q = uffd_register(c->uffd_async, a, len);
        if (q >= 0) {
                q = uffd_protect(c->uffd_async, a, len, true);
                if (q < 0)
                        (void) uffd_unregister(c->uffd_async, a, len);
        }
        if (q < 0) {
                /* Content is right (pool pages equal the guest's), but we
                 * cannot see writes: detach, never punch. */
                region_detach(c, r, first, n);
                return DEDUP_REMAP_FAILED;
        }
        r->n_async += bits_set(r->async, first, n);

        if (run_written(c, a, n, pool, e->pool_offset)) {
                /* Writers queued on the run are answered by handle_fault(). */
                unmerge_run(c, r, first, n, false);
                return DEDUP_REMAP_ABORTED;
        }

        /* Only now is the memfd copy redundant. Failure costs memory only. */
        (void) fallocate(r->memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                         (off_t) (r->memfd_offset + e->offset), (off_t) len);
        stats_merged(c, (int64_t) bits_set(r->merged, first, n));
        if (!pool && !r->zero)
                r->zero = calloc((r->npages + 63) / 64, sizeof(uint64_t));
        if (!pool && r->zero)
                bits_set(r->zero, first, n); /* without: re-homed at a reconnect */
        return DEDUP_REMAP_DONE;
}

/* Bounds the daemon must respect beyond what dedup_proto_validate() knows. */
static int check_run(dedup_client *c, uint32_t region_id, uint64_t offset, uint32_t npages, Region **ret) {
        if (region_id >= c->n_regions)
                return -EBADMSG;
        Region *r = c->regions[region_id];
        if (!r->registered || offset > r->size || (uint64_t) npages * PAGE > r->size - offset)
                return -EBADMSG;
        *ret = r;
        return 0;
}

static int pool_check(PoolFd *pool, uint64_t off, uint32_t npages) {
        uint64_t end = off + (uint64_t) npages * PAGE;
        struct stat st;

        if (end <= pool->size)
                return 0;
        /* Pools grow; F_SEAL_SHRINK (checked at POOL) keeps them grown. */
        if (fstat(pool->fd, &st) < 0)
                return -errno;
        pool->size = (uint64_t) st.st_size;
        return end <= pool->size ? 0 : -EBADMSG;
}

static int handle_remap(dedup_client *c, const struct dedup_msg_remap *m) {
        _cleanup_free_ struct dedup_msg_remap *reply = NULL;
        Region *r;
        int q;

        for (uint32_t i = 0; i < m->count; i++) {
                const struct dedup_remap_entry *e = &m->entries[i];
                if (check_run(c, e->region_id, e->offset, e->npages, &r) < 0)
                        return -EBADMSG;
                if (e->pool_id != DEDUP_POOL_ZERO) {
                        PoolFd *pool = pool_find(c, e->pool_id);
                        if (!pool || pool_check(pool, e->pool_offset, e->npages) < 0)
                                return -EBADMSG;
                }
        }

        reply = malloc(m->hdr.length);
        if (!reply)
                return -ENOMEM;
        memcpy(reply, m, m->hdr.length);
        reply->hdr.type = DEDUP_MSG_REMAP_REPLY;

        /* Writes that reached protected pages must show in pagemap now. */
        handle_uffd(c);

        for (uint32_t i = 0; i < m->count; i++) {
                struct dedup_remap_entry *e = &reply->entries[i];
                PoolFd *pool = e->pool_id == DEDUP_POOL_ZERO ? NULL : pool_find(c, e->pool_id);

                r = c->regions[e->region_id];
                e->status = remap_entry(c, r, pool, e);
                if (e->status == DEDUP_REMAP_DONE)
                        c->stats.remapped_pages += e->npages;
                else if (e->status == DEDUP_REMAP_ABORTED)
                        c->stats.aborted_pages += e->npages;
        }

        /* News from before this batch goes first: the daemon sees events in
         * the order they happened. */
        q = pending_flush(c);
        if (q < 0)
                return q;
        return out_queue(c, reply, NULL, 0);
}

/* ---- UNMERGE ---- */

static int handle_unmerge(dedup_client *c, const struct dedup_msg_ranges *m) {
        _cleanup_free_ struct dedup_msg_ranges *reply = NULL;
        Region *r;
        int q;

        for (uint32_t i = 0; i < m->count; i++)
                if (check_run(c, m->ranges[i].region_id, m->ranges[i].offset, m->ranges[i].npages, &r) < 0)
                        return -EBADMSG;

        reply = malloc(m->hdr.length);
        if (!reply)
                return -ENOMEM;
        memcpy(reply, m, m->hdr.length);
        reply->hdr.type = DEDUP_MSG_UNMERGED;
        reply->flags = DEDUP_RANGES_F_REPLY | (m->flags & DEDUP_RANGES_F_KEPT);

        handle_uffd(c);

        for (uint32_t i = 0; i < m->count; i++) {
                uint64_t first = m->ranges[i].offset / PAGE, end = first + m->ranges[i].npages;

                r = c->regions[m->ranges[i].region_id];
                /* Only merged pages: a plain page may be written right now
                 * through its shared mapping, and copying it onto itself
                 * could undo that write. Merged pages are protected. */
                for (uint64_t s = first, e; s < end; s = e) {
                        e = bits_run_end(r->merged, s, end);
                        if (bit_test(r->merged, s))
                                unmerge_run(c, r, s, e - s, false);
                }
        }

        q = pending_flush(c);
        if (q < 0)
                return q;
        return out_queue(c, reply, NULL, 0);
}

/* ---- POOL ---- */

static int handle_pool(dedup_client *c, const struct dedup_msg_pool *m, int fd) {
        struct stat st;
        PoolFd *pool;
        int seals;

        /* A pool that can shrink could SIGBUS the VMM: refuse it. */
        seals = fcntl(fd, F_GET_SEALS);
        if (seals < 0 || !(seals & F_SEAL_SHRINK) || fstat(fd, &st) < 0 || !S_ISREG(st.st_mode) ||
            (uint64_t) st.st_size < m->size) {
                safe_close(fd);
                return -EBADMSG;
        }

        pool = pool_find(c, m->pool_id);
        if (pool) {
                safe_close(pool->fd);
        } else {
                PoolFd *p = realloc(c->pools, (c->n_pools + 1) * sizeof *p);
                if (!p) {
                        safe_close(fd);
                        return -ENOMEM;
                }
                c->pools = p;
                pool = &c->pools[c->n_pools++];
        }
        *pool = (PoolFd) { .id = m->pool_id, .fd = fd, .size = (uint64_t) st.st_size };
        return 0;
}

/* ---- socket ---- */

static void handle_socket(dedup_client *c) {
        for (int k = 0; k < SOCKET_MSGS_PER_WAKEUP && c->connected; k++) {
                int fds[DEDUP_PROTO_MAX_FDS];
                size_t nfds = 0;
                ssize_t n;
                int q;

                n = dedup_proto_recv(c->sock, c->rx, DEDUP_PROTO_MAX_MSG, fds, DEDUP_PROTO_MAX_FDS, &nfds, 0);
                if (n == -EAGAIN)
                        return;
                if (n <= 0) {
                        failsafe(c, true); /* EOF or a broken connection */
                        return;
                }
                if (dedup_proto_validate(c->rx, (size_t) n, nfds, NULL) < 0) {
                        for (size_t i = 0; i < nfds; i++)
                                safe_close(fds[i]);
                        failsafe(c, false);
                        return;
                }

                const struct dedup_msg_header *hdr = c->rx;
                switch (hdr->type) {
                case DEDUP_MSG_POOL:
                        q = handle_pool(c, c->rx, fds[0]);
                        break;
                case DEDUP_MSG_REMAP:
                        q = handle_remap(c, c->rx);
                        break;
                case DEDUP_MSG_UNMERGE:
                        q = handle_unmerge(c, c->rx);
                        break;
                default:
                        /* BYE (the daemon stops: come back later), ERROR or
                         * a message for the other direction. */
                        for (size_t i = 0; i < nfds; i++)
                                safe_close(fds[i]);
                        q = hdr->type == DEDUP_MSG_BYE ? -ECONNRESET : -EPROTO;
                        break;
                }
                if (q < 0) {
                        failsafe(c, q == -ECONNRESET);
                        return;
                }
                /* Faults first: a REMAP batch may have kept writers waiting. */
                handle_uffd(c);
        }
}

/* ---- connection ---- */

static int region_send(dedup_client *c, Region *r, bool queue) {
        struct dedup_msg_region m = {
                .region_id = r->id,
                .gpa = r->gpa,
                .size = r->size,
                .memfd_offset = r->memfd_offset,
                .hva = (uintptr_t) r->hva,
        };
        int fds[2] = { r->memfd, c->uffd };

        dedup_proto_init_header(&m.hdr, DEDUP_MSG_REGION, sizeof m, ++c->seq);
        return queue ? out_queue(c, &m, fds, 2) : dedup_proto_send(c->sock, &m, fds, 2);
}

static int connect_socket(const char *path) {
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        socklen_t salen;
        int fd;

        /* "@name" means an abstract socket. */
        strncpy(sa.sun_path, path, sizeof sa.sun_path - 1);
        salen = offsetof(struct sockaddr_un, sun_path) + strlen(path) + (path[0] == '@' ? 0 : 1);
        if (path[0] == '@')
                sa.sun_path[0] = 0;

        fd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        if (fd < 0)
                return -errno;
        if (connect(fd, (struct sockaddr *) &sa, salen) < 0) {
                int r = -errno;
                safe_close(fd);
                return r;
        }
        return fd;
}

static int handshake(dedup_client *c) {
        struct dedup_msg_hello hello = { .pid = (uint32_t) getpid() };
        uint32_t hello_seq = ++c->seq;
        struct pollfd pfd = { .fd = c->sock, .events = POLLIN };
        int fds[DEDUP_PROTO_MAX_FDS];
        size_t nfds;
        ssize_t n;
        int q;

        dedup_proto_init_header(&hello.hdr, DEDUP_MSG_HELLO, sizeof hello, hello_seq);
        memcpy(hello.name, c->name, sizeof hello.name);
        memcpy(hello.uuid, c->uuid, sizeof hello.uuid);
        q = dedup_proto_send(c->sock, &hello, NULL, 0);
        /* A daemon that refuses us at once (out of fds, say) says why
         * first, then hangs up: read that rather than report EPIPE. */
        if (q < 0 && q != -EPIPE && q != -ECONNRESET)
                return q;

        do
                q = poll(&pfd, 1, HANDSHAKE_TIMEOUT_MS);
        while (q < 0 && errno == EINTR);
        if (q < 0)
                return -errno;
        if (q == 0)
                return -ETIMEDOUT;

        n = dedup_proto_recv(c->sock, c->rx, DEDUP_PROTO_MAX_MSG, fds, DEDUP_PROTO_MAX_FDS, &nfds, 0);
        if (n == 0)
                return -ECONNRESET;
        if (n < 0)
                return (int) n;
        q = dedup_proto_validate(c->rx, (size_t) n, nfds, NULL);
        if (q < 0) {
                for (size_t i = 0; i < nfds; i++)
                        safe_close(fds[i]);
                return -EPROTO;
        }

        const struct dedup_msg_header *hdr = c->rx;
        if (hdr->type == DEDUP_MSG_ERROR)
                return -((const struct dedup_msg_error *) c->rx)->error;
        if (hdr->type != DEDUP_MSG_WELCOME) {
                for (size_t i = 0; i < nfds; i++)
                        safe_close(fds[i]);
                return -EPROTO;
        }
        c->vm_id = ((const struct dedup_msg_welcome *) c->rx)->vm_id;
        return 0;
}

static void unregister_all(dedup_client *c) {
        for (size_t i = 0; i < c->n_regions; i++)
                if (c->regions[i]->registered) {
                        (void) async_release(c, c->regions[i], 0, c->regions[i]->npages);
                        (void) uffd_unregister(c->uffd, c->regions[i]->hva, c->regions[i]->size);
                        c->regions[i]->registered = false;
                }
}

/* ---- reconnect ---- */

/* The mappings of the previous daemon's pools, from /proc/self/maps, in
 * address order: what a reconnect reports in MERGED_KEPT. */
typedef struct PoolVma {
        uint64_t start, end, pgoff;
        uint64_t ino;
} PoolVma;

typedef struct PoolVmas {
        PoolVma *v;
        size_t n;
} PoolVmas;

/* Best effort: without the list every page is re-homed, as before. Pools
 * are memfds named "dedupd-pool-..."; the daemon checks the inode is one. */
static void pool_vmas_load(PoolVmas *pv) {
        _cleanup_free_ char *line = NULL;
        size_t linesz = 0;
        FILE *f;

        *pv = (PoolVmas) {};
        f = fopen("/proc/self/maps", "re");
        if (!f)
                return;
        while (getline(&line, &linesz, f) > 0) {
                unsigned long long start, end, pgoff, ino;
                int path = 0;
                PoolVma *v;

                if (sscanf(line, "%llx-%llx %*s %llx %*x:%*x %llu %n", &start, &end, &pgoff, &ino, &path) != 4 ||
                    path == 0 || strncmp(line + path, "/memfd:dedupd-pool-", 19) != 0)
                        continue;
                v = realloc(pv->v, (pv->n + 1) * sizeof *v);
                if (!v)
                        break;
                pv->v = v;
                pv->v[pv->n++] = (PoolVma) { .start = start, .end = end, .pgoff = pgoff, .ino = ino };
        }
        fclose(f);
}

static const PoolVma *pool_vma_find(const PoolVmas *pv, const uint8_t *a) {
        size_t lo = 0, hi = pv->n;

        while (lo < hi) {
                size_t mid = (lo + hi) / 2;
                if ((uintptr_t) a < pv->v[mid].start)
                        hi = mid;
                else if ((uintptr_t) a >= pv->v[mid].end)
                        lo = mid + 1;
                else
                        return &pv->v[mid];
        }
        return NULL;
}

static bool page_private(const Region *r, uint64_t i) {
        return bit_test(r->merged, i) || bit_test(r->detached, i);
}

/* What a reconnect does with a private page: copy it into the memfd, punch
 * it there (all zero), or keep it: an anonymous zero overlay the guest did
 * not write (the new daemon takes it as a zero page, see send_zero_kept()),
 * or a page still mapped from a pool of the previous daemon, not written
 * since (pm: its pagemap entry, populated; see send_merged_kept()). */
enum { REHOME_DATA, REHOME_HOLE, KEEP_ZERO, KEEP_POOL };

static int reconnect_kind(const Region *r, uint64_t i, uint64_t pm, const PoolVmas *pv) {
        const uint8_t *a = r->hva + i * PAGE;

        if (!mem_is_zero(a, PAGE))
                return bit_test(r->merged, i) && (pm & PM_FILE) && pool_vma_find(pv, a) ? KEEP_POOL : REHOME_DATA;
        return bit_test(r->zero, i) && bit_test(r->merged, i) ? KEEP_ZERO : REHOME_HOLE;
}

/* Register r again and put every page that lives only in a private mapping
 * (merged, or detached) back into the memfd, but for those it keeps:
 * protect each run (on the async uffd, where kept pages stay), see what its
 * pages are (a write since the fail-safe made a page anonymous: a populated
 * pool page shows as a file page), then copy, punch or keep each part of
 * it. Plain pages go on the synchronous uffd. */
static int rehome_region(dedup_client *c, Region *r, const PoolVmas *pv) {
        uint8_t kind[DEDUP_PROTO_MAX_RUN];
        int q;

        r->registered = true; /* for unregister_all() if this fails */
        for (uint64_t i = 0, n; i < r->npages; i += n) {
                uint8_t *a = r->hva + i * PAGE;
                bool private = page_private(r, i);

                for (n = 1; i + n < r->npages && page_private(r, i + n) == private &&
                            (!private || n < DEDUP_PROTO_MAX_RUN); n++)
                        ;
                if (!private) {
                        q = uffd_register(c->uffd, a, n * PAGE);
                        if (q < 0)
                                return q;
                        continue;
                }
                q = uffd_register(c->uffd_async, a, n * PAGE);
                if (q >= 0) {
                        r->n_async += bits_set(r->async, i, n);
                        q = uffd_protect(c->uffd_async, a, n * PAGE, true);
                }
                if (q < 0)
                        return q;
                if (pv->n == 0 || madvise(a, n * PAGE, MADV_POPULATE_READ) < 0 || pagemap_read(c, a, n) < 0)
                        memset(c->pm, 0, n * sizeof(uint64_t));
                for (uint64_t j = 0; j < n; j++)
                        kind[j] = (uint8_t) reconnect_kind(r, i + j, c->pm[j], pv);
                for (uint64_t s = 0, e; s < n; s = e) {
                        for (e = s + 1; e < n && kind[e] == kind[s]; e++)
                                ;
                        if (kind[s] == KEEP_ZERO || kind[s] == KEEP_POOL)
                                continue;
                        /* rehome() accounts them as merged pages leaving. */
                        stats_merged(c, (int64_t) bits_set(r->merged, i + s, e - s));
                        bits_clear(r->detached, i + s, e - s);
                        unmerge_run(c, r, i + s, e - s, kind[s] == REHOME_HOLE);
                }
        }
        return 0;
}

/* After the REGIONs: ZERO_KEPT for the zero overlays rehome_region() kept. */
static int send_zero_kept(dedup_client *c) {
        size_t len = dedup_msg_ranges_size(DEDUP_PROTO_MAX_ENTRIES);
        struct dedup_msg_ranges *m = calloc(1, len);
        int q = 0;

        if (!m)
                return -ENOMEM;
        for (size_t k = 0; q >= 0 && k < c->n_regions; k++) {
                Region *r = c->regions[k];
                for (uint64_t i = 0, n; q >= 0 && i < r->npages; i += n) {
                        for (n = 0; i + n < r->npages && n < DEDUP_PROTO_MAX_RUN && bit_test(r->zero, i + n); n++)
                                ;
                        if (n == 0) {
                                n = 1;
                                continue;
                        }
                        m->ranges[m->count++] = (struct dedup_range) {
                                .region_id = r->id, .npages = (uint32_t) n, .offset = i * PAGE,
                        };
                        if (m->count == DEDUP_PROTO_MAX_ENTRIES) {
                                dedup_proto_init_header(&m->hdr, DEDUP_MSG_ZERO_KEPT,
                                                        (uint32_t) dedup_msg_ranges_size(m->count), ++c->seq);
                                q = dedup_proto_send(c->sock, m, NULL, 0);
                                m->count = 0;
                        }
                }
        }
        if (q >= 0 && m->count) {
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_ZERO_KEPT, (uint32_t) dedup_msg_ranges_size(m->count),
                                        ++c->seq);
                q = dedup_proto_send(c->sock, m, NULL, 0);
        }
        free(m);
        return q;
}

static int send_kept_batch(dedup_client *c, struct dedup_msg_remap *m, uint32_t flags) {
        int q;

        m->flags = flags;
        dedup_proto_init_header(&m->hdr, DEDUP_MSG_MERGED_KEPT, (uint32_t) dedup_msg_remap_size(m->count), ++c->seq);
        q = dedup_proto_send(c->sock, m, NULL, 0);
        m->count = 0;
        return q;
}

/* Does page i continue entry e (same pool, next pool page)? */
static bool kept_continues(const struct dedup_remap_entry *e, const PoolVma *v, const uint8_t *a) {
        return e->npages < DEDUP_PROTO_MAX_RUN && v->ino == e->cookie &&
               v->pgoff + ((uintptr_t) a - v->start) == e->pool_offset + (uint64_t) e->npages * PAGE;
}

/* After ZERO_KEPT: MERGED_KEPT for the pool pages rehome_region() kept (the
 * merged pages left that are not zero overlays), the last one flagged. */
static int send_merged_kept(dedup_client *c, const PoolVmas *pv) {
        struct dedup_msg_remap *m = calloc(1, dedup_msg_remap_size(DEDUP_PROTO_MAX_ENTRIES));
        int q = 0;

        if (!m)
                return -ENOMEM;
        for (size_t k = 0; q >= 0 && k < c->n_regions; k++) {
                Region *r = c->regions[k];
                struct dedup_remap_entry *e = NULL;

                for (uint64_t i = 0; q >= 0 && i < r->npages; i++) {
                        const uint8_t *a = r->hva + i * PAGE;
                        const PoolVma *v;

                        if (!bit_test(r->merged, i) || bit_test(r->zero, i) || !(v = pool_vma_find(pv, a))) {
                                e = NULL;
                                continue;
                        }
                        if (e && kept_continues(e, v, a)) {
                                e->npages++;
                                continue;
                        }
                        if (m->count == DEDUP_PROTO_MAX_ENTRIES)
                                q = send_kept_batch(c, m, 0);
                        e = &m->entries[m->count++];
                        *e = (struct dedup_remap_entry) {
                                .region_id = r->id, .offset = i * PAGE, .npages = 1,
                                .pool_offset = v->pgoff + ((uintptr_t) a - v->start), .cookie = v->ino,
                        };
                }
        }
        if (q >= 0)
                q = send_kept_batch(c, m, DEDUP_KEPT_F_LAST);
        free(m);
        return q;
}

/* Try the daemon again after a fail-safe: HELLO, re-home, REGIONs. On
 * failure, back off and leave everything as the fail-safe left it. */
static void reconnect(dedup_client *c) {
        PoolVmas pv = {};
        int q;

        c->sock = connect_socket(c->socket_path);
        q = c->sock;
        if (q >= 0) {
                c->seq = 0;
                q = handshake(c);
        }
        if (q >= 0)
                pool_vmas_load(&pv);
        for (size_t i = 0; q >= 0 && i < c->n_regions; i++)
                q = rehome_region(c, c->regions[i], &pv);
        for (size_t i = 0; q >= 0 && i < c->n_regions; i++)
                q = region_send(c, c->regions[i], false);
        if (q >= 0)
                q = send_zero_kept(c);
        if (q >= 0)
                q = send_merged_kept(c, &pv);
        free(pv.v);
        if (q >= 0 && fcntl(c->sock, F_SETFL, O_NONBLOCK) < 0)
                q = -errno;
        if (q < 0) {
                unregister_all(c);
                c->sock = safe_close(c->sock);
                c->retry_ms = MIN(c->retry_ms * 2, RECONNECT_MAX_MS);
                c->retry_at = now_ms() + c->retry_ms;
                return;
        }
        /* The old daemon's pools: nothing maps them from here any more. */
        for (size_t i = 0; i < c->n_pools; i++)
                safe_close(c->pools[i].fd);
        c->n_pools = 0;
        c->retry = false;
        c->connected = true;
        c->stats.connected = 1;
        c->stats.reconnects++;
}

static void *agent_main(void *userdata) {
        dedup_client *c = userdata;

        (void) pthread_setname_np(pthread_self(), "dedup-agent");

        pthread_mutex_lock(&c->lock);
        while (!c->stopping) {
                int timeout = sweep_tick(c);
                out_flush(c); /* what the sweep had to say */
                if (c->retry) {
                        uint64_t now = now_ms();
                        timeout = c->retry_at > now ? (int) (c->retry_at - now) : 0;
                }
                struct pollfd pfd[3] = {
                        { .fd = c->event_fd, .events = POLLIN },
                        { .fd = c->uffd, .events = POLLIN },
                        { .fd = c->connected ? c->sock : -1, .events = POLLIN | (c->out_head ? POLLOUT : 0) },
                };
                pthread_mutex_unlock(&c->lock);

                int n = poll(pfd, ELEMENTSOF(pfd), timeout);

                pthread_mutex_lock(&c->lock);
                if (n < 0)
                        continue;       /* EINTR; nothing else can fail here */
                if (pfd[0].revents) {
                        uint64_t v;
                        (void) !read(c->event_fd, &v, sizeof v);
                }
                if (c->stopping)
                        break;
                if (pfd[1].revents)
                        handle_uffd(c);
                /* The socket fd is only ours while still connected. */
                if (c->connected && pfd[2].fd == c->sock && pfd[2].revents)
                        handle_socket(c);
                out_flush(c);
                if (c->connected && c->n_out >= OUT_QUEUE_MAX)
                        failsafe(c, true);
                if (c->retry && now_ms() >= c->retry_at)
                        reconnect(c);
        }
        pthread_mutex_unlock(&c->lock);
        return NULL;
}

/* ---- public API ---- */

_Static_assert(sizeof(((struct dedup_msg_hello *) 0)->name) == sizeof(((dedup_client *) 0)->name), "name size");

int dedup_client_new(const char *socket_path, const char *name, const char *uuid, dedup_client **ret) {
        dedup_client *c;
        int r;

        if (!ret || dedup_proto_check_name(name) < 0 || (uuid && dedup_proto_check_uuid(uuid) < 0))
                return -EINVAL;
        if (!socket_path) {
                socket_path = secure_getenv("DEDUPD_SOCKET");
                if (!socket_path || !*socket_path)
                        socket_path = DEDUP_DEFAULT_SOCKET;
        }
        if (!*socket_path || strlen(socket_path) >= sizeof(((struct sockaddr_un *) 0)->sun_path))
                return -EINVAL;

        c = calloc(1, sizeof *c);
        if (!c)
                return -ENOMEM;
        c->uffd = c->uffd_async = c->statm_fd = c->sock = c->pagemap_fd = c->event_fd = -EBADF;
        c->out_tail = &c->out_head;
        r = pthread_mutex_init(&c->lock, NULL);
        if (r != 0) {
                free(c);
                return -r;
        }
        c->socket_path = strdup(socket_path);
        c->pending = calloc(PENDING_MAX, sizeof *c->pending);
        c->rx = malloc(DEDUP_PROTO_MAX_MSG);
        if (!c->socket_path || !c->pending || !c->rx) {
                dedup_client_free(c);
                return -ENOMEM;
        }
        strcpy(c->name, name);
        if (uuid)
                strcpy(c->uuid, uuid);
        *ret = c;
        return 0;
}

int dedup_client_export_region(dedup_client *c, int memfd, uint64_t memfd_offset, uint64_t size, void *hva,
                               uint64_t gpa) {
        Region *r = NULL;
        struct stat st;
        int q;

        if (!c || !hva || size == 0 || !DEDUP_PAGE_ALIGNED(size) || !DEDUP_PAGE_ALIGNED(memfd_offset) ||
            !DEDUP_PAGE_ALIGNED((uintptr_t) hva) || !DEDUP_PAGE_ALIGNED(gpa) || (uintptr_t) hva + size < size ||
            gpa + size < gpa)
                return -EINVAL;
        q = dedup_proto_check_memfd(memfd, memfd_offset, size, NULL);
        if (q < 0)
                return q;
        if (fstat(memfd, &st) < 0)
                return -errno;

        pthread_mutex_lock(&c->lock);
        if (c->stopping) {
                q = -ESHUTDOWN;
                goto out;
        }
        for (size_t i = 0; i < c->n_regions; i++) {
                Region *o = c->regions[i];
                if ((uintptr_t) hva < (uintptr_t) o->hva + o->size && (uintptr_t) o->hva < (uintptr_t) hva + size) {
                        q = -EEXIST;
                        goto out;
                }
        }
        if (c->n_regions >= UINT32_MAX) {
                q = -E2BIG;
                goto out;
        }

        r = calloc(1, sizeof *r);
        if (!r) {
                q = -ENOMEM;
                goto out;
        }
        r->memfd = -EBADF;
        r->id = (uint32_t) c->n_regions;
        r->memfd_offset = memfd_offset;
        r->size = size;
        r->gpa = gpa;
        r->hva = hva;
        r->npages = size / PAGE;
        r->merged = calloc((r->npages + 63) / 64, sizeof(uint64_t));
        r->async = calloc((r->npages + 63) / 64, sizeof(uint64_t));
        if (!r->merged || !r->async) {
                q = -ENOMEM;
                goto out;
        }
        q = dedup_vma_scan("/proc/self/smaps", (uintptr_t) hva, (uintptr_t) hva + size, memfd_offset, st.st_dev,
                           st.st_ino, &r->vmf, &r->n_vmf);
        if (q < 0)
                goto out;
        r->memfd = fcntl(memfd, F_DUPFD_CLOEXEC, 3);
        if (r->memfd < 0) {
                q = -errno;
                goto out;
        }

        Region **a = realloc(c->regions, (c->n_regions + 1) * sizeof *a);
        if (!a) {
                q = -ENOMEM;
                goto out;
        }
        c->regions = a;

        if (c->connected) {
                q = uffd_register(c->uffd, r->hva, r->size);
                if (q < 0)
                        goto out;
                r->registered = true;
                q = region_send(c, r, true);
                if (q < 0) {
                        (void) uffd_unregister(c->uffd, r->hva, r->size);
                        goto out;
                }
                kick(c);
        }
        c->regions[c->n_regions++] = TAKE_PTR(r);
        q = 0;
out:
        pthread_mutex_unlock(&c->lock);
        region_free(r);
        return q;
}

int dedup_client_start(dedup_client *c) {
        sigset_t all, old;
        int q;

        if (!c)
                return -EINVAL;

        pthread_mutex_lock(&c->lock);
        if (c->started || c->stopping) {
                q = -EALREADY;
                goto out;
        }

        c->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        if (c->pagemap_fd < 0) {
                q = -errno;
                goto fail;
        }
        /* Probe whether pagemap shows frames to us (page_buf is present). */
        {
                uint64_t pm = 0;
                memset(c->page_buf, 1, sizeof c->page_buf);
                c->pagemap_frames = pread(c->pagemap_fd, &pm, sizeof pm,
                                          ((uintptr_t) c->page_buf / PAGE) * sizeof pm) == sizeof pm &&
                                    (pm & PM_PRESENT) && (pm & PM_FRAME_MASK) != 0;
        }
        c->uffd = uffd_new(false);
        if (c->uffd < 0) {
                q = c->uffd;
                goto fail;
        }
        c->uffd_async = uffd_new(true);
        if (c->uffd_async < 0) {
                q = c->uffd_async;
                goto fail;
        }
        c->statm_fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
        if (c->statm_fd < 0) {
                q = -errno;
                goto fail;
        }
        for (size_t i = 0; i < c->n_regions; i++) {
                q = uffd_register(c->uffd, c->regions[i]->hva, c->regions[i]->size);
                if (q < 0)
                        goto fail;
                c->regions[i]->registered = true;
        }

        c->sock = connect_socket(c->socket_path);
        if (c->sock < 0) {
                q = c->sock;
                goto fail;
        }
        q = handshake(c);
        if (q < 0)
                goto fail;
        for (size_t i = 0; i < c->n_regions; i++) {
                q = region_send(c, c->regions[i], false);
                if (q < 0)
                        goto fail;
        }
        if (fcntl(c->sock, F_SETFL, O_NONBLOCK) < 0) {
                q = -errno;
                goto fail;
        }
        c->event_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        if (c->event_fd < 0) {
                q = -errno;
                goto fail;
        }

        c->connected = true;
        c->stats.connected = 1;

        /* The agent takes no signals: they belong to the VMM's threads. */
        sigfillset(&all);
        pthread_sigmask(SIG_SETMASK, &all, &old);
        q = -pthread_create(&c->thread, NULL, agent_main, c);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
        if (q < 0) {
                c->connected = false;
                c->stats.connected = 0;
                goto fail;
        }
        c->thread_started = true;
        c->started = true;
        q = 0;
        goto out;

fail:
        /* Leave nothing behind: the VMM runs as if dedupd did not exist, and
         * may call dedup_client_start() again later. */
        if (c->uffd >= 0)
                unregister_all(c);
        c->sock = safe_close(c->sock);
        c->uffd = safe_close(c->uffd);
        c->uffd_async = safe_close(c->uffd_async);
        c->statm_fd = safe_close(c->statm_fd);
        c->pagemap_fd = safe_close(c->pagemap_fd);
        c->event_fd = safe_close(c->event_fd);
        c->seq = 0;
out:
        pthread_mutex_unlock(&c->lock);
        return q;
}

int dedup_client_get_stats(dedup_client *c, dedup_client_stats *ret) {
        if (!c || !ret)
                return -EINVAL;
        pthread_mutex_lock(&c->lock);
        *ret = c->stats;
        pthread_mutex_unlock(&c->lock);
        return 0;
}

void dedup_client_free(dedup_client *c) {
        if (!c)
                return;

        pthread_mutex_lock(&c->lock);
        if (c->connected) {
                struct dedup_msg_header bye;
                dedup_proto_init_header(&bye, DEDUP_MSG_BYE, sizeof bye, ++c->seq);
                (void) dedup_proto_send(c->sock, &bye, NULL, 0);
        }
        c->retry = false;
        failsafe(c, false);
        /* Regions registered after a fail-safe do not exist (export only
         * registers while connected), but be thorough. */
        if (c->uffd >= 0)
                unregister_all(c);
        c->stopping = true;
        pthread_mutex_unlock(&c->lock);

        if (c->thread_started) {
                kick(c);
                pthread_join(c->thread, NULL);
        }

        out_drop_all(c);
        for (size_t i = 0; i < c->n_regions; i++)
                region_free(c->regions[i]);
        free(c->regions);
        for (size_t i = 0; i < c->n_pools; i++)
                safe_close(c->pools[i].fd);
        free(c->pools);
        safe_close(c->sock);
        safe_close(c->uffd);
        safe_close(c->uffd_async);
        safe_close(c->statm_fd);
        safe_close(c->pagemap_fd);
        safe_close(c->event_fd);
        free(c->pending);
        free(c->rx);
        free(c->socket_path);
        pthread_mutex_destroy(&c->lock);
        free(c);
}
