/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "engine-backend.h"

static uint64_t splitmix(uint64_t *x) {
        uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
        return z ^ (z >> 31);
}

void content_fill(uint64_t cid, void *buf) {
        uint64_t *w = buf, x = cid;

        if (cid == 0) {
                memset(buf, 0, DEDUP_PAGE_SIZE);
                return;
        }
        w[0] = cid;
        for (unsigned i = 1; i < DEDUP_PAGE_SIZE / 8; i++)
                w[i] = splitmix(&x);
}

/* Content of a canonical page made from a page that changed since it was
 * hashed: no page holds it. */
#define BE_STALE_CID (UINT64_MAX - 1)

static uint64_t cid_of(const void *buf) {
        uint64_t c;
        static const uint8_t zero[DEDUP_PAGE_SIZE];

        if (memcmp(buf, zero, DEDUP_PAGE_SIZE) == 0)
                return 0;
        memcpy(&c, buf, 8);
        return c;
}

uint64_t backend_visible(const Backend *b, dedup_page_t page) {
        switch (b->map[page]) {
        case BE_CANON: return b->canon_cid[b->mapped_loc[page]];
        case BE_ZERO: return 0;
        default: return b->cid[page];
        }
}

static int be_page_read(void *ud, dedup_page_t page, void *buf) {
        Backend *b = ud;

        b->ops_read++;
        content_fill(backend_visible(b, page), buf);
        return 0;
}

static int be_canon_read(void *ud, uint64_t loc, void *buf) {
        Backend *b = ud;

        if (loc >= b->ncanon || b->canon_cid[loc] == UINT64_MAX)
                return -ENOENT;
        b->ops_read++;
        content_fill(b->canon_cid[loc], buf);
        return 0;
}

static int be_canon_alloc(void *ud, const struct dedup_canon_req *req, uint64_t *ret_loc) {
        Backend *b = ud;
        uint32_t i;

        /* Reuse a freed location when the cursor finds one, else append. */
        for (i = b->free_hint; i < b->ncanon; i++)
                if (b->canon_cid[i] == UINT64_MAX)
                        break;
        b->free_hint = i + 1;
        if (i == b->ncanon) {
                if (b->ncanon == b->cap_canon) {
                        uint32_t cap = b->cap_canon ? b->cap_canon * 2 : 1024;
                        uint64_t *c = realloc(b->canon_cid, cap * sizeof(uint64_t));
                        int8_t *n;
                        if (!c)
                                return -ENOMEM;
                        b->canon_cid = c;
                        n = realloc(b->canon_nid, cap);
                        if (!n)
                                return -ENOMEM;
                        b->canon_nid = n;
                        b->cap_canon = cap;
                }
                b->ncanon++;
        }
        if (req->data)
                b->canon_cid[i] = cid_of(req->data);
        else {
                /* Read the page now, as dedupd does before anything maps
                 * the canonical page; if it changed since it was hashed,
                 * hold content no page has, so that every merge fails. */
                uint8_t buf[DEDUP_PAGE_SIZE];
                bool zero;

                b->ops_read++;
                content_fill(backend_visible(b, req->page), buf);
                b->canon_cid[i] = dedup_engine_hash(b->e, buf, &zero) == req->hash ? cid_of(buf) : BE_STALE_CID;
        }
        b->canon_nid[i] = (int8_t) (req->nid < 0 ? 0 : req->nid);
        b->live_canon++;
        *ret_loc = i;
        return 0;
}

static void be_canon_free(void *ud, uint64_t loc) {
        Backend *b = ud;

        b->canon_cid[loc] = UINT64_MAX;
        b->live_canon--;
        if (loc < b->free_hint)
                b->free_hint = (uint32_t) loc;
}

static int be_canon_nid(void *ud, uint64_t loc) {
        Backend *b = ud;

        return b->canon_nid[loc];
}

/* Carry out a merge now: the "protected" page must still show the
 * canonical content, as the daemon checks after write-protecting. */
static int be_merge_now(Backend *b, dedup_page_t page, uint64_t loc) {
        uint64_t want = loc == DEDUP_LOC_ZERO ? 0 : b->canon_cid[loc];

        if (backend_visible(b, page) != want)
                return -EAGAIN;
        if (loc == DEDUP_LOC_ZERO)
                b->map[page] = BE_ZERO;
        else {
                b->map[page] = BE_CANON;
                b->mapped_loc[page] = loc;
        }
        return 0;
}

static int be_merge(void *ud, dedup_page_t page, uint64_t loc) {
        Backend *b = ud;

        b->ops_merge++;
        if (b->async) {
                b->mapped_loc[page] = loc;      /* remembered for completion */
                return DEDUP_PENDING;
        }
        return be_merge_now(b, page, loc);
}

static int be_merge_zero(void *ud, dedup_page_t page) {
        return be_merge(ud, page, DEDUP_LOC_ZERO);
}

static int be_unmerge(void *ud, dedup_page_t page, uint64_t loc) {
        Backend *b = ud;

        b->ops_unmerge++;
        if (b->async)
                return DEDUP_PENDING;
        b->cid[page] = backend_visible(b, page);
        b->map[page] = BE_OWN;
        return 0;
}

static uint64_t be_now(void *ud) {
        return ((Backend *) ud)->now;
}

static uint64_t be_hash(void *ud, const void *data) {
        Backend *b = ud;
        uint64_t c = cid_of(data);

        if (b->force_hash)
                return 42;
        /* A real hash of the cid: content is a function of it. */
        return splitmix(&c);
}

