/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Tests of the libdedup agent (lib/dedup-client.c) against a fake daemon.
 *
 * Everything is real except the daemon: guest RAM is a memfd mapped
 * MAP_SHARED in this process, pools are read-only sealed memfds, the agent
 * runs its own thread with a real userfaultfd, and the fake daemon (this
 * file, using lib/dedup-proto.h) talks to it over a real SOCK_SEQPACKET
 * socket and write-protects guest pages through the uffd dup it receives in
 * REGION, exactly as dedupd does.
 *
 * Exits 77 (skip) when userfaultfd with WP_UNPOPULATED is not available.
 * The "measure" case prints remap and COW-break costs; nothing is timed
 * against a limit except "no guest thread waits more than 1 s".
 */

#include <check.h>

#include "check-suite.h"
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "dedup-client-internal.h"
#include "dedup-compat.h"
#include "dedup-proto.h"
#include "dedup.h"

#define PAGE 4096u
#define PM_EXCLUSIVE (UINT64_C(1) << 56)
#define POOL_ID 1

static bool have_zero_page; /* probed in main(): does an anonymous read map the shared zero page? */

/* ---- helpers ---- */

static uint64_t now_ns(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * 1000000000u + (uint64_t) ts.tv_nsec;
}

/* Canonical page k: distinct, recognisable, non-zero. */
static void pattern(uint8_t *p, unsigned k) {
        for (unsigned j = 0; j < PAGE; j++)
                p[j] = (uint8_t) (k * 31u + j * 7u + 1u + (j >> 8));
}

static uint64_t pagemap_entry(const void *addr) {
        uint64_t v = 0;
        int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(pread(fd, &v, 8, (off_t) ((uintptr_t) addr / PAGE * 8)), 8);
        close(fd);
        return v;
}

static uint64_t memfd_blocks(int fd) {
        struct stat st;
        ck_assert_int_eq(fstat(fd, &st), 0);
        return (uint64_t) st.st_blocks;
}

static long rss_anon_kb(void) {
        FILE *f = fopen("/proc/self/status", "re");
        char line[256];
        long v = -1;
        while (f && fgets(line, sizeof line, f))
                if (sscanf(line, "RssAnon: %ld", &v) == 1)
                        break;
        if (f)
                fclose(f);
        return v;
}

/* VmFlags of the VMA containing addr, "" if none. */
static void vma_flags(const void *addr, char *out, size_t size) {
        FILE *f = fopen("/proc/self/smaps", "re");
        char line[512];
        bool in = false;

        out[0] = 0;
        ck_assert_ptr_nonnull(f);
        while (fgets(line, sizeof line, f)) {
                uint64_t s, e;
                if (sscanf(line, "%" SCNx64 "-%" SCNx64 " ", &s, &e) == 2 && strchr(line, ' ') &&
                    line[strcspn(line, " ") - 1] != ':') {
                        in = (uintptr_t) addr >= s && (uintptr_t) addr < e;
                        continue;
                }
                if (in && strncmp(line, "VmFlags:", 8) == 0) {
                        snprintf(out, size, "%s", line + 8);
                        break;
                }
        }
        fclose(f);
}

static bool vma_has_flag(const void *addr, const char *flag) {
        char flags[512], want[8];
        vma_flags(addr, flags, sizeof flags);
        snprintf(want, sizeof want, " %s", flag);
        return strstr(flags, want) != NULL;
}

/* ---- guest and pool ---- */

typedef struct Guest {
        int memfd;
        uint8_t *hva;
        size_t npages;
} Guest;

static void guest_new(Guest *g, size_t npages, int madv) {
        g->npages = npages;
        g->memfd = memfd_create("test-guest", MFD_CLOEXEC);
        ck_assert_int_ge(g->memfd, 0);
        ck_assert_int_eq(ftruncate(g->memfd, (off_t) (npages * PAGE)), 0);
        g->hva = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, g->memfd, 0);
        ck_assert_ptr_ne(g->hva, MAP_FAILED);
        if (madv >= 0)
                ck_assert_int_eq(madvise(g->hva, npages * PAGE, madv), 0);
}

static void guest_free(Guest *g) {
        munmap(g->hva, g->npages * PAGE);
        close(g->memfd);
}

typedef struct TPool {
        int ro_fd;
        size_t npages;
} TPool;

/* A pool as dedupd makes it: memfd, canonical pages written, sealed
 * against shrinking, fchmod 0400, handed out as an O_RDONLY reopen. */
static void pool_new(TPool *p, size_t npages) {
        uint8_t page[PAGE];
        char path[64];
        int fd = memfd_create("dedupd-pool-g0-n0", MFD_CLOEXEC | MFD_ALLOW_SEALING);

        ck_assert_int_ge(fd, 0);
        ck_assert_int_eq(ftruncate(fd, (off_t) (npages * PAGE)), 0);
        for (size_t k = 0; k < npages; k++) {
                pattern(page, (unsigned) k);
                ck_assert_int_eq(pwrite(fd, page, PAGE, (off_t) (k * PAGE)), PAGE);
        }
        ck_assert_int_eq(fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK), 0);
        ck_assert_int_eq(fchmod(fd, 0400), 0);
        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        p->ro_fd = open(path, O_RDONLY | O_CLOEXEC);
        ck_assert_int_ge(p->ro_fd, 0);
        p->npages = npages;
        close(fd);
}

/* ---- the fake daemon ---- */

typedef union {
        struct dedup_msg_header hdr;
        uint64_t align;
        uint8_t bytes[DEDUP_PROTO_MAX_MSG];
} Msg;

typedef struct Fake {
        int lfd, conn;
        char path[108];
        int uffd;                       /* dup of the agent's, from REGION */
        int memfd[4];
        uint64_t hva[4], size[4];
        size_t n_regions, want_regions;
        uint32_t seq;
        pthread_t thr;
        char err[256];                  /* set by the handshake thread */
        int reply_error;                /* answer HELLO with ERROR(reply_error) */
        bool eof;
        /* news from the agent */
        uint64_t unmerged_pages, written_pages, unmerged_msgs, written_msgs;
        struct dedup_range last_unmerged;
        uint8_t *merged;                /* daemon's belief, region 0, per page (stress) */
        Msg *buf;
} Fake;

static void fake_listen(Fake *f) {
        static int counter;
        struct sockaddr_un sa = { .sun_family = AF_UNIX };

        memset(f, 0, sizeof *f);
        f->conn = f->uffd = -1;
        for (int i = 0; i < 4; i++)
                f->memfd[i] = -1;
        f->buf = aligned_alloc(8, sizeof(Msg));
        ck_assert_ptr_nonnull(f->buf);
        snprintf(f->path, sizeof f->path, "@dedup-test-%d-%d", getpid(), counter++);
        memcpy(sa.sun_path + 1, f->path + 1, strlen(f->path) - 1);
        f->lfd = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0);
        ck_assert_int_ge(f->lfd, 0);
        ck_assert_int_eq(bind(f->lfd, (struct sockaddr *) &sa,
                              (socklen_t) (offsetof(struct sockaddr_un, sun_path) + strlen(f->path))), 0);
        ck_assert_int_eq(listen(f->lfd, 4), 0);
}

static int fake_recv_raw(Fake *f, int timeout_ms, int *fds, size_t *nfds) {
        struct pollfd p = { .fd = f->conn, .events = POLLIN };
        const char *why = NULL;
        ssize_t n;
        int r;

        r = poll(&p, 1, timeout_ms);
        if (r == 0)
                return -ETIMEDOUT;
        n = dedup_proto_recv(f->conn, f->buf, DEDUP_PROTO_MAX_MSG, fds, DEDUP_PROTO_MAX_FDS, nfds, 0);
        if (n == 0 || n == -ECONNRESET) {
                f->eof = true;
                return 0;
        }
        if (n < 0)
                return (int) n;
        r = dedup_proto_validate(f->buf, (size_t) n, *nfds, &why);
        if (r < 0) {
                snprintf(f->err, sizeof f->err, "agent sent an invalid message: %s", why);
                return r;
        }
        return f->buf->hdr.type;
}

static void *fake_handshake_thread(void *userdata) {
        Fake *f = userdata;
        int fds[2];
        size_t nfds = 0;
        const char *why;
        int t;

        f->conn = accept4(f->lfd, NULL, NULL, SOCK_CLOEXEC);
        if (f->conn < 0) {
                snprintf(f->err, sizeof f->err, "accept: %m");
                return NULL;
        }
        t = fake_recv_raw(f, 5000, fds, &nfds);
        if (t != DEDUP_MSG_HELLO) {
                snprintf(f->err, sizeof f->err, "expected HELLO, got %d", t);
                return NULL;
        }
        const struct dedup_msg_hello *h = (const void *) f->buf;
        if (strcmp(h->name, "test-vm") != 0 || h->pid != (uint32_t) getpid()) {
                snprintf(f->err, sizeof f->err, "HELLO name '%s' pid %u", h->name, h->pid);
                return NULL;
        }
        uint32_t hello_seq = h->hdr.seq;
        if (f->reply_error) {
                struct dedup_msg_error e = { .error = f->reply_error };
                dedup_proto_init_header(&e.hdr, DEDUP_MSG_ERROR, sizeof e, hello_seq);
                strcpy(e.text, "refused by test");
                dedup_proto_send(f->conn, &e, NULL, 0);
                return NULL;
        }
        struct dedup_msg_welcome w = { .vm_id = 7 };
        dedup_proto_init_header(&w.hdr, DEDUP_MSG_WELCOME, sizeof w, hello_seq);
        if (dedup_proto_send(f->conn, &w, NULL, 0) < 0) {
                snprintf(f->err, sizeof f->err, "send WELCOME: %m");
                return NULL;
        }
        while (f->n_regions < f->want_regions) {
                t = fake_recv_raw(f, 5000, fds, &nfds);
                if (t != DEDUP_MSG_REGION) {
                        snprintf(f->err, sizeof f->err, "expected REGION, got %d", t);
                        return NULL;
                }
                const struct dedup_msg_region *r = (const void *) f->buf;
                if (dedup_proto_check_region_fds(fds[0], fds[1], r->memfd_offset, r->size, &why) < 0) {
                        snprintf(f->err, sizeof f->err, "REGION fds: %s", why);
                        return NULL;
                }
                if (r->region_id != f->n_regions) {
                        snprintf(f->err, sizeof f->err, "REGION id %u", r->region_id);
                        return NULL;
                }
                f->memfd[f->n_regions] = fds[0];
                f->hva[f->n_regions] = r->hva;
                f->size[f->n_regions] = r->size;
                f->n_regions++;
                if (f->uffd < 0)
                        f->uffd = fds[1];
                else
                        close(fds[1]);
        }
        return NULL;
}

