/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: Canonical-page pools
 *
 * A pool is a memfd holding canonical pages of one merge group on one NUMA
 * node. Invariants:
 *
 * - A VMM can never write a pool. The memfd inode is fchmod 0400 (owned by
 *   the daemon's user) before any other fd of it exists, and VMMs only ever
 *   get pool_ro_fd(): an O_RDONLY open of it. Such an fd cannot be mapped
 *   MAP_SHARED writable (EACCES), a MAP_PRIVATE write only copies, and a
 *   non-root VMM cannot reopen it O_RDWR through /proc (mode 0400).
 *
 * - A pool never shrinks (F_SEAL_SHRINK): an agent's MAP_PRIVATE mapping of
 *   a pool page can never SIGBUS. Freed pages are punched holes instead.
 *
 * - Pointers into a pool stay valid for its lifetime: the daemon reserves
 *   the whole capacity of VA (PROT_NONE, no memory) at creation and maps the
 *   memfd MAP_SHARED|MAP_FIXED over a growing prefix of it. Adjacent chunks
 *   of the same file merge into one VMA.
 *
 * - A page's bit in the bitmap is set from pool_alloc()/pool_claim() until
 *   pool_free_page(). A free page is a hole (punched on free), so memory
 *   used is pages allocated, not the high-water mark.
 *
 * - The daemon's own page tables stay empty: pages are written and read
 *   with pwrite()/pread() on the memfd, not through the mapping. Measured on
 *   this kernel: a write fault through the mapping costs ≈11 µs against
 *   ≈2.5 µs for pwrite(), and punching a page the daemon has mapped costs
 *   7-30 µs (zap + TLB flush) against ≈2.2 µs. pool_page() is there for
 *   zero-copy reads and pays those costs.
 *
 * - Runs stay contiguous: pool_alloc() honours a placement hint (usually the
 *   page after the previous page of a run), so a run of adjacent duplicate
 *   guest pages maps onto adjacent pool pages with one mmap and one VMA.
 *
 * - A pool got back after a restart (pool_adopt()) holds pages that agents
 *   still map but have not reported yet: until pool_trim() it hands out no
 *   page and punches none. Freeing only clears the page's bit; trimming
 *   punches every page whose bit is clear.
 *
 * - Pool pages stay movable: nothing is mlocked or pinned. The NUMA policy is
 *   MPOL_PREFERRED (set on the shmem file's shared policy through the
 *   daemon's mapping before a page is written), so allocation falls back to
 *   another node instead of failing, and the kernel may migrate pages; the
 *   daemon notices through pool_page_nid().
 */

#include <errno.h>
#include <fcntl.h>
#include <numa.h>
#include <numaif.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "pool.h"
#include "util.h"

#define BITS_PER_WORD 64u
/* Growth steps are whole bitmap words of pages. */
#define POOL_MIN_CHUNK ((uint64_t) BITS_PER_WORD * POOL_PAGE_SIZE)

struct Pool {
        int fd;                 /* read-write memfd */
        int ro_fd;              /* O_RDONLY reopen of it, given to VMMs */
        uint16_t group;
        int nid;                /* < 0: no node */
        bool bound;             /* mbind() applied to every mapped chunk */
        char name[64];          /* memfd name, without "memfd:" */

        uint8_t *base;          /* start of the reserved VA range */
        uint64_t reserve;       /* bytes of VA reserved: max capacity */
        uint64_t chunk;         /* growth step in bytes */
        uint64_t capacity;      /* bytes of memfd mapped at base */

        uint64_t *bits;         /* one bit per page of capacity: allocated */
        uint64_t nwords;        /* capacity / page / 64 */
        uint64_t cursor;        /* every word below it is full */
        uint64_t allocated;     /* bits set */

        ino_t ino;              /* of the memfd: how agents name it after a restart */
        bool claiming;          /* adopted, not trimmed yet: see pool_adopt() */
        uint64_t allocs, allocs_hinted, frees;
};

/* Chunks need not be powers of two: no ALIGN_TO() here. */
static inline uint64_t round_up(uint64_t x, uint64_t a) {
        return DIV_ROUND_UP(x, a) * a;
}

static inline bool bit_test(const Pool *p, uint64_t page) {
        return p->bits[page / BITS_PER_WORD] & (UINT64_C(1) << (page % BITS_PER_WORD));
}

static inline void bit_set(Pool *p, uint64_t page) {
        p->bits[page / BITS_PER_WORD] |= UINT64_C(1) << (page % BITS_PER_WORD);
        p->allocated++;
}

static inline void bit_clear(Pool *p, uint64_t page) {
        p->bits[page / BITS_PER_WORD] &= ~(UINT64_C(1) << (page % BITS_PER_WORD));
        p->allocated--;
        if (page / BITS_PER_WORD < p->cursor)
                p->cursor = page / BITS_PER_WORD;
}

/* True if nid is a node libnuma lets us place memory on. */
static bool node_usable(int nid) {
        if (nid < 0 || numa_available() < 0 || nid > numa_max_node())
                return false;
        return numa_bitmask_isbitset(numa_all_nodes_ptr, (unsigned) nid);
}

static int pool_bind(Pool *p, void *addr, uint64_t len) {
        struct bitmask *mask;
        int r = 0;

        if (!node_usable(p->nid))
                return -EOPNOTSUPP;
        mask = numa_bitmask_alloc((unsigned) numa_max_possible_node() + 1);
        if (!mask)
                return -ENOMEM;
        numa_bitmask_setbit(mask, (unsigned) p->nid);
        if (mbind(addr, len, MPOL_PREFERRED, mask->maskp, mask->size + 1, 0) < 0)
                r = negative_errno();
        numa_bitmask_free(mask);
        return r;
}

/* Map [p->capacity, new_capacity) of the memfd, growing the file if needed. */
static int pool_grow(Pool *p, uint64_t new_capacity) {
        struct stat st;
        uint64_t *bits;
        uint64_t nwords;
        uint8_t *at;

        if (new_capacity <= p->capacity)
                return 0;
        if (new_capacity > p->reserve)
                return -ENOSPC;

        if (fstat(p->fd, &st) < 0)
                return negative_errno();
        if ((uint64_t) st.st_size < new_capacity && ftruncate(p->fd, (off_t) new_capacity) < 0)
                return negative_errno();

        nwords = new_capacity / POOL_PAGE_SIZE / BITS_PER_WORD;
        bits = realloc(p->bits, nwords * sizeof(uint64_t));
        if (!bits)
                return -ENOMEM;
        memset(bits + p->nwords, 0, (nwords - p->nwords) * sizeof(uint64_t));
        p->bits = bits;

        at = mmap(p->base + p->capacity, new_capacity - p->capacity, PROT_READ | PROT_WRITE,
                  MAP_SHARED | MAP_FIXED, p->fd, (off_t) p->capacity);
        if (at == MAP_FAILED) {
                int r = negative_errno();
                /* A failed MAP_FIXED may have dropped the reservation there. */
                (void) mmap(p->base + p->capacity, new_capacity - p->capacity, PROT_NONE,
                            MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED, -1, 0);
                return r;
        }
        if (p->nid >= 0 && (p->capacity == 0 || p->bound))
                p->bound = pool_bind(p, at, new_capacity - p->capacity) >= 0;

        p->nwords = nwords;
        p->capacity = new_capacity;
        return 0;
}

static int pool_make(int fd, uint16_t group, int nid, const char *name, const PoolConfig *config,
                     Pool **ret) {
        _cleanup_(pool_freep) Pool *p = NULL;
        uint64_t chunk = config && config->chunk_bytes ? config->chunk_bytes : POOL_DEFAULT_CHUNK;
        uint64_t reserve = config && config->reserve_bytes ? config->reserve_bytes : POOL_DEFAULT_RESERVE;
        char path[64];
        struct stat st;
        void *base;

        chunk = ALIGN_TO(chunk, POOL_MIN_CHUNK);
        reserve = round_up(reserve, chunk);
        if (reserve > POOL_LOC_OFFSET_MASK)
                return -EINVAL;

        p = calloc(1, sizeof *p);
        if (!p)
                return -ENOMEM;
        p->fd = p->ro_fd = -EBADF;
        p->group = group;
        p->nid = nid < 0 ? -1 : nid;
        p->chunk = chunk;
        snprintf(p->name, sizeof p->name, "%s", name);

        /* Where that much address space cannot be had (RLIMIT_AS; valgrind
         * refuses 64 GiB), take what can be, down to one chunk. */
        for (;;) {
                base = mmap(NULL, reserve, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
                if (base != MAP_FAILED || reserve <= chunk)
                        break;
                reserve = round_up(reserve / 2, chunk);
        }
        if (base == MAP_FAILED)
                return negative_errno();
        p->base = base;
        p->reserve = reserve;

        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        p->ro_fd = open(path, O_RDONLY | O_CLOEXEC);
        if (p->ro_fd < 0 || fstat(fd, &st) < 0)
                return negative_errno();

        p->ino = st.st_ino;
        p->fd = fd;
        *ret = TAKE_PTR(p);
        return 0;
}

int pool_new_full(uint16_t group, int nid, const PoolConfig *config, Pool **ret) {
        _cleanup_close_ int fd = -EBADF;
        char name[64];
        Pool *p;
        int r;

        if (nid >= 0)
                snprintf(name, sizeof name, "dedupd-pool-g%u-n%d", group, nid);
        else
                snprintf(name, sizeof name, "dedupd-pool-g%u", group);

        fd = memfd_create(name, MFD_CLOEXEC | MFD_ALLOW_SEALING);
        if (fd < 0)
                return negative_errno();
        /* Before any other fd of the inode exists: see the first invariant. */
        if (fchmod(fd, 0400) < 0)
                return negative_errno();
        if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK) < 0)
                return negative_errno();

        r = pool_make(fd, group, nid, name, config, &p);
        if (r < 0)
                return r;
        TAKE_FD(fd);
        *ret = p;
        return 0;
}

int pool_new(uint16_t group, int nid, Pool **ret) {
        return pool_new_full(group, nid, NULL, ret);
}

int pool_adopt(int fd, const PoolConfig *config, Pool **ret) {
        _cleanup_(pool_freep) Pool *p = NULL;
        char path[64], link[256], name[64];
        unsigned group;
        int nid = -1, n = 0, r;
        struct stat st;
        ssize_t l;

        snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
        l = readlink(path, link, sizeof link - 1);
        if (l < 0)
                return negative_errno();
        link[l] = 0;

        /* "/memfd:dedupd-pool-g3-n1 (deleted)" */
        if (sscanf(link, "/memfd:dedupd-pool-g%u-n%d (deleted)%n", &group, &nid, &n) != 2 || n != l) {
                nid = -1;
                n = 0;
                if (sscanf(link, "/memfd:dedupd-pool-g%u (deleted)%n", &group, &n) != 1 || n != l)
                        return -EINVAL;
        }
        if (group > UINT16_MAX || nid < -1)
                return -EINVAL;
        if (fstat(fd, &st) < 0)
                return negative_errno();
        if (st.st_size % POOL_MIN_CHUNK != 0)
                return -EINVAL;

        snprintf(name, sizeof name, "%.*s", (int) (strchr(link, ' ') - link - 7), link + 7);
        r = pool_make(fd, (uint16_t) group, nid, name, config, &p);
        if (r < 0)
                return r;
        if ((uint64_t) st.st_size > p->reserve) {
                p->fd = -EBADF;     /* not ours yet */
                return -EFBIG;
        }
        r = pool_grow(p, (uint64_t) st.st_size);
        if (r < 0) {
                p->fd = -EBADF;
                return r;
        }
        p->claiming = true;
        *ret = TAKE_PTR(p);
        return 0;
}

Pool *pool_free(Pool *p) {
        if (!p)
                return NULL;
        if (p->base)
                (void) munmap(p->base, p->reserve);
        safe_close(p->ro_fd);
        safe_close(p->fd);
        free(p->bits);
        free(p);
        return NULL;
}

uint16_t pool_group(const Pool *p) {
        return p->group;
}

int pool_nid(const Pool *p) {
        return p->nid;
}

bool pool_is_bound(const Pool *p) {
        return p->bound;
}

const char *pool_name(const Pool *p) {
        return p->name;
}

int pool_fd(const Pool *p) {
        return p->fd;
}

int pool_ro_fd(const Pool *p) {
        return p->ro_fd;
}

/* Lowest free page at or after the cursor, growing by a chunk if none. */
static int alloc_first_free(Pool *p, uint64_t *ret_page) {
        for (uint64_t w = p->cursor; w < p->nwords; w++) {
                if (p->bits[w] == UINT64_MAX)
                        continue;
                p->cursor = w;
                *ret_page = w * BITS_PER_WORD + (uint64_t) __builtin_ctzll(~p->bits[w]);
                return 0;
        }
        p->cursor = p->nwords;

        uint64_t page = p->capacity / POOL_PAGE_SIZE;
        int r = pool_grow(p, p->capacity + p->chunk);
        if (r < 0)
                return r;
        *ret_page = page;
        return 0;
}

int pool_alloc(Pool *p, uint64_t hint, uint64_t *ret_offset) {
        uint64_t page;
        int r;

        if (p->claiming)
                return -EBUSY;
        if (hint != POOL_NO_HINT && hint % POOL_PAGE_SIZE == 0 && hint < p->reserve) {
                page = hint / POOL_PAGE_SIZE;
                /* A run reaching the end continues into the next chunk. */
                if (hint >= p->capacity && hint < p->capacity + p->chunk)
                        (void) pool_grow(p, p->capacity + p->chunk);
                if (hint < p->capacity && !bit_test(p, page)) {
                        bit_set(p, page);
                        p->allocs++;
                        p->allocs_hinted++;
                        *ret_offset = hint;
                        return 0;
                }
        }

        r = alloc_first_free(p, &page);
        if (r < 0)
                return r;
        bit_set(p, page);
        p->allocs++;
        *ret_offset = page * POOL_PAGE_SIZE;
        return 0;
}

int pool_alloc_run(Pool *p, uint32_t npages, uint64_t *ret_offset) {
        uint64_t cap_pages = p->capacity / POOL_PAGE_SIZE;
        uint64_t start = 0, run = 0, need;
        int r;

        if (npages == 0)
                return -EINVAL;
        if (p->claiming)
                return -EBUSY;

        for (uint64_t pg = p->cursor * BITS_PER_WORD; pg < cap_pages && run < npages; pg++) {
                if (pg % BITS_PER_WORD == 0 && p->bits[pg / BITS_PER_WORD] == UINT64_MAX) {
                        pg += BITS_PER_WORD - 1;
                        run = 0;
                } else if (bit_test(p, pg))
                        run = 0;
                else if (run++ == 0)
                        start = pg;
        }
        if (run == 0)
                start = cap_pages;      /* the free tail, if any, starts at the end */

        need = (start + npages) * POOL_PAGE_SIZE;
        if (need > p->capacity) {
                r = pool_grow(p, MIN(round_up(need, p->chunk), p->reserve));
                if (r < 0)
                        return r;
                if (need > p->capacity)
                        return -ENOSPC;
        }
        for (uint64_t i = 0; i < npages; i++)
                bit_set(p, start + i);
        p->allocs += npages;
        *ret_offset = start * POOL_PAGE_SIZE;
        return 0;
}

bool pool_is_allocated(const Pool *p, uint64_t offset) {
        return offset % POOL_PAGE_SIZE == 0 && offset < p->capacity && bit_test(p, offset / POOL_PAGE_SIZE);
}

int pool_claim(Pool *p, uint64_t offset) {
        int r;

        if (offset % POOL_PAGE_SIZE != 0)
                return -EINVAL;
        /* An adopted pool has all the pages anybody can map. */
        if (offset >= (p->claiming ? p->capacity : p->reserve))
                return -ERANGE;
        if (offset >= p->capacity) {
                r = pool_grow(p, round_up(offset + POOL_PAGE_SIZE, p->chunk));
                if (r < 0)
                        return r;
        }
        if (bit_test(p, offset / POOL_PAGE_SIZE))
                return -EBUSY;
        bit_set(p, offset / POOL_PAGE_SIZE);
        return 0;
}

/* Whole-page pread/pwrite on a memfd cannot be short except at EOF, which
 * an allocated page is never past. */
static int page_io(ssize_t n) {
        if (n < 0)
                return negative_errno();
        return n == POOL_PAGE_SIZE ? 0 : -EIO;
}

static bool run_allocated(const Pool *p, uint64_t offset, uint32_t npages) {
        for (uint32_t i = 0; i < npages; i++)
                if (!pool_is_allocated(p, offset + (uint64_t) i * POOL_PAGE_SIZE))
                        return false;
        return npages > 0;
}

int pool_write_run(Pool *p, uint64_t offset, const void *data, uint32_t npages) {
        size_t len = (size_t) npages * POOL_PAGE_SIZE;
        ssize_t n;

        if (!run_allocated(p, offset, npages))
                return -EINVAL;
        n = pwrite(p->fd, data, len, (off_t) offset);
        if (n < 0)
                return negative_errno();
        return (size_t) n == len ? 0 : -EIO;
}

int pool_write(Pool *p, uint64_t offset, const void *data) {
        return pool_write_run(p, offset, data, 1);
}

int pool_read(const Pool *p, uint64_t offset, void *buf) {
        if (!pool_is_allocated(p, offset))
                return -EINVAL;
        return page_io(pread(p->fd, buf, POOL_PAGE_SIZE, (off_t) offset));
}

const void *pool_page(const Pool *p, uint64_t offset) {
        return pool_is_allocated(p, offset) ? p->base + offset : NULL;
}

static int punch(Pool *p, uint64_t offset, uint64_t len) {
        if (fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t) offset, (off_t) len) < 0)
                return negative_errno();
        return 0;
}

