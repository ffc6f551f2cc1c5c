/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: the engine context: tunables, VMs and regions, counters, self-check.
 *
 * Page ids are engine-wide: a region takes a contiguous range of them, so a
 * sharer in the rmap is one uint32 and finding its region is a binary search
 * over the (few) regions sorted by first id. Freed ranges are reused first-
 * fit. Counters of page states are kept by engine_set_state() alone, so they
 * cannot drift from the slots; dedup_engine_verify() recomputes everything.
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "dedup-engine-internal.h"

static const uint8_t zero_page[DEDUP_PAGE_SIZE];

int dedup_engine_new(const DedupEngineOps *ops, void *userdata, DedupEngine **ret) {
        DedupEngine *e;

        if (!ops || !ops->page_read || !ops->canon_read || !ops->canon_alloc || !ops->canon_free ||
            !ops->merge || !ops->merge_zero || !ops->unmerge || !ops->now_ms || !ret)
                return -EINVAL;

        e = calloc(1, sizeof(*e));
        if (!e)
                return -ENOMEM;
        e->ops = *ops;
        e->userdata = userdata;
        e->max_page_sharing = 256;
        e->chain_prune_ms = 2000;
        e->merge_across_nodes = true;
        e->use_zero_pages = true;
        e->smart_scan = true;
        e->free_node = NODE_NONE;
        e->zero_hash = engine_hash(e, zero_page);
        *ret = e;
        return 0;
}

DedupEngine *dedup_engine_free(DedupEngine *e) {
        if (!e)
                return NULL;
        for (uint32_t i = 0; i < e->n_regions; i++)
                free(e->regions[i].slots);
        for (uint32_t i = 0; i < e->n_trees; i++) {
                table_clear(&e->trees[i].stable);
                table_clear(&e->trees[i].unstable);
        }
        free(e->trees);
        free(e->regions);
        free(e->vms);
        free(e->nodes);
        free(e);
        return NULL;
}

uint64_t dedup_page_hash(const void *data) {
#ifdef HAVE_HASH_AVX2
        if (__builtin_cpu_supports("avx2"))
                return engine_hash_avx2(data);
#endif
        return XXH3_64bits(data, DEDUP_PAGE_SIZE);
}

uint64_t engine_hash(const DedupEngine *e, const void *data) {
        return e->ops.hash ? e->ops.hash(e->userdata, data) : dedup_page_hash(data);
}

/* tunables */

static bool anything_shared(const DedupEngine *e) {
        /* KSM refuses while ksm_pages_shared; in-flight merges count too. */
        for (uint32_t i = 0; i < e->n_nodes; i++)
                if (e->nodes[i].kind != NODE_FREE)
                        return true;
        return false;
}

int dedup_engine_set_max_page_sharing(DedupEngine *e, unsigned n) {
        if (n < DEDUP_MAX_PAGE_SHARING_MIN || n > DEDUP_MAX_PAGE_SHARING_MAX)
                return -EINVAL;
        if (n == e->max_page_sharing)
                return 0;
        if (anything_shared(e))
                return -EBUSY;
        e->max_page_sharing = n;
        return 0;
}

unsigned dedup_engine_get_max_page_sharing(const DedupEngine *e) {
        return e->max_page_sharing;
}

int dedup_engine_set_merge_across_nodes(DedupEngine *e, bool b) {
        if (b == e->merge_across_nodes)
                return 0;
        if (anything_shared(e))
                return -EBUSY;
        /* The unstable trees are per node now or no more: start afresh. */
        for (uint32_t i = 0; i < e->n_trees; i++) {
                table_clear(&e->trees[i].stable);
                table_clear(&e->trees[i].unstable);
        }
        e->n_trees = 0;
        e->merge_across_nodes = b;
        return 0;
}

bool dedup_engine_get_merge_across_nodes(const DedupEngine *e) {
        return e->merge_across_nodes;
}

void dedup_engine_set_use_zero_pages(DedupEngine *e, bool b) {
        e->use_zero_pages = b;
}

bool dedup_engine_get_use_zero_pages(const DedupEngine *e) {
        return e->use_zero_pages;
}

void dedup_engine_set_smart_scan(DedupEngine *e, bool b) {
        e->smart_scan = b;
}

bool dedup_engine_get_smart_scan(const DedupEngine *e) {
        return e->smart_scan;
}

void dedup_engine_set_merge_verifies(DedupEngine *e, bool b) {
        e->merge_verifies = b;
}

void dedup_engine_set_chain_prune_ms(DedupEngine *e, unsigned ms) {
        e->chain_prune_ms = ms;
}