static void fake_serve_async(Fake *f, size_t want_regions) {
        f->want_regions = want_regions;
        ck_assert_int_eq(pthread_create(&f->thr, NULL, fake_handshake_thread, f), 0);
}

static void fake_join(Fake *f) {
        pthread_join(f->thr, NULL);
        ck_assert_msg(f->err[0] == 0, "fake daemon: %s", f->err);
}

static void fake_close(Fake *f) {
        if (f->conn >= 0)
                close(f->conn);
        f->conn = -1;
}

static void fake_free(Fake *f) {
        fake_close(f);
        close(f->lfd);
        if (f->uffd >= 0)
                close(f->uffd);
        for (int i = 0; i < 4; i++)
                if (f->memfd[i] >= 0)
                        close(f->memfd[i]);
        free(f->merged);
        free(f->buf);
}

static void fake_note(Fake *f) {
        const struct dedup_msg_ranges *m = (const void *) f->buf;
        for (uint32_t i = 0; i < m->count; i++) {
                if (m->hdr.type == DEDUP_MSG_UNMERGED) {
                        f->unmerged_pages += m->ranges[i].npages;
                        f->last_unmerged = m->ranges[i];
                        if (f->merged && m->ranges[i].region_id == 0)
                                memset(f->merged + m->ranges[i].offset / PAGE, 0, m->ranges[i].npages);
                } else
                        f->written_pages += m->ranges[i].npages;
        }
        if (m->hdr.type == DEDUP_MSG_UNMERGED)
                f->unmerged_msgs++;
        else
                f->written_msgs++;
}

/* Wait for a message of type (news in between is noted); returns type,
 * 0 on EOF, -ETIMEDOUT. A late REGION is stored. */
static int fake_wait(Fake *f, int type, int timeout_ms) {
        uint64_t deadline = now_ns() + (uint64_t) timeout_ms * 1000000u;

        for (;;) {
                int fds[2];
                size_t nfds = 0;
                int64_t left = (int64_t) (deadline - now_ns()) / 1000000;
                int t = fake_recv_raw(f, left > 0 ? (int) left : 0, fds, &nfds);

                ck_assert_msg(f->err[0] == 0, "%s", f->err);
                if (t <= 0)
                        return t;
                if (t == DEDUP_MSG_REGION) {
                        const struct dedup_msg_region *r = (const void *) f->buf;
                        ck_assert_uint_eq(r->region_id, f->n_regions);
                        f->memfd[f->n_regions] = fds[0];
                        f->hva[f->n_regions] = r->hva;
                        f->size[f->n_regions] = r->size;
                        f->n_regions++;
                        close(fds[1]);
                } else if ((t == DEDUP_MSG_UNMERGED && !(((struct dedup_msg_ranges *) f->buf)->flags &
                                                          DEDUP_RANGES_F_REPLY)) ||
                           t == DEDUP_MSG_WRITTEN)
                        fake_note(f);
                if (t == type)
                        return t;
        }
}

/* Read whatever news is queued, without waiting. */
static void fake_drain(Fake *f) {
        while (fake_wait(f, -1, 0) > 0)
                ;
}

static int fake_protect(Fake *f, uint32_t region, uint64_t first, uint64_t n, bool protect) {
        struct uffdio_writeprotect wp = {
                .range = { .start = f->hva[region] + first * PAGE, .len = n * PAGE },
                .mode = protect ? UFFDIO_WRITEPROTECT_MODE_WP : 0,
        };
        return ioctl(f->uffd, UFFDIO_WRITEPROTECT, &wp) < 0 ? -errno : 0;
}

static void fake_send_pool(Fake *f, uint32_t id, int fd, uint64_t size) {
        struct dedup_msg_pool m = { .pool_id = id, .size = size };
        dedup_proto_init_header(&m.hdr, DEDUP_MSG_POOL, sizeof m, ++f->seq);
        ck_assert_int_eq(dedup_proto_send(f->conn, &m, &fd, 1), 0);
}

/* Send REMAP, wait for its REPLY; statuses copied into e[i].status. */
static int fake_remap(Fake *f, struct dedup_remap_entry *e, uint32_t count) {
        size_t len = dedup_msg_remap_size(count);
        struct dedup_msg_remap *m = calloc(1, len);
        uint32_t seq = ++f->seq;
        int t;

        ck_assert_ptr_nonnull(m);
        dedup_proto_init_header(&m->hdr, DEDUP_MSG_REMAP, (uint32_t) len, seq);
        m->count = count;
        memcpy(m->entries, e, count * sizeof *e);
        for (uint32_t i = 0; i < count; i++)
                m->entries[i].status = 0;
        ck_assert_int_eq(dedup_proto_send(f->conn, m, NULL, 0), 0);
        free(m);

        t = fake_wait(f, DEDUP_MSG_REMAP_REPLY, 10000);
        if (t != DEDUP_MSG_REMAP_REPLY)
                return t;
        const struct dedup_msg_remap *r = (const void *) f->buf;
        ck_assert_uint_eq(r->hdr.seq, seq);
        ck_assert_uint_eq(r->count, count);
        for (uint32_t i = 0; i < count; i++) {
                struct dedup_remap_entry a = r->entries[i], b = e[i];
                a.status = b.status = 0;
                ck_assert_int_eq(memcmp(&a, &b, sizeof a), 0);
                e[i].status = r->entries[i].status;
        }
        return t;
}

static struct dedup_remap_entry entry(uint32_t region, uint64_t first, uint32_t n, uint32_t pool, uint64_t pool_first) {
        return (struct dedup_remap_entry) {
                .region_id = region,
                .pool_id = pool,
                .offset = first * PAGE,
                .pool_offset = pool == DEDUP_POOL_ZERO ? 0 : pool_first * PAGE,
                .npages = n,
                .cookie = first ^ 0xc00c1e,
        };
}

/* One-run merge as dedupd does it: protect, compare by pread, REMAP. */
static uint32_t fake_merge(Fake *f, TPool *pool, uint32_t region, uint64_t first, uint32_t n, uint32_t pool_id,
                           uint64_t pool_first) {
        uint8_t a[PAGE], b[PAGE];
        struct dedup_remap_entry e = entry(region, first, n, pool_id, pool_first);

        ck_assert_int_eq(fake_protect(f, region, first, n, true), 0);
        for (uint32_t i = 0; i < n; i++) {
                ck_assert_int_eq(pread(f->memfd[region], a, PAGE, (off_t) ((first + i) * PAGE)), PAGE);
                if (pool_id == DEDUP_POOL_ZERO)
                        memset(b, 0, PAGE);
                else
                        ck_assert_int_eq(pread(pool->ro_fd, b, PAGE, (off_t) ((pool_first + i) * PAGE)), PAGE);
                if (memcmp(a, b, PAGE) != 0) {
                        fake_protect(f, region, first, n, false);
                        return UINT32_MAX;
                }
        }
        ck_assert_int_eq(fake_remap(f, &e, 1), DEDUP_MSG_REMAP_REPLY);
        if (e.status != DEDUP_REMAP_DONE)
                fake_protect(f, region, first, n, false);
        return e.status;
}

static int fake_unmerge_flags(Fake *f, const struct dedup_range *r, uint32_t count, uint32_t flags) {
        size_t len = dedup_msg_ranges_size(count);
        struct dedup_msg_ranges *m = calloc(1, len);
        uint32_t seq = ++f->seq;
        int t;

        dedup_proto_init_header(&m->hdr, DEDUP_MSG_UNMERGE, (uint32_t) len, seq);
        m->count = count;
        m->flags = flags;
        memcpy(m->ranges, r, count * sizeof *r);
        ck_assert_int_eq(dedup_proto_send(f->conn, m, NULL, 0), 0);
        free(m);
        for (;;) {
                t = fake_wait(f, DEDUP_MSG_UNMERGED, 10000);
                if (t != DEDUP_MSG_UNMERGED)
                        return t;
                const struct dedup_msg_ranges *rep = (const void *) f->buf;
                if (!(rep->flags & DEDUP_RANGES_F_REPLY))
                        continue; /* news, noted by fake_wait() */
                ck_assert_uint_eq(rep->hdr.seq, seq);
                ck_assert_uint_eq(rep->count, count);
                ck_assert_int_eq(memcmp(rep->ranges, r, count * sizeof *r), 0);
                return t;
        }
}

static int fake_unmerge(Fake *f, const struct dedup_range *r, uint32_t count) {
        return fake_unmerge_flags(f, r, count, 0);
}

/* ---- environment: guest + agent + fake daemon + one pool ---- */

typedef struct Env {
        Guest g;
        Fake f;
        TPool pool;
        dedup_client *c;
} Env;

static void env_start(Env *e, size_t npages, size_t pool_pages, int madv) {
        memset(e, 0, sizeof *e);
        guest_new(&e->g, npages, madv);
        fake_listen(&e->f);
        ck_assert_int_eq(dedup_client_new(e->f.path, "test-vm", "0b1e6a9c-3d5f-4a7e-9c2b-1f0e3d4c5b6a", &e->c), 0);
        ck_assert_int_eq(dedup_client_export_region(e->c, e->g.memfd, 0, npages * PAGE, e->g.hva, 0x100000), 0);
        fake_serve_async(&e->f, 1);
        ck_assert_int_eq(dedup_client_start(e->c), 0);
        fake_join(&e->f);
        pool_new(&e->pool, pool_pages);
        fake_send_pool(&e->f, POOL_ID, e->pool.ro_fd, pool_pages * PAGE);
}

static void env_stop(Env *e) {
        dedup_client_free(e->c);
        fake_free(&e->f);
        close(e->pool.ro_fd);
        guest_free(&e->g);
}

static dedup_client_stats stats(Env *e) {
        dedup_client_stats s;
        ck_assert_int_eq(dedup_client_get_stats(e->c, &s), 0);
        return s;
}

/* A write of value at byte at of merged page p came back: reported
 * UNMERGED, the same in the guest's mapping and in the memfd, which is
 * mapped there again. */
static void expect_rehomed(Env *e, unsigned p, unsigned at, uint8_t value) {
        uint8_t want[PAGE], got[PAGE];

        ck_assert_int_eq(fake_wait(&e->f, DEDUP_MSG_UNMERGED, 2000), DEDUP_MSG_UNMERGED);
        ck_assert_uint_eq(e->f.last_unmerged.offset, (uint64_t) p * PAGE);
        ck_assert_uint_eq(e->f.last_unmerged.npages, 1);
        pattern(want, p);
        want[at] = value;
        ck_assert_int_eq(memcmp(e->g.hva + (size_t) p * PAGE, want, PAGE), 0);
        ck_assert_int_eq(pread(e->g.memfd, got, PAGE, (off_t) p * PAGE), PAGE);
        ck_assert_int_eq(memcmp(got, want, PAGE), 0);
        ck_assert(vma_has_flag(e->g.hva + (size_t) p * PAGE, "sh"));
}

