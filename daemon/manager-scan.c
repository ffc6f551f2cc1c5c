/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: pacing the scan, as ksmd does: every SleepMillisecs, look at
 * PagesToScan pages from the cursor on (VM by VM, region by region), feed
 * them to the engine, then flush the merges it asked for as batches. When
 * the cursor wraps, a full scan is done: the engine rebuilds its unstable
 * tree, and each region is checked again for foreign mappers and each VMM's
 * VMA count is cross-checked with /proc/PID/maps (at most every 2 s:
 * that reads the maps of every process). The timer is accurate to 1 ms.
 *
 * Scan threads: reading (a copy out of the page cache) and hashing are most
 * of a scan's cost on memory with nothing to merge, and need no engine
 * state. So a batch is cut into units of UNIT_PAGES pages that ScanThreads
 * readers (a ScannerTeam: the event loop's thread and ScanThreads - 1
 * threads, each with its own Scanner) read and hash into per-unit arrays,
 * while the event loop's thread feeds the hashes to the engine
 * (dedup_engine_scan_hashed()) unit by unit, in offset order, exactly as it
 * would have fed the pages. Scan threads touch nothing but their unit and
 * dedup_engine_hash(); they only run inside scan_batch(), so the memfds
 * they read stay open (VMs are torn down by the event loop). A hash is a
 * snapshot, as a page read was: the engine reads the page again before
 * writing it to a new canonical page and gives up if its hash changed, and
 * every merge is still checked under write protection (DESIGN.md §2).
 *
 * With Run=2 the same timer drives the incremental unmerge-all instead, a
 * bounded batch per tick, so the event loop (and D-Bus) stays live; VMs
 * whose operator called Unmerge() are unmerged the same way.
 *
 * AdvisorMode=scan-time is KSM's scan-time advisor: after each full scan,
 * PagesToScan moves (an EWMA, 30% weight on the new figure as in KSM) to
 * what would make the next full scan last AdvisorTargetScanTimeSec, capped
 * so the daemon's CPU time stays within AdvisorMaxCpuPercent of the wall
 * time.
 *
 * Idle mode: rescanning memory that did not change finds nothing, so once
 * it is known that nothing changes, scanning sleeps. How we know:
 *
 * - dedupd already hears of every write to a page it write-protected: the
 *   agent answers the fault with UNMERGED (a merged page) or WRITTEN (any
 *   other), and the engine counts them (pages_written, unmerges). Merged
 *   and zero pages are always protected. So when a full scan ends without
 *   finding anything (the engine's pages_changed did not move: no page was
 *   new or changed since its last scan, nothing was merged) and nothing is
 *   in flight, the unmerged pages holding data are write-protected too,
 *   through each VMM's userfaultfd, one UFFDIO_WRITEPROTECT per run, and
 *   one more full scan runs without smart-scan skips (SCAN_SETTLING). If
 *   that one finds nothing either, every page was seen unchanged after its
 *   protection began: from then on the first write to any page reaches us.
 *   Scanning goes idle (SCAN_IDLE) until the ScanMark changes: a write
 *   report, an unmerge, a VM or region coming or going, a pause, a foreign
 *   mapper. That is checked after every event the loop handles (a post
 *   event source), so a report wakes scanning at once, and on a slow tick.
 * - A guest that is busy after all spoils the settling scan at its first
 *   write: protection is lifted at once (the same post event source), and
 *   settling is tried again only after twice as many quiet full scans as
 *   before (up to SETTLE_AFTER_MAX; one again once idle was reached). Smart
 *   scan skips most pages that never merge, so a scan can look quiet while
 *   a guest writes; this keeps the faults such a guest takes rare.
 * - Holes (never touched, or punched by merges) are not protected: that
 *   would allocate page tables for all of guest RAM. A page appearing in a
 *   hole (a guest touching new memory) grows the memfd's allocated blocks,
 *   fstat()ed per region in the mark: noticed within IDLE_TICK_MSEC (or
 *   SleepMillisecs if longer), the tick's period while idle.
 * - Leaving idle, the protection of unmerged pages is lifted again, so a
 *   busy guest pays at most one write fault per page per idle period.
 *
 * Why not the alternatives: PAGEMAP_SCAN's written-page tracking needs an
 * async (WP_ASYNC) userfaultfd over the pages tracked, and unmerged pages
 * must stay on the agent's synchronous one: a merge needs their writers to
 * wait (DESIGN.md §2); soft-dirty bits are cleared
 * process-wide (CRIU's business) and cost a fault per page on the whole
 * VMM; checksum sampling finds a change only after reading much of the
 * memory it was meant to spare. Here idle costs a tick a second, the
 * engine's stats and one fstat() per region, and the periodic checks.
 *
 * Writes that bypass the VMM's mapping (write() or another process's
 * mapping of the memfd) are not seen; regions with foreign mappers are not
 * merged anyway, and those checks keep running while idle (check_vms()).
 */

