/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * DOC: engine internals
 *
 * Page slots. Every page of every region has one 8-byte slot, and that is
 * almost all the engine costs per page (KSM: a 64-byte rmap_item). Word 0
 * holds the state in its low 3 bits; the rest of the slot depends on it:
 *
 *   NEW, VOLATILE, UNSTABLE: w0 = state | SLOT_PARITY (scan parity when put
 *     in the unstable tree) | SLOT_HAVE_CSUM | age (4 bits) | skips (4 bits)
 *     | SLOT_SEEN (the page has a history: scanned, written, or merged
 *     before); w1 = low 32 bits of the content hash seen at the last scan
 *     (valid with SLOT_HAVE_CSUM): the volatility filter and the unstable
 *     tree's key.
 *   MERGING: w0 = state | node << 3 (ZERO_NODE for a zero merge); the page
 *     is counted in the node's @pending, not yet in its sharer list.
 *   MERGED, UNMERGING: w0 = state | node << 3; w1 = next sharer of the node
 *     (DEDUP_PAGE_NONE ends the list): the rmap is a list threaded through
 *     the slots, so a sharer costs no memory beyond its slot. Walking it is
 *     O(sharers), bounded by MaxPageSharing, as KSM's rmap walks are.
 *   ZERO, and UNMERGING of a zero page: w0 = state | ZERO_NODE << 3.
 *
 * Why trees stay right while guest content changes under them: the unstable
 * tree holds page ids keyed by a hash of content that may already be stale;
 * a hit is only a candidate, confirmed by reading both pages and memcmp,
 * and a merge is confirmed again by the backend after write-protecting the
 * page (DESIGN.md §2). Stable nodes hold canonical pages that nobody can
 * write, so their hash never goes stale. A hash collision costs a memcmp,
 * never a wrong merge.
 *
 * Unstable entries are not removed when their page changes state: a lookup
 * validates the page (still UNSTABLE, same parity, same checksum) and the
 * whole tree is dropped at the end of every full scan, as KSM does.
 */

#include "dedup-engine.h"
#include "dedup-table.h"

enum {
        SLOT_STATE_MASK = 0x7,
        SLOT_PARITY = 1u << 3,
        SLOT_HAVE_CSUM = 1u << 4,
        SLOT_AGE_SHIFT = 5,             /* 4 bits: scans without a merge (smart scan) */
        SLOT_SKIP_SHIFT = 9,            /* 4 bits: scans still to skip (thrash avoidance) */
        SLOT_SEEN = 1u << 13,
        SLOT_NODE_SHIFT = 3,
};
#define SLOT_NIBBLE 0xFu
/* 29 bits of node index; the all-ones value means "zero memory". */
#define ZERO_NODE ((UINT32_C(1) << 29) - 1)
#define MAX_NODES ZERO_NODE
#define NODE_NONE UINT32_MAX
/* stable_insert(): match not known yet, look it up (not NODE_NONE!). */
#define NODE_LOOKUP (UINT32_MAX - 1)
#define LOC_NONE (UINT64_MAX - 1)

typedef struct PageSlot {
        uint32_t w0;
        uint32_t w1;
} PageSlot;

typedef struct Region {
        dedup_page_t first;
        uint32_t npages;
        uint32_t vm;
        PageSlot *slots;
} Region;

typedef struct Vm {
        bool used;
        bool removing;
        uint16_t group;
        uint32_t pending;               /* merges and unmerges in flight */
        dedup_page_t cursor;            /* resumable walks (unmerge, removal) */
        uint64_t pages;
        uint64_t merging_pages;
        uint64_t zero_pages;
        uint64_t merge_aborts;
        uint64_t unmerges;
} Vm;

enum node_kind {
        NODE_FREE,
        NODE_PLAIN,                     /* canonical page in a stable tree */
        NODE_CHAIN,                     /* in a stable tree, holds dups of one content */
        NODE_DUP,                       /* canonical page in a chain */
};

/*
 * struct StableNode - a canonical page (PLAIN or DUP) or a chain; 32 bytes.
 * @hash:     PLAIN/CHAIN: content hash. A DUP has its chain's content, so
 *            it reuses the word for its links:
 * @next_dup: DUP: next dup of the chain (NODE_NONE ends)
 * @chain:    DUP: the chain it belongs to
 * @loc:      PLAIN/DUP: backend location, LOC_NONE once freed (a stale
 *            dup, pruned later); CHAIN: time of the last prune (ms)
 * @head:     PLAIN/DUP: first sharer page; CHAIN: first dup; FREE: next free
 * @nr:       PLAIN/DUP: sharers in the list; CHAIN: dups linked
 * @pending:  PLAIN/DUP: merges in flight onto this page (they count
 *            against MaxPageSharing so concurrent merges cannot exceed it)
 * @group, @nid: the stable tree the node (or its chain) belongs to
 */
