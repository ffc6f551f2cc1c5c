/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: Scanner
 *
 * Reads ranges of a memfd with io_uring READ_FIXED into registered buffers
 * and hands each data page to a callback, in offset order.
 *
 * - Never through a mapping: a read fault on a shmem hole allocates a page,
 *   which would undo merges (and charge the VM for pages it never touched).
 *   read() of a hole returns zeros without allocating, but holes are not
 *   read at all: a batch is split into data extents first.
 *
 * - Finding holes costs at most O(batch) per batch. lseek(SEEK_HOLE) walks
 *   the page cache from the offset to the next hole, which in a dense 64 GiB
 *   memfd is the whole file (measured ≈19 ns/page: 5 ms per dense GiB). So
 *   cachestat() (Linux 6.5) is asked first whether all the rest of the range
 *   is cached — the common dense case: one cheap call per range, no seek
 *   (asking per batch cost 3% of a scan of unique memory) — and once a range
 *   has shown a hole, each batch is asked, and only a batch with holes is
 *   walked with SEEK_DATA/SEEK_HOLE, whose answers are remembered
 *   (data_end/hole_end) for the following batches. SEEK_DATA over holes is
 *   cheap: empty xarray ranges are skipped whole.
 *
 * - A short range (UNPROBED_PAGES or fewer) is read whole, unasked. The
 *   daemon's units end at pages it does not read (merged ones, say), so
 *   once a guest is merged most ranges are a few pages of data, and asking
 *   cost a syscall per range. A hole in such a range reads as zeros (no
 *   page is allocated); each page that reads as zeros is asked about alone,
 *   and not delivered if it is not in the page cache. So a short range of
 *   mostly holes costs more than asking would; the daemon's have few: its
 *   units leave out the pages it punched, and zero pages get merged.
 *   scanner_read_data() reads any range so, for a caller that found data
 *   in every page of it last time: cachestat() is not cheap either, it
 *   visits every page (measured: 10% of a scan of unique memory).
 *
 * - One submit per batch: a batch's extents are queued as one SQE each and
 *   submitted together; with queue_depth batches in flight, the submit of
 *   the next batch and the wait for the oldest share one io_uring_enter().
 *
 * - Pages are delivered only once every read of their batch completed, in
 *   offset order; a short read (the file shrank) ends the scan at EOF.
 *
 * - On an error or a callback's stop, reads in flight are reaped before
 *   returning, so buffers are never reused while the kernel writes them.
 *
 * - A sync scanner has no ring: each extent is read with pread() as it is
 *   planned, one batch at a time. io_uring cannot read shmem without
 *   blocking, so it hands those reads to io-wq workers, which copy on
 *   another CPU: for threads that each hash what they read, copying on the
 *   same CPU, into a buffer still in its cache, is faster and uses no
 *   thread more than asked for.
 *
 * DOC: ScannerTeam
 *
 * One mutex guards a job: the next unit to take, and per unit whether it is
 * done and what its function returned. A thread takes a unit under the
 * mutex, reads it without, and marks it done under the mutex again, which
 * publishes what the function wrote to whoever takes the mutex next: the
 * caller, in scanner_team_wait(). Worker threads sleep on a condition
 * variable between jobs; the caller sleeps on another only when the unit it
 * wants is being read and nothing is left to take. Threads start with every
 * signal blocked: signals are the event loop's business.
 */

#include <errno.h>
#include <liburing.h>
#include <linux/types.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "scanner.h"
#include "util.h"

#define PS SCANNER_PAGE_SIZE
#define MAX_QUEUE_DEPTH 64u
#define MAX_BATCH_PAGES 4096u
#define UNPROBED_PAGES 32u

/* cachestat(2), Linux 6.5; Debian 12's headers lack it. */
#ifndef __NR_cachestat
#define __NR_cachestat 451
#endif
struct scanner_cachestat_range {
        __u64 off;
        __u64 len;
};
struct scanner_cachestat {
        __u64 nr_cache;
        __u64 nr_dirty;
        __u64 nr_writeback;
        __u64 nr_evicted;
        __u64 nr_recently_evicted;
};

