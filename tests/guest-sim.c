/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * guest-sim: a process that behaves like a VMM with guest RAM, for testing
 * and measuring dedupd. Guest RAM is a memfd mapped MAP_SHARED and
 * registered with dedupd through libdedup (as QEMU's
 * memory-backend-memfd,share=on would be), or anonymous memory with
 * MADV_MERGEABLE so kernel KSM can be measured on the same content.
 *
 * Threads: N writers rewrite volatile pages (and churned image/zero pages)
 * through the guest mapping; one verifier walks all of guest RAM through
 * the same mapping and checks every byte of every page against the content
 * regenerated from (kind, seed, index, generation) (guest-sim-content.c);
 * the main thread owns signals, statistics, the hang watchdog and the
 * self-test faults. Options and --help live in guest-sim-options.c.
 *
 * Seqlock invariant, per page p with version counter versions[p]:
 *  - Only one writer ever writes page p (writable pages are partitioned
 *    among writers), so the writer reads versions[p] without a race.
 *  - versions[p] is even while page p holds content(p, versions[p] / 2),
 *    and odd exactly while its writer is storing into the page.
 *  - Writer: store v+1 (odd); release fence; store the whole page; store
 *    2 * new generation (even, != v) with release.
 *  - Verifier: load v1 (acquire); read the page; acquire fence; load v2. If
 *    v1 is odd or v1 != v2 a writer touched the page meanwhile: retry. If
 *    v1 == v2 is even, no write began or ended while the page was read (the
 *    fences pair: a store the verifier saw from a newer write implies it
 *    also sees that write's odd version), so the page must equal
 *    content(p, v1 / 2) in every byte, and anything else is a MISMATCH.
 *    Versions never repeat (a page's generation only grows; 2^31 writes per
 *    page to wrap), so there is no ABA.
 * Page data is read and written with plain accesses, as the kernel's
 * seqlocks do; the ordering comes from the fences around them.
 *
 * Nothing here is global: all state lives in struct sim; signals are
 * blocked in every thread and taken by the main thread with sigtimedwait.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "dedup.h"
#include "guest-sim.h"

enum {
        EXIT_MISMATCH = 1,
        EXIT_USAGE = 2,
        EXIT_HANG = 3,
        EXIT_SETUP = 4,
};

/* A page whose writer stays inside a write this long is skipped for the
 * current verify pass (counted in verify_skipped); the watchdog judges
 * whether the writer hangs. */
#define VERIFY_BUSY_NS (100 * NSEC_PER_MSEC)

#define NSEC_PER_SEC UINT64_C(1000000000)
#define NSEC_PER_MSEC UINT64_C(1000000)
#define NSEC_PER_USEC UINT64_C(1000)

/* Main loop tick: granularity of the watchdog, timers and signal checks. */
#define TICK_MSEC 20

struct sim;

struct sim_writer {
        struct sim *sim;
        pthread_t thread;
        bool started;
        unsigned id;
        uint32_t *pages;                /* pages this writer owns (and nobody else writes): */
        size_t n_volatile;              /* volatile ones first, */
        size_t n_pages;                 /* then churned ones */
        uint64_t rng;                   /* xorshift64 state, writer thread only */
        _Atomic uint64_t writes;        /* completed page writes */
        _Atomic uint64_t max_write_ns;  /* longest single page write */
        /* Writes that faulted, by whole us, the last bucket holding
         * everything from SIM_FAULT_HIST_USEC on. */
        _Atomic uint64_t fault_hist[SIM_FAULT_HIST_USEC + 1];
        /* CLOCK_MONOTONIC ns when the write in progress began, 0 while the
         * writer is between writes: the watchdog's view of a stuck write. */
        _Atomic uint64_t busy_since_ns;
        _Atomic uint64_t busy_page;     /* page of that write; valid while busy_since_ns != 0 */
};

struct sim {
        struct sim_options opt;

        struct sim_layout layout;
        size_t size;
        uint8_t *guest;                 /* guest RAM, as the "VMM" maps it */
        int memfd;                      /* -1 for anon-ksm */
        int pagemap_fd;                 /* /proc/self/pagemap, -1 if it cannot be read */
        /* Seqlock version per page, see the top of this file. */
        _Atomic uint32_t *versions;

        dedup_client *client;           /* NULL unless registered with a daemon */

        atomic_bool stop_writers;
        atomic_bool stop_verifier;
        pthread_t verifier;
        bool verifier_started;
        struct sim_writer *writers;

        uint64_t start_ns;              /* CLOCK_MONOTONIC when writers started */
        _Atomic uint64_t churn_at_ns;   /* writers rewrite churned pages from then on */
        _Atomic uint64_t writes_at_ns;  /* writers write nothing before */
        /* Verifier statistics, written by the verifier (and the final pass
         * in main after the verifier is joined), read by main: relaxed. */
        _Atomic uint64_t passes;        /* complete verify passes */
        _Atomic uint64_t mismatches;    /* pages found wrong (each time found) */
        _Atomic uint64_t verify_skipped;/* page checks skipped: writer busy > VERIFY_BUSY_NS */
        _Atomic uint64_t verify_retries;/* page checks repeated because a writer touched the page */
        _Atomic uint64_t verify_bytes;  /* bytes of complete passes ... */
        _Atomic uint64_t verify_ns;     /* ... and the time they took */
        uint64_t hangs;
};

static uint64_t now_ns(void) {
        struct timespec ts;

        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (uint64_t) ts.tv_sec * NSEC_PER_SEC + (uint64_t) ts.tv_nsec;
}

static void sleep_ns(uint64_t ns) {
        struct timespec ts = { .tv_sec = ns / NSEC_PER_SEC, .tv_nsec = ns % NSEC_PER_SEC };

        while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
                ;
}

static uint64_t xorshift64(uint64_t *s) {
        uint64_t x = *s;

        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        return *s = x;
}

static void atomic_max_u64(_Atomic uint64_t *p, uint64_t v) {
        uint64_t cur = atomic_load_explicit(p, memory_order_relaxed);

        while (cur < v && !atomic_compare_exchange_weak_explicit(p, &cur, v, memory_order_relaxed,
                                                                  memory_order_relaxed))
                ;
}

/* ---- setup ------------------------------------------------------------ */

static int write_file_atomic(const char *path, const char *text) {
        char tmp[PATH_MAX];
        size_t len = strlen(text);
        ssize_t n;
        int fd, r = 0;

        if (snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid()) >= (int) sizeof(tmp))
                return -ENAMETOOLONG;
        fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0)
                return -errno;
        n = write(fd, text, len);
        if (n < 0)
                r = -errno;
        else if ((size_t) n != len)
                r = -EIO;
        if (close(fd) < 0 && r == 0)
                r = -errno;
        if (r == 0 && rename(tmp, path) < 0)
                r = -errno;
        if (r < 0)
                (void) unlink(tmp);
        return r;
}