unsigned dedup_engine_get_chain_prune_ms(const DedupEngine *e) {
        return e->chain_prune_ms;
}

/* lookups */

/* A scan asks about every page of a region in turn, several times each: the
 * last region found is tried first (a binary search each time was 2% of a
 * scan of unique memory). The hint is a cache, not state: written through
 * a const engine. */
Region *engine_region(const DedupEngine *e, dedup_page_t page) {
        uint32_t lo = 0, hi = e->n_regions, h = e->region_hint;

        if (h < hi && page - e->regions[h].first < e->regions[h].npages)
                return &e->regions[h];
        while (lo < hi) {
                uint32_t mid = lo + (hi - lo) / 2;
                Region *r = &e->regions[mid];

                if (page < r->first)
                        hi = mid;
                else if (page - r->first >= r->npages)
                        lo = mid + 1;
                else {
                        ((DedupEngine *) e)->region_hint = mid;
                        return r;
                }
        }
        return NULL;
}

PageSlot *engine_slot(const DedupEngine *e, dedup_page_t page, Region **ret_region) {
        Region *r = engine_region(e, page);

        if (!r)
                return NULL;
        if (ret_region)
                *ret_region = r;
        return &r->slots[page - r->first];
}

Vm *engine_page_vm(const DedupEngine *e, dedup_page_t page) {
        Region *r = engine_region(e, page);

        return r ? &e->vms[r->vm] : NULL;
}

Tree *engine_tree(DedupEngine *e, uint16_t group, int nid, bool create) {
        uint8_t n = e->merge_across_nodes || nid < 0 || nid >= DEDUP_MAX_NODES ? 0 : (uint8_t) nid;
        Tree *t;

        for (uint32_t i = 0; i < e->n_trees; i++)
                if (e->trees[i].group == group && e->trees[i].nid == n)
                        return &e->trees[i];
        if (!create)
                return NULL;
        t = realloc(e->trees, (e->n_trees + 1) * sizeof(Tree));
        if (!t)
                return NULL;
        e->trees = t;
        t = &e->trees[e->n_trees++];
        *t = (Tree) { .group = group, .nid = n };
        return t;
}

/* Keep the state counters in step with the slots: the only place that
 * changes a slot's state. */
void engine_set_state(DedupEngine *e, Region *r, PageSlot *s, unsigned state) {
        unsigned old = slot_state(s);
        Vm *vm = &e->vms[r->vm];

        switch (old) {
        case DEDUP_PAGE_VOLATILE: e->st.pages_volatile--; break;
        case DEDUP_PAGE_UNSTABLE: e->st.pages_unshared--; break;
        case DEDUP_PAGE_MERGING:
        case DEDUP_PAGE_UNMERGING: e->st.pages_pending--; vm->pending--; break;
        case DEDUP_PAGE_ZERO: e->st.zero_pages--; vm->zero_pages--; break;
        case DEDUP_PAGE_MERGED: vm->merging_pages--; break;
        }
        switch (state) {
        case DEDUP_PAGE_VOLATILE: e->st.pages_volatile++; break;
        case DEDUP_PAGE_UNSTABLE: e->st.pages_unshared++; break;
        case DEDUP_PAGE_MERGING:
        case DEDUP_PAGE_UNMERGING: e->st.pages_pending++; vm->pending++; break;
        case DEDUP_PAGE_ZERO: e->st.zero_pages++; vm->zero_pages++; break;
        case DEDUP_PAGE_MERGED: vm->merging_pages++; break;
        }
        s->w0 = (s->w0 & ~SLOT_STATE_MASK) | state;
}

/* VMs and regions */

int dedup_engine_add_vm(DedupEngine *e, uint16_t group, uint32_t *ret_vm) {
        uint32_t i;
        Vm *v;

        for (i = 0; i < e->n_vms; i++)
                if (!e->vms[i].used)
                        break;
        if (i == e->n_vms) {
                v = realloc(e->vms, (e->n_vms + 1) * sizeof(Vm));
                if (!v)
                        return -ENOMEM;
                e->vms = v;
                e->n_vms++;
        }
        e->vms[i] = (Vm) { .used = true, .group = group };
        *ret_vm = i;
        return 0;
}

static Vm *vm_get(const DedupEngine *e, uint32_t vm) {
        if (vm >= e->n_vms || !e->vms[vm].used)
                return NULL;
        return &e->vms[vm];
}

