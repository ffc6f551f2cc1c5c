/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: canonical pages, the engine's canon_* ops
 *
 * A canonical page lives in the pool of its (merge group, NUMA node); its
 * location cookie is pool_loc_make(pool id, offset). Pages are written and
 * punched in runs, not one syscall each:
 *
 * - canon_alloc() places a new page right after the previous guest page's
 *   canonical page and stages its content; adjacent pages of one pool
 *   collect into one pwrite() (manager_canon_sync()). Scanning by hash, the
 *   engine has no content to give: the staged page then names its guest
 *   page, and the sync reads those in runs (one pread() per run of
 *   adjacent guest pages, where the engine read each page alone before),
 *   checks each still has the hash it was merged on, and marks the
 *   canonical page of one that changed stale: every merge onto it fails
 *   (manager_flush()) until the engine frees it. Nothing reads a pool
 *   page before the sync: manager_flush() (the only sender of REMAPs, which
 *   also compares every page with its canonical page under protection)
 *   and the canon_read/canon_nid/canon_free ops sync first. A write that
 *   fails then cannot be reported to the engine; the flush's compare fails
 *   every merge onto such a page instead, so it is never mapped.
 * - canon_alloc() fails (-ENOSPC: the engine skips that merge) once the
 *   pages allowed by dedupd's memory cgroup are used up, MEM_SPARE short of
 *   the limit; merges onto existing canonical pages and zero pages go on.
 * - canon_free() queues the page; a deferred event punches the queue, sorted,
 *   one fallocate() per run, after the engine's current batch (a VM's
 *   teardown frees tens of thousands at once). Queued pages stay allocated,
 *   so they cannot be handed out again before they are punched. Pages a
 *   VMM we stopped talking to may still map are held instead (Hold).
 */

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "manager.h"
#include "util.h"

Pool *manager_loc_pool(Manager *m, uint64_t loc, uint64_t *ret_off) {
        uint16_t id;

        pool_loc_split(loc, &id, ret_off);
        return id < m->n_pools ? m->pools[id] : NULL;
}

static int push(uint64_t **v, size_t *n, size_t *cap, uint64_t loc) {
        if (*n == *cap) {
                size_t c = *cap ? *cap * 2 : 256;
                uint64_t *d = realloc(*v, c * sizeof(uint64_t));
                if (!d)
                        return -ENOMEM;
                *v = d;
                *cap = c;
        }
        (*v)[(*n)++] = loc;
        return 0;
}

bool manager_canon_is_stale(const Manager *m, uint64_t loc) {
        for (size_t i = 0; i < m->n_stale; i++)
                if (m->stale[i] == loc)
                        return true;
        return false;
}

static void unstale(Manager *m, uint64_t loc) {
        for (size_t i = 0; i < m->n_stale; i++)
                if (m->stale[i] == loc) {
                        m->stale[i] = m->stale[--m->n_stale];
                        return;
                }
}

/* Read the staged pages that come from guest pages (stage_src), a run of
 * adjacent guest pages at a time, and check their hashes. */
static void stage_fill(Manager *m) {
        for (uint32_t i = 0, n; i < m->stage_n; i += n) {
                dedup_page_t src = m->stage_src[i];
                uint8_t *buf = m->stage_buf + (size_t) i * DEDUP_PAGE_SIZE;
                int k;

                n = 1;
                if (src == DEDUP_PAGE_NONE)
                        continue;
                while (i + n < m->stage_n && m->stage_src[i + n] == src + n)
                        n++;
                /* A run reaching past its region's end: the rest goes round again. */
                k = manager_read_pages(m, src, n, buf);
                n = k > 0 ? (uint32_t) k : 1;
                for (uint32_t j = 0; j < n; j++) {
                        bool zero;

                        if (k > 0 &&
                            dedup_engine_hash(m->engine, buf + (size_t) j * DEDUP_PAGE_SIZE, &zero) == m->stage_hash[i + j])
                                continue;
                        m->canon_stale++;
                        /* Without room to remember it, the page is still
                         * never mapped wrong: merges compare every byte. */
                        if (push(&m->stale, &m->n_stale, &m->cap_stale,
                                 pool_loc_make(m->stage_pool, m->stage_off + (uint64_t) (i + j) * DEDUP_PAGE_SIZE)) < 0)
                                log_oom();
                }
        }
}