/* Print "guest-sim: <what>: <errno text>" and return -errno. */
static int errno_fail(const char *what) {
        int r = -errno;

        fprintf(stderr, "guest-sim: %s: %s\n", what, strerror(-r));
        return r;
}

/* MemAvailable from /proc/meminfo in KiB, or -errno. */
static int64_t mem_available_kib(void) {
        char line[128];
        int64_t v = -ENOENT;
        FILE *f = fopen("/proc/meminfo", "re");

        if (!f)
                return -errno;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, "MemAvailable:", 13) == 0) {
                        v = strtoll(line + 13, NULL, 10);
                        break;
                }
        fclose(f);
        return v;
}

static int sim_map_guest(struct sim *s) {
        int64_t avail = mem_available_kib();
        void *p;

        /* All of guest RAM is allocated before dedup can reclaim any of it:
         * more than is available would only wake the OOM killer. */
        if (avail >= 0 && s->size / 1024 > (uint64_t) avail) {
                fprintf(stderr, "guest-sim: guest RAM of %" PRIu64 " MiB exceeds available memory (%" PRId64 " MiB): %s\n",
                        s->opt.size_mib, avail / 1024, strerror(ENOMEM));
                return -ENOMEM;
        }

        if (s->opt.backend == SIM_BACKEND_MEMFD) {
                char mname[80];

                snprintf(mname, sizeof(mname), "guest-sim:%s", s->opt.name);
                s->memfd = memfd_create(mname, MFD_CLOEXEC);
                if (s->memfd < 0)
                        return errno_fail("memfd_create");
                if (ftruncate(s->memfd, (off_t) s->size) < 0)
                        return errno_fail("ftruncate guest RAM memfd");
                /* Allocate now, so lack of memory is a clean setup failure
                 * and not a SIGBUS in the middle of filling. */
                if (fallocate(s->memfd, 0, 0, (off_t) s->size) < 0)
                        return errno_fail("fallocate guest RAM memfd");
                /* MAP_POPULATE: one kernel walk instead of a fault per page
                 * (which costs ~30 us each in a nested VM). */
                p = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, s->memfd, 0);
                if (p == MAP_FAILED)
                        return errno_fail("mmap guest RAM memfd");
                s->guest = p;
        } else {
                p = mmap(NULL, s->size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
                if (p == MAP_FAILED)
                        return errno_fail("mmap anonymous guest RAM");
                s->guest = p;
                if (madvise(s->guest, s->size, MADV_MERGEABLE) < 0) {
                        int r = -errno;

                        fprintf(stderr, "guest-sim: madvise(MADV_MERGEABLE): %s%s\n", strerror(-r),
                                r == -EINVAL ? " (kernel without CONFIG_KSM?)" : "");
                        return r;
                }
        }
        /* Which pages are write-protected: slow writes there faulted. */
        s->pagemap_fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
        return 0;
}

/* Generation 0 everywhere: versions[] starts zeroed. */
static void sim_fill(struct sim *s) {
        struct sim_content c;

        for (uint64_t p = 0; p < s->layout.n_pages; p++) {
                sim_content_describe(&s->layout, p, 0, &c);
                sim_content_fill(s->guest + p * SIM_PAGE_SIZE, &c);
        }
}

