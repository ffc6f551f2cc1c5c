/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The dedup engine: decides what to merge, after kernel KSM (mm/ksm.c).
 *
 * The engine does no I/O and keeps no globals. The caller registers VMs and
 * their regions (each region gets a contiguous range of engine-wide page
 * ids), feeds the content of scanned pages with dedup_engine_scan_page() and
 * carries out what the engine asks through a small ops table: read a page,
 * allocate or free a canonical page, merge a page onto a canonical page or
 * onto zero memory, unmerge it.
 *
 * Merges and unmerges may complete later (the daemon talks to a VMM agent):
 * an op returns DEDUP_PENDING and the caller reports the outcome with
 * dedup_engine_merge_done() / dedup_engine_unmerge_done(). While a page is
 * pending the engine never issues another op for it.
 *
 * Guest writes to a merged page are reported with dedup_engine_page_written().
 * An op that returns 0 or -errno must not call back into the engine.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define DEDUP_PAGE_SIZE 4096u
#define DEDUP_PAGE_NONE UINT32_MAX
#define DEDUP_MAX_NODES 64
#define DEDUP_MAX_GROUPS 65535
/* MaxPageSharing bounds: a new canonical page has two sharers; the upper
 * bound keeps a stable node's rmap walk short (reference/001). */
#define DEDUP_MAX_PAGE_SHARING_MIN 2u
#define DEDUP_MAX_PAGE_SHARING_MAX (1u << 20)

/* An op's return value meaning "started; the caller reports the outcome". */
#define DEDUP_PENDING 1

typedef uint32_t dedup_page_t;

typedef struct DedupEngine DedupEngine;

struct dedup_canon_req {
        uint16_t group;
        int nid;                /* node the canonical page must live on */
        dedup_page_t page;      /* the page being merged: a placement hint for runs */
        /* DEDUP_PAGE_SIZE bytes of content; or NULL when scanning by hash:
         * then the content is page's, as it was when hashed to @hash, and
         * the backend reads it (with those of other new canonical pages, in
         * runs) before anything reads or maps the canonical page. If page
         * no longer hashes to @hash then, every merge onto the canonical
         * page must fail: the engine frees it once they have. */
        const void *data;
        uint64_t hash;
};

typedef struct DedupEngineOps {
        /* Read the current content of a (not merged) page. 0 or -errno. */
        int (*page_read)(void *userdata, dedup_page_t page, void *buf);
        /* Read the content of a canonical page. 0 or -errno. */
        int (*canon_read)(void *userdata, uint64_t loc, void *buf);
        /* Allocate a canonical page holding req->data; its location cookie
         * is opaque to the engine. 0 or -errno. */
        int (*canon_alloc)(void *userdata, const struct dedup_canon_req *req, uint64_t *ret_loc);
        /* The last sharer left: release the canonical page. */
        void (*canon_free)(void *userdata, uint64_t loc);
        /* NUMA node a canonical page lives on now, or -errno if unknown.
         * May be NULL (no migration checks). */
        int (*canon_nid)(void *userdata, uint64_t loc);
        /* Merge page onto canonical page loc: 0 merged, DEDUP_PENDING, or
         * -errno (page unchanged, e.g. content differed after protection). */
        int (*merge)(void *userdata, dedup_page_t page, uint64_t loc);
        /* Same for a zero page (maps zero memory, frees the page). */
        int (*merge_zero)(void *userdata, dedup_page_t page);
        /* Give page its own copy again (loc == DEDUP_LOC_ZERO for a zero
         * page): 0 done, DEDUP_PENDING, or -errno (still merged). */
        int (*unmerge)(void *userdata, dedup_page_t page, uint64_t loc);
        /* Monotonic milliseconds, for chain pruning. */
        uint64_t (*now_ms)(void *userdata);
        /* Content hash; NULL means xxh3-64 (tests force collisions here). */
        uint64_t (*hash)(void *userdata, const void *data);
} DedupEngineOps;

#define DEDUP_LOC_ZERO UINT64_MAX

