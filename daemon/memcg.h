/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The memory limit of dedupd's own cgroup. Canonical pages live in pools
 * that dedupd writes, so they are charged to dedupd: under MemoryMax= (or a
 * v1 memory.limit_in_bytes) the kernel OOM-kills dedupd once its pools
 * reach the limit. dedupd asks here how much it may still allocate and
 * stops creating canonical pages short of it instead.
 */

#include <stdint.h>

typedef struct MemCg MemCg;

/* Find the limit and usage files of the cgroup of this process (cgroup v2,
 * else the v1 memory controller) under root (normally /sys/fs/cgroup), or
 * from /proc/self/cgroup of proc_self (normally /proc/self). -ENOENT if
 * there is no memory controller. */
int memcg_open(const char *root, const char *proc_self, MemCg **ret);
MemCg *memcg_free(MemCg *c);
/* Bytes left below the limit (UINT64_MAX without one), or -errno. */
int memcg_room(MemCg *c, uint64_t *ret);
const char *memcg_path(const MemCg *c);
