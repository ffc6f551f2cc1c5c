/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * libdedup: the VMM side of dedupd.
 *
 * A VMM (or the QEMU preload shim) describes its guest RAM regions and
 * starts the agent: a thread inside the VMM that holds a synchronous
 * userfaultfd over guest RAM, carries out the daemon's remap requests and
 * breaks copy-on-write for the guest. If the daemon dies, the agent
 * unprotects all guest RAM and the guest runs on unaffected.
 *
 * Functions return 0 (or a documented positive value) or a negative errno.
 * See libdedup(3).
 */

#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DEDUP_DEFAULT_SOCKET "/run/dedupd/vmm.sock"

typedef struct dedup_client dedup_client;

typedef struct dedup_client_stats {
        uint64_t remapped_pages;        /* pages mapped onto pools or zero overlays */
        uint64_t aborted_pages;         /* remaps refused: written after protection */
        uint64_t cow_breaks;            /* guest writes that un-merged a page */
        uint64_t written_faults;        /* writes to transiently protected pages */
        uint64_t merged_pages;          /* pages currently mapped from a pool or overlay */
        int connected;                  /* 1 while the daemon is attached */
        uint64_t reconnects;            /* times it came back after a fail-safe */
} dedup_client_stats;

/* name: VM name (1..63 bytes of [A-Za-z0-9_.:-]); uuid: NULL or the
 * canonical 36-character form. socket_path NULL means $DEDUPD_SOCKET, else
 * DEDUP_DEFAULT_SOCKET. */
int dedup_client_new(const char *socket_path, const char *name, const char *uuid, dedup_client **ret);

/* Describe one RAM region: memfd (shared, whole-page sized), the offset of
 * the region in it, its size, where the VMM maps it (MAP_SHARED) and the
 * guest-physical base. Before dedup_client_start() or while running. */
int dedup_client_export_region(dedup_client *c, int memfd, uint64_t memfd_offset, uint64_t size,
                               void *hva, uint64_t gpa);

/* Connect, register regions, start the agent thread. -ENOENT or
 * -ECONNREFUSED when no daemon listens: the VMM just runs without it. */
int dedup_client_start(dedup_client *c);

int dedup_client_get_stats(dedup_client *c, dedup_client_stats *ret);

/* Say goodbye, unprotect guest RAM, stop the thread, free. Merged pages
 * stay mapped (later writes are ordinary copy-on-write). NULL is fine. */
void dedup_client_free(dedup_client *c);

#ifdef __cplusplus
}
#endif
