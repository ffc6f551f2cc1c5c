/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: scanning and merging (KSM's cmp_and_merge_page).
 *
 * For each scanned page: a zero page goes to zero memory; else the stable
 * tree is searched and a match with room is merged onto; else the page must
 * have the same checksum as at the previous scan (volatility filter) to be
 * looked up in the unstable tree, where a confirmed match creates a new
 * canonical page that both pages merge onto; no match inserts it.
 *
 * Unlike KSM, a page seen for the first time (SLOT_SEEN clear: nothing
 * known about it, as for every page of a guest just registered) goes to
 * the unstable tree at once: a guest's duplicates merge in its first full
 * scan instead of its second. The filter is for pages known to change:
 * one written, changed between two scans, or refused by a merge, is
 * SLOT_SEEN for good and must show the same content twice again.
 *
 * A merge is only a request: the backend write-protects the page and
 * compares again, and may refuse. Until it answers, the page is MERGING and
 * counted in its canonical page's @pending, so the canonical page can
 * neither be freed nor exceed MaxPageSharing meanwhile.
 */

#include <errno.h>
#include <string.h>

#include "dedup-engine-internal.h"

static uint32_t unstable_key(const void *ctx, uint32_t page) {
        const PageSlot *s = engine_slot(ctx, page, NULL);

        if (s && slot_state(s) == DEDUP_PAGE_UNSTABLE)
                return s->w1;
        /* A stale entry (its page merged, changed or went away): w1 is no
         * checksum any more (a merged page keeps its rmap link there), so
         * spread it by page id rather than pile it up at one home. */
        return page * 0x9e3779b9u;
}

/* KSM's skip_age(), as a period: a page that never merges is looked at in
 * every 2nd, then 4th, then 8th full scan. Unlike KSM's countdowns, which
 * scans those are does not depend on the page: scan_seq a multiple of the
 * period. So two pages of the same content that have both aged are looked
 * at in the same full scan within 8 scans and meet in its unstable tree;
 * with KSM's per-page countdowns (periods 2, 3, 5, 9) a guest started
 * after another had aged its pages could stay out of phase with it for
 * good, and none of its pages merged. */
static unsigned scan_period(unsigned age) {
        return age <= 3 ? 2 : age <= 5 ? 4 : 8;
}

/* Full scans a page is looked at in before smart scan may skip it. */
#define YOUNG_SCANS 3u

bool dedup_engine_should_skip(DedupEngine *e, dedup_page_t page) {
        Region *r;
        PageSlot *s = engine_slot(e, page, &r);
        unsigned age, skips, st;

        if (!s || !e->smart_scan)
                return false;
        st = slot_state(s);
        if (st != DEDUP_PAGE_NEW && st != DEDUP_PAGE_VOLATILE && st != DEDUP_PAGE_UNSTABLE)
                return false;
        age = nibble(s->w0, SLOT_AGE_SHIFT);
        skips = nibble(s->w0, SLOT_SKIP_SHIFT);
        /* Content not seen since the page was new (never read, written
         * since, or a hole): look at it, and do not age it. Callers may ask
         * before reading, so holes stay young until they hold data. */
        if (!(s->w0 & SLOT_HAVE_CSUM) && skips == 0)
                return false;
        if (age < SLOT_NIBBLE)
                s->w0 += 1u << SLOT_AGE_SHIFT;
        /* Young pages go through every phase of merging first. */
        if (age < YOUNG_SCANS)
                return false;
        if (skips > 0)
                s->w0 -= 1u << SLOT_SKIP_SHIFT;
        else if (e->scan_seq % scan_period(age) == 0)
                return false;
        /* Skipped pages leave the unstable tree, as KSM removes their rmap item. */
        if (st == DEDUP_PAGE_UNSTABLE)
                engine_set_state(e, r, s, DEDUP_PAGE_VOLATILE);
        return true;
}

static void reset_age(PageSlot *s) {
        s->w0 &= ~((SLOT_NIBBLE << SLOT_AGE_SHIFT) | (SLOT_NIBBLE << SLOT_SKIP_SHIFT));
}

/* Complete a merge the backend reported (or did at once). */
void scan_merge_finish(DedupEngine *e, dedup_page_t page, int r) {
        Region *reg;
        PageSlot *s = engine_slot(e, page, &reg);
        uint32_t node;

        if (!s || slot_state(s) != DEDUP_PAGE_MERGING)
                return;
        node = slot_node(s);
        if (node == ZERO_NODE) {
                engine_set_state(e, reg, s, r == 0 ? DEDUP_PAGE_ZERO : DEDUP_PAGE_NEW);
        } else {
                e->nodes[node].pending--;
                if (r == 0) {
                        engine_set_state(e, reg, s, DEDUP_PAGE_MERGED);
                        stable_add_sharer(e, node, page, s);
                } else {
                        engine_set_state(e, reg, s, DEDUP_PAGE_NEW);
                        stable_put(e, node);
                }
        }
        if (r == 0)
                return;
        /* Drop the node bits (they overlap checksum flag, age and parity). */
        s->w0 = (s->w0 & SLOT_STATE_MASK) | SLOT_SEEN;
        e->st.merge_aborts++;
        e->vms[reg->vm].merge_aborts++;
}

/* Ask the backend to merge page onto node (ZERO_NODE: zero memory). */
int scan_start_merge(DedupEngine *e, dedup_page_t page, uint32_t node) {
        Region *reg;
        PageSlot *s = engine_slot(e, page, &reg);
        int r;

        engine_set_state(e, reg, s, DEDUP_PAGE_MERGING);
        s->w0 = (s->w0 & SLOT_STATE_MASK) | node << SLOT_NODE_SHIFT;
        if (node == ZERO_NODE)
                r = e->ops.merge_zero(e->userdata, page);
        else {
                e->nodes[node].pending++;
                r = e->ops.merge(e->userdata, page, e->nodes[node].loc);
        }
        if (r == DEDUP_PENDING)
                return 0;
        scan_merge_finish(e, page, r < 0 ? r : 0);
        /* A refused merge is the page's business, not an engine error. */
        return r == -ENOMEM ? r : 0;
}

void dedup_engine_merge_done(DedupEngine *e, dedup_page_t page, int r) {
        scan_merge_finish(e, page, r);
}

/* The page got its own copy back: leave its canonical page. */
static void leave(DedupEngine *e, Region *reg, PageSlot *s, dedup_page_t page) {
        uint32_t node = slot_node(s);

        if (node != ZERO_NODE)
                stable_remove_sharer(e, node, page);
        engine_set_state(e, reg, s, DEDUP_PAGE_NEW);
        s->w0 = (s->w0 & SLOT_STATE_MASK) | SLOT_SEEN;
        e->st.unmerges++;
        e->vms[reg->vm].unmerges++;
        if (node != ZERO_NODE)
                stable_put(e, node);
}

void scan_unmerge_finish(DedupEngine *e, dedup_page_t page, int r) {
        Region *reg;
        PageSlot *s = engine_slot(e, page, &reg);

        /* Not UNMERGING: a guest write already un-merged it; nothing left. */
        if (!s || slot_state(s) != DEDUP_PAGE_UNMERGING)
                return;
        if (r == 0)
                leave(e, reg, s, page);
        else
                engine_set_state(e, reg, s, slot_node(s) == ZERO_NODE ? DEDUP_PAGE_ZERO : DEDUP_PAGE_MERGED);
}

void dedup_engine_unmerge_done(DedupEngine *e, dedup_page_t page, int r) {
        scan_unmerge_finish(e, page, r);
}

/* Thrash avoidance (with smart scan): a merged page the guest writes is
 * skipped for THRASH_SKIPS scans, then looked at like a page that never
 * merges, once every scan_period(THRASH_AGE) scans, until it merges again:
 * a page the guest keeps rewriting is not merged and broken again at every
 * scan. */
#define THRASH_AGE 9u
#define THRASH_SKIPS 8u

void dedup_engine_page_written(DedupEngine *e, dedup_page_t page) {
        Region *reg;
        PageSlot *s = engine_slot(e, page, &reg);

        if (!s)
                return;
        e->st.pages_written++;
        switch (slot_state(s)) {
        case DEDUP_PAGE_MERGED:
        case DEDUP_PAGE_UNMERGING:
        case DEDUP_PAGE_ZERO:
                leave(e, reg, s, page);
                s->w0 |= THRASH_AGE << SLOT_AGE_SHIFT | THRASH_SKIPS << SLOT_SKIP_SHIFT;
                break;
        case DEDUP_PAGE_MERGING:
                /* The merge will be refused (the write lifted the protection). */
                break;
        default:
                engine_set_state(e, reg, s, DEDUP_PAGE_NEW);
                s->w0 = (s->w0 & ~SLOT_HAVE_CSUM) | SLOT_SEEN;
                reset_age(s);
        }
}

int dedup_engine_adopt_zero(DedupEngine *e, dedup_page_t page) {
        Region *reg;
        PageSlot *s = engine_slot(e, page, &reg);
        unsigned st;

        if (!s)
                return -ENOENT;
        st = slot_state(s);
        if (st == DEDUP_PAGE_ZERO)
                return 0;
        if (st != DEDUP_PAGE_NEW && st != DEDUP_PAGE_VOLATILE && st != DEDUP_PAGE_UNSTABLE)
                return -EBUSY;
        engine_set_state(e, reg, s, DEDUP_PAGE_ZERO);
        s->w0 = (s->w0 & SLOT_STATE_MASK) | ZERO_NODE << SLOT_NODE_SHIFT;
        return 0;
}

static bool is_zero(const DedupEngine *e, uint64_t hash, const void *data) {
        static const uint8_t zero[DEDUP_PAGE_SIZE];

        return hash == e->zero_hash && memcmp(data, zero, DEDUP_PAGE_SIZE) == 0;
}

uint64_t dedup_engine_hash(const DedupEngine *e, const void *data, bool *ret_zero) {
        uint64_t hash = engine_hash(e, data);

        *ret_zero = is_zero(e, hash, data);
        return hash;
}

/* Find a confirmed twin of page in the unstable tree, or DEDUP_PAGE_NONE.
 * Scanning by hash (merges verify) a twin is an entry of the same checksum
 * and fingerprint: 40 bits of the hash. */
static int unstable_search(DedupEngine *e, Tree *t, dedup_page_t page, uint64_t hash, const void *data,
                           dedup_page_t *ret) {
        uint32_t other, csum = (uint32_t) hash;
        TableIter it;

        table_iter_init(&t->unstable, hash, &it);
        while ((other = table_iter_next(&t->unstable, &it)) != TABLE_EMPTY) {
                Region *reg;
                PageSlot *o = engine_slot(e, other, &reg);
                int r;

                /* Entries are never removed within a scan: check it is
                 * still an unstable page of this scan with this checksum,
                 * and of this group (a freed page id may have been reused
                 * by a VM of another group). */
                if (other == page || !o || slot_state(o) != DEDUP_PAGE_UNSTABLE ||
                    (o->w0 & SLOT_PARITY) != e->parity || o->w1 != csum ||
                    e->vms[reg->vm].group != t->group)
                        continue;
                if (e->merge_verifies) {
                        *ret = other;
                        return 0;
                }
                r = e->ops.page_read(e->userdata, other, e->buf);
                if (r < 0) {
                        if (r == -ENOMEM)
                                return r;
                        continue;
                }
                if (memcmp(e->buf, data, DEDUP_PAGE_SIZE) == 0) {
                        *ret = other;
                        return 0;
                }
        }
        *ret = DEDUP_PAGE_NONE;
        return 0;
}

/* page and other hold the same content: make it a canonical page of tree t
 * (a new dup of match if match is a full node or chain) and merge both. */
static int merge_pair(DedupEngine *e, Tree *t, dedup_page_t page, dedup_page_t other, uint64_t hash,
                      const void *data, int nid, uint32_t match) {
        struct dedup_canon_req req = {
                .group = t->group, .nid = e->merge_across_nodes ? -1 : nid, .page = page, .data = data,
                .hash = hash,
        };
        uint64_t loc;
        uint32_t idx;
        int r;

        r = e->ops.canon_alloc(e->userdata, &req, &loc);
        if (r < 0)
                return r == -ENOMEM ? r : 0;
        r = stable_node_alloc(e, &idx);
        if (r < 0) {
                e->ops.canon_free(e->userdata, loc);
                return r;
        }
        e->nodes[idx].hash = hash;
        e->nodes[idx].loc = loc;
        /* Hold the page until both merges are issued. */
        e->nodes[idx].pending = 1;
        r = stable_insert(e, t, idx, match);
        if (r < 0) {
                e->ops.canon_free(e->userdata, loc);
                e->nodes[idx] = (StableNode) { .kind = NODE_FREE, .head = e->free_node };
                e->free_node = idx;
                return r;
        }
        r = scan_start_merge(e, other, idx);
        if (r >= 0)
                r = scan_start_merge(e, page, idx);
        e->nodes[idx].pending--;
        stable_put(e, idx);
        return r;
}

static void record_csum(PageSlot *s, uint32_t csum) {
        s->w1 = csum;
        s->w0 |= SLOT_HAVE_CSUM | SLOT_SEEN;
}

static void set_volatile(DedupEngine *e, Region *reg, PageSlot *s, uint32_t csum) {
        engine_set_state(e, reg, s, DEDUP_PAGE_VOLATILE);
        record_csum(s, csum);
}

/* The slot of page if it is one to look at now, else NULL with *ret set to
 * what the scan call returns. */
static PageSlot *scannable(DedupEngine *e, dedup_page_t page, Region **ret_reg, int *ret) {
        PageSlot *s = engine_slot(e, page, ret_reg);
        unsigned st;

        *ret = s ? 0 : -ENOENT;
        if (!s)
                return NULL;
        st = slot_state(s);
        if (st != DEDUP_PAGE_NEW && st != DEDUP_PAGE_VOLATILE && st != DEDUP_PAGE_UNSTABLE)
                return NULL;    /* merged or in flight: nothing to look at */
        if (e->vms[(*ret_reg)->vm].removing)
                return NULL;
        return s;
}

/* What a tree's first scan puts in its unstable tree at most: the pages of
 * its group not merged. A tree with no size from a last scan grew step by
 * step, every step re-reading every entry's slot and faulting in new
 * memory: on 4 guests x 1 GiB of unique pages, scanning from the first
 * scan to idle ran at 2.6-2.7 GiB/s per CPU, and at 3.1-3.2 sized so
 * (tests/bench/vs-ksm unique). An overestimate with one tree per NUMA
 * node, and for a group whose last tree was empty; the next scan sizes it
 * again. */
static uint32_t unmerged_pages(const DedupEngine *e, uint16_t group) {
        uint64_t n = 0;

        for (uint32_t i = 0; i < e->n_vms; i++) {
                const Vm *vm = &e->vms[i];

                if (vm->used && vm->group == group)
                        n += vm->pages - vm->merging_pages - vm->zero_pages;
        }
        return n < UINT32_MAX ? (uint32_t) n : UINT32_MAX - 1;
}

/* KSM's cmp_and_merge_page() for a scannable page whose content hashes to
 * hash; data is that content, or NULL if the caller no longer holds it. */
static int scan(DedupEngine *e, Region *reg, PageSlot *s, dedup_page_t page, uint64_t hash, const void *data,
                bool zero, int nid) {
        uint32_t match, target, csum = (uint32_t) hash;
        dedup_page_t other;
        Tree *t;
        bool listed;
        int r;

        e->st.pages_scanned++;
        /* Already in this scan's unstable tree (scanned twice in a scan). */
        listed = slot_state(s) == DEDUP_PAGE_UNSTABLE && (s->w0 & SLOT_PARITY) == e->parity;

        if (e->use_zero_pages && zero) {
                e->st.pages_changed++;
                return scan_start_merge(e, page, ZERO_NODE);
        }

        t = engine_tree(e, e->vms[reg->vm].group, nid, true);
        if (!t)
                return -ENOMEM;
        r = stable_search(e, t, hash, data, true, &match, &target);
        if (r < 0)
                return r;
        if (target != NODE_NONE) {
                e->st.pages_changed++;
                return scan_start_merge(e, page, target);
        }

        /* Volatility filter: only content unchanged since the last scan may
         * enter the unstable tree, or that of a page seen for the first time. */
        if (!(s->w0 & SLOT_SEEN)) {
                record_csum(s, csum);
                e->st.pages_changed++;
        } else if (!(s->w0 & SLOT_HAVE_CSUM) || s->w1 != csum) {
                set_volatile(e, reg, s, csum);
                e->st.pages_changed++;
                return 0;
        }

        r = unstable_search(e, t, page, hash, data, &other);
        if (r < 0)
                return r;
        if (other != DEDUP_PAGE_NONE) {
                e->st.pages_changed++;
                /* Without data (scanning by hash) the backend reads page's
                 * content for the canonical page itself, batched. */
                return merge_pair(e, t, page, other, hash, data, nid, match);
        }

        if (listed)
                return 0;
        if (t->unstable.n == 0) {
                r = table_reserve(&t->unstable, t->unstable_last ?: unmerged_pages(e, t->group), unstable_key, e);
                if (r < 0)
                        return r;
        }
        r = table_insert(&t->unstable, hash, page, unstable_key, e);
        if (r < 0)
                return r;
        engine_set_state(e, reg, s, DEDUP_PAGE_UNSTABLE);
        s->w0 = (s->w0 & ~SLOT_PARITY) | e->parity;
        return 0;
}

int dedup_engine_scan_page(DedupEngine *e, dedup_page_t page, const void *data, int nid) {
        Region *reg;
        PageSlot *s;
        uint64_t hash;
        bool zero;
        int r;

        s = scannable(e, page, &reg, &r);
        if (!s)
                return r;
        hash = dedup_engine_hash(e, data, &zero);
        return scan(e, reg, s, page, hash, data, zero, nid);
}

int dedup_engine_scan_hashed(DedupEngine *e, dedup_page_t page, uint64_t hash, bool zero, int nid) {
        Region *reg;
        PageSlot *s;
        int r;

        s = scannable(e, page, &reg, &r);
        if (!s)
                return r;
        if (e->merge_verifies || (e->use_zero_pages && zero))
                return scan(e, reg, s, page, hash, NULL, zero, nid);
        /* Lookups compare content: read it now, and scan what it is now. */
        r = e->ops.page_read(e->userdata, page, e->page_buf);
        if (r < 0)
                return r == -ENOMEM ? r : 0;
        hash = dedup_engine_hash(e, e->page_buf, &zero);
        return scan(e, reg, s, page, hash, e->page_buf, zero, nid);
}

void dedup_engine_prefetch(const DedupEngine *e, dedup_page_t page, uint64_t hash, int nid) {
        Region *reg = engine_region(e, page);
        Tree *t;

        if (!reg)
                return;
        t = engine_tree((DedupEngine *) e, e->vms[reg->vm].group, nid, false);
        if (!t)
                return;
        table_prefetch(&t->stable, hash);
        table_prefetch(&t->unstable, hash);
}

/* Entries of t's unstable tree whose page is still unstable. */
static uint32_t unstable_live(const DedupEngine *e, const Tree *t) {
        uint32_t n = 0;

        for (uint32_t i = 0; i < t->unstable.cap; i++) {
                uint32_t page = t->unstable.values[i];
                const PageSlot *s;

                if (page == TABLE_EMPTY)
                        continue;
                s = engine_slot(e, page, NULL);
                n += s && slot_state(s) == DEDUP_PAGE_UNSTABLE && (s->w0 & SLOT_PARITY) == e->parity;
        }
        return n;
}

/* Will the next full scan put this page in its unstable tree, if the
 * page stays as it is? Those in this scan's tree, and those whose checksum
 * this scan recorded (changed) that the next one looks at. */
static bool unstable_next(const DedupEngine *e, const PageSlot *s) {
        switch (slot_state(s)) {
        case DEDUP_PAGE_UNSTABLE:
                return (s->w0 & SLOT_PARITY) == e->parity;
        case DEDUP_PAGE_VOLATILE:
                return (s->w0 & SLOT_HAVE_CSUM) && (!e->smart_scan || nibble(s->w0, SLOT_AGE_SHIFT) < YOUNG_SCANS);
        default:
                return false;
        }
}

/* The size of every tree's next unstable tree at once, by the group of
 * each page's VM, walking the slots in order (the tables' entries are a
 * cache miss each): when merging across nodes, where a group has a single
 * tree. Counting the pages whose content changed in this scan, and not
 * only those in its tree, spares the next scan from growing its tree step
 * by step, every step re-reading every entry's slot (5% of a scan of
 * unique memory; a tree's first scan is sized by unmerged_pages()). */
static void count_unstable(DedupEngine *e) {
        for (uint32_t i = 0; i < e->n_trees; i++)
                e->trees[i].unstable_last = 0;
        for (uint32_t i = 0; i < e->n_regions; i++) {
                const Region *r = &e->regions[i];
                Tree *t = engine_tree(e, e->vms[r->vm].group, 0, false);
                uint32_t n = 0;

                for (uint32_t p = 0; t && p < r->npages; p++)
                        n += unstable_next(e, &r->slots[p]);
                if (t)
                        t->unstable_last += n;
        }
}

int dedup_engine_full_scan_done(DedupEngine *e) {
        if (e->merge_across_nodes)
                count_unstable(e);
        for (uint32_t i = 0; i < e->n_trees; i++) {
                Tree *t = &e->trees[i];
                /* Size the next scan's tree from the pages that stayed in
                 * this one, so it is allocated once, without slack from
                 * growth or from entries that merged meanwhile. */
                if (!e->merge_across_nodes)
                        t->unstable_last = unstable_live(e, t);
                table_clear(&t->unstable);
        }
        e->parity ^= SLOT_PARITY;
        e->st.full_scans++;
        e->scan_seq++;
        stable_prune_all(e);
        return stable_migrate_all(e);
}

/* Unmerge walks */

/* Issue an unmerge for one merged page; true if it was merged. */
static bool unmerge_one(DedupEngine *e, Region *reg, PageSlot *s, dedup_page_t page) {
        unsigned st = slot_state(s);
        uint64_t loc;
        int r;

        if (st != DEDUP_PAGE_MERGED && st != DEDUP_PAGE_ZERO)
                return false;
        if (st == DEDUP_PAGE_ZERO)
                s->w0 = (s->w0 & SLOT_STATE_MASK) | ZERO_NODE << SLOT_NODE_SHIFT;
        loc = slot_node(s) == ZERO_NODE ? DEDUP_LOC_ZERO : e->nodes[slot_node(s)].loc;
        engine_set_state(e, reg, s, DEDUP_PAGE_UNMERGING);
        r = e->ops.unmerge(e->userdata, page, loc);
        if (r != DEDUP_PENDING)
                scan_unmerge_finish(e, page, r < 0 ? r : 0);
        return true;
}

static bool region_in_scope(const Region *r, uint32_t vm) {
        return vm == UINT32_MAX || r->vm == vm;
}

/* Walk from *cursor over regions in scope, unmerging; bounded by budget. */
static void unmerge_walk(DedupEngine *e, uint32_t vm, dedup_page_t *cursor, unsigned budget) {
        for (uint32_t i = 0; i < e->n_regions && budget > 0; i++) {
                Region *r = &e->regions[i];
                uint32_t p;

                if (!region_in_scope(r, vm) || r->first + r->npages <= *cursor)
                        continue;
                p = *cursor > r->first ? *cursor - r->first : 0;
                for (; p < r->npages && budget > 0; p++, budget--) {
                        unmerge_one(e, r, &r->slots[p], r->first + p);
                        *cursor = r->first + p + 1;
                }
        }
        if (budget > 0)
                *cursor = 0;    /* walked to the end: the next call starts over */
}

int dedup_engine_unmerge_all(DedupEngine *e, unsigned budget) {
        if (e->st.pages_shared == 0 && e->st.zero_pages == 0 && e->st.pages_pending == 0)
                return 0;
        unmerge_walk(e, UINT32_MAX, &e->unmerge_cursor, budget);
        return e->st.pages_shared || e->st.zero_pages || e->st.pages_pending ? 1 : 0;
}

int dedup_engine_unmerge_vm(DedupEngine *e, uint32_t vm, unsigned budget) {
        Vm *v;

        if (vm >= e->n_vms || !e->vms[vm].used)
                return -ENOENT;
        v = &e->vms[vm];
        if (v->merging_pages == 0 && v->zero_pages == 0 && v->pending == 0)
                return 0;
        unmerge_walk(e, vm, &v->cursor, budget);
        return v->merging_pages || v->zero_pages || v->pending ? 1 : 0;
}