int dedup_engine_add_region(DedupEngine *e, uint32_t vm, uint32_t npages, dedup_page_t *ret_first) {
        uint64_t first = 0;
        uint32_t pos;
        Vm *v = vm_get(e, vm);
        PageSlot *slots;

        if (!v || v->removing)
                return -ENOENT;
        if (npages == 0)
                return -EINVAL;

        /* First fit between existing ranges; DEDUP_PAGE_NONE stays unused. */
        for (pos = 0; pos < e->n_regions; pos++) {
                if (e->regions[pos].first >= first + npages)
                        break;
                first = (uint64_t) e->regions[pos].first + e->regions[pos].npages;
        }
        if (first + npages > DEDUP_PAGE_NONE)
                return -ENOSPC;

        if (e->n_regions == e->cap_regions) {
                uint32_t cap = e->cap_regions ? e->cap_regions * 2 : 8;
                Region *r = realloc(e->regions, cap * sizeof(Region));
                if (!r)
                        return -ENOMEM;
                e->regions = r;
                e->cap_regions = cap;
        }
        slots = calloc(npages, sizeof(PageSlot));
        if (!slots)
                return -ENOMEM;
        memmove(&e->regions[pos + 1], &e->regions[pos], (e->n_regions - pos) * sizeof(Region));
        e->regions[pos] = (Region) { .first = (uint32_t) first, .npages = npages, .vm = vm, .slots = slots };
        e->n_regions++;
        v->pages += npages;
        *ret_first = (uint32_t) first;
        return 0;
}

int dedup_engine_remove_vm(DedupEngine *e, uint32_t vm, unsigned budget) {
        Vm *v = vm_get(e, vm);

        if (!v)
                return -ENOENT;
        if (v->pending > 0)
                return -EBUSY;
        if (!v->removing) {
                v->removing = true;
                v->cursor = 0;
        }

        for (uint32_t i = 0; i < e->n_regions && budget > 0;) {
                Region *r = &e->regions[i];

                if (r->vm != vm) {
                        i++;
                        continue;
                }
                for (uint32_t p = v->cursor; p < r->npages && budget > 0; p++, budget--) {
                        PageSlot *s = &r->slots[p];

                        if (slot_state(s) == DEDUP_PAGE_MERGED) {
                                uint32_t node = slot_node(s);

                                stable_remove_sharer(e, node, r->first + p);
                                engine_set_state(e, r, s, DEDUP_PAGE_NEW);
                                stable_put(e, node);
                        } else
                                engine_set_state(e, r, s, DEDUP_PAGE_NEW);
                        v->cursor = p + 1;
                }
                if (v->cursor < r->npages)
                        return 1;
                /* Region done: release its ids. Stale unstable entries for
                 * them fail validation (the id is gone or not UNSTABLE). */
                free(r->slots);
                memmove(r, r + 1, (e->n_regions - i - 1) * sizeof(Region));
                e->n_regions--;
                v->cursor = 0;
        }
        for (uint32_t i = 0; i < e->n_regions; i++)
                if (e->regions[i].vm == vm)
                        return 1;
        *v = (Vm) {};
        return 0;
}

int dedup_engine_set_vm_group(DedupEngine *e, uint32_t vm, uint16_t group) {
        Vm *v = vm_get(e, vm);

        if (!v)
                return -ENOENT;
        if (v->merging_pages || v->zero_pages || v->pending)
                return -EBUSY;
        if (v->group == group)
                return 0;
        /* Its unstable entries sit in the old group's tree: re-check them. */
        for (uint32_t i = 0; i < e->n_regions; i++) {
                Region *r = &e->regions[i];
                if (r->vm != vm)
                        continue;
                for (uint32_t p = 0; p < r->npages; p++)
                        if (slot_state(&r->slots[p]) == DEDUP_PAGE_UNSTABLE)
                                engine_set_state(e, r, &r->slots[p], DEDUP_PAGE_VOLATILE);
        }
        v->group = group;
        return 0;
}

static size_t metadata_bytes(const DedupEngine *e) {
        size_t b = sizeof(*e) + e->cap_regions * sizeof(Region) + e->n_vms * sizeof(Vm) +
                   e->cap_nodes * sizeof(StableNode) + e->n_trees * sizeof(Tree);

        for (uint32_t i = 0; i < e->n_regions; i++)
                b += (size_t) e->regions[i].npages * sizeof(PageSlot);
        for (uint32_t i = 0; i < e->n_trees; i++)
                b += table_bytes(&e->trees[i].stable) + table_bytes(&e->trees[i].unstable);
        return b;
}