static int sim_register(struct sim *s) {
        dedup_client *c = NULL;
        const char *path = s->opt.socket_path ? s->opt.socket_path : getenv("DEDUPD_SOCKET");
        int r;

        if (!path || !*path)
                path = DEDUP_DEFAULT_SOCKET;

        r = dedup_client_new(s->opt.socket_path, s->opt.name, s->opt.uuid, &c);
        if (r < 0) {
                fprintf(stderr, "guest-sim: dedup_client_new: %s\n", strerror(-r));
                return r;
        }
        r = dedup_client_export_region(c, s->memfd, 0, s->size, s->guest, 0);
        if (r < 0) {
                fprintf(stderr, "guest-sim: dedup_client_export_region: %s\n", strerror(-r));
                dedup_client_free(c);
                return r;
        }
        r = dedup_client_start(c);
        if ((r == -ENOENT || r == -ECONNREFUSED) && !s->opt.require_daemon) {
                printf("guest-sim: note: no dedupd listening on '%s' (%s), running without dedup\n", path,
                       strerror(-r));
                dedup_client_free(c);
                return 0;
        }
        if (r < 0) {
                fprintf(stderr, "guest-sim: dedup_client_start on '%s': %s\n", path, strerror(-r));
                dedup_client_free(c);
                return r;
        }
        s->client = c;
        return 0;
}

static int sim_setup_writers(struct sim *s) {
        size_t n_writable = 0;

        if (s->opt.n_writers == 0)
                return 0;
        s->writers = calloc(s->opt.n_writers, sizeof(*s->writers));
        if (!s->writers)
                return -ENOMEM;
        for (uint64_t p = 0; p < s->layout.n_pages; p++)
                n_writable += sim_layout_writable(&s->layout, p);
        for (unsigned i = 0; i < s->opt.n_writers; i++) {
                struct sim_writer *w = &s->writers[i];

                w->sim = s;
                w->id = i;
                w->rng = sim_mix64(s->layout.seed ^ (UINT64_C(0x5752495445520000) + i)) | 1;
                w->pages = malloc((n_writable / s->opt.n_writers + 1) * sizeof(*w->pages));
                if (!w->pages)
                        return -ENOMEM;
        }
        /* Deal writable pages round robin, volatile ones first (churn may
         * start later, see writer_main): each page has exactly one writer. */
        size_t k = 0;
        for (int churn = 0; churn <= 1; churn++) {
                for (uint64_t p = 0; p < s->layout.n_pages; p++)
                        if (sim_layout_writable(&s->layout, p) &&
                            (sim_layout_kind(&s->layout, p) != SIM_KIND_VOLATILE) == churn) {
                                struct sim_writer *w = &s->writers[k++ % s->opt.n_writers];

                                w->pages[w->n_pages++] = (uint32_t) p;
                        }
                for (unsigned i = 0; !churn && i < s->opt.n_writers; i++)
                        s->writers[i].n_volatile = s->writers[i].n_pages;
        }
        return 0;
}

/* ---- verifier --------------------------------------------------------- */

static void report_mismatch(struct sim *s, uint64_t p, uint32_t gen, const struct sim_content *c, int off,
                            uint64_t n) {
        const uint8_t *page = s->guest + p * SIM_PAGE_SIZE;
        char found[80];

        if (n > SIM_MISMATCH_REPORTS)
                return;
        sim_content_identify(page, found, sizeof(found));
        printf("guest-sim: MISMATCH name=%s page=%" PRIu64 " offset=%d expected=0x%02x got=0x%02x kind=%s gen=%u "
               "found=%s%s\n",
               s->opt.name, p, off, sim_content_byte(c, (unsigned) off), page[off],
               sim_kind_name(sim_layout_kind(&s->layout, p)), gen, found,
               n == SIM_MISMATCH_REPORTS ? " (further mismatches only counted)" : "");
}

/* Check one page under the seqlock. 0: right content; 1: mismatch
 * (reported and counted); -EBUSY: its writer kept it busy (inside one
 * write, or rewriting it again and again) for VERIFY_BUSY_NS, skipped for
 * this pass. */
static int verify_page(struct sim *s, uint64_t p) {
        const uint8_t *page = s->guest + p * SIM_PAGE_SIZE;
        uint64_t busy_since = 0;

        for (unsigned tries = 0;; tries++) {
                struct sim_content c;
                uint32_t v1, v2;
                int off;

                if (tries > 0) {
                        uint64_t t = now_ns();

                        if (!busy_since)
                                busy_since = t;
                        else if (t - busy_since > VERIFY_BUSY_NS) {
                                atomic_fetch_add_explicit(&s->verify_skipped, 1, memory_order_relaxed);
                                return -EBUSY;
                        }
                        /* Spin a little, then sleep. */
                        if (tries < 64)
                                sched_yield();
                        else
                                sleep_ns(100 * NSEC_PER_USEC);
                }

                v1 = atomic_load_explicit(&s->versions[p], memory_order_acquire);
                if (v1 & 1)
                        continue; /* writer inside the page */

                sim_content_describe(&s->layout, p, v1 / 2, &c);
                off = sim_content_check(page, &c);

                atomic_thread_fence(memory_order_acquire);
                v2 = atomic_load_explicit(&s->versions[p], memory_order_relaxed);
                if (v1 != v2) {
                        /* A write began or ended while we read: what we saw
                         * may be torn, judge nothing. */
                        atomic_fetch_add_explicit(&s->verify_retries, 1, memory_order_relaxed);
                        continue;
                }
                if (off < 0)
                        return 0;

                uint64_t n = atomic_fetch_add_explicit(&s->mismatches, 1, memory_order_relaxed) + 1;
                report_mismatch(s, p, v1 / 2, &c, off, n);
                return 1;
        }
}

