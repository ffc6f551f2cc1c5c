/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: carrying out merges (DESIGN.md §2), the engine's backend.
 *
 * The engine's merge and unmerge ops only queue; manager_flush() turns the
 * queue of each VM into runs of adjacent pages (adjacent pool pages too, so
 * a run is one mmap and one VMA in the VMM) and for each run:
 *   1. write-protects it through the VMM's userfaultfd: from now on every
 *      guest write to it traps into the agent;
 *   2. reads it back (one pread) and compares it with the canonical content
 *      (one pread of the pool); pages that differ are unprotected and fail;
 *   3. sends REMAP entries; the agent checks that protection still holds,
 *      maps the pool, re-protects, punches the memfd pages and replies DONE.
 * The agent punches, not the daemon: a guest write right after the remap is
 * a copy-on-write break that the agent writes into the memfd page, and a
 * punch from here arriving after it would wipe it. Done in the agent, the
 * punch is ordered before any fault it handles later.
 *
 * Pool pages are punched only when no VMM can map them: when the engine
 * frees a canonical page, unless a VMM we stopped talking to may still map
 * it (a Hold), in which case the punch waits for that process to exit.
 */

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "manager.h"
#include "uffd-ops.h"
#include "util.h"

static const uint8_t zero_page[DEDUP_PAGE_SIZE];

int manager_read_pages(Manager *m, dedup_page_t page, uint32_t n, void *buf) {
        VmRegion *reg = vm_page_region(m, page, NULL);
        ssize_t k;

        if (!reg)
                return -ENOENT;
        n = (uint32_t) MIN((uint64_t) n, (uint64_t) reg->npages - (page - reg->first));
        k = pread(reg->memfd, buf, (size_t) n * DEDUP_PAGE_SIZE,
                  (off_t) (reg->memfd_offset + (uint64_t) (page - reg->first) * DEDUP_PAGE_SIZE));
        if (k < 0)
                return -errno;
        if (k != (ssize_t) n * DEDUP_PAGE_SIZE)
                return -EIO;
        return (int) n;
}

static int page_read(void *ud, dedup_page_t page, void *buf) {
        int r = manager_read_pages(ud, page, 1, buf);

        return r < 0 ? r : 0;
}

static int queue(PendingOp **v, size_t *n, size_t *cap, dedup_page_t page, uint64_t loc) {
        if (*n == *cap) {
                size_t c = *cap ? *cap * 2 : 1024;
                PendingOp *p = realloc(*v, c * sizeof(PendingOp));
                if (!p)
                        return -ENOMEM;
                *v = p;
                *cap = c;
        }
        (*v)[(*n)++] = (PendingOp) { .page = page, .loc = loc };
        return DEDUP_PENDING;
}

static int merge(void *ud, dedup_page_t page, uint64_t loc) {
        Vm *vm = NULL;
        VmRegion *reg = vm_page_region(ud, page, &vm);

        if (!reg || vm->disconnected)
                return -EPIPE;
        if (reg->reason[0] || vm->reason[0])
                return -EPERM;
        return queue(&vm->merges, &vm->n_merges, &vm->cap_merges, page, loc);
}

static int merge_zero(void *ud, dedup_page_t page) {
        return merge(ud, page, DEDUP_LOC_ZERO);
}

static int unmerge(void *ud, dedup_page_t page, uint64_t loc) {
        Vm *vm = NULL;
        VmRegion *reg = vm_page_region(ud, page, &vm);

        if (!reg || vm->disconnected)
                return -EPIPE;
        return queue(&vm->unmerges, &vm->n_unmerges, &vm->cap_unmerges, page, loc);
}

static uint64_t now_ms(void *ud) {
        return now_usec(CLOCK_MONOTONIC) / 1000;
}

const DedupEngineOps manager_engine_ops = {
        .page_read = page_read,
        .canon_read = manager_canon_read,
        .canon_alloc = manager_canon_alloc,
        .canon_free = manager_canon_free,
        .canon_nid = manager_canon_nid,
        .merge = merge,
        .merge_zero = merge_zero,
        .unmerge = unmerge,
        .now_ms = now_ms,
};

/* Building REMAP messages */