int dedup_engine_vm_stats(const DedupEngine *e, uint32_t vm, DedupVmStats *ret) {
        Vm *v = vm_get(e, vm);

        if (!v)
                return -ENOENT;
        *ret = (DedupVmStats) {
                .pages = v->pages,
                .merging_pages = v->merging_pages,
                .zero_pages = v->zero_pages,
                .pending = v->pending,
                .merge_aborts = v->merge_aborts,
                .unmerges = v->unmerges,
                /* As ksm_process_profit: saved pages minus this VM's slots. */
                .profit_bytes = (int64_t) ((v->merging_pages + v->zero_pages) * DEDUP_PAGE_SIZE) -
                                (int64_t) (v->pages * sizeof(PageSlot)),
        };
        return 0;
}

void dedup_engine_stats(const DedupEngine *e, DedupEngineStats *ret) {
        *ret = e->st;
        ret->metadata_bytes = metadata_bytes(e);
        ret->pages_tracked = 0;
        for (uint32_t i = 0; i < e->n_regions; i++)
                ret->pages_tracked += e->regions[i].npages;
}

void dedup_engine_reset_stats(DedupEngine *e) {
        e->st.pages_scanned = 0;
        e->st.full_scans = 0;
        e->st.merge_aborts = 0;
        e->st.unmerges = 0;
        e->st.pages_changed = 0;
        e->st.pages_written = 0;
        for (uint32_t i = 0; i < e->n_vms; i++) {
                e->vms[i].merge_aborts = 0;
                e->vms[i].unmerges = 0;
        }
}

enum dedup_page_state dedup_engine_page_state(const DedupEngine *e, dedup_page_t page) {
        PageSlot *s = engine_slot(e, page, NULL);

        return s ? (enum dedup_page_state) slot_state(s) : DEDUP_PAGE_NEW;
}

int dedup_engine_page_loc(const DedupEngine *e, dedup_page_t page, uint64_t *ret_loc) {
        PageSlot *s = engine_slot(e, page, NULL);

        if (!s)
                return -ENOENT;
        switch (slot_state(s)) {
        case DEDUP_PAGE_MERGING:
        case DEDUP_PAGE_MERGED:
        case DEDUP_PAGE_UNMERGING:
                if (slot_node(s) == ZERO_NODE)
                        *ret_loc = DEDUP_LOC_ZERO;
                else
                        *ret_loc = e->nodes[slot_node(s)].loc;
                return 0;
        case DEDUP_PAGE_ZERO:
                *ret_loc = DEDUP_LOC_ZERO;
                return 0;
        }
        return -ENOENT;
}

/* self-check */

#define CHECK(cond, why)                \
        do {                            \
                if (!(cond)) {          \
                        *ret_why = why; \
                        return -EUCLEAN; \
                }                       \
        } while (0)

static bool in_table(const DedupEngine *e, const Tree *t, uint32_t idx) {
        TableIter it;
        uint32_t v;

        table_iter_init(&t->stable, e->nodes[idx].hash, &it);
        while ((v = table_iter_next(&t->stable, &it)) != TABLE_EMPTY)
                if (v == idx)
                        return true;
        return false;
}