typedef struct Extent {
        uint32_t first;         /* page index within the batch */
        uint32_t npages;
        int32_t res;            /* bytes read or -errno, once completed */
} Extent;

typedef struct Batch {
        uint64_t offset;        /* file offset of the batch's first page */
        uint8_t *buf;
        Extent *extents;        /* up to batch_pages / 2 + 1 of them */
        uint32_t nextents;
        uint32_t pending;       /* extents still in flight */
} Batch;

struct Scanner {
        struct io_uring ring;
        bool ring_ok;
        bool fixed;             /* buffers registered */
        bool async;
        bool sync;              /* pread(), no ring */
        bool no_cachestat;      /* the kernel lacks it: lseek only */
        bool broken;            /* io_uring_enter() failed with reads in flight */
        unsigned depth;
        unsigned batch_pages;
        uint8_t *bufs;          /* depth * batch_pages pages, one mmap */
        Batch *batches;         /* ring of depth slots */
        ScannerStats stats;
};

/* What is known about the file ahead of the scan position; reset per call. */
typedef struct Probe {
        int fd;
        uint64_t end;           /* of the range scanner_read() reads */
        uint64_t data_end;      /* [pos, data_end) is data */
        uint64_t hole_end;      /* [pos, hole_end) is a hole */
        bool eof;               /* no data from hole_end on */
        bool holes;             /* the range has holes: check batch by batch */
        bool unprobed;          /* read unasked (short, or all data last time): check zero pages */
} Probe;

int scanner_new_full(const ScannerConfig *config, Scanner **ret) {
        _cleanup_(scanner_freep) Scanner *s = NULL;
        bool sync = config && config->sync;
        unsigned depth = sync ? 1 : config && config->queue_depth ? config->queue_depth : 4;
        unsigned batch = config && config->batch_pages ? config->batch_pages : 256;
        unsigned max_extents = batch / 2 + 1;   /* data, hole, data, ... */
        struct io_uring_params params;
        struct iovec *iov;
        unsigned entries;
        void *p;
        int r;

        if (depth > MAX_QUEUE_DEPTH || batch > MAX_BATCH_PAGES)
                return -EINVAL;

        s = calloc(1, sizeof *s);
        if (!s)
                return -ENOMEM;
        s->depth = depth;
        s->batch_pages = batch;
        s->async = config && config->async;
        s->sync = sync;

        p = mmap(NULL, (size_t) depth * batch * PS, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED)
                return negative_errno();
        s->bufs = p;
        s->batches = calloc(depth, sizeof(Batch));
        if (!s->batches)
                return -ENOMEM;
        for (unsigned i = 0; i < depth; i++) {
                s->batches[i].buf = s->bufs + (size_t) i * batch * PS;
                s->batches[i].extents = calloc(max_extents, sizeof(Extent));
                if (!s->batches[i].extents)
                        return -ENOMEM;
        }

        if (sync) {
                *ret = TAKE_PTR(s);
                return 0;
        }

        /* Enough SQEs for every batch in flight at its most fragmented. */
        entries = MIN(depth * max_extents, 4096u);
        /* Completions are only reaped by us, in io_uring_enter(): no task
         * work interrupts the callbacks (SINGLE_ISSUER|DEFER_TASKRUN, Linux
         * 6.1; retried without them on older kernels). */
        params = (struct io_uring_params) {
                .flags = IORING_SETUP_CQSIZE | IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN,
                .cq_entries = entries * 2,
        };
        r = io_uring_queue_init_params(entries, &s->ring, &params);
        if (r == -EINVAL) {
                params = (struct io_uring_params) { .flags = IORING_SETUP_CQSIZE, .cq_entries = entries * 2 };
                r = io_uring_queue_init_params(entries, &s->ring, &params);
        }
        if (r < 0)
                return r;
        s->ring_ok = true;

        iov = calloc(depth, sizeof *iov);
        if (!iov)
                return -ENOMEM;
        for (unsigned i = 0; i < depth; i++)
                iov[i] = (struct iovec) { .iov_base = s->batches[i].buf, .iov_len = (size_t) batch * PS };
        r = io_uring_register_buffers(&s->ring, iov, depth);
        free(iov);
        if (r == -ENOMEM || r == -EPERM || r == -EFAULT)
                log_debug_errno(r, "Registering %u scanner buffers failed, using plain reads: %m", depth);
        else if (r < 0)
                return r;
        s->fixed = r >= 0;

        *ret = TAKE_PTR(s);
        return 0;
}

