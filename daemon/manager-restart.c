/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: restart without loss (DESIGN.md §2)
 *
 * A restarted dedupd gets its pools back from systemd's fd store (adopted,
 * *claiming*: see pool.h) and its agents come back by themselves. After its
 * REGIONs an agent reports what it still has merged:
 *
 * - ZERO_KEPT: zero overlays, taken as zero pages;
 * - MERGED_KEPT: runs mapped from pools of the previous run. A page is taken
 *   as a sharer of its canonical page (pool_claim() for the first sharer,
 *   then dedup_engine_adopt_merged()) when the pool is one we got back, of
 *   the VM's merge group, and the page's memfd page is a hole. Pages we do
 *   not take go back to the agent in an UNMERGE flagged DEDUP_RANGES_F_KEPT:
 *   it copies them into its memfd, and the scan merges them afresh.
 *
 * An agent may lie: what it can claim is pages of pools of its own group,
 * which it maps anyway, and the price is its own accounting.
 *
 * A claiming pool punches nothing, because any page of it may be mapped by
 * a VMM that has not reported yet. Once every process that maps the pool
 * (/proc/PID/maps) is a VM that sent its last MERGED_KEPT and had the pages
 * we refused copied back, the pool is trimmed (every page nobody claimed is
 * punched) and becomes an ordinary pool. A VMM that never reports keeps the
 * pool claiming until it exits: the pages it maps stay readable.
 */

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#include "manager.h"
#include "mappers.h"
#include "util.h"

typedef void (*hole_fn)(Vm *vm, VmRegion *reg, uint64_t first, uint64_t n, void *userdata);

/* Call fn for each run of pages in [pos, end) of reg whose memfd page is a
 * hole. Where the memfd holds data, the guest wrote the page after the agent
 * reported it (its UNMERGED follows), or the agent lies: either way the page
 * is left to the scanner. */
static void for_each_hole(Vm *vm, VmRegion *reg, uint64_t pos, uint64_t end, hole_fn fn, void *userdata) {
        while (pos < end && !vm->disconnected) {
                off_t base = (off_t) reg->memfd_offset, d, h;
                uint64_t data;

                d = lseek(reg->memfd, base + (off_t) (pos * DEDUP_PAGE_SIZE), SEEK_DATA);
                data = d < 0 ? end : MIN(end, (uint64_t) (d - base) / DEDUP_PAGE_SIZE);
                if (data > pos)
                        fn(vm, reg, pos, data - pos, userdata);
                if (data >= end)
                        break;
                h = lseek(reg->memfd, d, SEEK_HOLE);
                if (h < 0)
                        break;
                pos = DIV_ROUND_UP((uint64_t) (h - base), DEDUP_PAGE_SIZE);
        }
}

static void adopt_zero(Vm *vm, VmRegion *reg, uint64_t first, uint64_t n, void *userdata) {
        for (uint64_t p = first; p < first + n; p++)
                (void) dedup_engine_adopt_zero(vm->manager->engine, reg->first + (dedup_page_t) p);
}

void vm_handle_zero_kept(Vm *vm, const struct dedup_msg_ranges *msg) {
        for (uint32_t i = 0; i < msg->count; i++) {
                const struct dedup_range *rg = &msg->ranges[i];
                VmRegion *reg = vm_range_region(vm, rg);
                uint64_t first = rg->offset / DEDUP_PAGE_SIZE;

                if (!reg)
                        return vm_disconnect(vm, EINVAL, "range outside its region");
                for_each_hole(vm, reg, first, first + rg->npages, adopt_zero, NULL);
        }
}

/* One MERGED_KEPT being taken in. */
typedef struct Kept {
        uint16_t pool_id;
        uint64_t first;                 /* the entry's first page in its region */
        uint64_t pool_offset;           /* ... and its pool page */
        uint64_t taken;
        struct dedup_msg_ranges *refused;
} Kept;

static void send_refused(Vm *vm, Kept *k) {
        size_t len = dedup_msg_ranges_size(k->refused->count);
        int r;

        if (k->refused->count == 0)
                return;
        dedup_proto_init_header(&k->refused->hdr, DEDUP_MSG_UNMERGE, (uint32_t) len, 0);
        k->refused->flags = DEDUP_RANGES_F_KEPT;
        r = vm_send(vm, k->refused, len, NULL, 0);
        if (r < 0)
                return vm_disconnect(vm, r, "cannot return the merged pages it kept");
        vm->kept_refused_seq = vm->seq;
        k->refused->count = 0;
}

static void refuse(Vm *vm, Kept *k, VmRegion *reg, uint64_t first, uint64_t n) {
        struct dedup_range *last = k->refused->count ? &k->refused->ranges[k->refused->count - 1] : NULL;

        if (last && last->region_id == reg->id && last->offset + (uint64_t) last->npages * DEDUP_PAGE_SIZE ==
                                                                   first * DEDUP_PAGE_SIZE &&
            last->npages + n <= DEDUP_PROTO_MAX_RUN) {
                last->npages += (uint32_t) n;
                return;
        }
        if (k->refused->count == DEDUP_PROTO_MAX_ENTRIES)
                send_refused(vm, k);
        k->refused->ranges[k->refused->count++] = (struct dedup_range) {
                .region_id = reg->id, .npages = (uint32_t) n, .offset = first * DEDUP_PAGE_SIZE,
        };
}