int dedup_engine_verify(const DedupEngine *e, const char **ret_why) {
        uint64_t count[8] = {}, shared = 0, sharing = 0, chains = 0, dups = 0, pending_nodes = 0;
        uint64_t in_tables = 0;

        for (uint32_t i = 0; i < e->n_regions; i++) {
                const Region *r = &e->regions[i];
                CHECK(i == 0 || e->regions[i - 1].first + e->regions[i - 1].npages <= r->first,
                      "regions overlap or are unsorted");
                CHECK(r->vm < e->n_vms && e->vms[r->vm].used, "region of a free VM");
                for (uint32_t p = 0; p < r->npages; p++) {
                        const PageSlot *s = &r->slots[p];
                        unsigned st = slot_state(s);
                        count[st]++;
                        if (st == DEDUP_PAGE_MERGING || st == DEDUP_PAGE_MERGED || st == DEDUP_PAGE_UNMERGING) {
                                uint32_t n = slot_node(s);
                                CHECK(n == ZERO_NODE || (n < e->n_nodes &&
                                      (e->nodes[n].kind == NODE_PLAIN || e->nodes[n].kind == NODE_DUP)),
                                      "merged page points to no canonical page");
                                CHECK(n == ZERO_NODE || e->nodes[n].group == e->vms[r->vm].group,
                                      "page merged across merge groups");
                        }
                }
        }
        CHECK(count[DEDUP_PAGE_VOLATILE] == e->st.pages_volatile, "pages_volatile drifted");
        CHECK(count[DEDUP_PAGE_UNSTABLE] == e->st.pages_unshared, "pages_unshared drifted");
        CHECK(count[DEDUP_PAGE_ZERO] == e->st.zero_pages, "zero_pages drifted");
        CHECK(count[DEDUP_PAGE_MERGING] + count[DEDUP_PAGE_UNMERGING] == e->st.pages_pending,
              "pages_pending drifted");

        for (uint32_t i = 0; i < e->n_nodes; i++) {
                const StableNode *n = &e->nodes[i];
                uint32_t len = 0;

                switch (n->kind) {
                case NODE_PLAIN:
                case NODE_DUP:
                        for (uint32_t p = n->head; p != DEDUP_PAGE_NONE; len++) {
                                Region *r;
                                const PageSlot *s = engine_slot(e, p, &r);
                                CHECK(s, "sharer outside any region");
                                CHECK(slot_state(s) == DEDUP_PAGE_MERGED || slot_state(s) == DEDUP_PAGE_UNMERGING,
                                      "sharer not merged");
                                CHECK(slot_node(s) == i, "sharer points to another node");
                                CHECK(len <= n->nr, "sharer list longer than its count");
                                p = s->w1;
                        }
                        CHECK(len == n->nr, "sharer count wrong");
                        CHECK(n->nr + n->pending <= e->max_page_sharing, "MaxPageSharing exceeded");
                        CHECK(n->nr > 0 || n->pending > 0 || n->kind == NODE_DUP, "unused canonical page kept");
                        CHECK((n->nr > 0 || n->pending > 0) == (n->loc != LOC_NONE), "freed page still used");
                        if (n->nr > 0) {
                                shared++;
                                sharing += n->nr - 1;
                        }
                        pending_nodes += n->pending;
                        if (n->kind == NODE_PLAIN) {
                                const Tree *t = engine_tree((DedupEngine *) e, n->group, n->nid, false);
                                CHECK(t && in_table(e, t, i), "plain node missing from its tree");
                                in_tables++;
                        } else {
                                CHECK(n->chain < e->n_nodes && e->nodes[n->chain].kind == NODE_CHAIN,
                                      "dup without chain");
                                dups++;
                        }
                        break;
                case NODE_CHAIN: {
                        const Tree *t = engine_tree((DedupEngine *) e, n->group, n->nid, false);
                        CHECK(t && in_table(e, t, i), "chain missing from its tree");
                        in_tables++;
                        chains++;
                        for (uint32_t d = n->head; d != NODE_NONE; d = e->nodes[d].next_dup, len++) {
                                CHECK(e->nodes[d].kind == NODE_DUP && e->nodes[d].chain == i, "bad dup link");
                                CHECK(len < n->nr, "dup list longer than its count");
                        }
                        CHECK(len == n->nr && len > 0, "dup count wrong");
                        break;
                }
                }
        }
        {
                uint64_t entries = 0;
                for (uint32_t i = 0; i < e->n_trees; i++)
                        entries += e->trees[i].stable.n;
                CHECK(entries == in_tables, "stable tree holds stale entries");
        }
        CHECK(shared == e->st.pages_shared, "pages_shared drifted");
        CHECK(sharing == e->st.pages_sharing, "pages_sharing drifted");
        CHECK(chains == e->st.stable_node_chains, "stable_node_chains drifted");
        CHECK(dups == e->st.stable_node_dups, "stable_node_dups drifted");
        CHECK(pending_nodes + count[DEDUP_PAGE_UNMERGING] <= e->st.pages_pending,
              "in-flight merges unaccounted");

        for (uint32_t v = 0; v < e->n_vms; v++) {
                uint64_t merged = 0, zero = 0, pending = 0;
                if (!e->vms[v].used)
                        continue;
                for (uint32_t i = 0; i < e->n_regions; i++) {
                        const Region *r = &e->regions[i];
                        if (r->vm != v)
                                continue;
                        for (uint32_t p = 0; p < r->npages; p++) {
                                unsigned st = slot_state(&r->slots[p]);
                                merged += st == DEDUP_PAGE_MERGED;
                                zero += st == DEDUP_PAGE_ZERO;
                                pending += st == DEDUP_PAGE_MERGING || st == DEDUP_PAGE_UNMERGING;
                        }
                }
                CHECK(merged == e->vms[v].merging_pages, "VM merging_pages drifted");
                CHECK(zero == e->vms[v].zero_pages, "VM zero_pages drifted");
                CHECK(pending == e->vms[v].pending, "VM pending drifted");
        }
        return 0;
}