/* One pass over all of guest RAM. Returns false when stopped before the end. */
static bool verify_pass(struct sim *s, atomic_bool *stop) {
        uint64_t t0 = now_ns();

        for (uint64_t p = 0; p < s->layout.n_pages; p++) {
                if (stop && atomic_load_explicit(stop, memory_order_relaxed))
                        return false;
                (void) verify_page(s, p);
        }
        atomic_fetch_add_explicit(&s->verify_ns, now_ns() - t0, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->verify_bytes, s->size, memory_order_relaxed);
        atomic_fetch_add_explicit(&s->passes, 1, memory_order_relaxed);
        return true;
}

static void *verifier_main(void *arg) {
        struct sim *s = arg;

        while (!atomic_load_explicit(&s->stop_verifier, memory_order_relaxed)) {
                if (!verify_pass(s, &s->stop_verifier))
                        break;
                for (uint64_t slept = 0; slept < s->opt.verify_interval_ms; slept += TICK_MSEC) {
                        if (atomic_load_explicit(&s->stop_verifier, memory_order_relaxed))
                                break;
                        sleep_ns(TICK_MSEC * NSEC_PER_MSEC);
                }
        }
        return NULL;
}

/* ---- writers ---------------------------------------------------------- */

/* Is page p write-protected by a userfaultfd (pagemap bit 57)? A write
 * that finds it so and leaves it not faulted (a copy-on-write break, a
 * WRITTEN report). Timing alone cannot tell: a fault in the writing thread
 * takes a few us, and a preempted plain write takes longer. */
static bool page_protected(const struct sim *s, uint64_t p) {
        uint64_t pm;
        off_t at = (off_t) (((uintptr_t) s->guest / SIM_PAGE_SIZE + p) * sizeof(pm));

        if (s->pagemap_fd < 0 || pread(s->pagemap_fd, &pm, sizeof(pm), at) != (ssize_t) sizeof(pm))
                return false;   /* cannot tell: count nothing */
        return pm & (UINT64_C(1) << 57);
}

static void write_page(struct sim_writer *w, uint64_t p) {
        struct sim *s = w->sim;
        struct sim_content c;
        uint32_t v, gen;
        uint64_t t0, t1;
        bool wp;

        /* Only this thread writes versions[p]: no race on v. */
        v = atomic_load_explicit(&s->versions[p], memory_order_relaxed);
        gen = v / 2 + 1;
        if (sim_layout_kind(&s->layout, p) != SIM_KIND_VOLATILE) {
                /* Churned image/zero page: an even generation restores the
                 * original content, an odd one is new content. */
                bool restore = xorshift64(&w->rng) & 1;

                if ((gen & 1) == restore)
                        gen++;
        }
        sim_content_describe(&s->layout, p, gen, &c);

        wp = page_protected(s, p);
        t0 = now_ns();
        atomic_store_explicit(&w->busy_page, p, memory_order_relaxed);
        atomic_store_explicit(&w->busy_since_ns, t0, memory_order_relaxed);

        /* Seqlock write side: odd, fence, data, even (see top of file). */
        atomic_store_explicit(&s->versions[p], v + 1, memory_order_relaxed);
        atomic_thread_fence(memory_order_release);

        if (w->id == 0 && s->opt.stall_after_ms >= 0 && t0 - s->start_ns >= (uint64_t) s->opt.stall_after_ms * NSEC_PER_MSEC) {
                printf("guest-sim: self-test: writer 0 stalls inside the write of page=%" PRIu64 "\n", p);
                s->opt.stall_after_ms = -1; /* read only by writer 0 from now on */
                while (!atomic_load_explicit(&s->stop_writers, memory_order_relaxed))
                        sleep_ns(10 * NSEC_PER_MSEC);
        }

        sim_content_fill(s->guest + p * SIM_PAGE_SIZE, &c);
        atomic_store_explicit(&s->versions[p], 2 * gen, memory_order_release);

        t1 = now_ns();
        atomic_store_explicit(&w->busy_since_ns, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&w->writes, 1, memory_order_relaxed);
        atomic_max_u64(&w->max_write_ns, t1 - t0);
        if (wp && !page_protected(s, p)) {
                uint64_t us = (t1 - t0) / NSEC_PER_USEC;

                atomic_fetch_add_explicit(&w->fault_hist[us < SIM_FAULT_HIST_USEC ? us : SIM_FAULT_HIST_USEC], 1,
                                          memory_order_relaxed);
        }
}