typedef struct RemapBuilder {
        struct dedup_msg_remap *msg;
        _Alignas(8) uint8_t space[sizeof(struct dedup_msg_remap) +
                                  DEDUP_PROTO_MAX_ENTRIES * sizeof(struct dedup_remap_entry)];
} RemapBuilder;

static int inflight_slot(Vm *vm, uint64_t *ret) {
        for (size_t i = 0; i < vm->cap_inflight; i++)
                if (!vm->inflight[i].used) {
                        *ret = i;
                        return 0;
                }
        size_t cap = vm->cap_inflight ? vm->cap_inflight * 2 : 64;
        InFlight *f = realloc(vm->inflight, cap * sizeof(InFlight));
        if (!f)
                return -ENOMEM;
        memset(f + vm->cap_inflight, 0, (cap - vm->cap_inflight) * sizeof(InFlight));
        vm->inflight = f;
        *ret = vm->cap_inflight;
        vm->cap_inflight = cap;
        return 0;
}

static int builder_send(Vm *vm, RemapBuilder *b) {
        size_t len;
        int r;

        if (b->msg->count == 0)
                return 0;
        len = sizeof(*b->msg) + b->msg->count * sizeof(struct dedup_remap_entry);
        dedup_proto_init_header(&b->msg->hdr, DEDUP_MSG_REMAP, (uint32_t) len, 0);
        r = vm_send(vm, b->msg, len, NULL, 0);
        b->msg->count = 0;
        return r;
}

static int send_pool(Vm *vm, uint16_t id) {
        Manager *m = vm->manager;
        struct dedup_msg_pool p = {};
        PoolStats st;
        int fd, r;

        if (vm->pools_sent[id / 8] & (1u << (id % 8)))
                return 0;
        dedup_proto_init_header(&p.hdr, DEDUP_MSG_POOL, sizeof(p), 0);
        p.pool_id = id;
        r = pool_stats(m->pools[id], &st);
        if (r < 0)
                return r;
        /* The size the agent may rely on: pools never shrink (sealed). */
        p.size = st.capacity_pages * DEDUP_PAGE_SIZE;
        fd = pool_ro_fd(m->pools[id]);
        r = vm_send(vm, &p, sizeof(p), &fd, 1);
        if (r < 0)
                return r;
        vm->pools_sent[id / 8] |= (uint8_t) (1u << (id % 8));
        return 0;
}

/* Report the outcome of merging n pages from first: 0 or -errno. */
static void finish_merges(Manager *m, dedup_page_t first, uint32_t n, int error) {
        for (uint32_t i = 0; i < n; i++)
                dedup_engine_merge_done(m->engine, first + i, error);
}

/* Queue a checked sub-run as one REMAP entry. */
static int add_entry(Vm *vm, RemapBuilder *b, VmRegion *reg, dedup_page_t first, uint32_t n, uint64_t loc) {
        struct dedup_remap_entry *e;
        uint64_t slot, off = 0;
        uint16_t id = 0;
        int r;

        if (loc == DEDUP_LOC_ZERO && vm->manager->zero_pool >= 0) {
                /* A run never exceeds the zero area: it starts at 0. */
                id = (uint16_t) vm->manager->zero_pool;
                r = send_pool(vm, id);
                if (r < 0)
                        return r;
        } else if (loc != DEDUP_LOC_ZERO) {
                pool_loc_split(loc, &id, &off);
                r = send_pool(vm, id);
                if (r < 0)
                        return r;
        }
        r = inflight_slot(vm, &slot);
        if (r < 0)
                return r;
        if (b->msg->count == DEDUP_PROTO_MAX_ENTRIES) {
                r = builder_send(vm, b);
                if (r < 0)
                        return r;
        }
        e = &b->msg->entries[b->msg->count++];
        *e = (struct dedup_remap_entry) {
                .region_id = reg->id,
                .pool_id = loc == DEDUP_LOC_ZERO && vm->manager->zero_pool < 0 ? DEDUP_POOL_ZERO : id,
                .offset = (uint64_t) (first - reg->first) * DEDUP_PAGE_SIZE,
                .pool_offset = off,
                .npages = n,
                .cookie = slot,
        };
        vm->inflight[slot] = (InFlight) {
                .used = true, .region = reg, .offset = e->offset, .npages = n,
                .pool_id = e->pool_id, .pool_offset = off,
        };
        vma_budget_add(&vm->vma, VMA_RUN_COST);
        vm->remaps_sent++;
        return 0;
}