int pool_free_run(Pool *p, uint64_t offset, uint32_t npages) {
        int r;

        if (!run_allocated(p, offset, npages))
                return -EINVAL;
        r = p->claiming ? 0 : punch(p, offset, (uint64_t) npages * POOL_PAGE_SIZE);
        if (r < 0)
                return r;
        for (uint32_t i = 0; i < npages; i++)
                bit_clear(p, offset / POOL_PAGE_SIZE + i);
        p->frees += npages;
        return 0;
}

int pool_free_page(Pool *p, uint64_t offset) {
        return pool_free_run(p, offset, 1);
}

int pool_trim(Pool *p) {
        uint64_t cap_pages = p->capacity / POOL_PAGE_SIZE;
        uint64_t pg = 0;
        int r;

        /* Punch maximal runs of free pages, one fallocate() each. */
        while (pg < cap_pages) {
                uint64_t start;

                while (pg < cap_pages && bit_test(p, pg))
                        pg++;
                start = pg;
                while (pg < cap_pages && !bit_test(p, pg))
                        pg++;
                if (pg > start) {
                        r = punch(p, start * POOL_PAGE_SIZE, (pg - start) * POOL_PAGE_SIZE);
                        if (r < 0)
                                return r;
                }
        }
        p->claiming = false;
        return 0;
}