static void adopt_merged(Vm *vm, VmRegion *reg, uint64_t first, uint64_t n, void *userdata) {
        Manager *m = vm->manager;
        Kept *k = userdata;
        Pool *p = m->pools[k->pool_id];
        _Alignas(64) uint8_t page[DEDUP_PAGE_SIZE];

        for (uint64_t i = first; i < first + n; i++) {
                uint64_t off = k->pool_offset + (i - k->first) * DEDUP_PAGE_SIZE;
                /* An allocated page is a canonical page the engine has, or
                 * one freed but not released yet (held for a VMM that
                 * left): never a new one, see dedup_engine_adopt_merged(). */
                bool claimed = !pool_is_allocated(p, off) && pool_claim(p, off) >= 0;
                int r = pool_read(p, off, page);

                if (r >= 0)
                        r = dedup_engine_adopt_merged(m->engine, reg->first + (dedup_page_t) i,
                                                      pool_loc_make(k->pool_id, off), page, pool_nid(p), claimed);
                if (r >= 0) {
                        k->taken++;
                        continue;
                }
                if (claimed)
                        (void) pool_free_page(p, off); /* claiming: marks it free, punches nothing */
                refuse(vm, k, reg, i, 1);
        }
}

/* The pool an agent names by inode, if it may keep pages of it. */
static int kept_pool(Vm *vm, uint64_t ino, uint16_t *ret_id) {
        Manager *m = vm->manager;

        for (uint16_t i = 0; i < m->n_pools; i++) {
                Pool *p = m->pools[i];
                if ((int) i != m->zero_pool && (uint64_t) pool_ino(p) == ino && pool_is_claiming(p) &&
                    pool_group(p) == vm->group) {
                        *ret_id = i;
                        return 0;
                }
        }
        return -ENOENT;
}

void vm_handle_merged_kept(Vm *vm, const struct dedup_msg_remap *msg) {
        _Alignas(8) uint8_t space[sizeof(struct dedup_msg_ranges) + DEDUP_PROTO_MAX_ENTRIES * sizeof(struct dedup_range)];
        Kept k = { .refused = (void *) space };

        k.refused->count = 0;
        /* Freed pages waiting to be punched are still allocated: release
         * them first, so a report of one claims it afresh. */
        manager_canon_punch(vm->manager);
        for (uint32_t i = 0; i < msg->count && !vm->disconnected; i++) {
                const struct dedup_remap_entry *e = &msg->entries[i];
                struct dedup_range rg = { .region_id = e->region_id, .npages = e->npages, .offset = e->offset };
                VmRegion *reg = vm_range_region(vm, &rg);

                if (!reg)
                        return vm_disconnect(vm, EINVAL, "MERGED_KEPT run outside its region");
                k.first = e->offset / DEDUP_PAGE_SIZE;
                k.pool_offset = e->pool_offset;
                if (kept_pool(vm, e->cookie, &k.pool_id) < 0)
                        refuse(vm, &k, reg, k.first, e->npages);
                else
                        for_each_hole(vm, reg, k.first, k.first + e->npages, adopt_merged, &k);
        }
        if (vm->disconnected)
                return;
        send_refused(vm, &k);
        vm->manager->kept_pages += k.taken;
        if (k.taken)
                log_debug("VM '%s' keeps %llu merged pages across the restart", vm->name,
                          (unsigned long long) k.taken);
        if (msg->flags & DEDUP_KEPT_F_LAST)
                vm->kept_done = true;
}

/* Has every VM of process pid reported all it keeps, refusals copied back? */
static bool pid_reported(Manager *m, pid_t pid) {
        bool any = false;

        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                if (!vm || vm->pid != pid)
                        continue;
                if (vm->disconnected || !vm->kept_done || vm->kept_replied_seq < vm->kept_refused_seq)
                        return false;
                any = true;
        }
        return any;
}

static bool pool_settled(Manager *m, Pool *p) {
        _cleanup_free_ pid_t *pids = malloc(MANAGER_MAX_VMS * sizeof(pid_t));
        size_t n;

        if (!pids || mappers_find_fd(NULL, pool_fd(p), 0, getpid(), pids, MANAGER_MAX_VMS, &n) < 0 ||
            n > MANAGER_MAX_VMS)
                return false;   /* more mappers than VMs: somebody did not report */
        for (size_t i = 0; i < n; i++)
                if (!pid_reported(m, pids[i]))
                        return false;
        return true;
}

void manager_settle_pools(Manager *m) {
        uint64_t now = 0;

        if (m->n_claiming == 0)
                return;
        (void) sd_event_now(m->event, CLOCK_MONOTONIC, &now);
        if (now - m->settle_checked_us < 1000 * 1000)
                return;
        m->settle_checked_us = now;
        for (unsigned i = 0; i < m->n_pools; i++) {
                Pool *p = m->pools[i];
                PoolStats st;
                int r;

                if (!pool_is_claiming(p) || !pool_settled(m, p))
                        continue;
                r = pool_trim(p);
                if (r < 0) {
                        log_warning_errno(r, "Cannot trim pool '%s' of the previous run: %m", pool_name(p));
                        continue;
                }
                m->n_claiming--;
                if (pool_stats(p, &st) >= 0)
                        log_info("Pool '%s' of the previous run settled: %llu canonical pages kept, the rest "
                                 "released", pool_name(p), (unsigned long long) st.pages_allocated);
        }
}