/* Steps 1-2 of the protocol for one run, then REMAP entries for the pages
 * that still hold the canonical content. */
static int flush_run(Vm *vm, RemapBuilder *b, VmRegion *reg, dedup_page_t first, uint32_t n, uint64_t loc) {
        Manager *m = vm->manager;
        uint64_t off = (uint64_t) (first - reg->first) * DEDUP_PAGE_SIZE, len = (uint64_t) n * DEDUP_PAGE_SIZE;
        uint32_t start = 0;
        ssize_t k;
        int r;

        if (!vma_budget_can_add(&vm->vma, VMA_RUN_COST) && (vm_resync_vmas(vm) < 0 ||
                                                            !vma_budget_can_add(&vm->vma, VMA_RUN_COST))) {
                if (!vm->reason[0])
                        log_warning("VM '%s': VMA budget reached (max_map_count %llu, headroom %llu): not merging more",
                                    vm->name, (unsigned long long) vm->vma.max, (unsigned long long) vm->vma.headroom);
                snprintf(vm->reason, sizeof(vm->reason), "VMA budget reached (vm.max_map_count %llu, headroom %llu)",
                         (unsigned long long) vm->vma.max, (unsigned long long) vm->vma.headroom);
                finish_merges(m, first, n, -ENOSPC);
                return 0;
        }
        r = uffd_wp(reg->uffd, reg->hva + off, len);
        if (r < 0) {
                log_debug("VM '%s': cannot write-protect 0x%llx+%llu: %s", vm->name,
                          (unsigned long long) (reg->hva + off), (unsigned long long) len, strerror(-r));
                finish_merges(m, first, n, r);
                return 0;
        }
        k = pread(reg->memfd, m->buf_a, len, (off_t) (reg->memfd_offset + off));
        if (k == (ssize_t) len && loc != DEDUP_LOC_ZERO) {
                uint64_t poff;
                Pool *p = manager_loc_pool(m, loc, &poff);
                k = p ? pread(pool_fd(p), m->buf_b, len, (off_t) poff) : -1;
        }
        if (k != (ssize_t) len) {
                (void) uffd_unwp(reg->uffd, reg->hva + off, len);
                finish_merges(m, first, n, -EIO);
                return 0;
        }
        for (uint32_t i = 0; i <= n; i++) {
                bool same = i < n && memcmp(m->buf_a + (size_t) i * DEDUP_PAGE_SIZE,
                                            loc == DEDUP_LOC_ZERO ? zero_page : m->buf_b + (size_t) i * DEDUP_PAGE_SIZE,
                                            DEDUP_PAGE_SIZE) == 0 &&
                            (m->n_stale == 0 || loc == DEDUP_LOC_ZERO ||
                             !manager_canon_is_stale(m, loc + (uint64_t) i * DEDUP_PAGE_SIZE));
                if (same)
                        continue;
                if (i > start) {
                        uint64_t l = loc == DEDUP_LOC_ZERO ? loc : loc + (uint64_t) start * DEDUP_PAGE_SIZE;
                        r = add_entry(vm, b, reg, first + start, i - start, l);
                        if (r < 0)
                                return r;
                }
                if (i < n) {
                        /* Changed between scan and protection: let it go. */
                        (void) uffd_unwp(reg->uffd, reg->hva + off + (uint64_t) i * DEDUP_PAGE_SIZE, DEDUP_PAGE_SIZE);
                        dedup_engine_merge_done(m->engine, first + i, -EAGAIN);
                }
                start = i + 1;
        }
        return 0;
}

static int cmp_op(const void *a, const void *b) {
        const PendingOp *x = a, *y = b;

        return x->page < y->page ? -1 : x->page > y->page;
}