static void *writer_main(void *arg) {
        struct sim_writer *w = arg;
        struct sim *s = w->sim;
        uint64_t interval = s->opt.write_rate ? NSEC_PER_SEC / s->opt.write_rate : 0;
        uint64_t next = now_ns();

        while (!atomic_load_explicit(&s->stop_writers, memory_order_relaxed)) {
                uint64_t t = now_ns();
                bool churn = t >= atomic_load_explicit(&s->churn_at_ns, memory_order_relaxed);
                size_t n = churn ? w->n_pages : w->n_volatile;

                if (t < atomic_load_explicit(&s->writes_at_ns, memory_order_relaxed) ||
                    (s->opt.max_writes && atomic_load_explicit(&w->writes, memory_order_relaxed) >= s->opt.max_writes)) {
                        sleep_ns(TICK_MSEC * NSEC_PER_MSEC);
                        next = now_ns();
                        continue;
                }

                if (n == 0) {
                        sleep_ns(TICK_MSEC * NSEC_PER_MSEC);
                        continue;
                }
                write_page(w, w->pages[xorshift64(&w->rng) % n]);

                if (interval) {
                        uint64_t now = now_ns();

                        next += interval;
                        if (now > next + NSEC_PER_SEC)
                                next = now; /* fell far behind (stalled): don't burst */
                        else if (next > now)
                                sleep_ns(next - now);
                }
        }
        return NULL;
}

/* ---- statistics ------------------------------------------------------- */

struct strbuf {
        char buf[2048];
        size_t len;
};

__attribute__((format(printf, 2, 3))) static void sb_add(struct strbuf *b, const char *fmt, ...) {
        va_list ap;
        int n;

        if (b->len >= sizeof(b->buf))
                return;
        va_start(ap, fmt);
        n = vsnprintf(b->buf + b->len, sizeof(b->buf) - b->len, fmt, ap);
        va_end(ap);
        if (n > 0)
                b->len = b->len + (size_t) n < sizeof(b->buf) ? b->len + (size_t) n : sizeof(b->buf) - 1;
}

static int read_statm(uint64_t *ret_rss_kib, uint64_t *ret_anon_kib) {
        unsigned long size, resident, shared;
        FILE *f = fopen("/proc/self/statm", "re");
        int n;

        if (!f)
                return -errno;
        n = fscanf(f, "%lu %lu %lu", &size, &resident, &shared);
        fclose(f);
        if (n != 3)
                return -EIO;
        *ret_rss_kib = (uint64_t) resident * (uint64_t) sysconf(_SC_PAGESIZE) / 1024;
        *ret_anon_kib = (uint64_t) (resident - shared) * (uint64_t) sysconf(_SC_PAGESIZE) / 1024;
        return 0;
}

/* A counter from /proc/self/ksm_stat ("name value" lines), -1 if absent. */
static int64_t read_ksm_stat(const char *key) {
        char line[128];
        size_t kl = strlen(key);
        int64_t v = -1;
        FILE *f = fopen("/proc/self/ksm_stat", "re");

        if (!f)
                return -1;
        while (fgets(line, sizeof(line), f))
                if (strncmp(line, key, kl) == 0 && line[kl] == ' ') {
                        v = strtoll(line + kl + 1, NULL, 10);
                        break;
                }
        fclose(f);
        return v;
}

/* Count, median and 99th percentile (in us, the bucket's lower bound) of
 * the faulted writes of all writers. */
static void fault_write_percentiles(struct sim *s, uint64_t *ret_n, uint64_t *ret_p50, uint64_t *ret_p99) {
        uint64_t hist[SIM_FAULT_HIST_USEC + 1] = {}, n = 0, seen = 0;

        *ret_p50 = *ret_p99 = 0;
        for (unsigned i = 0; i < s->opt.n_writers; i++)
                for (unsigned us = 0; us <= SIM_FAULT_HIST_USEC; us++)
                        hist[us] += atomic_load_explicit(&s->writers[i].fault_hist[us], memory_order_relaxed);
        for (unsigned us = 0; us <= SIM_FAULT_HIST_USEC; us++)
                n += hist[us];
        *ret_n = n;
        for (unsigned us = 0; n && us <= SIM_FAULT_HIST_USEC; us++) {
                if (seen < (n + 1) / 2 && seen + hist[us] >= (n + 1) / 2)
                        *ret_p50 = us;
                if (seen < n - n / 100 && seen + hist[us] >= n - n / 100)
                        *ret_p99 = us;
                seen += hist[us];
        }
}

/* One space-separated list of key=value; the file form swaps ' ' for '\n'
 * (no value contains a space: names are validated). */