#include <errno.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "manager.h"
#include "mappers.h"
#include "uffd-ops.h"
#include "util.h"

#define UNIT_PAGES 512u                 /* 2 MiB: what one thread reads at a time */
#define ROUND_UNITS 64u                 /* units planned at once: 512 KiB of hashes */
#define PREFETCH_AHEAD 8u               /* pages: table lookups to start early */
#define VMS_CHECK_USEC (2 * 1000000ULL)
#define IDLE_CHECK_USEC (10 * 1000000ULL)
#define IDLE_TICK_MSEC 1000u            /* while idle: how often the memfds' sizes are looked at */
#define SETTLE_AFTER_MAX 64u            /* quiet full scans wanted before settling, at most */
#define SCAN_TIMER_ACCURACY_USEC 1000

/* A region's part of a round. */
typedef struct ScanSeg {
        Vm *vm;
        VmRegion *reg;
        int fd;                         /* reg->memfd and reg->memfd_offset, copied: */
        uint64_t memfd_offset;          /* scan threads touch no Vm */
        int error;                      /* first read error, logged */
        char key[80];                   /* NUMA topology key */
} ScanSeg;

/* A page of a unit, once read and hashed. */
typedef struct ScanHash {
        uint64_t hash;
        uint32_t index;                 /* page in its region */
        int16_t nid;                    /* set by the event loop's thread, ahead of feeding */
        bool zero;
} ScanHash;

/* UNIT_PAGES (or fewer) pages of one segment: its hashes are written by
 * whichever thread reads it, read by the event loop's thread after
 * scanner_team_wait(). */
typedef struct ScanUnit {
        const DedupEngine *engine;
        ScanSeg *seg;                   /* scan threads only read it */
        uint64_t first;                 /* page in the region */
        uint32_t npages;
        bool data;                      /* every page held data when last read */
        uint32_t n;                     /* data pages delivered: hashes[0..n) */
        ScanHash *hashes;
} ScanUnit;

struct ScanJob {
        ScanSeg segs[ROUND_UNITS];      /* every segment has a unit */
        ScanUnit units[ROUND_UNITS];
        unsigned n_segs, n_units;
        ScanHash hashes[ROUND_UNITS * UNIT_PAGES];
};

unsigned manager_default_scan_threads(void) {
        long n = sysconf(_SC_NPROCESSORS_ONLN);

        return n >= 2 ? (unsigned) MIN((unsigned long) n / 2, (unsigned long) SCANNER_TEAM_MAX) : 1;
}

/* On a scan thread. */
static int hash_page(void *userdata, uint64_t offset, const void *data) {
        ScanUnit *u = userdata;
        ScanHash *h = &u->hashes[u->n++];

        h->index = (uint32_t) ((offset - u->seg->memfd_offset) / DEDUP_PAGE_SIZE);
        h->hash = dedup_engine_hash(u->engine, data, &h->zero);
        return 0;
}

/* On a scan thread. */
static int read_unit(void *userdata, Scanner *s, size_t unit) {
        ScanJob *j = userdata;
        ScanUnit *u = &j->units[unit];

        u->n = 0;
        return (u->data ? scanner_read_data : scanner_read)(s, u->seg->fd,
                                                            u->seg->memfd_offset + u->first * DEDUP_PAGE_SIZE,
                                                            u->npages, hash_page, u);
}

static void ahead(Manager *m, const ScanSeg *seg, ScanHash *h, bool across) {
        dedup_page_t page = seg->reg->first + h->index;
        int nid = 0;

        if (!across) {
                nid = numa_topology_guest_page_nid(m->topology, seg->key, h->index, seg->vm->pid,
                                                   seg->reg->hva + (uint64_t) h->index * DEDUP_PAGE_SIZE);
                nid = MAX(nid, 0);
        }
        h->nid = (int16_t) nid;
        dedup_engine_prefetch(m->engine, page, h->hash, nid);
}

