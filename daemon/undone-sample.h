/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * DOC: UndoneSample - merges a guest undoes within a full scan, sampled
 *
 * The volatility filter's yardstick: of the merges that completed, how
 * many did a guest write undo (a copy-on-write break), and how many of
 * those within one full scan's time of the merge? Keeping every merged
 * page's time would cost 4 bytes a page; one page in each block of 64 is
 * kept instead, at a position that varies from block to block (so that a
 * layout repeating every 64 pages cannot bias it): 4 bytes per 64 pages.
 */

#include <stdbool.h>
#include <stdint.h>

typedef struct UndoneSample {
        uint32_t *merged_ms;    /* per block: when its sampled page merged, 0 if it is not merged */
        uint32_t n_blocks;
        uint64_t merges;        /* merges of sampled pages */
        uint64_t undone;        /* ... undone by a guest write */
        uint64_t undone_in_scan; /* ... within a full scan's time */
} UndoneSample;

/* Is page one of the sampled ones? */
bool undone_sampled(uint32_t page);
/* page's merge completed at now_ms. -ENOMEM (the sample is then only
 * smaller). */
int undone_merged(UndoneSample *u, uint32_t page, uint64_t now_ms);
/* A guest write undid page's merge at now_ms; window_ms: how long the
 * last full scan took (0: none finished yet, nothing counts as in scan). */
void undone_broken(UndoneSample *u, uint32_t page, uint64_t now_ms, uint64_t window_ms);
void undone_sample_free(UndoneSample *u);