static void sim_format_stats(struct sim *s, struct strbuf *b) {
        uint64_t writes = 0, max_write_ns = 0, rss_kib = 0, anon_kib = 0, now = now_ns(), faults, p50, p99;
        uint64_t vbytes, vns, elapsed = s->start_ns && now > s->start_ns ? now - s->start_ns : 0;

        for (unsigned i = 0; i < s->opt.n_writers; i++) {
                writes += atomic_load_explicit(&s->writers[i].writes, memory_order_relaxed);
                uint64_t m = atomic_load_explicit(&s->writers[i].max_write_ns, memory_order_relaxed);
                if (m > max_write_ns)
                        max_write_ns = m;
        }
        (void) read_statm(&rss_kib, &anon_kib);
        fault_write_percentiles(s, &faults, &p50, &p99);
        vbytes = atomic_load_explicit(&s->verify_bytes, memory_order_relaxed);
        vns = atomic_load_explicit(&s->verify_ns, memory_order_relaxed);

        sb_add(b, "name=%s pid=%d backend=%s pages=%" PRIu64 " verified_passes=%" PRIu64 " mismatches=%" PRIu64
               " writes=%" PRIu64 " max_write_us=%" PRIu64 " fault_writes=%" PRIu64 " fault_write_p50_us=%" PRIu64
               " fault_write_p99_us=%" PRIu64 " hangs=%" PRIu64 " rss_kib=%" PRIu64 " rss_anon_kib=%" PRIu64,
               s->opt.name, (int) getpid(), s->opt.backend == SIM_BACKEND_MEMFD ? "memfd" : "anon-ksm", s->layout.n_pages,
               atomic_load_explicit(&s->passes, memory_order_relaxed),
               atomic_load_explicit(&s->mismatches, memory_order_relaxed), writes,
               (max_write_ns + NSEC_PER_USEC - 1) / NSEC_PER_USEC, faults, p50, p99, s->hangs, rss_kib, anon_kib);

        if (s->opt.backend == SIM_BACKEND_MEMFD) {
                struct stat st;

                if (fstat(s->memfd, &st) == 0)
                        sb_add(b, " memfd_kib=%" PRIu64, (uint64_t) st.st_blocks * 512 / 1024);
        } else {
                int64_t merging = read_ksm_stat("ksm_merging_pages"), zero = read_ksm_stat("ksm_zero_pages");

                if (merging >= 0)
                        sb_add(b, " ksm_merging_pages=%" PRId64, merging);
                if (zero >= 0)
                        sb_add(b, " ksm_zero_pages=%" PRId64, zero);
        }

        if (s->client) {
                dedup_client_stats cs = {};

                if (dedup_client_get_stats(s->client, &cs) >= 0)
                        sb_add(b, " dedup_connected=%d dedup_remapped_pages=%" PRIu64 " dedup_aborted_pages=%" PRIu64
                               " dedup_cow_breaks=%" PRIu64 " dedup_written_faults=%" PRIu64
                               " dedup_merged_pages=%" PRIu64 " dedup_reconnects=%" PRIu64,
                               cs.connected ? 1 : 0, cs.remapped_pages, cs.aborted_pages, cs.cow_breaks,
                               cs.written_faults, cs.merged_pages, cs.reconnects);
                else
                        sb_add(b, " dedup_connected=0");
        } else
                sb_add(b, " dedup_connected=0");

        sb_add(b, " verify_skipped=%" PRIu64 " verify_retries=%" PRIu64 " verify_mib_s=%" PRIu64 " writes_per_s=%" PRIu64
               " uptime_ms=%" PRIu64,
               atomic_load_explicit(&s->verify_skipped, memory_order_relaxed),
               atomic_load_explicit(&s->verify_retries, memory_order_relaxed),
               vns ? (uint64_t) ((double) vbytes / (1024.0 * 1024.0) / ((double) vns / 1e9)) : 0,
               elapsed ? (uint64_t) ((double) writes / ((double) elapsed / 1e9)) : 0, elapsed / NSEC_PER_MSEC);
}

/* state: "running", "final" or "hang". */
static void sim_stats(struct sim *s, bool print, const char *state) {
        struct strbuf b = {};
        bool final = strcmp(state, "running") != 0;

        sim_format_stats(s, &b);
        if (print)
                printf("guest-sim: %s%s\n", final ? "final " : "", b.buf);
        if (s->opt.stats_file) {
                int r;

                for (size_t i = 0; i < b.len; i++)
                        if (b.buf[i] == ' ')
                                b.buf[i] = '\n';
                sb_add(&b, "\nstate=%s\n", state);
                r = write_file_atomic(s->opt.stats_file, b.buf);
                if (r < 0)
                        fprintf(stderr, "guest-sim: writing stats file '%s': %s\n", s->opt.stats_file, strerror(-r));
        }
}

/* ---- main thread ------------------------------------------------------ */

/* A page no writer owns, for the corruption self-test: prefer a unique
 * page (never merged), else any page nobody writes. */
static uint64_t pick_static_page(const struct sim *s) {
        uint64_t fallback = 0;
        bool have = false;

        for (uint64_t p = 0; p < s->layout.n_pages; p++) {
                if (sim_layout_writable(&s->layout, p))
                        continue;
                if (sim_layout_kind(&s->layout, p) == SIM_KIND_UNIQUE)
                        return p;
                if (!have)
                        fallback = p, have = true;
        }
        return fallback;
}

/* Returns the writer index of a write running longer than the hang
 * timeout, or -1. */
static int find_hung_writer(struct sim *s, uint64_t now, uint64_t *ret_ms, uint64_t *ret_page) {
        if (s->opt.hang_timeout_ms == 0)
                return -1;
        for (unsigned i = 0; i < s->opt.n_writers; i++) {
                uint64_t since = atomic_load_explicit(&s->writers[i].busy_since_ns, memory_order_relaxed);

                if (since && now > since && now - since > s->opt.hang_timeout_ms * NSEC_PER_MSEC) {
                        *ret_ms = (now - since) / NSEC_PER_MSEC;
                        *ret_page = atomic_load_explicit(&s->writers[i].busy_page, memory_order_relaxed);
                        return (int) i;
                }
        }
        return -1;
}