/* Write the staged run. */
int manager_canon_sync(Manager *m) {
        Pool *p;
        int r;

        if (m->stage_n == 0)
                return 0;
        stage_fill(m);
        p = m->pools[m->stage_pool];
        r = pool_write_run(p, m->stage_off, m->stage_buf, m->stage_n);
        if (r < 0)
                log_warning_errno(r, "Cannot write %u canonical pages to %s+0x%llx: %m", m->stage_n, pool_name(p),
                                  (unsigned long long) m->stage_off);
        m->stage_n = 0;
        return r;
}

int manager_canon_read(void *ud, uint64_t loc, void *buf) {
        Manager *m = ud;
        uint64_t off;
        Pool *p = manager_loc_pool(m, loc, &off);

        (void) manager_canon_sync(m);
        return p ? pool_read(p, off, buf) : -ENOENT;
}

/* A pool of the previous run still claiming hands out no page. New pages
 * of its group and node wait for it to settle (a second or two, once the
 * VMMs have reported) rather than start another pool at every restart; a
 * VMM that never reports holds them up for CLAIM_GRACE_USEC at most, then
 * they go to a new pool. */
#define CLAIM_GRACE_USEC (60ull * 1000 * 1000)

static int pool_for(Manager *m, uint16_t group, int nid, uint16_t *ret_id) {
        bool claiming = false;
        int r;

        for (uint16_t i = 0; i < m->n_pools; i++) {
                if ((int) i == m->zero_pool || pool_group(m->pools[i]) != group || pool_nid(m->pools[i]) != nid)
                        continue;
                if (!pool_is_claiming(m->pools[i])) {
                        *ret_id = i;
                        return 0;
                }
                claiming = true;
        }
        if (claiming && now_usec(CLOCK_MONOTONIC) < m->started_us + CLAIM_GRACE_USEC)
                return -EBUSY;
        if (m->n_pools >= MANAGER_MAX_POOLS)
                return -ENOSPC;
        r = pool_new(group, nid, &m->pools[m->n_pools]);
        if (r < 0)
                return log_error_errno(r, "Cannot create pool for group %u node %d: %m", group, nid);
        log_info("Pool '%s' created", pool_name(m->pools[m->n_pools]));
        manager_store_pool(m, m->n_pools);
        *ret_id = (uint16_t) m->n_pools++;
        return 0;
}

/* Room kept below the limit for what else grows: engine tables, buffers,
 * messages. */
#define MEM_SPARE (32ull << 20)

void manager_check_memory(Manager *m) {
        uint64_t room;
        bool limited;

        if (!m->memcg || memcg_room(m->memcg, &room) < 0) {
                m->canon_room = UINT64_MAX;
                return;
        }
        m->canon_room = room == UINT64_MAX ? UINT64_MAX : room > MEM_SPARE ? (room - MEM_SPARE) / DEDUP_PAGE_SIZE : 0;
        /* Resume only with room for a few MiB of pages: no flapping. */
        if (m->memory_limited && m->canon_room < (MEM_SPARE / 4) / DEDUP_PAGE_SIZE)
                m->canon_room = 0;
        limited = m->canon_room == 0;
        if (limited != m->memory_limited)
                log_warning(limited ? "Not creating canonical pages: %s is within %llu MiB of its memory limit"
                                    : "Creating canonical pages again: %s is below its memory limit",
                            memcg_path(m->memcg), MEM_SPARE >> 20);
        m->memory_limited = limited;
}