typedef struct DedupEngineStats {
        uint64_t pages_shared;          /* canonical pages in use */
        uint64_t pages_sharing;         /* further sharers of them: pages saved */
        uint64_t pages_unshared;        /* unique pages checked in the unstable tree */
        uint64_t pages_volatile;        /* pages changing too fast for a tree */
        uint64_t pages_scanned;         /* pages looked at since start or reset */
        uint64_t full_scans;
        uint64_t stable_node_chains;
        uint64_t stable_node_dups;
        uint64_t zero_pages;            /* pages merged onto zero memory */
        uint64_t merge_aborts;          /* merges refused after protection */
        uint64_t unmerges;              /* merged pages that got their own copy */
        uint64_t pages_pending;         /* merges and unmerges in flight */
        uint64_t metadata_bytes;        /* engine memory, all included */
        uint64_t pages_tracked;         /* pages of all registered regions */
        uint64_t pages_changed;         /* scans that found a page new or changed since its
                                         * last scan, or started a merge: a full scan
                                         * adding none found nothing to do */
        uint64_t pages_written;         /* dedup_engine_page_written() calls */
} DedupEngineStats;

typedef struct DedupVmStats {
        uint64_t pages;                 /* pages in the VM's regions */
        uint64_t merging_pages;         /* like ksm_merging_pages */
        uint64_t zero_pages;            /* like ksm_zero_pages */
        uint64_t pending;               /* merges and unmerges in flight */
        uint64_t merge_aborts;
        uint64_t unmerges;
        int64_t profit_bytes;           /* like ksm_process_profit */
} DedupVmStats;

/* What a page is, for callers that need it (status, tests). */
enum dedup_page_state {
        DEDUP_PAGE_NEW,                 /* never scanned, or written since */
        DEDUP_PAGE_VOLATILE,            /* checksum changed at the last scan */
        DEDUP_PAGE_UNSTABLE,            /* in the unstable tree */
        DEDUP_PAGE_MERGING,             /* merge in flight */
        DEDUP_PAGE_MERGED,              /* sharer of a canonical page */
        DEDUP_PAGE_ZERO,                /* merged onto zero memory */
        DEDUP_PAGE_UNMERGING,           /* unmerge in flight */
};

int dedup_engine_new(const DedupEngineOps *ops, void *userdata, DedupEngine **ret);
DedupEngine *dedup_engine_free(DedupEngine *e);

/* Tunables. Setters validate and return -EINVAL (out of range) or -EBUSY
 * (KSM's rules: MaxPageSharing and MergeAcrossNodes change only while no
 * page is shared) and change nothing on error. */
int dedup_engine_set_max_page_sharing(DedupEngine *e, unsigned n);
unsigned dedup_engine_get_max_page_sharing(const DedupEngine *e);
int dedup_engine_set_merge_across_nodes(DedupEngine *e, bool b);
bool dedup_engine_get_merge_across_nodes(const DedupEngine *e);
void dedup_engine_set_use_zero_pages(DedupEngine *e, bool b);
bool dedup_engine_get_use_zero_pages(const DedupEngine *e);
void dedup_engine_set_smart_scan(DedupEngine *e, bool b);
bool dedup_engine_get_smart_scan(const DedupEngine *e);
void dedup_engine_set_chain_prune_ms(DedupEngine *e, unsigned ms);
unsigned dedup_engine_get_chain_prune_ms(const DedupEngine *e);
/* The merge op compares the page with the canonical page itself, under
 * protection (dedupd does: DESIGN.md §2 step 2), and fails on a
 * difference. Then lookups trust equal 64-bit hashes instead of reading
 * the canonical page or the unstable twin: a collision or a twin that
 * changed costs a failed merge, never wrong content. Off by default. */
void dedup_engine_set_merge_verifies(DedupEngine *e, bool b);

/* VMs and regions. A VM's group decides what it may share with; groups
 * never share pages. Returns ids >= 0 or -errno. */
int dedup_engine_add_vm(DedupEngine *e, uint16_t group, uint32_t *ret_vm);
int dedup_engine_add_region(DedupEngine *e, uint32_t vm, uint32_t npages, dedup_page_t *ret_first);
/* Forget a VM whose VMM is gone: its sharers leave their canonical pages
 * without any unmerge op. Bounded work per call: returns 1 while work
 * remains, 0 once the VM and its page ids are released, -EBUSY while a
 * merge or unmerge of the VM is in flight (complete those first). */
int dedup_engine_remove_vm(DedupEngine *e, uint32_t vm, unsigned budget);
/* Change a VM's group: -EBUSY while any of its pages is merged. */
int dedup_engine_set_vm_group(DedupEngine *e, uint32_t vm, uint16_t group);
int dedup_engine_vm_stats(const DedupEngine *e, uint32_t vm, DedupVmStats *ret);

/* Scanning. nid is the node the page lives on (ignored when merging
 * across nodes). Returns 0 or -errno (only -ENOMEM and op errors that
 * are not about content). */