static int flush_merges(Vm *vm) {
        RemapBuilder b;
        size_t i = 0;
        int r = 0;

        b.msg = (struct dedup_msg_remap *) b.space;
        b.msg->count = 0;
        b.msg->flags = 0;
        qsort(vm->merges, vm->n_merges, sizeof(PendingOp), cmp_op);
        while (i < vm->n_merges) {
                PendingOp *o = &vm->merges[i];
                VmRegion *reg = vm_page_region(vm->manager, o->page, NULL);
                size_t j = i + 1;

                /* A run: adjacent guest pages onto adjacent canonical pages
                 * of one pool (or all onto zero memory), within one region. */
                while (j < vm->n_merges && j - i < DEDUP_PROTO_MAX_RUN) {
                        PendingOp *q = &vm->merges[j];
                        bool zero = o->loc == DEDUP_LOC_ZERO;
                        if (q->page != o->page + (j - i) || q->page - reg->first >= reg->npages ||
                            (zero ? q->loc != DEDUP_LOC_ZERO : q->loc != o->loc + (j - i) * DEDUP_PAGE_SIZE))
                                break;
                        j++;
                }
                r = flush_run(vm, &b, reg, o->page, (uint32_t) (j - i), o->loc);
                if (r < 0)
                        break;
                i = j;
        }
        if (r >= 0)
                r = builder_send(vm, &b);
        if (r < 0) {
                /* The rest of the queue fails; a send error drops the VM. */
                for (; i < vm->n_merges; i++)
                        dedup_engine_merge_done(vm->manager->engine, vm->merges[i].page, r);
        }
        vm->n_merges = 0;
        return r;
}

static int flush_unmerges(Vm *vm) {
        _Alignas(8) uint8_t space[sizeof(struct dedup_msg_ranges) + DEDUP_PROTO_MAX_ENTRIES * sizeof(struct dedup_range)];
        struct dedup_msg_ranges *msg = (void *) space;
        size_t i = 0;
        int r = 0;

        qsort(vm->unmerges, vm->n_unmerges, sizeof(PendingOp), cmp_op);
        msg->count = 0;
        msg->flags = 0;
        while (i < vm->n_unmerges) {
                VmRegion *reg = vm_page_region(vm->manager, vm->unmerges[i].page, NULL);
                size_t j = i + 1;

                while (j < vm->n_unmerges && j - i < DEDUP_PROTO_MAX_RUN &&
                       vm->unmerges[j].page == vm->unmerges[i].page + (j - i) &&
                       vm->unmerges[j].page - reg->first < reg->npages)
                        j++;
                msg->ranges[msg->count++] = (struct dedup_range) {
                        .region_id = reg->id,
                        .npages = (uint32_t) (j - i),
                        .offset = (uint64_t) (vm->unmerges[i].page - reg->first) * DEDUP_PAGE_SIZE,
                };
                i = j;
                if (msg->count == DEDUP_PROTO_MAX_ENTRIES || i == vm->n_unmerges) {
                        size_t len = sizeof(*msg) + msg->count * sizeof(struct dedup_range);
                        dedup_proto_init_header(&msg->hdr, DEDUP_MSG_UNMERGE, (uint32_t) len, 0);
                        r = vm_send(vm, msg, len, NULL, 0);
                        if (r < 0)
                                break;
                        msg->count = 0;
                }
        }
        if (r < 0)
                for (i = 0; i < vm->n_unmerges; i++)
                        dedup_engine_unmerge_done(vm->manager->engine, vm->unmerges[i].page, r);
        vm->n_unmerges = 0;
        return r;
}

int manager_flush(Manager *m) {
        (void) manager_canon_sync(m);   /* flush_run() reads the pools */
        for (unsigned i = 0; i < MANAGER_MAX_VMS; i++) {
                Vm *vm = m->vms[i];
                int r;

                if (!vm || (vm->n_merges == 0 && vm->n_unmerges == 0))
                        continue;
                r = vm->n_merges ? flush_merges(vm) : 0;
                if (r >= 0 && vm->n_unmerges)
                        r = flush_unmerges(vm);
                if (r == -ENOMEM)
                        return r;
                if (r < 0)
                        vm_disconnect(vm, r, NULL);
        }
        return 0;
}

/* Replies */