/* Hand a unit's hashes to the engine, in offset order. */
static int feed(Manager *m, const ScanUnit *u) {
        bool across = dedup_engine_get_merge_across_nodes(m->engine);

        for (uint32_t i = 0; i < MIN(PREFETCH_AHEAD, u->n); i++)
                ahead(m, u->seg, &u->hashes[i], across);
        for (uint32_t i = 0; i < u->n; i++) {
                const ScanHash *h = &u->hashes[i];
                dedup_page_t page = u->seg->reg->first + h->index;

                if (i + PREFETCH_AHEAD < u->n)
                        ahead(m, u->seg, &u->hashes[i + PREFETCH_AHEAD], across);
                if (dedup_engine_scan_hashed(m->engine, page, h->hash, h->zero, h->nid) == -ENOMEM)
                        return -ENOMEM;
        }
        return 0;
}

/* Read, hash and feed the planned units. */
static int run_round(Manager *m, ScanJob *j) {
        ScannerTeam *team = m->scan_team;
        int r = 0;

        if (j->n_units == 0)
                return 0;
        if (team && scanner_team_start(team, j->n_units, read_unit, j) < 0)
                team = NULL;    /* no memory for the job: read on this thread */
        for (unsigned i = 0; i < j->n_units; i++) {
                ScanUnit *u = &j->units[i];
                ScanSeg *seg = u->seg;
                int k = team ? scanner_team_wait(team, i) : read_unit(j, m->scanner, i);

                /* Pages before a failed read were delivered: feed them. */
                if (k < 0 && seg->error == 0) {
                        seg->error = k;
                        log_warning_errno(k, "VM '%s': cannot read region %u: %m", seg->vm->name, seg->reg->id);
                }
                r = feed(m, u);
                if (r < 0)
                        break;
        }
        if (team)
                scanner_team_finish(team);
        return r;
}

/* pread() on the thread that hashes: io_uring cannot read shmem without
 * blocking, so it hands every read to an io-wq worker, which copies the
 * pages on another CPU than the one hashing them next. Measured on 2 CPUs
 * (tests/bench/scan-bench, 2 GiB of unique pages): 2.6 GiB/s with one scan
 * thread and 3.8-4.1 with two, against 1.9-2.3 and 3.5 with io_uring.
 * Batches of 32 pages (128 KiB) are hashed while still in L2: 3.4 GiB/s
 * per CPU against 3.2 with 256 (4 GiB, SmartScan off). */
const ScannerConfig *manager_scan_config(void) {
        static const ScannerConfig config = { .batch_pages = 32, .sync = true };

        return &config;
}

/* Start or stop scan threads to match ScanThreads. */
static void update_team(Manager *m) {
        unsigned have = m->scan_team ? scanner_team_size(m->scan_team) : 1;
        int r;

        if (m->scan_threads == have || m->scan_threads == m->scan_team_failed)
                return;
        if (m->scan_team) {
                ScannerStats st;

                scanner_team_get_stats(m->scan_team, &st);
                scanner_stats_add(&m->scan_stats_gone, &st);
        }
        m->scan_team = scanner_team_free(m->scan_team);
        m->scan_team_failed = 0;
        if (m->scan_threads <= 1)
                return;
        r = scanner_team_new(m->scan_threads, m->scanner, manager_scan_config(), &m->scan_team);
        if (r < 0) {
                log_warning_errno(r, "Cannot start %u scan threads, reading on the main thread only: %m",
                                  m->scan_threads - 1);
                m->scan_team_failed = m->scan_threads;
                return;
        }
        log_debug("Scanning with %u threads", m->scan_threads);
}

void manager_scan_free(Manager *m) {
        m->watch_post = sd_event_source_disable_unref(m->watch_post);
        m->scan_team = scanner_team_free(m->scan_team);
        free(m->scan_job);
        m->scan_job = NULL;
}

#define ADVISOR_EWMA_WEIGHT 30
#define ADVISOR_MIN_PAGES 500