int scanner_new(unsigned queue_depth, unsigned batch_pages, Scanner **ret) {
        ScannerConfig c = { .queue_depth = queue_depth, .batch_pages = batch_pages };
        if (queue_depth == 0 || batch_pages == 0)
                return -EINVAL;
        return scanner_new_full(&c, ret);
}

Scanner *scanner_free(Scanner *s) {
        if (!s)
                return NULL;
        if (s->ring_ok)
                io_uring_queue_exit(&s->ring);
        if (s->batches)
                for (unsigned i = 0; i < s->depth; i++)
                        free(s->batches[i].extents);
        free(s->batches);
        if (s->bufs)
                (void) munmap(s->bufs, (size_t) s->depth * s->batch_pages * PS);
        free(s);
        return NULL;
}

void scanner_get_stats(const Scanner *s, ScannerStats *ret) {
        *ret = s->stats;
}

void scanner_reset_stats(Scanner *s) {
        s->stats = (ScannerStats) {};
}

void scanner_stats_add(ScannerStats *a, const ScannerStats *b) {
        a->bytes_read += b->bytes_read;
        a->pages_delivered += b->pages_delivered;
        a->pages_hole += b->pages_hole;
        a->batches += b->batches;
        a->submits += b->submits;
        a->reads += b->reads;
        a->seeks += b->seeks;
        a->cachestats += b->cachestats;
}

bool scanner_uses_fixed_buffers(const Scanner *s) {
        return s->fixed;
}

/* 1 if all of [pos, end) is in the page cache, 0 if not or unknown. */
static int all_cached(Scanner *s, int fd, uint64_t pos, uint64_t end) {
        struct scanner_cachestat_range range = { .off = pos, .len = end - pos };
        struct scanner_cachestat cs;

        if (s->no_cachestat)
                return 0;
        s->stats.cachestats++;
        if (syscall(__NR_cachestat, fd, &range, &cs, 0) < 0) {
                /* ENOSYS: old kernel; EOPNOTSUPP: hugetlbfs. */
                if (errno == ENOSYS || errno == EOPNOTSUPP)
                        s->no_cachestat = true;
                return 0;
        }
        return cs.nr_cache == (end - pos) / PS;
}

static int seek(Scanner *s, int fd, uint64_t pos, int whence, uint64_t *ret) {
        off_t o;

        s->stats.seeks++;
        o = lseek(fd, (off_t) pos, whence);
        if (o < 0)
                return negative_errno();
        *ret = (uint64_t) o;
        return 0;
}

/* Is all the rest of the range, from pos, in the page cache? Asked once a
 * range, not once a batch, while the range has shown no hole: in the
 * common dense case a range costs one cachestat() (then it is all data). */
static bool rest_cached(Scanner *s, Probe *pr, uint64_t pos, uint64_t batch_end) {
        if (pr->holes || pr->end <= batch_end)
                return false;
        if (!all_cached(s, pr->fd, pos, pr->end)) {
                pr->holes = true;
                return false;
        }
        pr->data_end = pr->end;
        return true;
}

/* The first data extent in [pos, end): sets [*ret_start, *ret_end). When
 * [pos, end) holds no data, *ret_start == *ret_end == the first data at or
 * after end, or UINT64_MAX if none up to EOF. */
