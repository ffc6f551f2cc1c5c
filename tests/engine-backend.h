/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * An in-memory backend for the engine, for tests and the engine-only demo.
 * Page content is generated from a 64-bit content id (cid) so a million
 * pages cost 8 MB: the first 8 bytes hold the cid, the rest is a splitmix
 * stream seeded by it; cid 0 is the zero page. The backend plays guest and
 * daemon: it knows what every page shows (own content, a canonical page or
 * zero memory) and checks that merges never change what a page shows.
 */

#include <stdbool.h>
#include <stdint.h>

#include "dedup-engine.h"

enum { BE_OWN, BE_CANON, BE_ZERO };

typedef struct Backend {
        DedupEngine *e;
        uint32_t npages;                /* page ids 0..npages-1 are addressable */
        uint64_t *cid;                  /* own content of each page */
        uint8_t *map;                   /* BE_OWN / BE_CANON / BE_ZERO */
        uint64_t *mapped_loc;           /* canon loc when BE_CANON */
        uint64_t *canon_cid;            /* per loc; UINT64_MAX = free */
        int8_t *canon_nid;
        uint32_t ncanon, cap_canon;
        uint32_t free_hint;             /* no free location below this one */
        uint64_t live_canon;
        bool async;                     /* merges/unmerges return DEDUP_PENDING */
        bool force_hash;                /* every page hashes to 42 */
        /* backend_scan() hashes all its pages first, then feeds the hashes
         * (dedup_engine_scan_hashed()), as dedupd's scan threads do; with
         * between() called in the gap, where guest writes make them stale. */
        bool hashed;
        void (*between)(void *userdata);
        void *between_userdata;
        uint64_t now;
        uint64_t ops_merge, ops_unmerge, ops_read;  /* ops_read: page and canonical reads */
        uint64_t bad_merges;            /* merges that would have changed content */
} Backend;

void content_fill(uint64_t cid, void *buf);
int backend_init(Backend *b, uint32_t npages);
void backend_done(Backend *b);
/* The daemon restarts: a new engine, with no VM, over the same guest
 * mappings and canonical pages (which the VMMs and the fd store kept). */
int backend_restart(Backend *b);
/* What the page shows now (the guest's view). */
uint64_t backend_visible(const Backend *b, dedup_page_t page);
/* Guest write: the page shows cid from now on. */
void backend_write(Backend *b, dedup_page_t page, uint64_t cid);
/* Scan pages [first, first+n) on node nid (hashed first if b->hashed). */
int backend_scan(Backend *b, dedup_page_t first, uint32_t n, int nid);
/* Async mode: finish the page's in-flight merge or unmerge now. */
void backend_complete(Backend *b, dedup_page_t page);
/* Check the backend against the engine: what every page shows is what the
 * model expects, and every merged page maps the canonical page the engine
 * thinks. Returns NULL or a reason. */
const char *backend_check(const Backend *b, const uint64_t *expected);