typedef struct StableNode {
        union {
                uint64_t hash;
                struct {
                        uint32_t next_dup;
                        uint32_t chain;
                };
        };
        uint64_t loc;
        uint32_t head;
        uint32_t nr;
        uint32_t pending;
        uint16_t group;
        uint8_t nid;
        uint8_t kind;
} StableNode;

/* The stable and unstable tree of one (merge group, NUMA node). */
typedef struct Tree {
        uint16_t group;
        uint8_t nid;
        Table stable;
        Table unstable;
        uint32_t unstable_last;         /* entries at the end of the last scan: next size */
} Tree;

struct DedupEngine {
        DedupEngineOps ops;
        void *userdata;

        /* tunables */
        unsigned max_page_sharing;
        unsigned chain_prune_ms;
        bool merge_across_nodes;
        bool use_zero_pages;
        bool smart_scan;
        bool merge_verifies;            /* dedup_engine_set_merge_verifies() */

        /* regions sorted by first page id */
        Region *regions;
        uint32_t n_regions, cap_regions;
        uint32_t region_hint;           /* of the last engine_region(): a cache */
        Vm *vms;
        uint32_t n_vms;

        StableNode *nodes;
        uint32_t n_nodes, cap_nodes, free_node;
        Tree *trees;
        uint32_t n_trees;

        uint32_t parity;                /* SLOT_PARITY or 0: flips every full scan */
        uint32_t scan_seq;              /* full scans done: smart scan's phase */
        uint64_t zero_hash;
        dedup_page_t unmerge_cursor;
        /* content read for confirmation; aligned for word-wise compares */
        uint8_t buf[DEDUP_PAGE_SIZE] __attribute__((aligned(64)));
        uint8_t buf2[DEDUP_PAGE_SIZE] __attribute__((aligned(64)));
        /* content of a page scanned by hash, read when needed */
        uint8_t page_buf[DEDUP_PAGE_SIZE] __attribute__((aligned(64)));

        DedupEngineStats st;            /* metadata_bytes and pages_tracked computed on read */
};

static inline unsigned slot_state(const PageSlot *s) {
        return s->w0 & SLOT_STATE_MASK;
}

static inline uint32_t slot_node(const PageSlot *s) {
        return s->w0 >> SLOT_NODE_SHIFT;
}

static inline uint32_t nibble(uint32_t w, unsigned shift) {
        return (w >> shift) & SLOT_NIBBLE;
}

/* dedup-engine.c */
uint64_t engine_hash(const DedupEngine *e, const void *data);
uint64_t engine_hash_avx2(const void *page);     /* dedup-hash-avx2.c; x86-64 with AVX2 only */
Region *engine_region(const DedupEngine *e, dedup_page_t page);
PageSlot *engine_slot(const DedupEngine *e, dedup_page_t page, Region **ret_region);
void engine_set_state(DedupEngine *e, Region *r, PageSlot *s, unsigned state);
Tree *engine_tree(DedupEngine *e, uint16_t group, int nid, bool create);
Vm *engine_page_vm(const DedupEngine *e, dedup_page_t page);

/* dedup-stable.c */
int stable_node_alloc(DedupEngine *e, uint32_t *ret);
uint32_t stable_key(const void *ctx, uint32_t idx);
int stable_search(DedupEngine *e, Tree *t, uint64_t hash, const void *data, bool migrate_ok,
                  uint32_t *ret_match, uint32_t *ret_target);
int stable_insert(DedupEngine *e, Tree *t, uint32_t idx, uint32_t match);
bool stable_has_room(const DedupEngine *e, const StableNode *n);
void stable_add_sharer(DedupEngine *e, uint32_t idx, dedup_page_t page, PageSlot *s);
void stable_remove_sharer(DedupEngine *e, uint32_t idx, dedup_page_t page);
void stable_put(DedupEngine *e, uint32_t idx);
void stable_prune_all(DedupEngine *e);
int stable_migrate_all(DedupEngine *e);

/* dedup-scan.c */
void scan_merge_finish(DedupEngine *e, dedup_page_t page, int r);
void scan_unmerge_finish(DedupEngine *e, dedup_page_t page, int r);
int scan_start_merge(DedupEngine *e, dedup_page_t page, uint32_t node);