static int sim_run(struct sim *s, const sigset_t *sigs) {
        uint64_t stats_period = s->opt.stats_interval_ms ? s->opt.stats_interval_ms
                                : s->opt.stats_file ? SIM_STATS_FILE_DEFAULT_MSEC : 0;
        uint64_t next_stats = s->start_ns + stats_period * NSEC_PER_MSEC;
        uint64_t end = s->opt.duration_ms ? s->start_ns + s->opt.duration_ms * NSEC_PER_MSEC : 0;
        const struct timespec tick = { .tv_sec = 0, .tv_nsec = TICK_MSEC * NSEC_PER_MSEC };

        for (;;) {
                siginfo_t si;
                uint64_t now, stuck_ms, page;
                int sig, w;

                sig = sigtimedwait(sigs, &si, &tick);
                if (sig == SIGUSR1) {
                        /* Churn starts, and faulted writes are counted from
                         * here (a concurrent write may be lost, or counted). */
                        for (unsigned i = 0; i < s->opt.n_writers; i++)
                                for (unsigned us = 0; us <= SIM_FAULT_HIST_USEC; us++)
                                        atomic_store_explicit(&s->writers[i].fault_hist[us], 0, memory_order_relaxed);
                        atomic_store_explicit(&s->churn_at_ns, now_ns(), memory_order_relaxed);
                        atomic_store_explicit(&s->writes_at_ns, now_ns(), memory_order_relaxed);
                        printf("guest-sim: SIGUSR1 received, churn starts, faulted-write histogram restarts\n");
                } else if (sig > 0) {
                        printf("guest-sim: %s received, stopping\n", sig == SIGTERM ? "SIGTERM" : "SIGINT");
                        return 0;
                }
                now = now_ns();

                w = find_hung_writer(s, now, &stuck_ms, &page);
                if (w >= 0) {
                        printf("guest-sim: HANG name=%s writer=%d page=%" PRIu64 " stuck_ms=%" PRIu64
                               " (hang timeout %" PRIu64 " ms)\n", s->opt.name, w, page, stuck_ms, s->opt.hang_timeout_ms);
                        s->hangs++;
                        return -ETIMEDOUT;
                }

                if (s->opt.corrupt_after_ms >= 0 && now - s->start_ns >= (uint64_t) s->opt.corrupt_after_ms * NSEC_PER_MSEC) {
                        uint64_t p = pick_static_page(s);
                        volatile uint8_t *b = s->guest + p * SIM_PAGE_SIZE + 2000;

                        /* Behind the writers' and the versions' back, as a
                         * buggy dedupd would. */
                        *b ^= 0x5a;
                        printf("guest-sim: self-test: corrupted page=%" PRIu64 " offset=2000 (xor 0x5a)\n", p);
                        s->opt.corrupt_after_ms = -1;
                }

                if (stats_period && now >= next_stats) {
                        sim_stats(s, s->opt.stats_interval_ms > 0, "running");
                        next_stats += stats_period * NSEC_PER_MSEC;
                        if (next_stats < now)
                                next_stats = now + stats_period * NSEC_PER_MSEC;
                }

                if (end && now >= end)
                        return 0;
        }
}

static int sim_start_threads(struct sim *s) {
        int r;

        s->start_ns = now_ns();
        s->churn_at_ns = s->start_ns + s->opt.churn_after_ms * NSEC_PER_MSEC;
        s->writes_at_ns = s->start_ns + s->opt.writes_after_ms * NSEC_PER_MSEC;
        r = pthread_create(&s->verifier, NULL, verifier_main, s);
        if (r)
                return fprintf(stderr, "guest-sim: starting verifier thread: %s\n", strerror(r)), -r;
        s->verifier_started = true;
        for (unsigned i = 0; i < s->opt.n_writers; i++) {
                r = pthread_create(&s->writers[i].thread, NULL, writer_main, &s->writers[i]);
                if (r)
                        return fprintf(stderr, "guest-sim: starting writer thread: %s\n", strerror(r)), -r;
                s->writers[i].started = true;
        }
        return 0;
}

static void sim_stop_threads(struct sim *s) {
        atomic_store(&s->stop_writers, true);
        for (unsigned i = 0; i < s->opt.n_writers; i++)
                if (s->writers[i].started)
                        pthread_join(s->writers[i].thread, NULL);
        atomic_store(&s->stop_verifier, true);
        if (s->verifier_started)
                pthread_join(s->verifier, NULL);
}

/* Free everything; safe on a partly set up sim. */
static void sim_done(struct sim *s) {
        dedup_client_free(s->client);
        s->client = NULL;
        if (s->guest)
                munmap(s->guest, s->size);
        if (s->memfd >= 0)
                close(s->memfd);
        if (s->pagemap_fd >= 0)
                close(s->pagemap_fd);
        if (s->writers)
                for (unsigned i = 0; i < s->opt.n_writers; i++)
                        free(s->writers[i].pages);
        free(s->writers);
        free(s->versions);
        sim_layout_done(&s->layout);
}