/* ---- (a) merge onto a read-only pool ---- */

START_TEST(test_merge) {
        Env e;
        uint8_t want[PAGE], got[PAGE];

        env_start(&e, 64, 32, -1);
        for (unsigned p = 0; p < 64; p++)
                pattern(e.g.hva + p * PAGE, p >= 8 && p < 24 ? p - 8 : 100 + p);
        uint64_t before = memfd_blocks(e.g.memfd);
        ck_assert(vma_has_flag(e.g.hva, "uw"));

        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 8, 16, POOL_ID, 0), DEDUP_REMAP_DONE);
        /* Content through hva is unchanged; the memfd run is a hole now. */
        for (unsigned p = 0; p < 64; p++) {
                pattern(want, p >= 8 && p < 24 ? p - 8 : 100 + p);
                ck_assert_int_eq(memcmp(e.g.hva + p * PAGE, want, PAGE), 0);
        }
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), before - 16 * PAGE / 512);
        ck_assert_int_eq(pread(e.g.memfd, got, PAGE, 10 * PAGE), PAGE);
        memset(want, 0, PAGE);
        ck_assert_int_eq(memcmp(got, want, PAGE), 0);
        /* Mapped from the pool file, privately, still write-protected. */
        uint64_t pm = pagemap_entry(e.g.hva + 10 * PAGE);
        ck_assert(pm & PM_FILE);
        ck_assert(pm & PM_UFFD_WP);
        ck_assert(!vma_has_flag(e.g.hva + 10 * PAGE, "sh"));
        ck_assert(vma_has_flag(e.g.hva + 10 * PAGE, "uw"));

        /* Several single-page entries in one batch, pool pages out of order. */
        for (unsigned i = 0; i < 3; i++)
                pattern(e.g.hva + (40 + 2 * i) * PAGE, 20 + i);
        struct dedup_remap_entry b[3];
        for (unsigned i = 0; i < 3; i++) {
                ck_assert_int_eq(fake_protect(&e.f, 0, 40 + 2 * i, 1, true), 0);
                b[i] = entry(0, 40 + 2 * i, 1, POOL_ID, 20 + i);
        }
        ck_assert_int_eq(fake_remap(&e.f, b, 3), DEDUP_MSG_REMAP_REPLY);
        for (unsigned i = 0; i < 3; i++) {
                ck_assert_uint_eq(b[i].status, DEDUP_REMAP_DONE);
                pattern(want, 20 + i);
                ck_assert_int_eq(memcmp(e.g.hva + (40 + 2 * i) * PAGE, want, PAGE), 0);
        }

        dedup_client_stats s = stats(&e);
        ck_assert_uint_eq(s.remapped_pages, 19);
        ck_assert_uint_eq(s.merged_pages, 19);
        ck_assert_int_eq(s.connected, 1);
        env_stop(&e);
}
END_TEST

/* ---- (b) writers vs. protect/remap/unmerge loop, shadow-checked ---- */

#define STRESS_PAGES 64
#define STRESS_POOL 16

typedef struct Writer {
        Env *e;
        unsigned first, n;              /* pages owned */
        uint8_t *shadow;                /* the whole guest's expected content */
        atomic_bool *stop;
        uint64_t ops, bad;
        unsigned seed;
} Writer;

static void *writer_thread(void *userdata) {
        Writer *w = userdata;
        uint8_t canon[PAGE];

        while (!atomic_load_explicit(w->stop, memory_order_relaxed)) {
                unsigned r = rand_r(&w->seed);
                unsigned p = w->first + r % w->n;
                uint8_t *g = w->e->g.hva + p * PAGE, *s = w->shadow + p * PAGE;

                switch ((r >> 8) % 16) {
                case 0: /* a page that can merge */
                        pattern(canon, (r >> 12) % STRESS_POOL);
                        memcpy(g, canon, PAGE);
                        memcpy(s, canon, PAGE);
                        break;
                case 1: /* a zero page */
                        memset(g, 0, PAGE);
                        memset(s, 0, PAGE);
                        break;
                case 2: case 3: case 4: case 5: /* read only */
                        break;
                default: {
                        unsigned off = (r >> 12) % PAGE;
                        uint8_t v = (uint8_t) (r >> 20);
                        g[off] = v;
                        s[off] = v;
                }
                }
                /* Our own pages: what we see must be what we wrote. */
                if (memcmp(g, s, PAGE) != 0)
                        w->bad++;
                w->ops++;
        }
        return NULL;
}

/* Which canonical page (or -2 for zero, -1 none) equals buf? */
static int identify(const uint8_t *buf) {
        uint8_t c[PAGE];
        bool zero = true;
        for (unsigned i = 0; i < PAGE && zero; i++)
                zero = buf[i] == 0;
        if (zero)
                return -2;
        for (unsigned k = 0; k < STRESS_POOL; k++) {
                pattern(c, k);
                if (memcmp(buf, c, PAGE) == 0)
                        return (int) k;
        }
        return -1;
}

START_TEST(test_stress) {
        Env e;
        Writer w[2];
        pthread_t t[2];
        atomic_bool stop = false;
        uint8_t *shadow = calloc(STRESS_PAGES, PAGE);
        unsigned seed = 12345;
        uint64_t done = 0, aborted = 0, failed = 0, unmerges = 0, transient = 0;
        double secs = getenv("DEDUP_TEST_STRESS_SECS") ? atof(getenv("DEDUP_TEST_STRESS_SECS")) : 4.0;

        env_start(&e, STRESS_PAGES, STRESS_POOL, -1);
        e.f.merged = calloc(STRESS_PAGES, 1);
        memset(e.g.hva, 0, STRESS_PAGES * PAGE); /* allocate, and match shadow */

        for (int i = 0; i < 2; i++) {
                w[i] = (Writer) { .e = &e, .first = i * STRESS_PAGES / 2, .n = STRESS_PAGES / 2,
                                  .shadow = shadow, .stop = &stop, .seed = 777u + (unsigned) i };
                ck_assert_int_eq(pthread_create(&t[i], NULL, writer_thread, &w[i]), 0);
        }

        uint64_t end = now_ns() + (uint64_t) (secs * 1e9);
        while (now_ns() < end) {
                unsigned r = rand_r(&seed);
                unsigned p = r % STRESS_PAGES, n = 1 + (r >> 8) % 4;
                uint8_t buf[PAGE];

                fake_drain(&e.f);
                if (p + n > STRESS_PAGES || (p / 32) != ((p + n - 1) / 32))
                        n = 1;

                if ((r >> 16) % 8 == 0) {
                        /* Un-merge whatever we believe merged around p. */
                        struct dedup_range rg = { .region_id = 0, .npages = n, .offset = p * PAGE };
                        ck_assert_int_eq(fake_unmerge(&e.f, &rg, 1), DEDUP_MSG_UNMERGED);
                        memset(e.f.merged + p, 0, n);
                        unmerges++;
                        continue;
                }

                bool any_merged = false;
                for (unsigned i = 0; i < n; i++)
                        any_merged |= e.f.merged[p + i];
                if (any_merged)
                        continue;

                /* Step 1-2: protect, read through the memfd, compare. */
                ck_assert_int_eq(fake_protect(&e.f, 0, p, n, true), 0);
                int k0 = -1;
                bool ok = true;
                for (unsigned i = 0; i < n && ok; i++) {
                        ck_assert_int_eq(pread(e.f.memfd[0], buf, PAGE, (off_t) ((p + i) * PAGE)), PAGE);
                        int k = identify(buf);
                        if (i == 0)
                                k0 = k;
                        ok = k != -1 && (k0 == -2 ? k == -2 : (k >= 0 && k == k0 + (int) i));
                }
                if (ok && k0 >= 0 && k0 + n > STRESS_POOL)
                        ok = false;
                if (!ok || (r >> 20) % 5 == 0) {
                        ck_assert_int_eq(fake_protect(&e.f, 0, p, n, false), 0);
                        transient++;
                        continue;
                }
                struct dedup_remap_entry en =
                        entry(0, p, n, k0 == -2 ? DEDUP_POOL_ZERO : POOL_ID, k0 == -2 ? 0 : (uint64_t) k0);
                ck_assert_int_eq(fake_remap(&e.f, &en, 1), DEDUP_MSG_REMAP_REPLY);
                if (en.status == DEDUP_REMAP_DONE) {
                        memset(e.f.merged + p, 1, n);
                        done++;
                } else {
                        ck_assert_int_eq(fake_protect(&e.f, 0, p, n, false), 0);
                        if (en.status == DEDUP_REMAP_ABORTED)
                                aborted++;
                        else
                                failed++;
                }
        }

        atomic_store(&stop, true);
        for (int i = 0; i < 2; i++)
                pthread_join(t[i], NULL);

        uint64_t bad_bytes = 0;
        for (size_t i = 0; i < STRESS_PAGES * PAGE; i++)
                bad_bytes += e.g.hva[i] != shadow[i];

        /* Un-merge everything: the memfd must then hold exactly the shadow. */
        usleep(50000);
        fake_drain(&e.f);
        struct dedup_range all[STRESS_PAGES / 32] = {
                { .region_id = 0, .npages = 32, .offset = 0 },
                { .region_id = 0, .npages = 32, .offset = 32 * PAGE },
        };
        ck_assert_int_eq(fake_unmerge(&e.f, all, 2), DEDUP_MSG_UNMERGED);
        uint64_t bad_memfd = 0;
        uint8_t *back = malloc(STRESS_PAGES * PAGE);
        ck_assert_int_eq(pread(e.g.memfd, back, STRESS_PAGES * PAGE, 0), (ssize_t) (STRESS_PAGES * PAGE));
        for (size_t i = 0; i < STRESS_PAGES * PAGE; i++)
                bad_memfd += back[i] != shadow[i];

        dedup_client_stats s = stats(&e);
        printf("stress %.1fs: writer ops %" PRIu64 ", merges done %" PRIu64 " aborted %" PRIu64 " failed %" PRIu64
               ", transient protects %" PRIu64 ", unmerges %" PRIu64 "; agent: cow_breaks %" PRIu64
               " written_faults %" PRIu64 "; UNMERGED news %" PRIu64 " pages, WRITTEN news %" PRIu64
               " pages; wrong bytes: seen by writers %" PRIu64 ", final %" PRIu64 ", memfd %" PRIu64 "\n",
               secs, w[0].ops + w[1].ops, done, aborted, failed, transient, unmerges, s.cow_breaks,
               s.written_faults, e.f.unmerged_pages, e.f.written_pages, w[0].bad + w[1].bad, bad_bytes, bad_memfd);
        ck_assert_uint_eq(w[0].bad + w[1].bad, 0);
        ck_assert_uint_eq(bad_bytes, 0);
        ck_assert_uint_eq(bad_memfd, 0);
        ck_assert_uint_eq(failed, 0);
        ck_assert_uint_gt(done, 10);
        ck_assert_uint_gt(s.cow_breaks, 0);
        ck_assert_uint_eq(s.merged_pages, 0);
        ck_assert_int_eq(s.connected, 1);
        free(back);
        free(shadow);
        env_stop(&e);
}
END_TEST