static void advise(Manager *m) {
        uint64_t wall = now_usec(CLOCK_MONOTONIC), cpu = now_usec(CLOCK_PROCESS_CPUTIME_ID);
        uint64_t elapsed = wall - m->full_scan_started_us, used = cpu - m->full_scan_cpu_us;
        uint64_t want, pages, cpu_percent;
        bool first = m->full_scan_started_us == 0;

        m->full_scan_started_us = wall;
        m->full_scan_cpu_us = cpu;
        if (first || m->advisor_mode == 0 || elapsed == 0)
                return;
        want = (uint64_t) m->pages_to_scan * elapsed / ((uint64_t) m->advisor_target_sec * 1000000);
        cpu_percent = used * 100 / elapsed;
        if (cpu_percent > m->advisor_max_cpu)
                want = MIN(want, (uint64_t) m->pages_to_scan * m->advisor_max_cpu / cpu_percent);
        pages = ((100 - ADVISOR_EWMA_WEIGHT) * (uint64_t) m->pages_to_scan + ADVISOR_EWMA_WEIGHT * want) / 100;
        pages = MIN(MAX(pages, (uint64_t) ADVISOR_MIN_PAGES), (uint64_t) 1000000);
        if (pages == m->pages_to_scan)
                return;
        log_info("Advisor: full scan took %.1f s at %llu%% CPU: PagesToScan %u -> %llu", elapsed / 1e6,
                 (unsigned long long) cpu_percent, m->pages_to_scan, (unsigned long long) pages);
        m->pages_to_scan = (unsigned) pages;
        manager_bus_property_changed(m, "PagesToScan");
}

static void count_vmas(void *userdata, pid_t pid, uint64_t vmas) {
        Manager *m = userdata;

        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                if (vm_live(m->vms[i]) && m->vms[i]->pid == pid)
                        vm_set_vmas(m->vms[i], vmas);
}

/* Regions with foreign mappers, and VMA counts, in one pass over every
 * process's /proc/PID/maps (a VMM with merged runs has thousands of lines;
 * a pass per region made it VMs x VMMs reads): at the end of a full scan,
 * at most every VMS_CHECK_USEC (small guests are scanned many times a
 * second), and while idle every IDLE_CHECK_USEC or every full-scan time,
 * whichever is longer. */
static void check_vms(Manager *m, uint64_t interval) {
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        _cleanup_free_ MappedFile *files = NULL;
        size_t n = 0, k = 0;
        int r;

        if (now - m->vms_checked_us < interval)
                return;
        m->vms_checked_us = now;
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                if (vm_live(m->vms[i]))
                        n += m->vms[i]->n_regions;
        if (n == 0)
                return;
        files = calloc(n, sizeof(MappedFile));
        if (!files) {
                log_oom();
                return;
        }
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++)
                for (unsigned j = 0; vm_live(m->vms[i]) && j < m->vms[i]->n_regions; j++)
                        files[k++] = (MappedFile) {
                                .dev = m->vms[i]->regions[j].dev,
                                .ino = m->vms[i]->regions[j].ino,
                                .owner = m->vms[i]->pid,
                        };
        r = mappers_scan_files(NULL, files, n, getpid(), count_vmas, m);
        k = 0;
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                bool foreign = false;

                if (!vm_live(vm))
                        continue;
                for (unsigned j = 0; j < vm->n_regions; j++, k++) {
                        VmRegion *reg = &vm->regions[j];
                        bool was = reg->reason[0];

                        vm_region_set_mappers(reg, r, files[k].foreign, files[k].n_foreign);
                        if (!reg->reason[0])
                                continue;
                        foreign = true;
                        if (!was)
                                log_warning("VM '%s' region %u: %s: unmerging it", vm->name, reg->id, reg->reason);
                }
                /* Merged pages of a region someone else maps read as zeros
                 * there: give them back their own copies. */
                if (foreign)
                        (void) dedup_engine_unmerge_vm(m->engine, vm->engine_vm, UINT32_MAX);
                /* Counted just now: room again below the VMA budget? */
                if (vm->vma_counted_us >= now && vm->reason[0] && vma_budget_can_add(&vm->vma, 16 * VMA_RUN_COST))
                        vm->reason[0] = 0;
        }
}

static void full_scan_done(Manager *m) {
        int r;

        advise(m);
        r = dedup_engine_full_scan_done(m->engine);
        if (r < 0)
                log_warning_errno(r, "Full scan bookkeeping failed: %m");
        check_vms(m, VMS_CHECK_USEC);
}