/* Everything after option parsing; returns the exit status. */
static int sim_execute(struct sim *s) {
        sigset_t sigs;
        char text[512];
        int r;

        if (!s->opt.seed_set)
                s->layout.seed = sim_mix64((uint64_t) getpid() << 32 ^ now_ns());
        s->size = (size_t) s->opt.size_mib << 20;

        /* Blocked in every thread (the agent's too): only main takes them. */
        sigemptyset(&sigs);
        sigaddset(&sigs, SIGTERM);
        sigaddset(&sigs, SIGINT);
        sigaddset(&sigs, SIGUSR1);
        r = pthread_sigmask(SIG_BLOCK, &sigs, NULL);
        if (r)
                return fprintf(stderr, "guest-sim: pthread_sigmask: %s\n", strerror(r)), EXIT_SETUP;

        r = sim_layout_init(&s->layout);
        if (r < 0)
                return fprintf(stderr, "guest-sim: page layout: %s\n", strerror(-r)), EXIT_SETUP;
        s->versions = calloc(s->layout.n_pages, sizeof(*s->versions));
        if (!s->versions)
                return fprintf(stderr, "guest-sim: version counters: %s\n", strerror(ENOMEM)), EXIT_SETUP;
        r = sim_setup_writers(s);
        if (r < 0)
                return fprintf(stderr, "guest-sim: writers: %s\n", strerror(-r)), EXIT_SETUP;

        printf("guest-sim: start name=%s pid=%d backend=%s size_mib=%" PRIu64 " pages=%" PRIu64 " image_seed=%" PRIu64
               " seed=%" PRIu64 " shift=%" PRIu64 " image_pages=%" PRIu64 " zero_pages=%" PRIu64 " unique_pages=%" PRIu64
               " volatile_pages=%" PRIu64 " churn_pages=%" PRIu64 " common_pages=%" PRIu64 " partial_pages=%" PRIu64
               " writers=%u write_rate=%" PRIu64 "\n",
               s->opt.name, (int) getpid(), s->opt.backend == SIM_BACKEND_MEMFD ? "memfd" : "anon-ksm", s->opt.size_mib,
               s->layout.n_pages, s->layout.image_seed, s->layout.seed, s->layout.shift,
               s->layout.count[SIM_KIND_IMAGE], s->layout.count[SIM_KIND_ZERO], s->layout.count[SIM_KIND_UNIQUE],
               s->layout.count[SIM_KIND_VOLATILE], s->layout.n_churn, s->layout.n_common, s->layout.n_partial,
               s->opt.n_writers, s->opt.write_rate);

        if (sim_map_guest(s) < 0)
                return EXIT_SETUP;
        sim_fill(s);
        if (s->opt.backend == SIM_BACKEND_MEMFD && !s->opt.no_dedup && sim_register(s) < 0)
                return EXIT_SETUP;

        if (s->opt.ready_file) {
                snprintf(text, sizeof(text), "pid=%d\nname=%s\nmemfd_fd=%d\nsize_mib=%" PRIu64 "\nseed=%" PRIu64
                         "\ndedup_connected=%d\n", (int) getpid(), s->opt.name, s->memfd, s->opt.size_mib,
                         s->layout.seed, s->client ? 1 : 0);
                r = write_file_atomic(s->opt.ready_file, text);
                if (r < 0)
                        return fprintf(stderr, "guest-sim: ready file '%s': %s\n", s->opt.ready_file, strerror(-r)),
                               EXIT_SETUP;
        }

        r = sim_start_threads(s);
        if (r < 0) {
                sim_stop_threads(s);
                return EXIT_SETUP;
        }

        r = sim_run(s, &sigs);
        if (r == -ETIMEDOUT) {
                /* A writer is stuck inside a page write (in a fault nobody
                 * answers): it can't be joined, so report and leave now. */
                sim_stats(s, true, "hang");
                fflush(stdout);
                _exit(EXIT_HANG);
        }

        sim_stop_threads(s);
        /* Nobody writes now: a last full pass, every page, no skips. */
        (void) verify_pass(s, NULL);
        sim_stats(s, true, "final");

        return atomic_load(&s->mismatches) ? EXIT_MISMATCH : 0;
}

int main(int argc, char *argv[]) {
        struct sim s = {
                .opt = {
                        .backend = SIM_BACKEND_MEMFD,
                        .size_mib = 256,
                        .n_writers = 1,
                        .write_rate = 1000,
                        .hang_timeout_ms = 5000,
                        .corrupt_after_ms = -1,
                        .stall_after_ms = -1,
                },
                .memfd = -1,
                .pagemap_fd = -1,
                .layout = {
                        .image_seed = 1,
                        .pct = {
                                [SIM_KIND_IMAGE] = 50,
                                [SIM_KIND_ZERO] = 20,
                                [SIM_KIND_UNIQUE] = 25,
                                [SIM_KIND_VOLATILE] = 5,
                        },
                },
        };
        int r;

        setvbuf(stdout, NULL, _IOLBF, 0);
        snprintf(s.opt.name, sizeof(s.opt.name), "sim-%d", (int) getpid());

        r = sim_options_parse(&s.opt, &s.layout, argc, argv);
        if (r > 0)
                return 0;
        if (r < 0)
                return EXIT_USAGE;

        r = sim_execute(&s);
        sim_done(&s);
        return r;
}