void vm_handle_remap_reply(Vm *vm, const struct dedup_msg_remap *msg) {
        Manager *m = vm->manager;
        uint64_t now_ms = now_usec(CLOCK_MONOTONIC) / 1000;

        for (uint32_t i = 0; i < msg->count; i++) {
                const struct dedup_remap_entry *e = &msg->entries[i];
                InFlight *f;
                dedup_page_t first;

                if (e->cookie >= vm->cap_inflight || !(f = &vm->inflight[e->cookie])->used ||
                    f->region->id != e->region_id || f->offset != e->offset || f->npages != e->npages ||
                    f->pool_id != e->pool_id || f->pool_offset != e->pool_offset)
                        return vm_disconnect(vm, EPROTO, "REMAP reply for a remap never asked");
                first = f->region->first + (dedup_page_t) (f->offset / DEDUP_PAGE_SIZE);
                f->used = false;
                if (e->status == DEDUP_REMAP_DONE) {
                        vm->remaps_done++;
                        m->punched_pages += e->npages;
                        finish_merges(m, first, e->npages, 0);
                        /* Out of memory, the sample is only smaller. */
                        for (uint32_t p = 0; p < e->npages; p++)
                                (void) undone_merged(&m->undone, first + p, now_ms);
                        continue;
                }
                /* Aborted (a write got there first) or failed: the agent left
                 * its memfd mapping; lift our protection and wake writers. */
                vm->remaps_aborted++;
                vma_budget_add(&vm->vma, -VMA_RUN_COST);
                (void) uffd_unwp(f->region->uffd, f->region->hva + f->offset, (uint64_t) f->npages * DEDUP_PAGE_SIZE);
                finish_merges(m, first, e->npages, e->status == DEDUP_REMAP_ABORTED ? -EAGAIN : -EIO);
        }
}

VmRegion *vm_range_region(Vm *vm, const struct dedup_range *rg) {
        for (unsigned j = 0; j < vm->n_regions; j++)
                if (vm->regions[j].id == rg->region_id)
                        return rg->offset / DEDUP_PAGE_SIZE + rg->npages > vm->regions[j].npages ? NULL
                                                                                                  : &vm->regions[j];
        return NULL;
}

void vm_handle_ranges(Vm *vm, const struct dedup_msg_ranges *msg) {
        Manager *m = vm->manager;
        bool unmerged = msg->hdr.type == DEDUP_MSG_UNMERGED;
        uint64_t now_ms = now_usec(CLOCK_MONOTONIC) / 1000;

        if (unmerged && (msg->flags & DEDUP_RANGES_F_KEPT))
                vm->kept_replied_seq = msg->hdr.seq;

        for (uint32_t i = 0; i < msg->count; i++) {
                const struct dedup_range *rg = &msg->ranges[i];
                VmRegion *reg = vm_range_region(vm, rg);

                if (!reg)
                        return vm_disconnect(vm, EINVAL, "range outside its region");
                /* The agent mapped the memfd back over part of a merged run:
                 * a split, until the next count says otherwise. */
                vma_budget_add(&vm->vma, VMA_RUN_COST);
                for (uint32_t p = 0; p < rg->npages; p++) {
                        dedup_page_t page = reg->first + (dedup_page_t) (rg->offset / DEDUP_PAGE_SIZE) + p;
                        enum dedup_page_state st = dedup_engine_page_state(m->engine, page);

                        if (unmerged && st == DEDUP_PAGE_UNMERGING) {
                                dedup_engine_unmerge_done(m->engine, page, 0);
                                continue;
                        }
                        /* A guest write broke a merged page. */
                        if (unmerged && (st == DEDUP_PAGE_MERGED || st == DEDUP_PAGE_ZERO))
                                undone_broken(&m->undone, page, now_ms, m->full_scan_us / 1000);
                        dedup_engine_page_written(m->engine, page);
                }
        }
}

int vm_resync_vmas(Vm *vm) {
        uint64_t vmas;
        int r;

        if (now_usec(CLOCK_MONOTONIC) - vm->vma_counted_us < 100 * 1000)
                return -EAGAIN;         /* counted moments ago: the count stands */
        r = vma_count_pid(NULL, vm->pid, &vmas);
        if (r < 0)
                return r;
        vm_set_vmas(vm, vmas);
        return 0;
}

void vm_set_vmas(Vm *vm, uint64_t vmas) {
        vm->vma_counted_us = now_usec(CLOCK_MONOTONIC);
        /* Remaps sent and not answered are not in the VMM's maps yet. */
        vma_budget_resync(&vm->vma, vmas + VMA_RUN_COST * (vm->remaps_sent - vm->remaps_done - vm->remaps_aborted));
}