ino_t pool_ino(const Pool *p) {
        return p->ino;
}

bool pool_is_claiming(const Pool *p) {
        return p->claiming;
}

int pool_stats(const Pool *p, PoolStats *ret) {
        struct stat st;

        if (fstat(p->fd, &st) < 0)
                return negative_errno();
        *ret = (PoolStats) {
                .pages_allocated = p->allocated,
                .capacity_pages = p->capacity / POOL_PAGE_SIZE,
                .reserve_pages = p->reserve / POOL_PAGE_SIZE,
                .bytes_used = (uint64_t) st.st_blocks * 512,
                .allocs = p->allocs,
                .allocs_hinted = p->allocs_hinted,
                .frees = p->frees,
        };
        return 0;
}

int pool_page_nid(const Pool *p, uint64_t offset) {
        void *addr;
        int status = -ENOENT;

        if (!pool_is_allocated(p, offset))
                return -EINVAL;
        if (numa_available() < 0)
                return -EOPNOTSUPP;

        addr = p->base + offset;
        /* move_pages() only sees pages mapped in our page tables: map it by
         * reading (an allocated page has data, so this allocates nothing),
         * then drop our pte again to keep punching cheap (see top). */
        (void) *(volatile const uint8_t *) addr;
        if (numa_move_pages(0, 1, &addr, NULL, &status, 0) < 0)
                return negative_errno();
        (void) madvise(addr, POOL_PAGE_SIZE, MADV_DONTNEED);
        return status;
}