int dedup_engine_scan_page(DedupEngine *e, dedup_page_t page, const void *data, int nid);
/* The page hash the engine uses unless DedupEngineOps.hash is set: XXH3-64
 * of the page, built for AVX2 when the CPU has it. */
uint64_t dedup_page_hash(const void *data);
/* The page's content hash as the engine computes it, and whether the page
 * is all zeros. Uses only what dedup_engine_new() was given: callable from
 * any thread, concurrently with other engine calls (if ops->hash is). */
uint64_t dedup_engine_hash(const DedupEngine *e, const void *data, bool *ret_zero);
/* dedup_engine_scan_page() for a page the caller hashed with
 * dedup_engine_hash() (on a scan thread, say) and no longer holds. A new
 * canonical page's content is the backend's to read (struct
 * dedup_canon_req). Where the engine needs the content itself (to compare,
 * when merges do not verify) it reads it with the page_read op; a page
 * whose content no longer has that hash counts as changed and is not
 * merged. */
int dedup_engine_scan_hashed(DedupEngine *e, dedup_page_t page, uint64_t hash, bool zero, int nid);
/* Optional: start loading what scanning a page of this hash will look up
 * (a hash table slot is a cache miss); call it some pages ahead. */
void dedup_engine_prefetch(const DedupEngine *e, dedup_page_t page, uint64_t hash, int nid);
/* The caller went once over all pages: rebuild the unstable tree, prune
 * stale dups, move migrated canonical pages to their node's tree. */
int dedup_engine_full_scan_done(DedupEngine *e);
/* True if the page's smart-scan backoff says not to read it this round;
 * counts the skip. Callers use it to avoid the read itself. */
bool dedup_engine_should_skip(DedupEngine *e, dedup_page_t page);

/* Outcomes of ops that returned DEDUP_PENDING: r is 0 or -errno. */
void dedup_engine_merge_done(DedupEngine *e, dedup_page_t page, int r);
void dedup_engine_unmerge_done(DedupEngine *e, dedup_page_t page, int r);
/* The guest wrote the page: a merged page got its own copy back (the
 * agent did the copy), any other page must be re-checked. */
void dedup_engine_page_written(DedupEngine *e, dedup_page_t page);
/* page, not merged and not in flight, is already zero memory in the VMM (a
 * zero overlay its agent kept across a daemon restart): count it as a zero
 * page. 0, -ENOENT, or -EBUSY if the page is merged or in flight. */
int dedup_engine_adopt_zero(DedupEngine *e, dedup_page_t page);
/* The same for a page the VMM maps from canonical page loc of the previous
 * daemon (a pool kept across the restart), whose content is data (read
 * from loc) and which lives on node nid. With create, loc is new to the
 * engine (the first sharer reported): it joins the stable tree of the
 * page's group (as a dup if the tree has that content at another loc);
 * without, loc must be a canonical page the engine has, which the page
 * then shares. 0; -EBUSY (page merged or in flight), -ENOSPC (loc already
 * has MaxPageSharing sharers), -ESTALE (!create and loc unknown: say, freed
 * and not released yet), -ENOENT, -EINVAL, -ENOMEM. The caller checks that
 * loc may be shared by the page's group. */
int dedup_engine_adopt_merged(DedupEngine *e, dedup_page_t page, uint64_t loc, const void *data, int nid,
                              bool create);

/* Unmerge every page (Run=2) or every page of one VM: issues at most
 * budget unmerge ops or page visits per call. Returns 1 while pages
 * remain merged or unmerging, 0 when none are. */
int dedup_engine_unmerge_all(DedupEngine *e, unsigned budget);
int dedup_engine_unmerge_vm(DedupEngine *e, uint32_t vm, unsigned budget);

void dedup_engine_stats(const DedupEngine *e, DedupEngineStats *ret);
/* Zero the event counters (scanned, full scans, aborts, unmerges, changed, written); state
 * counters (shared, sharing, ...) describe the present and stay. */
void dedup_engine_reset_stats(DedupEngine *e);

enum dedup_page_state dedup_engine_page_state(const DedupEngine *e, dedup_page_t page);
/* Canonical location of a merged page (for placement of runs), or -ENOENT. */
int dedup_engine_page_loc(const DedupEngine *e, dedup_page_t page, uint64_t *ret_loc);

/* Consistency check of every structure against every counter; returns 0 or
 * -EUCLEAN with a description in ret_why (static string). For tests. */
int dedup_engine_verify(const DedupEngine *e, const char **ret_why);
