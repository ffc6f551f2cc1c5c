/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: stable trees, chains and dups (reference/001).
 *
 * A stable tree (one per merge group, and per NUMA node unless merging
 * across nodes) holds canonical pages keyed by content. Invariants:
 *  - a tree never holds two entries of the same content: a second canonical
 *    page of some content exists only as a dup inside a chain, and a chain
 *    and all its dups represent the same content;
 *  - a canonical page never has more than MaxPageSharing sharers, merges in
 *    flight included; when all dups of a chain are full, a new sharer must
 *    wait for an unstable-tree match that creates a new dup;
 *  - a canonical page is freed when its last sharer leaves; a plain node
 *    leaves its tree at once, a dup stays in its chain as "stale" (loc ==
 *    LOC_NONE) until the chain is pruned, at most every
 *    StableNodeChainsPruneMillisecs, when stale dups are dropped and a chain
 *    left with one dup collapses back into a plain node;
 *  - a canonical page found on another node than its tree's (the kernel
 *    migrated it) moves to the tree of its node, colliding there as a dup
 *    with an existing node of the same content (KSM's migrate_nodes).
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "dedup-engine-internal.h"

uint32_t stable_key(const void *ctx, uint32_t idx) {
        const DedupEngine *e = ctx;

        return (uint32_t) e->nodes[idx].hash;
}

int stable_node_alloc(DedupEngine *e, uint32_t *ret) {
        uint32_t idx;

        if (e->free_node != NODE_NONE) {
                idx = e->free_node;
                e->free_node = e->nodes[idx].head;
        } else {
                if (e->n_nodes == e->cap_nodes) {
                        uint32_t cap = e->cap_nodes ? e->cap_nodes + e->cap_nodes / 2 : 64;
                        StableNode *n;

                        if (cap > MAX_NODES)
                                cap = MAX_NODES;
                        if (cap == e->n_nodes)
                                return -ENOSPC;
                        n = realloc(e->nodes, cap * sizeof(StableNode));
                        if (!n)
                                return -ENOMEM;
                        e->nodes = n;
                        e->cap_nodes = cap;
                }
                idx = e->n_nodes++;
        }
        e->nodes[idx] = (StableNode) { .head = DEDUP_PAGE_NONE, .loc = LOC_NONE, .kind = NODE_PLAIN };
        *ret = idx;
        return 0;
}

static void node_release(DedupEngine *e, uint32_t idx) {
        e->nodes[idx] = (StableNode) { .kind = NODE_FREE, .head = e->free_node };
        e->free_node = idx;
}

static Tree *node_tree(DedupEngine *e, uint32_t idx) {
        return engine_tree(e, e->nodes[idx].group, e->nodes[idx].nid, false);
}

bool stable_has_room(const DedupEngine *e, const StableNode *n) {
        return n->loc != LOC_NONE && n->nr + n->pending < e->max_page_sharing;
}

/* Take dup d out of its chain; it gets the chain's hash back. */
static void dup_unlink(DedupEngine *e, uint32_t d) {
        StableNode *c = &e->nodes[e->nodes[d].chain];
        uint32_t *pp = &c->head;

        while (*pp != d)
                pp = &e->nodes[*pp].next_dup;
        *pp = e->nodes[d].next_dup;
        c->nr--;
        e->st.stable_node_dups--;
        e->nodes[d].hash = c->hash;
}

static void dup_link(DedupEngine *e, uint32_t chain, uint32_t d) {
        StableNode *n = &e->nodes[d];

        n->kind = NODE_DUP;
        n->chain = chain;
        n->next_dup = e->nodes[chain].head;
        n->group = e->nodes[chain].group;
        n->nid = e->nodes[chain].nid;
        e->nodes[chain].head = d;
        e->nodes[chain].nr++;
        e->st.stable_node_dups++;
}

/* Turn plain node p of tree t into a chain holding p as its first dup. */
static int chain_create(DedupEngine *e, Tree *t, uint32_t p, uint32_t *ret_chain) {
        uint32_t c;
        int r;

        r = stable_node_alloc(e, &c);
        if (r < 0)
                return r;
        e->nodes[c] = (StableNode) {
                .hash = e->nodes[p].hash, .loc = e->ops.now_ms(e->userdata), .head = NODE_NONE,
                .group = e->nodes[p].group, .nid = e->nodes[p].nid, .kind = NODE_CHAIN,
        };
        table_remove(&t->stable, e->nodes[p].hash, p, stable_key, e);
        r = table_insert(&t->stable, e->nodes[c].hash, c, stable_key, e);
        if (r < 0) {
                /* Cannot fail: the removal just made room. */
                node_release(e, c);
                return r;
        }
        e->st.stable_node_chains++;
        dup_link(e, c, p);
        *ret_chain = c;
        return 0;
}

/* Drop stale dups; a chain left empty goes away, one left with a single
 * dup collapses back into a plain node. Returns true if chain c is gone. */
static bool chain_prune(DedupEngine *e, uint32_t c) {
        Tree *t = node_tree(e, c);
        uint32_t d, next, only;

        for (d = e->nodes[c].head; d != NODE_NONE; d = next) {
                next = e->nodes[d].next_dup;
                if (e->nodes[d].loc == LOC_NONE) {
                        dup_unlink(e, d);
                        node_release(e, d);
                }
        }
        e->nodes[c].loc = e->ops.now_ms(e->userdata);
        if (e->nodes[c].nr > 1)
                return false;

        only = e->nodes[c].head;
        table_remove(&t->stable, e->nodes[c].hash, c, stable_key, e);
        e->st.stable_node_chains--;
        if (only != NODE_NONE) {
                dup_unlink(e, only);
                e->nodes[only].kind = NODE_PLAIN;
                /* Cannot fail: the chain's entry just left. */
                (void) table_insert(&t->stable, e->nodes[only].hash, only, stable_key, e);
        }
        node_release(e, c);
        return true;
}

static bool prune_due(DedupEngine *e, uint32_t c) {
        return e->ops.now_ms(e->userdata) - e->nodes[c].loc >= e->chain_prune_ms;
}

void stable_prune_all(DedupEngine *e) {
        for (uint32_t i = 0; i < e->n_nodes; i++)
                if (e->nodes[i].kind == NODE_CHAIN && prune_due(e, i))
                        chain_prune(e, i);
}

/* Called once the 64-bit hashes are equal. */
static int canon_equal(DedupEngine *e, uint64_t loc, const void *data) {
        int r;

        if (e->merge_verifies)
                return 1;
        r = e->ops.canon_read(e->userdata, loc, e->buf);
        if (r < 0)
                return r;
        return memcmp(e->buf, data, DEDUP_PAGE_SIZE) == 0;
}

/* Has canonical page idx moved to another node than its tree's? */
static int node_moved(DedupEngine *e, uint32_t idx) {
        int nid;

        if (e->merge_across_nodes || !e->ops.canon_nid || e->nodes[idx].loc == LOC_NONE)
                return -1;
        nid = e->ops.canon_nid(e->userdata, e->nodes[idx].loc);
        if (nid < 0 || nid >= DEDUP_MAX_NODES || nid == e->nodes[idx].nid)
                return -1;
        return nid;
}

static int migrate(DedupEngine *e, uint32_t idx, int nid);

/*
 * Look up content in tree t. ret_match: the plain node or chain holding this
 * content (NODE_NONE if none); ret_target: the canonical page to merge onto
 * (NODE_NONE if the match is full). Migrated canonical pages met on the way
 * are moved to their node's tree first, unless !migrate_ok (a lookup made
 * while inserting a migrated page: no nesting, data may live in buf2).
 */
int stable_search(DedupEngine *e, Tree *t, uint64_t hash, const void *data, bool migrate_ok,
                  uint32_t *ret_match, uint32_t *ret_target) {
        TableIter it;
        uint32_t idx;
        int r;

again:
        *ret_match = *ret_target = NODE_NONE;
        table_iter_init(&t->stable, hash, &it);
        while ((idx = table_iter_next(&t->stable, &it)) != TABLE_EMPTY) {
                StableNode *n = &e->nodes[idx];
                uint32_t best = NODE_NONE, any = NODE_NONE;
                int nid;

                if (n->hash != hash)
                        continue;

                if (n->kind == NODE_PLAIN) {
                        nid = migrate_ok ? node_moved(e, idx) : -1;
                        if (nid >= 0) {
                                r = migrate(e, idx, nid);
                                if (r < 0)
                                        return r;
                                goto again;
                        }
                        r = canon_equal(e, n->loc, data);
                        if (r < 0)
                                return r;
                        if (r == 0)
                                continue;       /* same hash, other content */
                        *ret_match = idx;
                        if (stable_has_room(e, &e->nodes[idx]))
                                *ret_target = idx;
                        return 0;
                }

                /* A chain: prune when due, move out migrated dups, then pick
                 * the fullest dup that has room (keeps dups few and full). */
                if (migrate_ok && prune_due(e, idx) && chain_prune(e, idx))
                        goto again;
                for (uint32_t d = e->nodes[idx].head; d != NODE_NONE; d = e->nodes[d].next_dup) {
                        nid = migrate_ok ? node_moved(e, d) : -1;
                        if (nid >= 0) {
                                dup_unlink(e, d);
                                r = migrate(e, d, nid);
                                if (r < 0)
                                        return r;
                                if (e->nodes[idx].nr <= 1)
                                        chain_prune(e, idx);
                                goto again;
                        }
                        if (e->nodes[d].loc == LOC_NONE)
                                continue;
                        if (any == NODE_NONE)
                                any = d;
                        if (stable_has_room(e, &e->nodes[d]) &&
                            (best == NODE_NONE || e->nodes[d].nr > e->nodes[best].nr))
                                best = d;
                }
                if (any == NODE_NONE)
                        continue;               /* only stale dups: nothing to compare */
                r = canon_equal(e, e->nodes[any].loc, data);
                if (r < 0)
                        return r;
                if (r == 0)
                        continue;
                *ret_match = idx;
                *ret_target = best;
                return 0;
        }
        return 0;
}

/*
 * Put canonical page idx (plain, not in any tree) into tree t. match is the
 * plain node or chain of t with the same content, NODE_NONE if there is
 * none, or NODE_LOOKUP to have it looked up (migration).
 */
int stable_insert(DedupEngine *e, Tree *t, uint32_t idx, uint32_t match) {
        StableNode *n = &e->nodes[idx];
        int r;

        n->group = t->group;
        n->nid = t->nid;
        if (match == NODE_LOOKUP) {
                uint32_t target;

                r = e->ops.canon_read(e->userdata, n->loc, e->buf2);
                if (r < 0)
                        return r;
                r = stable_search(e, t, n->hash, e->buf2, false, &match, &target);
                if (r < 0)
                        return r;
                n = &e->nodes[idx];
        }
        if (match == NODE_NONE) {
                n->kind = NODE_PLAIN;
                return table_insert(&t->stable, n->hash, idx, stable_key, e);
        }
        if (e->nodes[match].kind == NODE_PLAIN) {
                r = chain_create(e, t, match, &match);
                if (r < 0)
                        return r;
        }
        dup_link(e, match, idx);
        return 0;
}

/* Move canonical page idx (already out of its chain, if it was a dup) from
 * its tree to the tree of node nid. */
static int migrate(DedupEngine *e, uint32_t idx, int nid) {
        Tree *from = node_tree(e, idx), *to;

        if (e->nodes[idx].kind == NODE_PLAIN)
                table_remove(&from->stable, e->nodes[idx].hash, idx, stable_key, e);
        to = engine_tree(e, e->nodes[idx].group, nid, true);
        if (!to)
                return -ENOMEM;
        e->nodes[idx].kind = NODE_PLAIN;
        return stable_insert(e, to, idx, NODE_LOOKUP);
}

int stable_migrate_all(DedupEngine *e) {
        if (e->merge_across_nodes || !e->ops.canon_nid)
                return 0;
        for (uint32_t i = 0; i < e->n_nodes; i++) {
                int nid, r;

                if (e->nodes[i].kind != NODE_PLAIN && e->nodes[i].kind != NODE_DUP)
                        continue;
                nid = node_moved(e, i);
                if (nid < 0)
                        continue;
                if (e->nodes[i].kind == NODE_DUP) {
                        uint32_t c = e->nodes[i].chain;
                        dup_unlink(e, i);
                        if (e->nodes[c].nr <= 1)
                                chain_prune(e, c);
                }
                r = migrate(e, i, nid);
                if (r < 0)
                        return r;
        }
        return 0;
}

/* The canonical page at loc among match (a plain node or a chain's dups),
 * or NODE_NONE. */
static uint32_t node_at(const DedupEngine *e, uint32_t match, uint64_t loc) {
        if (match == NODE_NONE)
                return NODE_NONE;
        if (e->nodes[match].kind == NODE_PLAIN)
                return e->nodes[match].loc == loc ? match : NODE_NONE;
        for (uint32_t d = e->nodes[match].head; d != NODE_NONE; d = e->nodes[d].next_dup)
                if (e->nodes[d].loc == loc)
                        return d;
        return NODE_NONE;
}

int dedup_engine_adopt_merged(DedupEngine *e, dedup_page_t page, uint64_t loc, const void *data, int nid,
                              bool create) {
        Region *reg;
        PageSlot *s = engine_slot(e, page, &reg);
        uint32_t match, target, idx;
        unsigned st;
        uint64_t hash;
        Tree *t;
        int r;

        if (!s)
                return -ENOENT;
        st = slot_state(s);
        if (st != DEDUP_PAGE_NEW && st != DEDUP_PAGE_VOLATILE && st != DEDUP_PAGE_UNSTABLE)
                return -EBUSY;
        if (loc == DEDUP_LOC_ZERO || loc == LOC_NONE)
                return -EINVAL;

        hash = engine_hash(e, data);
        t = engine_tree(e, e->vms[reg->vm].group, nid, true);
        if (!t)
                return -ENOMEM;
        r = stable_search(e, t, hash, data, false, &match, &target);
        if (r < 0)
                return r;
        idx = node_at(e, match, loc);
        if (idx == NODE_NONE && !create)
                return -ESTALE;
        if (idx == NODE_NONE) {
                /* First sharer reported: the canonical page joins the tree,
                 * as a dup if the tree has its content elsewhere. */
                r = stable_node_alloc(e, &idx);
                if (r < 0)
                        return r;
                e->nodes[idx].hash = hash;
                e->nodes[idx].loc = loc;
                r = stable_insert(e, t, idx, match);
                if (r < 0) {
                        node_release(e, idx);
                        return r;
                }
        } else if (!stable_has_room(e, &e->nodes[idx]))
                return -ENOSPC;
        engine_set_state(e, reg, s, DEDUP_PAGE_MERGED);
        stable_add_sharer(e, idx, page, s);
        return 0;
}

void stable_add_sharer(DedupEngine *e, uint32_t idx, dedup_page_t page, PageSlot *s) {
        StableNode *n = &e->nodes[idx];

        s->w0 = (s->w0 & SLOT_STATE_MASK) | idx << SLOT_NODE_SHIFT;
        s->w1 = n->head;
        n->head = page;
        if (n->nr++ == 0)
                e->st.pages_shared++;
        else
                e->st.pages_sharing++;
}

void stable_remove_sharer(DedupEngine *e, uint32_t idx, dedup_page_t page) {
        StableNode *n = &e->nodes[idx];
        uint32_t *pp = &n->head;

        /* O(sharers) walk, bounded by MaxPageSharing. */
        while (*pp != page) {
                PageSlot *s = engine_slot(e, *pp, NULL);
                pp = &s->w1;
        }
        *pp = engine_slot(e, page, NULL)->w1;
        if (--n->nr == 0)
                e->st.pages_shared--;
        else
                e->st.pages_sharing--;
}

/* Free canonical page idx if nothing uses or is about to use it. */
void stable_put(DedupEngine *e, uint32_t idx) {
        StableNode *n = &e->nodes[idx];

        if (n->nr > 0 || n->pending > 0 || n->loc == LOC_NONE)
                return;
        e->ops.canon_free(e->userdata, n->loc);
        n->loc = LOC_NONE;
        if (n->kind == NODE_PLAIN) {
                table_remove(&node_tree(e, idx)->stable, n->hash, idx, stable_key, e);
                node_release(e, idx);
        }
        /* A dup stays, stale, until its chain is pruned. */
}