static bool region_scannable(const Vm *vm, const VmRegion *reg) {
        return vm_live(vm) && !vm->paused && !reg->reason[0];
}

/* Advance the cursor to the next region worth scanning; false if none up
 * to the end of the VMs, where the cursor wraps (*ret_wrapped). */
static bool cursor_region(Manager *m, Vm **ret_vm, VmRegion **ret_reg, bool *ret_wrapped) {
        for (;;) {
                Vm *vm = m->vms[m->cursor_vm];

                if (vm && m->cursor_region < vm->n_regions) {
                        VmRegion *reg = &vm->regions[m->cursor_region];
                        if (m->cursor_page < reg->npages && region_scannable(vm, reg)) {
                                *ret_vm = vm;
                                *ret_reg = reg;
                                return true;
                        }
                        m->cursor_region++;     /* same VM, next region */
                        m->cursor_page = 0;
                        continue;
                }
                m->cursor_region = 0;
                m->cursor_page = 0;
                if (++m->cursor_vm == MANAGER_MAX_VMS) {
                        m->cursor_vm = 0;
                        *ret_wrapped = true;
                        return false;
                }
        }
}

/* Decided before reading: a skipped page is not read.
 * - A merged or zero page is a hole in the memfd, and the engine looks at
 *   no page merged or in flight. Left in a unit, such pages made the
 *   scanner ask where the holes were: two or three syscalls for each run
 *   of data between them. They are still counted in *passed, as KSM
 *   counts its merged pages in pages_to_scan: a round covers as much
 *   memory as before, and full scans do not come faster just because
 *   much is merged.
 * - Smart scan's skip, except while settling (which looks at every page: a
 *   skipped one could have changed), costs nothing.
 * *fresh is set when a page to read was never read as data: a unit without
 * one is read without asking where its holes are (scanner_read_data()). */
static bool skip(Manager *m, const VmRegion *reg, uint64_t index, unsigned *passed, bool *fresh) {
        dedup_page_t page = reg->first + (dedup_page_t) index;
        enum dedup_page_state state = dedup_engine_page_state(m->engine, page);

        if (state != DEDUP_PAGE_NEW && state != DEDUP_PAGE_VOLATILE && state != DEDUP_PAGE_UNSTABLE) {
                (*passed)++;
                return true;
        }
        if (m->scan_phase != SCAN_SETTLING && dedup_engine_should_skip(m->engine, page))
                return true;
        /* Never read as data (or a hole): scanner_read() asks where holes are. */
        *fresh = *fresh || state == DEDUP_PAGE_NEW;
        return false;
}

/* Plan a round: units of pages to read from the cursor on, within *budget
 * (pages read or passed over merged; see skip()), up to the end of the
 * full scan. */
static void plan(Manager *m, ScanJob *j, unsigned *budget, bool *ret_wrapped) {
        Vm *vm;
        VmRegion *reg;

        j->n_segs = j->n_units = 0;
        while (*budget > 0 && j->n_units < ROUND_UNITS && cursor_region(m, &vm, &reg, ret_wrapped)) {
                ScanSeg *seg = &j->segs[j->n_segs++];
                unsigned units = j->n_units;

                *seg = (ScanSeg) { .vm = vm, .reg = reg, .fd = reg->memfd, .memfd_offset = reg->memfd_offset };
                snprintf(seg->key, sizeof(seg->key), "%s/%u", vm->name, reg->id);
                while (*budget > 0 && j->n_units < ROUND_UNITS && m->cursor_page < reg->npages) {
                        uint32_t max, n = 1;
                        unsigned passed = 0;
                        bool fresh = false;

                        /* Each page is asked once: asking ages it. */
                        while (m->cursor_page < reg->npages && passed < *budget &&
                               skip(m, reg, m->cursor_page, &passed, &fresh))
                                m->cursor_page++;
                        *budget -= passed;
                        if (m->cursor_page == reg->npages || *budget == 0)
                                break;
                        /* The unit starts at the page just found to read. */
                        max = (uint32_t) MIN(MIN(*budget, UNIT_PAGES), reg->npages - m->cursor_page);
                        passed = 0;
                        while (n < max && !skip(m, reg, m->cursor_page + n, &passed, &fresh))
                                n++;
                        j->units[j->n_units] = (ScanUnit) {
                                .engine = m->engine, .seg = seg, .first = m->cursor_page, .npages = n, .data = !fresh,
                                .hashes = &j->hashes[(size_t) j->n_units * UNIT_PAGES],
                        };
                        j->n_units++;
                        /* and past the skipped page that ended the unit */
                        m->cursor_page += n < max ? n + 1 : n;
                        *budget -= MIN(*budget, n + passed);
                }
                if (j->n_units == units)
                        j->n_segs--;    /* every page skipped: no unit needs it */
                m->scanned_any = true;
        }
}