/* A write from inside the agent, in window A of remap_entry() (between
 * mmap and protect), or elsewhere. */
typedef struct WindowWrite {
        unsigned page;          /* page within the run to write */
        int value;              /* byte to write at offset 10, or -1: write the page's own content back */
        unsigned calls;
        uint8_t *at;            /* if set: write value at[10] instead, outside the run */
} WindowWrite;

static void window_hook(void *addr, size_t len, void *userdata) {
        WindowWrite *w = userdata;
        volatile uint8_t *p = w->at ? w->at : (uint8_t *) addr + (size_t) w->page * PAGE;

        w->calls++;
        if (!w->at && w->page * PAGE >= len)
                return;
        if (w->value < 0)
                p[10] = p[10]; /* COW with identical content */
        else
                p[10] = (uint8_t) w->value;
}

/* ---- (c) write after merge ---- */

START_TEST(test_write_after_merge) {
        Env e;
        uint8_t want[PAGE];

        env_start(&e, 16, 16, MADV_DONTDUMP);
        for (unsigned p = 0; p < 4; p++)
                pattern(e.g.hva + p * PAGE, p);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, 4, POOL_ID, 0), DEDUP_REMAP_DONE);
        /* madvise flags survive our mmap. */
        ck_assert(vma_has_flag(e.g.hva, "dd"));

        e.g.hva[1 * PAGE + 100] = 0xab; /* the kernel copies it; a sweep re-homes it */
        expect_rehomed(&e, 1, 100, 0xab);
        /* Back on the memfd, registered, flags kept. */
        ck_assert(vma_has_flag(e.g.hva + PAGE, "uw"));
        ck_assert(vma_has_flag(e.g.hva + PAGE, "dd"));
        ck_assert(vma_has_flag(e.g.hva + 2 * PAGE, "dd"));
        /* Neighbours still merged. */
        for (unsigned p = 0; p < 4; p++) {
                pattern(want, p);
                if (p == 1)
                        want[100] = 0xab;
                ck_assert_int_eq(memcmp(e.g.hva + p * PAGE, want, PAGE), 0);
        }
        dedup_client_stats s = stats(&e);
        ck_assert_uint_eq(s.merged_pages, 3);
        ck_assert_uint_eq(s.cow_breaks, 1);

        /* Further writes to the un-merged page do not fault. */
        e.g.hva[PAGE + 101] = 1;
        ck_assert_uint_eq(stats(&e).cow_breaks, 1);
        env_stop(&e);
}
END_TEST

/* ---- (d) zero overlay ---- */

START_TEST(test_zero_overlay) {
        Env e;
        uint8_t got[PAGE];
        const unsigned n = 32;

        env_start(&e, 64, 4, -1);
        memset(e.g.hva, 0, 64 * PAGE);
        uint64_t before = memfd_blocks(e.g.memfd);
        ck_assert_uint_eq(before, 64 * PAGE / 512);

        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 8, n, DEDUP_POOL_ZERO, 0), DEDUP_REMAP_DONE);
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), before - n * PAGE / 512);

        long anon0 = rss_anon_kb();
        uint64_t sum = 0;
        for (unsigned i = 0; i < n * PAGE; i += 64)
                sum += e.g.hva[8 * PAGE + i];
        ck_assert_uint_eq(sum, 0);
        long anon1 = rss_anon_kb();
        /* Reads allocate nothing in the memfd... */
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), before - n * PAGE / 512);
        /* ...nor anonymous memory, where reads map the shared zero page. */
        if (have_zero_page)
                ck_assert_int_lt(anon1 - anon0, 16);
        else
                printf("zero overlay: this kernel has no shared zero page for anonymous reads (e.g. "
                       "pvm_no_zero_page=1); reading %u overlay pages grew RssAnon by %ld KiB\n", n, anon1 - anon0);

        /* A write re-homes the page into the memfd. */
        e.g.hva[(8 + 5) * PAGE + 7] = 0x5a;
        ck_assert_int_eq(fake_wait(&e.f, DEDUP_MSG_UNMERGED, 2000), DEDUP_MSG_UNMERGED);
        ck_assert_uint_eq(e.f.last_unmerged.offset, 13 * PAGE);
        ck_assert_int_eq(pread(e.g.memfd, got, PAGE, 13 * PAGE), PAGE);
        ck_assert_uint_eq(got[7], 0x5a);
        got[7] = 0;
        for (unsigned i = 0; i < PAGE; i++)
                ck_assert_uint_eq(got[i], 0);
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), before - (n - 1) * PAGE / 512);
        ck_assert_uint_eq(e.g.hva[13 * PAGE + 7], 0x5a);
        ck_assert_uint_eq(e.g.hva[14 * PAGE + 7], 0);
        ck_assert_uint_eq(stats(&e).merged_pages, n - 1);
        env_stop(&e);
}
END_TEST

/* ---- (e) ABORTED ---- */

START_TEST(test_aborted) {
        Env e;
        uint8_t want[PAGE];

        env_start(&e, 16, 8, -1);
        for (unsigned p = 0; p < 8; p++)
                pattern(e.g.hva + p * PAGE, p);
        uint64_t before = memfd_blocks(e.g.memfd);

        /* Written after the daemon protected it (and after it compared). */
        ck_assert_int_eq(fake_protect(&e.f, 0, 3, 1, true), 0);
        e.g.hva[3 * PAGE] ^= 0xff;
        struct dedup_remap_entry en = entry(0, 3, 1, POOL_ID, 3);
        ck_assert_int_eq(fake_remap(&e.f, &en, 1), DEDUP_MSG_REMAP_REPLY);
        ck_assert_uint_eq(en.status, DEDUP_REMAP_ABORTED);
        ck_assert_uint_ge(e.f.written_pages, 1);
        pattern(want, 3);
        want[0] ^= 0xff;
        ck_assert_int_eq(memcmp(e.g.hva + 3 * PAGE, want, PAGE), 0);
        ck_assert(vma_has_flag(e.g.hva + 3 * PAGE, "sh"));
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), before);

        /* One page of a run written: the whole run aborts, nothing changes. */
        ck_assert_int_eq(fake_protect(&e.f, 0, 4, 4, true), 0);
        e.g.hva[6 * PAGE + 9] = 1;
        en = entry(0, 4, 4, POOL_ID, 4);
        ck_assert_int_eq(fake_remap(&e.f, &en, 1), DEDUP_MSG_REMAP_REPLY);
        ck_assert_uint_eq(en.status, DEDUP_REMAP_ABORTED);
        ck_assert_uint_eq(e.g.hva[6 * PAGE + 9], 1);

        /* Never protected at all. */
        en = entry(0, 0, 1, POOL_ID, 0);
        ck_assert_int_eq(fake_remap(&e.f, &en, 1), DEDUP_MSG_REMAP_REPLY);
        ck_assert_uint_eq(en.status, DEDUP_REMAP_ABORTED);

        dedup_client_stats s = stats(&e);
        ck_assert_uint_eq(s.aborted_pages, 6);
        ck_assert_uint_eq(s.merged_pages, 0);
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), before);
        env_stop(&e);
}
END_TEST

/* ---- (f) daemon dies with writers on protected and merged pages ---- */

#define DEATH_WRITERS 8

typedef struct DeathWriter {
        uint8_t *a, *b;                 /* a merged page and a protected page */
        atomic_bool *stop;
        atomic_uint_fast64_t ops;
        _Atomic uint64_t last_ns;
        uint8_t va, vb;
} DeathWriter;

static void *death_writer(void *userdata) {
        DeathWriter *w = userdata;
        while (!atomic_load(w->stop)) {
                w->va++;
                w->vb++;
                *(volatile uint8_t *) w->a = w->va;
                *(volatile uint8_t *) w->b = w->vb;
                atomic_fetch_add(&w->ops, 1);
                atomic_store(&w->last_ns, now_ns());
        }
        return NULL;
}

START_TEST(test_daemon_death) {
        Env e;
        DeathWriter w[DEATH_WRITERS];
        pthread_t t[DEATH_WRITERS];
        atomic_bool stop = false;
        const unsigned N = 512;

        env_start(&e, 2 * N, N, -1);
        for (unsigned p = 0; p < N; p++)
                pattern(e.g.hva + p * PAGE, p);
        memset(e.g.hva + N * PAGE, 0x11, N * PAGE);
        /* Half merged, the rest protected by the "daemon". */
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, N / 2, POOL_ID, 0), DEDUP_REMAP_DONE);
        ck_assert_int_eq(fake_protect(&e.f, 0, N, N, true), 0);
        /* A big batch is in flight when the daemon dies. */
        ck_assert_int_eq(fake_protect(&e.f, 0, N / 2, N / 2, true), 0);
        size_t len = dedup_msg_remap_size(N / 2);
        struct dedup_msg_remap *m = calloc(1, len);
        dedup_proto_init_header(&m->hdr, DEDUP_MSG_REMAP, (uint32_t) len, ++e.f.seq);
        m->count = N / 2;
        for (unsigned i = 0; i < N / 2; i++)
                m->entries[i] = entry(0, N / 2 + i, 1, POOL_ID, N / 2 + i);

        for (int i = 0; i < DEATH_WRITERS; i++) {
                w[i] = (DeathWriter) { .a = e.g.hva + (unsigned) i * 7 * PAGE + 64,
                                       .b = e.g.hva + (N + (unsigned) i * 5) * PAGE + 64, .stop = &stop };
                ck_assert_int_eq(pthread_create(&t[i], NULL, death_writer, &w[i]), 0);
        }
        usleep(100000);
        ck_assert_int_eq(dedup_proto_send(e.f.conn, m, NULL, 0), 0);
        free(m);
        fake_close(&e.f);                       /* the daemon dies */
        uint64_t t_close = now_ns();
        uint64_t ops_at_close[DEATH_WRITERS];
        for (int i = 0; i < DEATH_WRITERS; i++)
                ops_at_close[i] = atomic_load(&w[i].ops);

        /* Within 1 s: agent fail-safe, every writer made progress after it. */
        bool all = false;
        while (!all && now_ns() - t_close < 1000000000u) {
                usleep(1000);
                all = stats(&e).connected == 0;
                for (int i = 0; i < DEATH_WRITERS && all; i++)
                        all = atomic_load(&w[i].last_ns) > t_close && atomic_load(&w[i].ops) > ops_at_close[i] + 100;
        }
        uint64_t waited = now_ns() - t_close;
        ck_assert_msg(all, "not every writer went on within 1 s of the daemon's death");
        printf("daemon death: fail-safe and all %d writers running again %.1f ms after close\n", DEATH_WRITERS,
               (double) waited / 1e6);

        /* Nothing is protected or registered any more; the dead daemon's uffd
         * can no longer protect anything. */
        ck_assert(!vma_has_flag(e.g.hva, "uw"));
        ck_assert(!vma_has_flag(e.g.hva + N * PAGE, "uw"));
        ck_assert_int_eq(fake_protect(&e.f, 0, N, 1, true), -ENOENT);
        for (unsigned p = N; p < 2 * N; p++)
                ck_assert(!(pagemap_entry(e.g.hva + p * PAGE) & PM_UFFD_WP));

        atomic_store(&stop, true);
        for (int i = 0; i < DEATH_WRITERS; i++)
                pthread_join(t[i], NULL);

        /* Content: writers' last values; everything else untouched. */
        uint8_t want[PAGE];
        for (unsigned p = 0; p < N; p++) {
                pattern(want, p);
                for (int i = 0; i < DEATH_WRITERS; i++)
                        if (w[i].a == e.g.hva + p * PAGE + 64)
                                want[64] = w[i].va;
                ck_assert_int_eq(memcmp(e.g.hva + p * PAGE, want, PAGE), 0);
        }
        for (int i = 0; i < DEATH_WRITERS; i++)
                ck_assert_uint_eq(*w[i].b, w[i].vb);
        /* Merged pages stay mapped from the pool; writes to them COW privately. */
        dedup_client_stats s = stats(&e);
        ck_assert_uint_gt(s.merged_pages, 0);
        ck_assert(pagemap_entry(e.g.hva + 1 * PAGE) & PM_FILE);
        e.g.hva[1 * PAGE] = 0x77;
        ck_assert_uint_eq(e.g.hva[1 * PAGE], 0x77);
        env_stop(&e);
}
END_TEST