static int next_extent(Scanner *s, Probe *pr, uint64_t pos, uint64_t end, uint64_t *ret_start, uint64_t *ret_end) {
        uint64_t d, h;
        int r;

        if (pr->data_end > pos) {
                *ret_start = pos;
                *ret_end = MIN(pr->data_end, end);
                return 0;
        }
        if (pr->hole_end > pos) {
                if (pr->eof) {
                        *ret_start = *ret_end = UINT64_MAX;
                        return 0;
                }
                d = pr->hole_end;       /* data starts there */
        } else if (pr->unprobed || rest_cached(s, pr, pos, end) || all_cached(s, pr->fd, pos, end)) {
                *ret_start = pos;
                *ret_end = end;
                return 0;
        } else {
                r = seek(s, pr->fd, pos, SEEK_DATA, &d);
                if (r == -ENXIO) {      /* nothing but holes up to EOF */
                        pr->hole_end = UINT64_MAX;
                        pr->eof = true;
                        *ret_start = *ret_end = UINT64_MAX;
                        return 0;
                }
                if (r < 0)
                        return r;
                d &= ~(uint64_t) (PS - 1);
                pr->hole_end = d;
        }
        if (d >= end) {
                *ret_start = *ret_end = d;
                return 0;
        }

        /* Data from d: to the end of the batch, or up to a hole in it? */
        if (all_cached(s, pr->fd, d, end))
                h = end;
        else {
                r = seek(s, pr->fd, d, SEEK_HOLE, &h);
                if (r < 0)
                        return r;
                h = ALIGN_TO(h, (uint64_t) PS);
                pr->data_end = h;
        }
        *ret_start = d;
        *ret_end = MIN(h, end);
        return 0;
}

/* A sync scanner's read of an extent, to its end or EOF: res as a CQE's. */
static int32_t read_now(int fd, uint8_t *dst, unsigned len, uint64_t off) {
        unsigned done = 0;

        while (done < len) {
                ssize_t n = pread(fd, dst + done, len - done, (off_t) (off + done));

                if (n < 0 && errno == EINTR)
                        continue;
                if (n < 0)
                        return done > 0 ? (int32_t) done : -errno;
                if (n == 0)
                        break;
                done += (unsigned) n;
        }
        return (int32_t) done;
}

static int queue_read(Scanner *s, int fd, Batch *b) {
        struct io_uring_sqe *sqe;
        uint32_t idx = b->nextents - 1;
        Extent *e = &b->extents[idx];
        unsigned slot = (unsigned) (b - s->batches);
        void *dst = b->buf + (size_t) e->first * PS;
        unsigned len = e->npages * PS;
        uint64_t off = b->offset + (uint64_t) e->first * PS;

        if (s->sync) {
                e->res = read_now(fd, dst, len, off);
                s->stats.reads++;
                return 0;
        }
        sqe = io_uring_get_sqe(&s->ring);

        /* The SQ has room for every extent of every batch in flight at its
         * most fragmented unless that exceeded 4096 entries (deep queues of
         * big batches): then submit what is queued to make room. */
        if (!sqe) {
                int r = io_uring_submit(&s->ring);
                s->stats.submits++;
                if (r < 0)
                        return r;
                sqe = io_uring_get_sqe(&s->ring);
                if (!sqe)
                        return -EBUSY;
        }
        if (s->fixed)
                io_uring_prep_read_fixed(sqe, fd, dst, len, off, (int) slot);
        else
                io_uring_prep_read(sqe, fd, dst, len, off);
        if (s->async)
                sqe->flags |= IOSQE_ASYNC;
        io_uring_sqe_set_data64(sqe, ((uint64_t) slot << 32) | idx);
        s->stats.reads++;
        return 0;
}

/* Plan and queue one batch of reads starting at the first data at or after
 * *pos, and move *pos past it. Returns 1 if reads were queued, 0 if only
 * holes are left, or -errno (b->nextents reads may already be queued). */
