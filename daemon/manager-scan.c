/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: pacing the scan, as ksmd does: every SleepMillisecs, look at
 * PagesToScan pages from the cursor on (VM by VM, region by region), feed
 * them to the engine, then flush the merges it asked for as batches. When
 * the cursor wraps, a full scan is done: the engine rebuilds its unstable
 * tree, and each region is checked again for foreign mappers and each VMM's
 * VMA count is cross-checked with /proc/PID/maps. Small guests scan fully
 * many times a second; the foreign-mapper check reads every process's maps,
 * so it runs at most once every MAPPERS_RECHECK_USEC.
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
 */

#include <errno.h>
#include <sys/resource.h>
#include <time.h>

#include "manager.h"
#include "util.h"

typedef struct ScanCtx {
        Manager *m;
        Vm *vm;
        VmRegion *reg;
        char key[80];
} ScanCtx;

static int scan_page(void *userdata, uint64_t offset, const void *data) {
        ScanCtx *c = userdata;
        Manager *m = c->m;
        uint64_t index = (offset - c->reg->memfd_offset) / DEDUP_PAGE_SIZE;
        dedup_page_t page = c->reg->first + (dedup_page_t) index;
        int nid = 0;

        if (dedup_engine_should_skip(m->engine, page))
                return 0;
        if (!dedup_engine_get_merge_across_nodes(m->engine)) {
                nid = numa_topology_guest_page_nid(m->topology, c->key, index, c->vm->pid,
                                                   c->reg->hva + index * DEDUP_PAGE_SIZE);
                if (nid < 0)
                        nid = 0;
        }
        return dedup_engine_scan_page(m->engine, page, data, nid) == -ENOMEM ? -ENOMEM : 0;
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

#define MAPPERS_RECHECK_USEC (2ull * 1000 * 1000)

static void full_scan_done(Manager *m) {
        uint64_t now = now_usec(CLOCK_MONOTONIC);
        bool recheck = now - m->mappers_checked_us >= MAPPERS_RECHECK_USEC;
        int r;

        if (recheck)
                m->mappers_checked_us = now;
        advise(m);
        r = dedup_engine_full_scan_done(m->engine);
        if (r < 0)
                log_warning_errno(r, "Full scan bookkeeping failed: %m");
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                bool foreign = false;

                if (!vm || vm->disconnected || !vm->hello_done)
                        continue;
                for (unsigned j = 0; recheck && j < vm->n_regions; j++) {
                        bool was = vm->regions[j].reason[0];
                        if (!vm_region_mergeable(vm, &vm->regions[j])) {
                                foreign = true;
                                if (!was)
                                        log_warning("VM '%s' region %u: %s: unmerging it", vm->name,
                                                    vm->regions[j].id, vm->regions[j].reason);
                        }
                }
                /* Merged pages of a region someone else maps read as zeros
                 * there: give them back their own copies. */
                if (foreign)
                        (void) dedup_engine_unmerge_vm(m->engine, vm->engine_vm, UINT32_MAX);
                if (vm_resync_vmas(vm) >= 0 && vm->reason[0] && vma_budget_can_add(&vm->vma, 16 * VMA_RUN_COST))
                        vm->reason[0] = 0;
        }
}

/* Advance the cursor to the next region worth scanning; false if none. */
static bool cursor_region(Manager *m, Vm **ret_vm, VmRegion **ret_reg) {
        for (unsigned tries = 0; tries <= MANAGER_MAX_VMS; tries++) {
                Vm *vm = m->vms[m->cursor_vm];

                if (vm && !vm->disconnected && vm->hello_done && !vm->paused && m->cursor_region < vm->n_regions) {
                        VmRegion *reg = &vm->regions[m->cursor_region];
                        if (m->cursor_page < reg->npages && !reg->reason[0]) {
                                *ret_vm = vm;
                                *ret_reg = reg;
                                return true;
                        }
                        m->cursor_region++;
                        m->cursor_page = 0;
                        tries--;        /* same VM, next region */
                        continue;
                }
                m->cursor_region = 0;
                m->cursor_page = 0;
                if (++m->cursor_vm == MANAGER_MAX_VMS) {
                        m->cursor_vm = 0;
                        if (m->scanned_any)
                                full_scan_done(m);
                        m->scanned_any = false;
                }
        }
        return false;
}

static int scan_batch(Manager *m) {
        unsigned budget = m->pages_to_scan;
        Vm *vm;
        VmRegion *reg;
        int r;

        while (budget > 0 && cursor_region(m, &vm, &reg)) {
                ScanCtx c = { .m = m, .vm = vm, .reg = reg };
                uint32_t n = (uint32_t) MIN((uint64_t) budget, reg->npages - m->cursor_page);

                snprintf(c.key, sizeof(c.key), "%s/%u", vm->name, reg->id);
                r = scanner_read(m->scanner, reg->memfd, reg->memfd_offset + m->cursor_page * DEDUP_PAGE_SIZE, n,
                                 scan_page, &c);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        log_warning_errno(r, "VM '%s': cannot read region %u: %m", vm->name, reg->id);
                m->cursor_page += n;
                m->scanned_any = true;
                budget -= n;
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
        int r = 0;

        unmerge_paused(m);
        manager_check_memory(m);
        manager_settle_pools(m);
        if (m->run == 1)
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
        uint64_t now;
        int r;

        r = sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        if (r < 0)
                return r;
        if (!m->scan_timer)
                return sd_event_add_time(m->event, &m->scan_timer, CLOCK_MONOTONIC, now + m->sleep_ms * 1000ULL, 0,
                                         scan_tick, m);
        r = sd_event_source_set_time(m->scan_timer, now + m->sleep_ms * 1000ULL);
        if (r < 0)
                return r;
        return sd_event_source_set_enabled(m->scan_timer, SD_EVENT_ONESHOT);
}