/* ---- reconnect after the daemon's death ---- */

/* The fake daemon restarts on the same socket: forget the old connection. */
static void fake_restart(Fake *f) {
        fake_close(f);
        if (f->uffd >= 0)
                close(f->uffd);
        f->uffd = -1;
        for (size_t i = 0; i < f->n_regions; i++)
                f->memfd[i] = (close(f->memfd[i]), -1);
        f->n_regions = 0;
        f->eof = false;
}

/* A dead daemon's agent comes back to the next daemon by itself. Pages the
 * guest wrote meanwhile are back in the memfd before the REGION arrives;
 * zero overlays and pool pages the guest left alone stay merged and are
 * reported after it (ZERO_KEPT, then MERGED_KEPT naming the pool by inode,
 * the last one flagged); pool pages the daemon answers with an UNMERGE go
 * back into the memfd. An ERROR means refused, and then it does not come
 * back. */
START_TEST(test_reconnect) {
        const unsigned N = 64;
        uint8_t want[PAGE], got[PAGE];
        struct pollfd pl;
        struct stat pst;
        Env e;

        env_start(&e, 2 * N, N, -1);
        for (unsigned p = 0; p < N; p++)
                pattern(e.g.hva + p * PAGE, p);
        memset(e.g.hva + N * PAGE, 0, N * PAGE);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, N, POOL_ID, 0), DEDUP_REMAP_DONE);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, N, N, DEDUP_POOL_ZERO, 0), DEDUP_REMAP_DONE);
        ck_assert_uint_eq(stats(&e).merged_pages, 2 * N);
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), 0);
        ck_assert_int_eq(fstat(e.pool.ro_fd, &pst), 0);

        fake_restart(&e.f);                     /* the daemon dies */
        while (stats(&e).connected)
                usleep(1000);
        e.g.hva[3 * PAGE] = 0x33;               /* plain private COW now */
        e.g.hva[(N + 5) * PAGE] = 0x55;

        fake_serve_async(&e.f, 1);              /* and comes back */
        fake_join(&e.f);
        dedup_client_stats s = stats(&e);
        ck_assert_int_eq(s.connected, 1);
        ck_assert_uint_eq(s.reconnects, 1);
        ck_assert_uint_eq(s.merged_pages, 2 * N - 2);   /* all but the two written */
        int fds[DEDUP_PROTO_MAX_FDS];
        size_t nfds = 0;
        ck_assert_int_eq(fake_recv_raw(&e.f, 2000, fds, &nfds), DEDUP_MSG_ZERO_KEPT);
        const struct dedup_msg_ranges *zk = (const void *) e.f.buf;
        ck_assert_uint_eq(zk->count, 2);
        ck_assert_uint_eq(zk->ranges[0].offset, (uint64_t) N * PAGE);
        ck_assert_uint_eq(zk->ranges[0].npages, 5);
        ck_assert_uint_eq(zk->ranges[1].offset, (uint64_t) (N + 6) * PAGE);
        ck_assert_uint_eq(zk->ranges[1].npages, N - 6);
        ck_assert_int_eq(fake_recv_raw(&e.f, 2000, fds, &nfds), DEDUP_MSG_MERGED_KEPT);
        const struct dedup_msg_remap *mk = (const void *) e.f.buf;
        ck_assert_uint_eq(mk->flags, DEDUP_KEPT_F_LAST);
        ck_assert_uint_eq(mk->count, 2);
        ck_assert_uint_eq(mk->entries[0].offset, 0);
        ck_assert_uint_eq(mk->entries[0].npages, 3);
        ck_assert_uint_eq(mk->entries[0].pool_offset, 0);
        ck_assert_uint_eq(mk->entries[1].offset, 4 * PAGE);
        ck_assert_uint_eq(mk->entries[1].npages, N - 4);
        ck_assert_uint_eq(mk->entries[1].pool_offset, 4 * PAGE);
        for (unsigned i = 0; i < 2; i++) {
                ck_assert_uint_eq(mk->entries[i].cookie, (uint64_t) pst.st_ino);
                ck_assert_uint_eq(mk->entries[i].pool_id, 0);
        }
        /* Only the written pages are in the memfd; kept pages read what they
         * did and still trap writes. */
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), 2 * PAGE / 512);
        ck_assert(pagemap_entry(e.g.hva + (N + 1) * PAGE) & PM_UFFD_WP);
        ck_assert(pagemap_entry(e.g.hva + 1 * PAGE) & PM_UFFD_WP);
        e.g.hva[(N + 1) * PAGE] = 0x11;                 /* a COW break of a kept page */
        ck_assert_int_eq(fake_wait(&e.f, DEDUP_MSG_UNMERGED, 2000), DEDUP_MSG_UNMERGED);
        ck_assert_int_eq(pread(e.f.memfd[0], got, 1, (off_t) (N + 1) * PAGE), 1);
        ck_assert_uint_eq(got[0], 0x11);
        e.g.hva[(N + 1) * PAGE] = 0;
        /* The daemon does not take pool pages 8..15: back into the memfd. */
        struct dedup_range refused = { .region_id = 0, .npages = 8, .offset = 8 * PAGE };
        ck_assert_int_eq(fake_unmerge_flags(&e.f, &refused, 1, DEDUP_RANGES_F_KEPT), DEDUP_MSG_UNMERGED);
        ck_assert_uint_eq(((const struct dedup_msg_ranges *) e.f.buf)->flags,
                          DEDUP_RANGES_F_REPLY | DEDUP_RANGES_F_KEPT);
        ck_assert_uint_eq(stats(&e).merged_pages, 2 * N - 2 - 1 - 8);
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), (2 + 1 + 8) * PAGE / 512);
        for (unsigned p = 0; p < 2 * N; p++) {
                if (p < N)
                        pattern(want, p);
                else
                        memset(want, 0, PAGE);
                want[0] = p == 3 ? 0x33 : p == N + 5 ? 0x55 : want[0];
                ck_assert_msg(memcmp(e.g.hva + p * PAGE, want, PAGE) == 0, "page %u differs after reconnect", p);
                if (p != 3 && p != N + 5 && p != N + 1 && (p < 8 || p >= 16))
                        continue;       /* merged: not in the memfd */
                ck_assert_int_eq(pread(e.f.memfd[0], got, PAGE, (off_t) p * PAGE), PAGE);
                ck_assert_msg(memcmp(got, want, PAGE) == 0, "memfd page %u differs after reconnect", p);
        }
        /* Registered again: the new daemon can merge as before, with its
         * own pools (the old ones were forgotten). */
        ck_assert(vma_has_flag(e.g.hva, "uw"));
        fake_send_pool(&e.f, POOL_ID, e.pool.ro_fd, N * PAGE);
        /* Kept pages are merged pages like any other: a write to one waits
         * for no one, not even an agent stuck in a REMAP (see
         * write-agent-busy). */
        WindowWrite w = { .value = 0x20, .at = e.g.hva + 20 * PAGE };
        dedup_client_set_window_hook(e.c, window_hook, &w);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 8, 4, POOL_ID, 8), DEDUP_REMAP_DONE);
        dedup_client_set_window_hook(e.c, NULL, NULL);
        ck_assert_uint_eq(w.calls, 1);
        expect_rehomed(&e, 20, 10, 0x20);

        /* Refused: no reconnect, however long we wait. */
        struct dedup_msg_error err = { .error = EPERM };
        dedup_proto_init_header(&err.hdr, DEDUP_MSG_ERROR, sizeof err, ++e.f.seq);
        strcpy(err.text, "refused by test");
        ck_assert_int_eq(dedup_proto_send(e.f.conn, &err, NULL, 0), 0);
        while (stats(&e).connected)
                usleep(1000);
        pl = (struct pollfd) { .fd = e.f.lfd, .events = POLLIN };
        ck_assert_int_eq(poll(&pl, 1, 1500), 0);
        ck_assert_uint_eq(stats(&e).reconnects, 1);
        env_stop(&e);
}
END_TEST

/* ---- (g) malformed daemon messages ---- */

enum {
        BAD_GARBAGE,
        BAD_REGION_ID,
        BAD_RUN_PAST_REGION,
        BAD_POOL_ID,
        BAD_POOL_RANGE,
        BAD_POOL_UNSEALED,
        BAD_WRONG_DIRECTION,
        BAD_ERROR,
        BAD_UNMERGE_RANGE,
        BAD_FDS,
        _BAD_MAX,
};