static int fill_batch(Scanner *s, Probe *pr, Batch *b, uint64_t *pos, uint64_t end) {
        const uint64_t batch_bytes = (uint64_t) s->batch_pages * PS;
        uint64_t bend, start, stop;
        int r;

        b->nextents = 0;
        /* Skip holes until a batch-sized window has data. */
        for (;;) {
                r = next_extent(s, pr, *pos, MIN(*pos + batch_bytes, end), &start, &stop);
                if (r < 0)
                        return r;
                if (start < stop)
                        break;
                start = MIN(start, end);
                s->stats.pages_hole += (start - *pos) / PS;
                *pos = start;
                if (*pos >= end)
                        return 0;
        }

        s->stats.pages_hole += (start - *pos) / PS;
        b->offset = start;
        bend = MIN(start + batch_bytes, end);
        for (;;) {
                b->extents[b->nextents++] = (Extent) {
                        .first = (uint32_t) ((start - b->offset) / PS),
                        .npages = (uint32_t) ((stop - start) / PS),
                };
                r = queue_read(s, pr->fd, b);
                if (r < 0) {
                        b->nextents--;  /* not queued */
                        *pos = start;
                        return r;
                }
                if (stop >= bend)
                        break;

                uint64_t gap_from = stop;
                r = next_extent(s, pr, gap_from, bend, &start, &stop);
                if (r < 0) {
                        *pos = gap_from;
                        return r;
                }
                if (start == stop) {    /* holes to the end of the batch */
                        s->stats.pages_hole += (bend - gap_from) / PS;
                        break;
                }
                s->stats.pages_hole += (start - gap_from) / PS;
        }
        *pos = bend;
        s->stats.batches++;
        return 1;
}

/* Submit what is queued (if submit) and reap every completion there is,
 * waiting for at least one if wait. */
static int reap(Scanner *s, bool submit, bool wait) {
        struct io_uring_cqe *cqe;
        unsigned head, n = 0;
        int r;

        if (submit || wait) {
                do
                        r = io_uring_submit_and_wait(&s->ring, wait ? 1 : 0);
                while (r == -EINTR);
                if (submit)
                        s->stats.submits++;
                if (r < 0)
                        return r;
        }
        io_uring_for_each_cqe(&s->ring, head, cqe) {
                uint64_t user = io_uring_cqe_get_data64(cqe);
                Batch *b = &s->batches[user >> 32];

                b->extents[(uint32_t) user].res = cqe->res;
                b->pending--;
                n++;
        }
        io_uring_cq_advance(&s->ring, n);
        return 0;
}

/* In a range read unasked, a page of zeros may be a hole. */
static bool hole(Scanner *s, const Probe *pr, uint64_t off, const uint8_t *page) {
        return pr->unprobed && mem_is_zero(page, PS) && !all_cached(s, pr->fd, off, off + PS);
}

/* Hand a completed batch's pages out, in order. 1 at EOF (a short read),
 * 0, or -errno (a failed read or the callback's stop). */
static int deliver(Scanner *s, const Probe *pr, Batch *b, scanner_page_fn cb, void *userdata) {
        for (uint32_t i = 0; i < b->nextents; i++) {
                Extent *e = &b->extents[i];
                uint32_t got;

                if (e->res < 0)
                        return e->res;
                s->stats.bytes_read += (uint64_t) e->res;
                got = (uint32_t) e->res / PS;
                for (uint32_t p = 0; p < got; p++) {
                        uint64_t off = b->offset + (uint64_t) (e->first + p) * PS;
                        const uint8_t *page = b->buf + (size_t) (e->first + p) * PS;
                        int r;

                        if (hole(s, pr, off, page)) {
                                s->stats.pages_hole++;
                                continue;
                        }
                        r = cb(userdata, off, page);
                        s->stats.pages_delivered++;
                        if (r < 0)
                                return r;
                }
                if (got < e->npages) {
                        /* EOF. A probed range counted its pages past EOF
                         * as holes when it found EOF; a range read unasked
                         * counts them here. */
                        if (pr->unprobed)
                                s->stats.pages_hole += (pr->end - b->offset) / PS - e->first - got;
                        return 1;
                }
        }
        return 0;
}