/* Idle mode */

static uint64_t mix(uint64_t h, uint64_t v) {
        return (h ^ v) * UINT64_C(0x100000001b3) + (h >> 29);
}

static void scan_mark(Manager *m, ScanMark *ret) {
        DedupEngineStats st;
        uint64_t h = m->memory_limited;

        dedup_engine_stats(m->engine, &st);
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];

                for (unsigned j = 0; vm && j < vm->n_regions; j++) {
                        VmRegion *reg = &vm->regions[j];
                        struct stat sb;

                        if (!region_scannable(vm, reg))
                                continue;
                        /* The pid and inode too: a VM of the same size may
                         * take the slot and page ids of one gone. */
                        h = mix(mix(mix(mix(h, i), (uint64_t) vm->pid), reg->ino), reg->first);
                        h = mix(h, fstat(reg->memfd, &sb) < 0 ? UINT64_MAX : (uint64_t) sb.st_blocks);
                }
        }
        *ret = (ScanMark) {
                .changed = st.pages_changed,
                .written = st.pages_written,
                .unmerges = st.unmerges,
                .aborts = st.merge_aborts,
                .pending = st.pages_pending,
                .regions = h,
        };
}

static bool mark_equal(const ScanMark *a, const ScanMark *b) {
        return a->changed == b->changed && a->written == b->written && a->unmerges == b->unmerges &&
               a->aborts == b->aborts && a->pending == b->pending && a->regions == b->regions;
}

/* Protecting: pages not merged (nor being merged) and read as data by a
 * scan. A page never read as data (NEW) was a hole when the cursor passed
 * it: protecting holes would allocate page tables for all of guest RAM, and
 * a hole a guest fills is seen anyway, by the settling scan (a page first
 * seen is a change) or, once idle, in the memfd's allocated blocks. Asking
 * the engine, not the memfd, where data is: SEEK_DATA/SEEK_HOLE walked the
 * page cache, a third of what settling cost on dense memory.
 * Unprotecting: NEW pages too, whatever happened to them since. */
static bool page_to_protect(Manager *m, dedup_page_t page, bool wp) {
        enum dedup_page_state st = dedup_engine_page_state(m->engine, page);

        return st == DEDUP_PAGE_VOLATILE || st == DEDUP_PAGE_UNSTABLE || (!wp && st == DEDUP_PAGE_NEW);
}

/* Write-protect (wp) or unprotect the pages of reg that page_to_protect(),
 * one ioctl per run. */
static int protect_region(Manager *m, VmRegion *reg, bool wp) {
        for (uint64_t p = 0; p < reg->npages;) {
                uint64_t q = p;

                while (q < reg->npages && page_to_protect(m, reg->first + (dedup_page_t) q, wp))
                        q++;
                if (q > p) {
                        int r = uffd_writeprotect(reg->uffd, reg->hva + p * DEDUP_PAGE_SIZE,
                                                  (q - p) * DEDUP_PAGE_SIZE, wp, true);
                        if (r < 0)
                                return r;
                }
                p = q + 1;
        }
        return 0;
}

/* Protect the regions to scan, or unprotect every region (some may not be
 * scanned any more: a paused VM, a foreign mapper). */
static int protect_all(Manager *m, bool wp) {
        int ret = 0;

        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];

                if (!vm_live(vm))
                        continue;
                for (unsigned j = 0; j < vm->n_regions; j++) {
                        VmRegion *reg = &vm->regions[j];
                        int r;

                        if (wp && !region_scannable(vm, reg))
                                continue;
                        r = protect_region(m, reg, wp);
                        if (r < 0 && wp)
                                return log_debug_errno(r, "VM '%s': cannot write-protect region %u, not idling: %m",
                                                       vm->name, reg->id);
                        if (r < 0 && r != -ESRCH)
                                ret = log_debug_errno(r, "VM '%s': cannot unprotect region %u: %m", vm->name,
                                                      reg->id);
                }
        }
        return ret;
}