START_TEST(test_malformed) {
        Env e;
        Msg *m = aligned_alloc(8, sizeof(Msg));
        const unsigned N = 16;

        env_start(&e, N, 4, -1);
        for (unsigned p = 0; p < 4; p++)
                pattern(e.g.hva + p * PAGE, p);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, 2, POOL_ID, 0), DEDUP_REMAP_DONE);
        ck_assert_int_eq(fake_protect(&e.f, 0, 4, N - 4, true), 0);

        memset(m, 0, sizeof *m);
        switch (_i) {
        case BAD_GARBAGE:
                memset(m, 0xee, 64);
                ck_assert_int_eq(send(e.f.conn, m, 64, 0), 64);
                break;
        case BAD_REGION_ID: {
                struct dedup_remap_entry en = entry(5, 0, 1, POOL_ID, 0);
                ck_assert_int_eq(fake_remap(&e.f, &en, 1), 0);
                break;
        }
        case BAD_RUN_PAST_REGION: {
                struct dedup_remap_entry en = entry(0, N - 1, 2, POOL_ID, 0);
                ck_assert_int_eq(fake_remap(&e.f, &en, 1), 0);
                break;
        }
        case BAD_POOL_ID: {
                struct dedup_remap_entry en = entry(0, 4, 1, 99, 0);
                ck_assert_int_eq(fake_remap(&e.f, &en, 1), 0);
                break;
        }
        case BAD_POOL_RANGE: {
                struct dedup_remap_entry en = entry(0, 4, 2, POOL_ID, 3);
                ck_assert_int_eq(fake_remap(&e.f, &en, 1), 0);
                break;
        }
        case BAD_POOL_UNSEALED: {
                int fd = memfd_create("unsealed", MFD_CLOEXEC);
                ck_assert_int_eq(ftruncate(fd, PAGE), 0);
                fake_send_pool(&e.f, 2, fd, PAGE);
                close(fd);
                break;
        }
        case BAD_WRONG_DIRECTION: {
                struct dedup_msg_hello *h = (void *) m;
                dedup_proto_init_header(&h->hdr, DEDUP_MSG_HELLO, sizeof *h, 1);
                strcpy(h->name, "x");
                h->pid = 1;
                ck_assert_int_eq(dedup_proto_send(e.f.conn, h, NULL, 0), 0);
                break;
        }
        case BAD_ERROR: {
                struct dedup_msg_error *er = (void *) m;
                dedup_proto_init_header(&er->hdr, DEDUP_MSG_ERROR, sizeof *er, 1);
                er->error = ENOSPC;
                ck_assert_int_eq(dedup_proto_send(e.f.conn, er, NULL, 0), 0);
                break;
        }
        case BAD_UNMERGE_RANGE: {
                struct dedup_range rg = { .region_id = 0, .npages = 4, .offset = (N - 2) * PAGE };
                ck_assert_int_eq(fake_unmerge(&e.f, &rg, 1), 0);
                break;
        }
        case BAD_FDS: { /* a REMAP carrying an fd */
                struct dedup_msg_remap *r = (void *) m;
                size_t len = dedup_msg_remap_size(1);
                dedup_proto_init_header(&r->hdr, DEDUP_MSG_REMAP, (uint32_t) len, 1);
                r->count = 1;
                r->entries[0] = entry(0, 4, 1, POOL_ID, 0);
                int fd = e.g.memfd;
                ck_assert_int_eq(dedup_proto_send(e.f.conn, r, &fd, 1), 0);
                break;
        }
        }

        /* The agent hangs up and goes fail-safe. */
        ck_assert_int_eq(fake_wait(&e.f, -1, 2000), 0);
        ck_assert(e.f.eof);
        ck_assert_int_eq(stats(&e).connected, 0);
        ck_assert(!vma_has_flag(e.g.hva + 4 * PAGE, "uw"));
        /* The VMM is fine: protected pages writable, merged pages right. */
        memset(e.g.hva + 4 * PAGE, 0x42, (N - 4) * PAGE);
        uint8_t want[PAGE];
        for (unsigned p = 0; p < 4; p++) {
                pattern(want, p);
                ck_assert_int_eq(memcmp(e.g.hva + p * PAGE, want, PAGE), 0);
        }
        e.g.hva[0] = 9;
        ck_assert_uint_eq(e.g.hva[0], 9);
        free(m);
        env_stop(&e);
}
END_TEST

/* ---- UNMERGE from the daemon ---- */

START_TEST(test_unmerge) {
        Env e;
        uint8_t want[PAGE], got[PAGE];

        env_start(&e, 32, 16, MADV_DONTDUMP);
        for (unsigned p = 0; p < 16; p++)
                pattern(e.g.hva + p * PAGE, p);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, 8, POOL_ID, 0), DEDUP_REMAP_DONE);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 10, 4, POOL_ID, 10), DEDUP_REMAP_DONE);
        ck_assert_uint_eq(stats(&e).merged_pages, 12);

        /* Ranges that mix merged and plain pages. */
        struct dedup_range rg[2] = {
                { .region_id = 0, .npages = 6, .offset = 4 * PAGE },  /* 4..9: 4 merged */
                { .region_id = 0, .npages = 20, .offset = 12 * PAGE }, /* 12..31: 2 merged */
        };
        ck_assert_int_eq(fake_unmerge(&e.f, rg, 2), DEDUP_MSG_UNMERGED);
        ck_assert_uint_eq(stats(&e).merged_pages, 6);
        for (unsigned p = 0; p < 16; p++) {
                pattern(want, p);
                ck_assert_int_eq(memcmp(e.g.hva + p * PAGE, want, PAGE), 0);
                ck_assert_int_eq(pread(e.g.memfd, got, PAGE, (off_t) (p * PAGE)), PAGE);
                bool merged = p < 4 || p == 10 || p == 11;
                if (!merged)
                        ck_assert_int_eq(memcmp(got, want, PAGE), 0);
        }
        ck_assert(vma_has_flag(e.g.hva + 5 * PAGE, "sh"));
        ck_assert(vma_has_flag(e.g.hva + 5 * PAGE, "dd"));
        ck_assert(!vma_has_flag(e.g.hva + 2 * PAGE, "sh"));
        /* Un-merged pages are plain again: writes do not break COW. */
        e.g.hva[5 * PAGE] = 3;
        ck_assert_uint_eq(stats(&e).cow_breaks, 0);
        env_stop(&e);
}
END_TEST

/* ---- a daemon behind on reading ---- */

/* The daemon reads nothing while the guest breaks COW on thousands of
 * pages, one fault at a time. The agent must keep the news, coalesced,
 * and stay connected: it used to queue a message per fault, hit its queue
 * limit and drop the connection (failsafe) under an ordinary load. */
START_TEST(test_news_backlog) {
        enum { N = 10240, RUN = DEDUP_PROTO_MAX_RUN };
        Env e;
        uint8_t want[PAGE];

        env_start(&e, N, N, MADV_DONTDUMP);
        for (unsigned p = 0; p < N; p++)
                pattern(e.g.hva + p * PAGE, p);
        for (unsigned p = 0; p < N; p += RUN)
                ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, p, RUN, POOL_ID, p), DEDUP_REMAP_DONE);

        /* Every other page: no two news ranges are adjacent. */
        for (unsigned p = 0; p < N; p += 2)
                e.g.hva[p * PAGE + 7] ^= 0xff;
        ck_assert_uint_eq(stats(&e).cow_breaks, N / 2);
        ck_assert_uint_eq(stats(&e).connected, 1);

        /* The agent sends the rest as the socket takes it. */
        while (e.f.unmerged_pages < N / 2 && fake_wait(&e.f, DEDUP_MSG_UNMERGED, 5000) == DEDUP_MSG_UNMERGED)
                ;
        ck_assert_uint_eq(e.f.unmerged_pages, N / 2);
        ck_assert_uint_lt(e.f.unmerged_msgs, N / 2 / 8);
        ck_assert_uint_eq(stats(&e).connected, 1);
        for (unsigned p = 0; p < N; p++) {
                pattern(want, p);
                if (p % 2 == 0)
                        want[7] ^= 0xff;
                ck_assert_int_eq(memcmp(e.g.hva + p * PAGE, want, PAGE), 0);
        }
        env_stop(&e);
}
END_TEST

/* ---- start without a daemon, refused handshake ---- */

START_TEST(test_no_daemon) {
        Guest g;
        dedup_client *c;
        Fake f;

        guest_new(&g, 8, -1);
        ck_assert_int_eq(dedup_client_new("/nonexistent/dedupd.sock", "test-vm", NULL, &c), 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 8 * PAGE, g.hva, 0), 0);
        ck_assert_int_eq(dedup_client_start(c), -ENOENT);
        ck_assert(!vma_has_flag(g.hva, "uw"));
        g.hva[0] = 1;
        dedup_client_free(c);

        /* A socket file nobody listens on. */
        char dir[] = "/tmp/test-client-XXXXXX", path[128];
        ck_assert_ptr_nonnull(mkdtemp(dir));
        snprintf(path, sizeof path, "%s/vmm.sock", dir);
        int s = socket(AF_UNIX, SOCK_SEQPACKET, 0);
        struct sockaddr_un sa = { .sun_family = AF_UNIX };
        strcpy(sa.sun_path, path);
        ck_assert_int_eq(bind(s, (struct sockaddr *) &sa, sizeof sa), 0);
        close(s);
        ck_assert_int_eq(dedup_client_new(path, "test-vm", NULL, &c), 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 8 * PAGE, g.hva, 0), 0);
        ck_assert_int_eq(dedup_client_start(c), -ECONNREFUSED);
        ck_assert(!vma_has_flag(g.hva, "uw"));

        /* $DEDUPD_SOCKET is used when no path is given. */
        dedup_client *c2;
        setenv("DEDUPD_SOCKET", path, 1);
        ck_assert_int_eq(dedup_client_new(NULL, "test-vm", NULL, &c2), 0);
        ck_assert_int_eq(dedup_client_start(c2), -ECONNREFUSED);
        dedup_client_free(c2);
        unsetenv("DEDUPD_SOCKET");
        unlink(path);
        rmdir(dir);

        /* The same client can start later, once a daemon is there... which
         * here refuses it with an ERROR: its errno comes back. */
        fake_listen(&f);
        dedup_client_free(c);
        ck_assert_int_eq(dedup_client_new(f.path, "test-vm", NULL, &c), 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 8 * PAGE, g.hva, 0), 0);
        f.reply_error = EPERM;
        fake_serve_async(&f, 0);
        ck_assert_int_eq(dedup_client_start(c), -EPERM);
        fake_join(&f);
        ck_assert(!vma_has_flag(g.hva, "uw"));
        fake_close(&f);
        f.reply_error = 0;
        fake_serve_async(&f, 1);
        ck_assert_int_eq(dedup_client_start(c), 0);
        fake_join(&f);
        ck_assert(vma_has_flag(g.hva, "uw"));
        ck_assert_int_eq(dedup_client_start(c), -EALREADY);
        dedup_client_free(c);
        ck_assert(!vma_has_flag(g.hva, "uw"));
        fake_free(&f);
        guest_free(&g);
}
END_TEST

/* ---- argument validation ---- */

