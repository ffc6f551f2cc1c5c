/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * libdedup agent internals shared between lib/dedup-client*.c and the unit
 * tests (which link the noinst lib/libdedup-client.la). Not exported from
 * libdedup.so.
 */

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "dedup.h"

/* madvise() state of a VMA, from the VmFlags line of /proc/PID/smaps.
 * mmap(MAP_FIXED) creates a VMA with none of these, so the agent re-applies
 * them on every mapping it makes over guest RAM. */
enum {
        DEDUP_VMF_DONTDUMP = 1u << 0,   /* "dd": MADV_DONTDUMP */
        DEDUP_VMF_HUGEPAGE = 1u << 1,   /* "hg": MADV_HUGEPAGE */
        DEDUP_VMF_NOHUGEPAGE = 1u << 2, /* "nh": MADV_NOHUGEPAGE */
        DEDUP_VMF_DONTFORK = 1u << 3,   /* "dc": MADV_DONTFORK */
        DEDUP_VMF_MERGEABLE = 1u << 4,  /* "mg": MADV_MERGEABLE */
};

typedef struct DedupVmaFlags {
        uint64_t start, end;    /* clipped to the region */
        unsigned flags;         /* DEDUP_VMF_* */
} DedupVmaFlags;

/* Parse an smaps file (normally /proc/self/smaps) for the VMAs covering
 * [start, end). Every byte of the range must be mapped, readable and
 * writable, MAP_SHARED, from the file (dev, ino) at file_offset + (address -
 * start). Returns the VMAs clipped to the range, in order. -EFAULT if part
 * of the range is not mapped, -EINVAL if a VMA maps something else,
 * -ENOMEM, -errno from open. */
int dedup_vma_scan(const char *smaps_path, uint64_t start, uint64_t end, uint64_t file_offset, dev_t dev,
                   ino_t ino, DedupVmaFlags **ret, size_t *ret_n);

/* Apply flags to [addr, addr+len) with madvise(); best effort. */
void dedup_vma_apply(void *addr, size_t len, unsigned flags);

/* Tests only: call hook(addr, len, userdata) on the agent thread inside
 * remap_entry()'s window A (run mapped from the pool, not yet registered
 * and protected), so that a test can write there deterministically. */
void dedup_client_set_window_hook(dedup_client *c, void (*hook)(void *addr, size_t len, void *userdata),
                                  void *userdata);
