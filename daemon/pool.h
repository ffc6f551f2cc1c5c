/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Canonical-page pools: one per (merge group, NUMA node).
 *
 * A pool is a memfd named "dedupd-pool-g<group>-n<nid>" holding canonical
 * pages. VMMs map its pages MAP_PRIVATE from a read-only fd (pool_ro_fd());
 * the daemon writes and reads them through one MAP_SHARED mapping of the
 * whole capacity (pool_page()). See pool.c for the invariants.
 *
 * Offsets are byte offsets into the memfd, always multiples of
 * POOL_PAGE_SIZE. A location cookie (the engine's opaque uint64 "loc")
 * packs a pool id chosen by the caller and an offset: pool_loc_make().
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define POOL_PAGE_SIZE 4096u

/* Offset meaning "no placement hint" for pool_alloc(). */
#define POOL_NO_HINT UINT64_MAX

/* Pool ids are 16 bits; 0xffff is reserved so that no cookie can equal
 * DEDUP_LOC_ZERO (UINT64_MAX). */
#define POOL_ID_MAX 0xfffeu
#define POOL_LOC_OFFSET_BITS 48
#define POOL_LOC_OFFSET_MASK ((UINT64_C(1) << POOL_LOC_OFFSET_BITS) - 1)

/* Default VA reservation for the daemon's view of a pool (no memory is
 * committed by it) and default growth step of the memfd. */
#define POOL_DEFAULT_RESERVE (UINT64_C(64) << 30)
#define POOL_DEFAULT_CHUNK (UINT64_C(64) << 20)

typedef struct Pool Pool;

typedef struct PoolConfig {
        uint64_t reserve_bytes; /* max capacity (VA reserved up front, halved until the
                                 * mmap succeeds); 0 = default */
        uint64_t chunk_bytes;   /* growth step; 0 = default */
} PoolConfig;

typedef struct PoolStats {
        uint64_t pages_allocated;       /* pages handed out by pool_alloc()/pool_claim() */
        uint64_t capacity_pages;        /* current memfd size in pages */
        uint64_t reserve_pages;         /* max capacity in pages */
        uint64_t bytes_used;            /* memory really backing the memfd (st_blocks * 512) */
        uint64_t allocs;                /* pool_alloc() calls that succeeded */
        uint64_t allocs_hinted;         /* ... of which got the hinted offset */
        uint64_t frees;                 /* pool_free() calls */
} PoolStats;

/* New pool for (group, nid); nid < 0 means "no node". The memfd is created
 * with MFD_CLOEXEC|MFD_ALLOW_SEALING, fchmod 0400, sealed against shrinking.
 * When nid >= 0, libnuma reports NUMA and the node exists, the daemon's
 * mapping is mbind()ed MPOL_PREFERRED to it before any page is written.
 * -ENOMEM, -EMFILE, ... */
int pool_new(uint16_t group, int nid, Pool **ret);
int pool_new_full(uint16_t group, int nid, const PoolConfig *config, Pool **ret);

/* Adopt a pool memfd kept across a daemon restart (systemd fd store).
 * Group and node are parsed from the memfd's name; -EINVAL if it is not a
 * pool. Takes ownership of fd only on success. All pages start free and the
 * pool starts *claiming*: agents may still map any page of it, so it
 * allocates nothing (-EBUSY) and freeing punches nothing, until pool_trim().
 * The caller pool_claim()s the pages agents report, then trims once no
 * process maps the pool without having reported. */
int pool_adopt(int fd, const PoolConfig *config, Pool **ret);
bool pool_is_claiming(const Pool *pool);
/* The memfd's inode number: agents name a pool by it after a restart. */
ino_t pool_ino(const Pool *pool);

Pool *pool_free(Pool *pool);    /* NULL-safe; returns NULL */
static inline void pool_freep(Pool **p) {
        if (*p)
                pool_free(*p);
}

uint16_t pool_group(const Pool *pool);
int pool_nid(const Pool *pool);
/* True if the pool's memory policy binds it to its node (mbind succeeded). */
bool pool_is_bound(const Pool *pool);
/* The memfd name without "memfd:", e.g. "dedupd-pool-g3-n1"; also the key
 * of the pool in an injected NUMA topology (numa-topology.h). */
const char *pool_name(const Pool *pool);
/* The read-write memfd: for the fd store only. Owned by the pool. */
int pool_fd(const Pool *pool);
/* A read-only fd of the same memfd (opened O_RDONLY|O_CLOEXEC through
 * /proc/self/fd/N at creation), the only fd ever given to a VMM. Owned by
 * the pool: dup or send it, never close it. */
int pool_ro_fd(const Pool *pool);

/* Allocate one page. If hint is a free page offset (below the capacity, or
 * the first page past it, which grows the memfd) that page is returned, so a
 * run of duplicates gets adjacent pool pages; else the lowest free page.
 * The page content is undefined until pool_write(). -ENOSPC when the
 * reservation is full, -ENOMEM/-EFBIG/... when growing fails. */
int pool_alloc(Pool *pool, uint64_t hint, uint64_t *ret_offset);
/* Allocate npages adjacent pages (first fit; grows when needed). */
int pool_alloc_run(Pool *pool, uint32_t npages, uint64_t *ret_offset);
/* Mark a given page allocated (restart: an agent reports it maps it).
 * -EBUSY if already allocated, -ERANGE past the reservation (past the
 * memfd's size while claiming). */
int pool_claim(Pool *pool, uint64_t offset);
/* Copy POOL_PAGE_SIZE bytes into an allocated page (pwrite). -EINVAL if
 * the page is not allocated. Canonical pages are write-once: a VMM's MAP_PRIVATE view
 * shows later writes too, so write only before handing the page out. */
int pool_write(Pool *pool, uint64_t offset, const void *data);
/* The same for npages adjacent allocated pages, with one pwrite(). */
int pool_write_run(Pool *pool, uint64_t offset, const void *data, uint32_t npages);
/* Copy an allocated page out (pread). -EINVAL if not allocated. The cheap
 * way to read a canonical page: it leaves no pte in the daemon. */
int pool_read(const Pool *pool, uint64_t offset, void *buf);
/* Read-only view of an allocated page through the daemon's mapping, valid
 * until pool_free() of the pool; NULL if offset is not allocated. Reading it
 * faults the page into the daemon's page tables, which makes a later
 * pool_free_page() of it several times dearer: prefer pool_read(). */
const void *pool_page(const Pool *pool, uint64_t offset);
bool pool_is_allocated(const Pool *pool, uint64_t offset);
/* Punch the page out of the memfd and make it free. -EINVAL if it was not
 * allocated. Only for a page no VMM maps any more: punching also zaps the
 * page from every MAP_PRIVATE mapping that has not copied it, and such a
 * mapping would then read zeros. A claiming pool only marks it free: the
 * punch waits for pool_trim(). */
int pool_free_page(Pool *pool, uint64_t offset);
/* The same for npages adjacent allocated pages, with one punch. */
int pool_free_run(Pool *pool, uint64_t offset, uint32_t npages);
/* Punch every free page and end claiming (after a restart, once every
 * agent has reported its merged pages and they were claimed). Returns 0 or
 * -errno (then still claiming). */
int pool_trim(Pool *pool);

int pool_stats(const Pool *pool, PoolStats *ret);

/* Node the page lives on now (numa_move_pages query on the daemon's
 * mapping): >= 0, or -ENOENT (not populated), -EOPNOTSUPP (no NUMA). */
int pool_page_nid(const Pool *pool, uint64_t offset);

static inline uint64_t pool_loc_make(uint16_t pool_id, uint64_t offset) {
        return ((uint64_t) pool_id << POOL_LOC_OFFSET_BITS) | (offset & POOL_LOC_OFFSET_MASK);
}
static inline void pool_loc_split(uint64_t loc, uint16_t *ret_pool_id, uint64_t *ret_offset) {
        *ret_pool_id = (uint16_t) (loc >> POOL_LOC_OFFSET_BITS);
        *ret_offset = loc & POOL_LOC_OFFSET_MASK;
}