/* Settling or idle, after anything the event loop handled (a write
 * report, a VM coming, a D-Bus call, a batch scanned): if the mark moved,
 * a settling scan has failed, and an idle one scans again at once rather
 * than at the next tick. */
static int watch_post(sd_event_source *s, void *userdata) {
        Manager *m = userdata;
        ScanMark mark;

        if (m->scan_phase == SCAN_ACTIVE)
                return 0;
        scan_mark(m, &mark);
        if (mark_equal(&mark, &m->scan_mark))
                return 0;
        if (m->scan_phase == SCAN_SETTLING) {
                /* Lift the protection now, not after the full scan: a busy
                 * guest would fault on every page it writes meanwhile. Wait
                 * for twice as many quiet scans before the next try. */
                m->settle_after = MIN(m->settle_after * 2, SETTLE_AFTER_MAX);
                manager_scan_wake(m, "something changed while settling");
                return 0;
        }
        if (!m->scan_timer)
                return 0;
        (void) sd_event_source_set_time(m->scan_timer, 0);
        return sd_event_source_set_enabled(m->scan_timer, SD_EVENT_ONESHOT);
}

static void set_phase(Manager *m, ScanPhase phase) {
        bool was_idle = m->scan_phase == SCAN_IDLE;

        m->scan_phase = phase;
        if (phase != SCAN_ACTIVE && !m->watch_post &&
            sd_event_add_post(m->event, &m->watch_post, watch_post, m) < 0)
                log_debug("Cannot watch events while settling or idle: noticing them at the next tick");
        if (m->watch_post)
                (void) sd_event_source_set_enabled(m->watch_post, phase != SCAN_ACTIVE ? SD_EVENT_ON : SD_EVENT_OFF);
        if (was_idle != (phase == SCAN_IDLE))
                manager_bus_property_changed(m, "Idle");
}

void manager_scan_wake(Manager *m, const char *why) {
        if (m->scan_phase == SCAN_ACTIVE)
                return;
        if (m->scan_phase == SCAN_IDLE)
                log_debug("Scanning again: %s", why);
        (void) protect_all(m, false);
        set_phase(m, SCAN_ACTIVE);
        /* The advisor times full scans: not this pause. */
        m->full_scan_started_us = 0;
        scan_mark(m, &m->scan_mark);
}

bool manager_scan_idle(const Manager *m) {
        return m->scan_phase == SCAN_IDLE;
}

/* The cursor wrapped: decide from what the full scan changed whether to
 * scan on, settle or go idle. */
static void full_scan_end(Manager *m) {
        ScanMark now;
        bool quiet;

        scan_mark(m, &now);
        quiet = mark_equal(&now, &m->scan_mark) && now.pending == 0;
        m->quiet_scans = quiet ? m->quiet_scans + 1 : 0;
        m->settle_after = MAX(m->settle_after, 1u);
        if (m->scan_phase == SCAN_ACTIVE && m->quiet_scans >= m->settle_after) {
                if (protect_all(m, true) >= 0)
                        set_phase(m, SCAN_SETTLING);
                else
                        (void) protect_all(m, false);
        } else if (m->scan_phase == SCAN_SETTLING && quiet) {
                set_phase(m, SCAN_IDLE);
                m->idle_entries++;
                m->settle_after = 1;
                log_debug("Nothing changed in a full scan of write-protected memory: idle until a guest writes");
        } else if (m->scan_phase == SCAN_SETTLING) {
                m->settle_after = MIN(m->settle_after * 2, SETTLE_AFTER_MAX);
                manager_scan_wake(m, "settling scan changed something");
        }
        m->scan_mark = now;
}

/* While idle: true to stay idle. */
static bool stay_idle(Manager *m) {
        ScanMark mark;

        check_vms(m, MAX(IDLE_CHECK_USEC, m->full_scan_us));
        scan_mark(m, &mark);
        if (mark_equal(&mark, &m->scan_mark))
                return true;
        manager_scan_wake(m, mark.written != m->scan_mark.written || mark.unmerges != m->scan_mark.unmerges
                                     ? "a guest wrote"
                                     : "VMs, regions or their memory changed");
        return false;
}