int manager_canon_alloc(void *ud, const struct dedup_canon_req *req, uint64_t *ret_loc) {
        Manager *m = ud;
        uint64_t hint = POOL_NO_HINT, prev, off;
        uint16_t id = 0, prev_id;
        int r;

        if (m->canon_room == 0)
                return -ENOSPC;
        r = pool_for(m, req->group, req->nid, &id);
        if (r < 0)
                return r;
        /* Place it right after the canonical page of the previous guest
         * page, so a run of duplicates maps as one run of the pool. */
        if (req->page > 0 && dedup_engine_page_loc(m->engine, req->page - 1, &prev) >= 0 && prev != DEDUP_LOC_ZERO) {
                pool_loc_split(prev, &prev_id, &off);
                if (prev_id == id)
                        hint = off + DEDUP_PAGE_SIZE;
        }
        r = pool_alloc(m->pools[id], hint, &off);
        if (r < 0)
                return r;
        if (m->canon_room != UINT64_MAX)
                m->canon_room--;
        if (m->stage_n && (m->stage_pool != id || m->stage_off + (uint64_t) m->stage_n * DEDUP_PAGE_SIZE != off ||
                           m->stage_n == MANAGER_STAGE_PAGES))
                (void) manager_canon_sync(m);
        if (m->stage_n == 0) {
                m->stage_pool = id;
                m->stage_off = off;
        }
        if (req->data) {
                memcpy(m->stage_buf + (size_t) m->stage_n * DEDUP_PAGE_SIZE, req->data, DEDUP_PAGE_SIZE);
                m->stage_src[m->stage_n] = DEDUP_PAGE_NONE;
        } else {
                m->stage_src[m->stage_n] = req->page;
                m->stage_hash[m->stage_n] = req->hash;
        }
        m->stage_n++;
        *ret_loc = pool_loc_make(id, off);
        return 0;
}

bool manager_loc_held(Manager *m, uint64_t loc) {
        for (size_t i = 0; i < m->n_holds; i++)
                if (bsearch(&loc, m->holds[i].locs, m->holds[i].n_locs, sizeof(uint64_t), cmp_u64))
                        return true;
        return false;
}

/* Punch the queue: sorted, locations of one pool are offsets in order, so
 * adjacent pages form runs. */
void manager_canon_punch(Manager *m) {
        qsort(m->punch, m->n_punch, sizeof(uint64_t), cmp_u64);
        for (size_t i = 0, n; i < m->n_punch; i += n) {
                uint64_t off;
                Pool *p = manager_loc_pool(m, m->punch[i], &off);
                int r;

                for (n = 1; i + n < m->n_punch && n < UINT32_MAX && m->punch[i + n] == m->punch[i] + n * DEDUP_PAGE_SIZE;
                     n++)
                        ;
                r = pool_free_run(p, off, (uint32_t) n);
                if (r < 0)
                        log_warning_errno(r, "Cannot free %zu pool pages at %s+0x%llx: %m", n, pool_name(p),
                                          (unsigned long long) off);
        }
        m->n_punch = 0;
}

static int punch_queued(sd_event_source *s, void *userdata) {
        manager_canon_punch(userdata);
        return 0;
}

void manager_canon_free(void *ud, uint64_t loc) {
        Manager *m = ud;
        uint64_t off;
        Pool *p = manager_loc_pool(m, loc, &off);
        int r;

        if (!p)
                return;
        (void) manager_canon_sync(m);
        unstale(m, loc);
        if (manager_loc_held(m, loc)) {
                /* Leak the page rather than punch what a VMM maps. */
                if (push(&m->deferred_frees, &m->n_deferred, &m->cap_deferred, loc) < 0)
                        log_oom();
                return;
        }
        r = push(&m->punch, &m->n_punch, &m->cap_punch, loc);
        if (r < 0) {
                r = pool_free_page(p, off);
                if (r < 0)
                        log_warning_errno(r, "Cannot free pool page %s+0x%llx: %m", pool_name(p), (unsigned long long) off);
                return;
        }
        r = m->punch_source ? 0 : sd_event_add_defer(m->event, &m->punch_source, punch_queued, m);
        if (r >= 0)
                r = sd_event_source_set_enabled(m->punch_source, SD_EVENT_ONESHOT);
        if (r < 0)
                manager_canon_punch(m);
}

int manager_canon_nid(void *ud, uint64_t loc) {
        Manager *m = ud;
        uint64_t off;
        Pool *p = manager_loc_pool(m, loc, &off);

        if (!p)
                return -ENOENT;
        (void) manager_canon_sync(m);
        if (numa_topology_is_injected(m->topology))
                return numa_topology_page_nid(m->topology, pool_name(p), off / DEDUP_PAGE_SIZE);
        return pool_page_nid(p, off);
}