void vm_fail_inflight(Vm *vm) {
        Manager *m = vm->manager;

        for (size_t i = 0; i < vm->cap_inflight; i++) {
                InFlight *f = &vm->inflight[i];
                if (!f->used)
                        continue;
                f->used = false;
                finish_merges(m, f->region->first + (dedup_page_t) (f->offset / DEDUP_PAGE_SIZE), f->npages, -EPIPE);
        }
        for (size_t i = 0; i < vm->n_merges; i++)
                dedup_engine_merge_done(m->engine, vm->merges[i].page, -EPIPE);
        vm->n_merges = 0;
        for (size_t i = 0; i < vm->n_unmerges; i++)
                dedup_engine_unmerge_done(m->engine, vm->unmerges[i].page, -EPIPE);
        vm->n_unmerges = 0;
        /* Unmerges already sent stay UNMERGING in the engine: fail them too. */
        for (unsigned j = 0; j < vm->n_regions; j++)
                for (uint32_t p = 0; p < vm->regions[j].npages; p++) {
                        dedup_page_t page = vm->regions[j].first + p;
                        if (dedup_engine_page_state(m->engine, page) == DEDUP_PAGE_UNMERGING)
                                dedup_engine_unmerge_done(m->engine, page, -EPIPE);
                }
}

/* Holds */

static int hold_exited(sd_event_source *s, int fd, uint32_t revents, void *userdata) {
        Manager *m = userdata;

        for (size_t i = 0; i < m->n_holds; i++)
                if (m->holds[i].source == s) {
                        manager_release_hold(m, &m->holds[i]);
                        break;
                }
        return 0;
}

void manager_hold_vm(Manager *m, Vm *vm) {
        uint64_t *locs = NULL;
        size_t n = 0, cap = 0;
        Hold *h;

        if (vm->pid <= 0 || vm->pidfd < 0)
                return;         /* the process is gone: nothing maps anything */
        for (unsigned j = 0; j < vm->n_regions; j++)
                for (uint32_t p = 0; p < vm->regions[j].npages; p++) {
                        uint64_t loc;
                        if (dedup_engine_page_loc(m->engine, vm->regions[j].first + p, &loc) < 0 ||
                            loc == DEDUP_LOC_ZERO)
                                continue;
                        if (n == cap) {
                                uint64_t *l = realloc(locs, (cap = cap ? cap * 2 : 256) * sizeof(uint64_t));
                                if (!l) {
                                        free(locs);
                                        log_oom();
                                        return;
                                }
                                locs = l;
                        }
                        locs[n++] = loc;
                }
        if (n == 0) {
                free(locs);
                return;
        }
        qsort(locs, n, sizeof(uint64_t), cmp_u64);
        h = realloc(m->holds, (m->n_holds + 1) * sizeof(Hold));
        if (!h) {
                free(locs);
                log_oom();
                return;
        }
        m->holds = h;
        h = &m->holds[m->n_holds++];
        *h = (Hold) { .pid = vm->pid, .pidfd = TAKE_FD(vm->pidfd), .locs = locs, .n_locs = n };
        sd_event_source_disable_unref(vm->pid_source);
        vm->pid_source = NULL;
        if (sd_event_add_io(m->event, &h->source, h->pidfd, EPOLLIN, hold_exited, m) < 0)
                log_warning("Cannot watch pid %d: its %zu pool pages stay until restart", (int) h->pid, n);
        log_info("VM '%s': holding %zu pool pages until pid %d exits", vm->name, n, (int) h->pid);
}

void manager_release_hold(Manager *m, Hold *h) {
        size_t idx = (size_t) (h - m->holds);
        Hold gone = *h;

        m->holds[idx] = m->holds[--m->n_holds];
        sd_event_source_disable_unref(gone.source);
        safe_close(gone.pidfd);
        /* Punch what was freed meanwhile and no other hold keeps. */
        for (size_t i = 0; i < m->n_deferred;) {
                uint64_t loc = m->deferred_frees[i];
                if (bsearch(&loc, gone.locs, gone.n_locs, sizeof(uint64_t), cmp_u64) && !manager_loc_held(m, loc)) {
                        m->deferred_frees[i] = m->deferred_frees[--m->n_deferred];
                        manager_canon_free(m, loc);
                } else
                        i++;
        }
        free(gone.locs);
}