static const DedupEngineOps backend_ops = {
        .page_read = be_page_read,
        .canon_read = be_canon_read,
        .canon_alloc = be_canon_alloc,
        .canon_free = be_canon_free,
        .canon_nid = be_canon_nid,
        .merge = be_merge,
        .merge_zero = be_merge_zero,
        .unmerge = be_unmerge,
        .now_ms = be_now,
        .hash = be_hash,
};

int backend_init(Backend *b, uint32_t npages) {
        *b = (Backend) { .npages = npages };
        b->cid = calloc(npages, sizeof(uint64_t));
        b->map = calloc(npages, 1);
        b->mapped_loc = calloc(npages, sizeof(uint64_t));
        if (!b->cid || !b->map || !b->mapped_loc)
                return -ENOMEM;
        return dedup_engine_new(&backend_ops, b, &b->e);
}

int backend_restart(Backend *b) {
        dedup_engine_free(b->e);
        b->e = NULL;
        return dedup_engine_new(&backend_ops, b, &b->e);
}

void backend_done(Backend *b) {
        dedup_engine_free(b->e);
        free(b->cid);
        free(b->map);
        free(b->mapped_loc);
        free(b->canon_cid);
        free(b->canon_nid);
        *b = (Backend) {};
}

void backend_write(Backend *b, dedup_page_t page, uint64_t cid) {
        bool was_merged = b->map[page] != BE_OWN;

        b->map[page] = BE_OWN;
        b->cid[page] = cid;
        /* The agent reports every write that reaches a protected page; a
         * page merged or being merged is always protected. */
        if (was_merged || dedup_engine_page_state(b->e, page) == DEDUP_PAGE_MERGING ||
            dedup_engine_page_state(b->e, page) == DEDUP_PAGE_UNMERGING)
                dedup_engine_page_written(b->e, page);
}

static int scan_hashed(Backend *b, dedup_page_t first, uint32_t n, int nid) {
        uint8_t buf[DEDUP_PAGE_SIZE] __attribute__((aligned(8)));
        uint64_t *hash = calloc(n, sizeof(uint64_t));
        bool *zero = calloc(n, sizeof(bool));
        int r = 0;

        if (!hash || !zero) {
                free(hash);
                free(zero);
                return -ENOMEM;
        }
        for (uint32_t i = 0; i < n; i++) {
                content_fill(backend_visible(b, first + i), buf);
                hash[i] = dedup_engine_hash(b->e, buf, &zero[i]);
        }
        if (b->between)
                b->between(b->between_userdata);
        for (uint32_t i = 0; i < n && r >= 0; i++) {
                if (i + 1 < n)
                        dedup_engine_prefetch(b->e, first + i + 1, hash[i + 1], nid);
                if (!dedup_engine_should_skip(b->e, first + i))
                        r = dedup_engine_scan_hashed(b->e, first + i, hash[i], zero[i], nid);
        }
        free(hash);
        free(zero);
        return r;
}

int backend_scan(Backend *b, dedup_page_t first, uint32_t n, int nid) {
        uint8_t buf[DEDUP_PAGE_SIZE] __attribute__((aligned(8)));

        if (b->hashed)
                return scan_hashed(b, first, n, nid);
        for (dedup_page_t p = first; p < first + n; p++) {
                int r;

                if (dedup_engine_should_skip(b->e, p))
                        continue;
                content_fill(backend_visible(b, p), buf);
                r = dedup_engine_scan_page(b->e, p, buf, nid);
                if (r < 0)
                        return r;
        }
        return 0;
}

void backend_complete(Backend *b, dedup_page_t page) {
        switch (dedup_engine_page_state(b->e, page)) {
        case DEDUP_PAGE_MERGING:
                dedup_engine_merge_done(b->e, page, be_merge_now(b, page, b->mapped_loc[page]));
                break;
        case DEDUP_PAGE_UNMERGING:
                b->cid[page] = backend_visible(b, page);
                b->map[page] = BE_OWN;
                dedup_engine_unmerge_done(b->e, page, 0);
                break;
        default:
                break;
        }
}

const char *backend_check(const Backend *b, const uint64_t *expected) {
        for (dedup_page_t p = 0; p < b->npages; p++) {
                enum dedup_page_state st = dedup_engine_page_state(b->e, p);
                uint64_t loc;

                if (expected && backend_visible(b, p) != expected[p])
                        return "a page shows wrong content";
                if (b->map[p] == BE_OWN && (st == DEDUP_PAGE_MERGED || st == DEDUP_PAGE_ZERO))
                        return "engine thinks a page is merged that has its own copy";
                if (b->map[p] == BE_CANON) {
                        if (st != DEDUP_PAGE_MERGED && st != DEDUP_PAGE_UNMERGING)
                                return "a page maps a canonical page the engine does not know of";
                        if (dedup_engine_page_loc(b->e, p, &loc) < 0 || loc != b->mapped_loc[p])
                                return "a page maps another canonical page than the engine's";
                        if (b->canon_cid[loc] == UINT64_MAX)
                                return "a page maps a freed canonical page";
                }
                if (b->map[p] == BE_ZERO && st != DEDUP_PAGE_ZERO && st != DEDUP_PAGE_UNMERGING)
                        return "a zero-mapped page is not counted as zero";
        }
        return NULL;
}
