/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Which NUMA node a page lives on: the kernel's answer (libnuma,
 * move_pages() in query mode), or an injected topology read from a file so
 * that NUMA behaviour (per-node trees, canonical pages on the right node,
 * migration) can be tested on a machine with one node.
 *
 * The file (dedupd --numa-topology=FILE; re-read on SIGHUP to simulate the
 * kernel migrating pages):
 *
 *     # comment
 *     nodes=2                       required, first; 1..64
 *     default=0                     optional: node of pages no range covers
 *     range KEY FIRST NPAGES NID    pages [FIRST, FIRST+NPAGES) of KEY on NID
 *
 * KEY names a page space without spaces: for guest RAM the manager's
 * "<vm-name>/<region-id>" (pages = page offsets in the region), for a pool
 * its pool_name() such as "dedupd-pool-g0-n1" (pages = pool page offsets).
 * Numbers are decimal or 0x-hex. Ranges of one key must not overlap.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NUMA_TOPOLOGY_MAX_NODES 64      /* = DEDUP_MAX_NODES */

typedef struct NumaTopology NumaTopology;

/* The kernel's topology: nodes = numa_max_node() + 1, or 1 without NUMA. */
int numa_topology_new_real(NumaTopology **ret);

/* Parse an injected topology. On a bad file returns -EINVAL (or the open
 * error) and, if errbuf is given, a message "PATH:LINE: what is wrong". */
int numa_topology_parse(const char *path, char *errbuf, size_t errlen, NumaTopology **ret);
/* The same, logging the message at error level. */
int numa_topology_load(const char *path, NumaTopology **ret);
/* Re-read the file of an injected topology (SIGHUP). On error the old
 * topology stays in force and the error is logged and returned. A no-op
 * returning 0 for the real topology. */
int numa_topology_reload(NumaTopology *t);

NumaTopology *numa_topology_free(NumaTopology *t);      /* NULL-safe */
static inline void numa_topology_freep(NumaTopology **t) {
        if (*t)
                numa_topology_free(*t);
}

bool numa_topology_is_injected(const NumaTopology *t);
/* Number of nodes: ids are 0..nodes-1. */
int numa_topology_nodes(const NumaTopology *t);
/* Bumped by every successful reload: canonical pages may have "moved". */
uint64_t numa_topology_generation(const NumaTopology *t);

/* Injected: the node of page page_index of key; the default node if no
 * range covers it; -ENOENT if there is no default either. Real topology:
 * -EOPNOTSUPP (the kernel needs an address: numa_topology_pages_nid()). */
int numa_topology_page_nid(const NumaTopology *t, const char *key, uint64_t page_index);

/* Real: the nodes of n pages mapped in process pid (0 = self) at addrs,
 * via numa_move_pages() without moving: ret_nids[i] is a node or -errno for
 * that page (-ENOENT: not populated, -EFAULT: not mapped). Injected:
 * -EOPNOTSUPP. -ENODEV without NUMA support in the kernel. */
int numa_topology_pages_nid(const NumaTopology *t, pid_t pid, void *const *addrs, size_t n, int *ret_nids);

/* What the manager asks for a guest page: injected → by key and page index,
 * real → by the VMM's pid and the page's host virtual address. */
int numa_topology_guest_page_nid(const NumaTopology *t, const char *key, uint64_t page_index, pid_t pid,
                                 uint64_t addr);