static int read_range(Scanner *s, int fd, uint64_t offset, uint32_t npages, bool data, scanner_page_fn cb,
                      void *userdata) {
        uint64_t pos = offset, end = offset + (uint64_t) npages * PS;
        /* Without cachestat(), a zero page could not be told from a hole. */
        Probe pr = { .fd = fd, .end = end, .unprobed = (data || npages <= UNPROBED_PAGES) && !s->no_cachestat };
        unsigned head = 0, inflight = 0;
        bool more = pos < end, stop = false;
        int r = 0;

        if (offset % PS != 0 || fd < 0 || !cb)
                return -EINVAL;
        if (s->broken)
                return -EIO;

        for (;;) {
                bool queued = false;

                while (more && inflight < s->depth) {
                        Batch *b = &s->batches[(head + inflight) % s->depth];
                        int k = fill_batch(s, &pr, b, &pos, end);

                        if (b->nextents > 0) {
                                b->pending = s->sync ? 0 : b->nextents;
                                inflight++;
                                queued = true;
                        }
                        if (k < 0) {
                                r = k;
                                stop = true;
                        }
                        if (k <= 0 || pos >= end)
                                more = false;
                }
                if (inflight == 0)
                        break;

                Batch *oldest = &s->batches[head];
                int k = s->sync ? 0 : reap(s, queued, oldest->pending > 0);
                if (k < 0) {
                        /* Reads may still be in flight into our buffers: this
                         * scanner must not be used again. */
                        s->broken = true;
                        return log_debug_errno(k, "io_uring_enter() failed, scanner unusable: %m");
                }
                if (oldest->pending > 0)
                        continue;

                if (!stop) {
                        k = deliver(s, &pr, oldest, cb, userdata);
                        if (k != 0) {
                                /* EOF or error: reap later batches, deliver nothing more. */
                                stop = true;
                                more = false;
                                if (k < 0)
                                        r = k;
                        }
                }
                head = (head + 1) % s->depth;
                inflight--;
        }
        return r;
}

int scanner_read(Scanner *s, int fd, uint64_t offset, uint32_t npages, scanner_page_fn cb, void *userdata) {
        return read_range(s, fd, offset, npages, false, cb, userdata);
}

int scanner_read_data(Scanner *s, int fd, uint64_t offset, uint32_t npages, scanner_page_fn cb, void *userdata) {
        return read_range(s, fd, offset, npages, true, cb, userdata);
}

/* ScannerTeam */

typedef struct TeamThread {
        ScannerTeam *team;
        pthread_t tid;
        int error;              /* of its start, once started is set */
        bool started;
} TeamThread;

struct ScannerTeam {
        pthread_mutex_t lock;
        pthread_cond_t work;    /* workers: a job started, or stop */
        pthread_cond_t done;    /* the caller: a unit is done */
        pthread_cond_t ready;   /* scanner_team_new(): a thread started */
        Scanner *own;
        ScannerConfig config;
        ScannerStats stats;     /* of the threads' scanners, own not included */
        TeamThread *threads;
        unsigned n_threads;     /* started, the caller not counted */
        bool stop;
        bool caller_waits;

        /* the job */
        scanner_unit_fn fn;
        void *userdata;
        size_t n_units;
        size_t next;            /* first unit not taken */
        size_t busy;            /* units being read */
        size_t cap;
        bool *unit_done;
        int *unit_r;
};

/* Called with the lock held, returns with it held. */
static void run_unit(ScannerTeam *t, Scanner *s) {
        size_t u = t->next++;
        int r;

        t->busy++;
        pthread_mutex_unlock(&t->lock);
        r = t->fn(t->userdata, s, u);
        pthread_mutex_lock(&t->lock);
        if (s != t->own) {
                scanner_stats_add(&t->stats, &s->stats);
                scanner_reset_stats(s);
        }
        t->unit_r[u] = r;
        t->unit_done[u] = true;
        t->busy--;
        if (t->caller_waits)
                pthread_cond_signal(&t->done);
}

static void *team_main(void *arg) {
        TeamThread *th = arg;
        ScannerTeam *t = th->team;
        _cleanup_(scanner_freep) Scanner *s = NULL;
        int r;

        /* Created here: its ring belongs to this thread. */
        r = scanner_new_full(&t->config, &s);
        pthread_mutex_lock(&t->lock);
        th->error = r;
        th->started = true;
        pthread_cond_broadcast(&t->ready);
        while (r >= 0 && !t->stop) {
                if (t->next < t->n_units)
                        run_unit(t, s);
                else
                        pthread_cond_wait(&t->work, &t->lock);
        }
        pthread_mutex_unlock(&t->lock);
        return NULL;
}