START_TEST(test_validation) {
        Guest g;
        dedup_client *c;
        char tmpl[] = "/tmp/test-client-XXXXXX";

        ck_assert_int_eq(dedup_client_new(NULL, "", NULL, &c), -EINVAL);
        ck_assert_int_eq(dedup_client_new(NULL, "a/b", NULL, &c), -EINVAL);
        ck_assert_int_eq(dedup_client_new(NULL, "vm", "not-a-uuid", &c), -EINVAL);
        ck_assert_int_eq(dedup_client_new(NULL, NULL, NULL, &c), -EINVAL);
        ck_assert_int_eq(dedup_client_new(NULL, "vm", NULL, NULL), -EINVAL);
        dedup_client_free(NULL);

        guest_new(&g, 16, -1);
        ck_assert_int_eq(dedup_client_new(NULL, "vm", "0B1E6A9C-3D5F-4A7E-9C2B-1F0E3D4C5B6A", &c), 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 0, g.hva, 0), -EINVAL);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 100, g.hva, 0), -EINVAL);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 1, PAGE, g.hva, 0), -EINVAL);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, PAGE, g.hva + 1, 0), -EINVAL);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, PAGE, g.hva, 5), -EINVAL);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 17 * PAGE, g.hva, 0), -EINVAL); /* > memfd */
        int reg = mkstemp(tmpl);
        unlink(tmpl);
        ck_assert_int_eq(ftruncate(reg, 16 * PAGE), 0);
        ck_assert_int_eq(dedup_client_export_region(c, reg, 0, PAGE, g.hva, 0), -EINVAL); /* not a memfd */
        close(reg);
        /* hva must map this memfd, shared, at this offset. */
        uint8_t *anon = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 4 * PAGE, anon, 0), -EINVAL);
        uint8_t *priv = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, g.memfd, 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 4 * PAGE, priv, 0), -EINVAL);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, PAGE, 4 * PAGE, g.hva, 0), -EINVAL);
        uint8_t *holed = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, g.memfd, 0);
        munmap(holed + PAGE, PAGE); /* a hole */
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 4 * PAGE, holed, 0), -EFAULT);
        munmap(holed, 4 * PAGE);
        /* Good ones, then an overlap. */
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 0, 8 * PAGE, g.hva, 0), 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 8 * PAGE, 8 * PAGE, g.hva + 8 * PAGE, 1 << 20), 0);
        ck_assert_int_eq(dedup_client_export_region(c, g.memfd, 4 * PAGE, 4 * PAGE, g.hva + 4 * PAGE, 0), -EEXIST);
        dedup_client_free(c);
        munmap(anon, 4 * PAGE);
        munmap(priv, 4 * PAGE);
        guest_free(&g);
}
END_TEST

START_TEST(test_vma_scan) {
        char path[] = "/tmp/test-smaps-XXXXXX";
        int fd = mkstemp(path);
        FILE *f = fdopen(fd, "w");
        DedupVmaFlags *v = NULL;
        size_t n = 0;

        fprintf(f,
                "7f0000000000-7f0000004000 rw-s 00010000 00:01 1060                       /memfd:guest (deleted)\n"
                "Size:                 16 kB\n"
                "VmFlags: rd wr sh mr mw me ms dd sd\n"
                "7f0000004000-7f0000010000 rw-s 00014000 00:01 1060                       /memfd:guest (deleted)\n"
                "Size:                 48 kB\n"
                "VmFlags: rd wr sh mr mw me ms hg dc uw\n"
                "7f0000010000-7f0000011000 rw-p 00000000 00:00 0\n"
                "VmFlags: rd wr mr mw me ac nh mg\n");
        fclose(f);

        dev_t dev = makedev(0, 1);
        ck_assert_int_eq(dedup_vma_scan(path, 0x7f0000002000, 0x7f0000008000, 0x12000, dev, 1060, &v, &n), 0);
        ck_assert_uint_eq(n, 2);
        ck_assert_uint_eq(v[0].start, 0x7f0000002000);
        ck_assert_uint_eq(v[0].end, 0x7f0000004000);
        ck_assert_uint_eq(v[0].flags, DEDUP_VMF_DONTDUMP);
        ck_assert_uint_eq(v[1].start, 0x7f0000004000);
        ck_assert_uint_eq(v[1].end, 0x7f0000008000);
        ck_assert_uint_eq(v[1].flags, DEDUP_VMF_HUGEPAGE | DEDUP_VMF_DONTFORK);
        free(v);
        /* Wrong offset, wrong inode, wrong device, spills into a private
         * mapping, runs past the end of everything. */
        ck_assert_int_eq(dedup_vma_scan(path, 0x7f0000002000, 0x7f0000008000, 0x13000, dev, 1060, &v, &n), -EINVAL);
        ck_assert_int_eq(dedup_vma_scan(path, 0x7f0000002000, 0x7f0000008000, 0x12000, dev, 1061, &v, &n), -EINVAL);
        ck_assert_int_eq(dedup_vma_scan(path, 0x7f0000002000, 0x7f0000008000, 0x12000, makedev(0, 2), 1060, &v, &n),
                         -EINVAL);
        ck_assert_int_eq(dedup_vma_scan(path, 0x7f000000f000, 0x7f0000011000, 0x1f000, dev, 1060, &v, &n), -EINVAL);
        ck_assert_int_eq(dedup_vma_scan(path, 0x7f0000020000, 0x7f0000021000, 0, dev, 1060, &v, &n), -EFAULT);
        ck_assert_int_eq(dedup_vma_scan(path, 0x7effffff0000, 0x7f0000001000, 0, dev, 1060, &v, &n), -EFAULT);
        ck_assert_int_eq(dedup_vma_scan("/nonexistent", 0, 4096, 0, dev, 1060, &v, &n), -ENOENT);
        unlink(path);
}
END_TEST

/* ---- export while running; free says BYE ---- */

START_TEST(test_export_after_start_and_bye) {
        Env e;
        Guest g2;
        uint8_t want[PAGE];

        env_start(&e, 8, 8, -1);
        guest_new(&g2, 8, MADV_DONTDUMP);
        for (unsigned p = 0; p < 8; p++)
                pattern(g2.hva + p * PAGE, p);
        ck_assert_int_eq(dedup_client_export_region(e.c, g2.memfd, 0, 8 * PAGE, g2.hva, 1 << 30), 0);
        ck_assert(vma_has_flag(g2.hva, "uw"));
        /* The REGION arrives through the agent thread. */
        while (e.f.n_regions < 2)
                ck_assert_int_gt(fake_wait(&e.f, DEDUP_MSG_REGION, 2000), 0);
        ck_assert_uint_eq(e.f.hva[1], (uintptr_t) g2.hva);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 1, 2, 4, POOL_ID, 2), DEDUP_REMAP_DONE);
        for (unsigned p = 0; p < 8; p++) {
                pattern(want, p);
                ck_assert_int_eq(memcmp(g2.hva + p * PAGE, want, PAGE), 0);
        }
        ck_assert(vma_has_flag(g2.hva + 3 * PAGE, "dd"));

        /* free: BYE, then hang-up; everything unregistered, merged pages kept. */
        dedup_client_free(e.c);
        e.c = NULL;
        ck_assert_int_eq(fake_wait(&e.f, DEDUP_MSG_BYE, 2000), DEDUP_MSG_BYE);
        ck_assert_int_eq(fake_wait(&e.f, -1, 2000), 0);
        ck_assert(!vma_has_flag(g2.hva, "uw"));
        ck_assert(!vma_has_flag(g2.hva + 3 * PAGE, "uw"));
        ck_assert(!vma_has_flag(e.g.hva, "uw"));
        g2.hva[3 * PAGE] = 0;
        pattern(want, 3);
        want[0] = 0;
        ck_assert_int_eq(memcmp(g2.hva + 3 * PAGE, want, PAGE), 0);
        guest_free(&g2);
        env_stop(&e);
}
END_TEST

/* ---- window A: a write between mmap and protect ---- */

START_TEST(test_window_write) {
        Env e;
        WindowWrite w = { .page = 2, .value = 0x99 };
        uint8_t want[PAGE], got[PAGE];

        env_start(&e, 16, 16, MADV_DONTDUMP);
        for (unsigned p = 0; p < 16; p++)
                pattern(e.g.hva + p * PAGE, p);
        uint64_t before = memfd_blocks(e.g.memfd);

        /* A different byte written in the window: ABORTED, the write kept,
         * in the memfd too, memfd mapped back. */
        dedup_client_set_window_hook(e.c, window_hook, &w);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, 4, POOL_ID, 0), DEDUP_REMAP_ABORTED);
        ck_assert_uint_eq(w.calls, 1);
        pattern(want, 2);
        want[10] = 0x99;
        ck_assert_int_eq(memcmp(e.g.hva + 2 * PAGE, want, PAGE), 0);
        ck_assert_int_eq(pread(e.g.memfd, got, PAGE, 2 * PAGE), PAGE);
        ck_assert_int_eq(memcmp(got, want, PAGE), 0);
        for (unsigned p = 0; p < 4; p++)
                ck_assert(vma_has_flag(e.g.hva + p * PAGE, "sh"));
        ck_assert(vma_has_flag(e.g.hva + 2 * PAGE, "dd"));
        ck_assert_uint_eq(memfd_blocks(e.g.memfd), before);
        ck_assert_uint_eq(stats(&e).merged_pages, 0);
        /* Still a normal, registered page. */
        ck_assert(vma_has_flag(e.g.hva + 2 * PAGE, "uw"));
        e.g.hva[2 * PAGE] = 1;

        /* The same content written in the window: harmless, DONE. */
        w = (WindowWrite) { .page = 1, .value = -1 };
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 4, 4, POOL_ID, 4), DEDUP_REMAP_DONE);
        ck_assert_uint_eq(w.calls, 1);
        pattern(want, 5);
        ck_assert_int_eq(memcmp(e.g.hva + 5 * PAGE, want, PAGE), 0);
        ck_assert_uint_eq(stats(&e).merged_pages, 4);

        /* Zero overlay, written in the window. */
        memset(e.g.hva + 8 * PAGE, 0, 4 * PAGE);
        w = (WindowWrite) { .page = 3, .value = 0x01 };
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 8, 4, DEDUP_POOL_ZERO, 0), DEDUP_REMAP_ABORTED);
        ck_assert_uint_eq(e.g.hva[11 * PAGE + 10], 0x01);
        ck_assert_int_eq(pread(e.g.memfd, got, PAGE, 11 * PAGE), PAGE);
        ck_assert_uint_eq(got[10], 0x01);

        dedup_client_set_window_hook(e.c, NULL, NULL);
        env_stop(&e);
}
END_TEST

/* A write to a merged page does not wait for the agent: the kernel copies
 * the page in the writing thread. Here the agent itself writes, from
 * inside a REMAP (window hook): if the write needed the agent, it would
 * wait for itself forever. A sweep later puts the page back into the
 * memfd and reports it. */