static int scan_batch(Manager *m) {
        unsigned budget = m->pages_to_scan, wraps = 0;
        int r;

        update_team(m);
        if (!m->scan_job) {
                m->scan_job = malloc(sizeof(ScanJob));
                if (!m->scan_job)
                        return -ENOMEM;
        }
        while (budget > 0 && m->scan_phase != SCAN_IDLE) {
                bool wrapped = false;

                plan(m, m->scan_job, &budget, &wrapped);
                r = run_round(m, m->scan_job);
                if (r < 0)
                        return r;
                if (!wrapped)
                        continue;
                if (m->scanned_any) {
                        uint64_t t = now_usec(CLOCK_MONOTONIC);

                        if (m->full_scan_started_us)
                                m->full_scan_us = t - m->full_scan_started_us;
                        full_scan_done(m);
                }
                m->scanned_any = false;
                full_scan_end(m);
                /* Once around per batch at most: with nothing to scan, a
                 * second wrap comes at once. */
                if (++wraps == 2)
                        break;
        }
        return 0;
}

/* VMs the operator asked to unmerge, a bounded batch in all per tick. */
static void unmerge_paused(Manager *m) {
        unsigned budget = m->pages_to_scan;

        for (unsigned i = 0; i < MANAGER_MAX_VMS && budget > 0; i++) {
                Vm *vm = m->vms[i];
                DedupVmStats s;

                if (!vm || !vm->paused || vm->disconnected ||
                    dedup_engine_vm_stats(m->engine, vm->engine_vm, &s) < 0 || s.merging_pages + s.zero_pages == 0)
                        continue;
                (void) dedup_engine_unmerge_vm(m->engine, vm->engine_vm, budget);
                budget -= MIN(budget, (unsigned) MIN(s.merging_pages + s.zero_pages, (uint64_t) budget));
        }
}

static int scan_tick(sd_event_source *s, uint64_t usec, void *userdata) {
        Manager *m = userdata;
        bool idle = false;
        int r = 0;

        unmerge_paused(m);
        if (m->run != 1)
                manager_scan_wake(m, "Run changed");
        else if (m->scan_phase == SCAN_IDLE)
                idle = stay_idle(m);
        /* Idle, nothing could be merged even with more memory: spare the
         * reads of cgroup files, most of an idle tick's cost. */
        if (!idle)
                manager_check_memory(m);
        manager_settle_pools(m);
        if (m->run == 1 && !idle)
                r = scan_batch(m);
        else if (m->run == 2)
                (void) dedup_engine_unmerge_all(m->engine, m->pages_to_scan);
        if (r >= 0)
                r = manager_flush(m);
        if (r == -ENOMEM)
                log_oom();
        manager_bus_check_vms(m);
        return manager_schedule_scan(m);
}

int manager_schedule_scan(Manager *m) {
        /* Idle, events wake us (watch_post()); the tick only watches the
         * memfds' sizes and runs the periodic checks. */
        uint64_t now, delay = (m->scan_phase == SCAN_IDLE ? MAX(m->sleep_ms, IDLE_TICK_MSEC) : m->sleep_ms) * 1000ULL;
        int r;

        r = sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        /* Accuracy 1 ms: with sd-event's default (0: 250 ms) the timer
         * fires up to 250 ms late, and SleepMillisecs=20 meant 20..270 ms. */
        if (!m->scan_timer)
                return sd_event_add_time(m->event, &m->scan_timer, CLOCK_MONOTONIC, now + delay,
                                         SCAN_TIMER_ACCURACY_USEC, scan_tick, m);
        r = sd_event_source_set_time(m->scan_timer, now + delay);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(m->scan_timer, SD_EVENT_ONESHOT);
}

void manager_scan_write_status(Manager *m, FILE *f) {
        ScannerStats st, team = {};

        scanner_get_stats(m->scanner, &st);
        scanner_stats_add(&st, &m->scan_stats_gone);
        if (m->scan_team)
                scanner_team_get_stats(m->scan_team, &team);
        scanner_stats_add(&st, &team);
        fprintf(f, "idle=%d\nidle_entries=%llu\nscan_threads=%u\nscan_reads=%llu\nscan_hole_probes=%llu\n",
                m->scan_phase == SCAN_IDLE, (unsigned long long) m->idle_entries,
                m->scan_team ? scanner_team_size(m->scan_team) : 1, (unsigned long long) st.reads,
                (unsigned long long) (st.cachestats + st.seeks));
}