int scanner_team_new(unsigned nthreads, Scanner *own, const ScannerConfig *config, ScannerTeam **ret) {
        _cleanup_(scanner_team_freep) ScannerTeam *t = NULL;
        sigset_t all, saved;
        int r = 0;

        if (nthreads == 0 || nthreads > SCANNER_TEAM_MAX || !own)
                return -EINVAL;
        t = calloc(1, sizeof *t);
        if (!t)
                return -ENOMEM;
        pthread_mutex_init(&t->lock, NULL);
        pthread_cond_init(&t->work, NULL);
        pthread_cond_init(&t->done, NULL);
        pthread_cond_init(&t->ready, NULL);
        t->own = own;
        if (config)
                t->config = *config;
        if (nthreads > 1) {
                t->threads = calloc(nthreads - 1, sizeof(TeamThread));
                if (!t->threads)
                        return -ENOMEM;
        }

        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &saved);
        for (unsigned i = 0; i + 1 < nthreads && r == 0; i++) {
                TeamThread *th = &t->threads[i];

                th->team = t;
                r = -pthread_create(&th->tid, NULL, team_main, th);
                if (r < 0)
                        break;
                t->n_threads++;
                (void) pthread_setname_np(th->tid, "dedupd-scan");
                pthread_mutex_lock(&t->lock);
                while (!th->started)
                        pthread_cond_wait(&t->ready, &t->lock);
                r = th->error;
                pthread_mutex_unlock(&t->lock);
        }
        pthread_sigmask(SIG_SETMASK, &saved, NULL);
        if (r < 0)
                return r;
        *ret = TAKE_PTR(t);
        return 0;
}

ScannerTeam *scanner_team_free(ScannerTeam *t) {
        if (!t)
                return NULL;
        pthread_mutex_lock(&t->lock);
        t->stop = true;
        pthread_cond_broadcast(&t->work);
        pthread_mutex_unlock(&t->lock);
        for (unsigned i = 0; i < t->n_threads; i++)
                pthread_join(t->threads[i].tid, NULL);
        pthread_mutex_destroy(&t->lock);
        pthread_cond_destroy(&t->work);
        pthread_cond_destroy(&t->done);
        pthread_cond_destroy(&t->ready);
        free(t->threads);
        free(t->unit_done);
        free(t->unit_r);
        free(t);
        return NULL;
}

unsigned scanner_team_size(const ScannerTeam *t) {
        return t->n_threads + 1;
}

void scanner_team_get_stats(ScannerTeam *t, ScannerStats *ret) {
        pthread_mutex_lock(&t->lock);
        *ret = t->stats;
        pthread_mutex_unlock(&t->lock);
}

int scanner_team_start(ScannerTeam *t, size_t n, scanner_unit_fn fn, void *userdata) {
        if (n > t->cap) {
                bool *d = realloc(t->unit_done, n * sizeof(bool));
                int *r;

                if (!d)
                        return -ENOMEM;
                t->unit_done = d;
                r = realloc(t->unit_r, n * sizeof(int));
                if (!r)
                        return -ENOMEM;
                t->unit_r = r;
                t->cap = n;
        }
        pthread_mutex_lock(&t->lock);
        memset(t->unit_done, 0, n * sizeof(bool));
        t->fn = fn;
        t->userdata = userdata;
        t->n_units = n;
        t->next = 0;
        pthread_cond_broadcast(&t->work);
        pthread_mutex_unlock(&t->lock);
        return 0;
}

int scanner_team_wait(ScannerTeam *t, size_t unit) {
        int r;

        pthread_mutex_lock(&t->lock);
        while (!t->unit_done[unit]) {
                if (t->next < t->n_units)
                        run_unit(t, t->own);
                else {
                        t->caller_waits = true;
                        pthread_cond_wait(&t->done, &t->lock);
                        t->caller_waits = false;
                }
        }
        r = t->unit_r[unit];
        pthread_mutex_unlock(&t->lock);
        return r;
}

void scanner_team_finish(ScannerTeam *t) {
        pthread_mutex_lock(&t->lock);
        t->n_units = t->next;
        while (t->busy > 0) {
                t->caller_waits = true;
                pthread_cond_wait(&t->done, &t->lock);
                t->caller_waits = false;
        }
        t->n_units = t->next = 0;
        pthread_mutex_unlock(&t->lock);
}