START_TEST(test_write_agent_busy) {
        Env e;
        WindowWrite w = { .value = 0xcd };

        env_start(&e, 16, 16, -1);
        for (unsigned p = 0; p < 16; p++)
                pattern(e.g.hva + p * PAGE, p);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, 4, POOL_ID, 0), DEDUP_REMAP_DONE);
        ck_assert(pagemap_entry(e.g.hva + PAGE) & PM_UFFD_WP);

        w.at = e.g.hva + PAGE;
        dedup_client_set_window_hook(e.c, window_hook, &w);
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 8, 4, POOL_ID, 8), DEDUP_REMAP_DONE);
        dedup_client_set_window_hook(e.c, NULL, NULL);
        ck_assert_uint_eq(w.calls, 1);

        expect_rehomed(&e, 1, 10, 0xcd);
        ck_assert_uint_eq(stats(&e).cow_breaks, 1);
        ck_assert_uint_eq(stats(&e).merged_pages, 7);
        env_stop(&e);
}
END_TEST

/* ---- without CAP_SYS_ADMIN pagemap hides frames: pte markers are
 * ambiguous and resolved by populating the run ---- */

#include <linux/capability.h>

static int drop_cap_sys_admin(void) {
        struct __user_cap_header_struct h = { .version = _LINUX_CAPABILITY_VERSION_3 };
        struct __user_cap_data_struct d[2];

        if (syscall(SYS_capget, &h, d) < 0)
                return -errno;
        d[CAP_SYS_ADMIN / 32].effective &= ~(1u << (CAP_SYS_ADMIN % 32));
        d[CAP_SYS_ADMIN / 32].permitted &= ~(1u << (CAP_SYS_ADMIN % 32));
        return syscall(SYS_capset, &h, d) < 0 ? -errno : 0;
}

START_TEST(test_unprivileged_pagemap) {
        Env e;
        uint8_t want[PAGE];
        const char *fork_env = getenv("CK_FORK");

        if (fork_env && strcmp(fork_env, "no") == 0) {
                printf("unprivileged-pagemap: skipped with CK_FORK=no (it drops a capability)\n");
                return;
        }
        if (drop_cap_sys_admin() < 0) {
                printf("unprivileged-pagemap: skipped: cannot drop CAP_SYS_ADMIN\n");
                return;
        }
        env_start(&e, 1024, 1024, -1);
        for (unsigned p = 0; p < 1024; p++)
                pattern(e.g.hva + p * PAGE, p);
        memset(e.g.hva + 512 * PAGE, 0, 512 * PAGE);
        uint64_t t0 = now_ns();
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 0, 512, POOL_ID, 0), DEDUP_REMAP_DONE);
        uint64_t t1 = now_ns();
        ck_assert_uint_eq(fake_merge(&e.f, &e.pool, 0, 512, 512, DEDUP_POOL_ZERO, 0), DEDUP_REMAP_DONE);
        for (unsigned p = 0; p < 512; p++) {
                pattern(want, p);
                ck_assert_int_eq(memcmp(e.g.hva + p * PAGE, want, PAGE), 0);
        }
        for (size_t i = 512 * PAGE; i < 1024 * PAGE; i++)
                ck_assert_uint_eq(e.g.hva[i], 0);
        /* Writes still break COW. */
        e.g.hva[7 * PAGE] = 0;
        ck_assert_int_eq(fake_wait(&e.f, DEDUP_MSG_UNMERGED, 2000), DEDUP_MSG_UNMERGED);
        printf("unprivileged pagemap: 512-page run merged in %.1f us (protect+compare+remap, populate path)\n",
               (double) (t1 - t0) / 1e3);
        env_stop(&e);
}
END_TEST

/* ---- measurements (printed, not asserted) ---- */

static int cmp_u64(const void *a, const void *b) {
        uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;
        return x < y ? -1 : x > y;
}

START_TEST(test_measure) {
        Env e;
        const unsigned N = 4096;
        uint64_t t0, t1;

        env_start(&e, N, N, -1);
        for (unsigned p = 0; p < N; p++)
                pattern(e.g.hva + p * PAGE, p);

        /* Runs of 512 pages, 4 entries per batch. */
        struct dedup_remap_entry *en = calloc(1024, sizeof *en);
        ck_assert_int_eq(fake_protect(&e.f, 0, 0, 2048, true), 0);
        for (unsigned i = 0; i < 4; i++)
                en[i] = entry(0, i * 512, 512, POOL_ID, i * 512);
        t0 = now_ns();
        ck_assert_int_eq(fake_remap(&e.f, en, 4), DEDUP_MSG_REMAP_REPLY);
        t1 = now_ns();
        for (unsigned i = 0; i < 4; i++)
                ck_assert_uint_eq(en[i].status, DEDUP_REMAP_DONE);
        double run_us = (double) (t1 - t0) / 1e3 / 2048;

        /* Single pages, 1024 per batch, pool pages scattered (one VMA each). */
        ck_assert_int_eq(fake_protect(&e.f, 0, 2048, 2048, true), 0);
        for (unsigned i = 0; i < 1024; i++)
                en[i] = entry(0, 2048 + 2 * i, 1, POOL_ID, 2048 + 2 * i);
        t0 = now_ns();
        ck_assert_int_eq(fake_remap(&e.f, en, 1024), DEDUP_MSG_REMAP_REPLY);
        t1 = now_ns();
        for (unsigned i = 0; i < 1024; i++)
                ck_assert_uint_eq(en[i].status, DEDUP_REMAP_DONE);
        double single_us = (double) (t1 - t0) / 1e3 / 1024;

        /* COW break latency as the guest sees it: one write per merged page. */
        uint64_t *lat = calloc(2048, sizeof *lat);
        for (unsigned i = 0; i < 2048; i++) {
                volatile uint8_t *p = e.g.hva + (size_t) i * PAGE;
                t0 = now_ns();
                *p = 0xfe;
                lat[i] = now_ns() - t0;
        }
        qsort(lat, 2048, sizeof *lat, cmp_u64);
        /* The sweeps that put them back into the memfd. */
        t0 = now_ns();
        while (stats(&e).cow_breaks < 2048 && now_ns() - t0 < UINT64_C(5000000000))
                usleep(1000);
        t1 = now_ns();
        ck_assert_uint_eq(stats(&e).cow_breaks, 2048);
        double rehome_us = (double) (t1 - t0) / 1e3 / 2048;

        /* UNMERGE cost per page, for the run-merged-then-single pattern. */
        struct dedup_range rg[4];
        for (unsigned i = 0; i < 4; i++)
                rg[i] = (struct dedup_range) { .region_id = 0, .npages = 512, .offset = (2048 + i * 512) * (uint64_t) PAGE };
        t0 = now_ns();
        ck_assert_int_eq(fake_unmerge(&e.f, rg, 4), DEDUP_MSG_UNMERGED);
        t1 = now_ns();
        double unmerge_us = (double) (t1 - t0) / 1e3 / 1024;

        printf("measure: remap %.2f us/page in 512-page runs, %.2f us/page as isolated single pages; "
               "COW break as the guest sees it (the kernel's copy) p50 %.1f us p99 %.1f us max %.1f us, "
               "then re-homed by sweeps in %.2f us/page of wall time; UNMERGE %.2f us/page (isolated pages)\n",
               run_us, single_us, lat[1024] / 1e3, lat[2048 * 99 / 100] / 1e3, lat[2047] / 1e3, rehome_us,
               unmerge_us);
        free(lat);
        free(en);
        env_stop(&e);
}
END_TEST

/* ---- main ---- */

static int probe_uffd(char *why, size_t size) {
        int fd = (int) syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
        if (fd < 0) {
                int dev = open("/dev/userfaultfd", O_RDWR | O_CLOEXEC);
                if (dev >= 0) {
                        fd = ioctl(dev, USERFAULTFD_IOC_NEW, O_CLOEXEC | O_NONBLOCK);
                        close(dev);
                }
        }
        if (fd < 0) {
                snprintf(why, size, "userfaultfd unavailable: %m");
                return -1;
        }
        struct uffdio_api api = { .api = UFFD_API,
                                  .features = UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_UNPOPULATED |
                                              UFFD_FEATURE_WP_HUGETLBFS_SHMEM };
        if (ioctl(fd, UFFDIO_API, &api) < 0) {
                snprintf(why, size, "userfaultfd lacks WP_UNPOPULATED/WP_HUGETLBFS_SHMEM (kernel < 6.7?): %m");
                close(fd);
                return -1;
        }
        close(fd);
        return 0;
}

static bool probe_zero_page(void) {
        volatile uint8_t *p = mmap(NULL, PAGE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        uint64_t v = 0;

        (void) p[0];
        if (fd < 0 || pread(fd, &v, 8, (off_t) ((uintptr_t) p / PAGE * 8)) != 8)
                v = 0;
        if (fd >= 0)
                close(fd);
        munmap((void *) p, PAGE);
        /* The zero page is not "exclusively mapped"; a fresh page is. */
        return (v & PM_PRESENT) && !(v & PM_EXCLUSIVE);
}

static Suite *client_suite(void) {
        const CheckCase cases[] = {
                { "merge", test_merge, 30, 0 },
                { "stress", test_stress, 120, 0 },
                { "write-after-merge", test_write_after_merge, 30, 0 },
                { "zero-overlay", test_zero_overlay, 30, 0 },
                { "aborted", test_aborted, 30, 0 },
                { "daemon-death", test_daemon_death, 30, 0 },
                { "reconnect", test_reconnect, 30, 0 },
                { "malformed", test_malformed, 30, _BAD_MAX },
                { "unmerge", test_unmerge, 30, 0 },
                { "news-backlog", test_news_backlog, 60, 0 },
                { "window-write", test_window_write, 30, 0 },
                { "write-agent-busy", test_write_agent_busy, 30, 0 },
                { "unprivileged-pagemap", test_unprivileged_pagemap, 60, 0 },
                { "no-daemon", test_no_daemon, 30, 0 },
                { "validation", test_validation, 30, 0 },
                { "vma-scan", test_vma_scan, 30, 0 },
                { "export-after-start-and-bye", test_export_after_start_and_bye, 30, 0 },
                { "measure", test_measure, 60, 0 },
        };

        return check_suite("client", cases, ELEMENTSOF(cases), 0, NULL);
}

int main(void) {
        char why[256];
        int failed;

        if (probe_uffd(why, sizeof why) < 0) {
                printf("test-client: skipped: %s\n", why);
                return 77;
        }
        have_zero_page = probe_zero_page();
        setvbuf(stdout, NULL, _IOLBF, 0);

        failed = check_run(client_suite()) != EXIT_SUCCESS;
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
