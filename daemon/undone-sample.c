/* SPDX-License-Identifier: LGPL-2.1-or-later */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "undone-sample.h"

#define BLOCK 64u

bool undone_sampled(uint32_t page) {
        uint32_t block = page / BLOCK;

        /* The top 6 bits of a multiplicative hash: a position in 0..63. */
        return page % BLOCK == (block * UINT32_C(0x9e3779b9)) >> 26;
}

int undone_merged(UndoneSample *u, uint32_t page, uint64_t now_ms) {
        uint32_t block = page / BLOCK, ms = (uint32_t) now_ms;

        if (!undone_sampled(page))
                return 0;
        if (block >= u->n_blocks) {
                uint32_t n = block + block / 2 + 1024;
                uint32_t *a = realloc(u->merged_ms, (size_t) n * sizeof(uint32_t));

                if (!a)
                        return -ENOMEM;
                memset(a + u->n_blocks, 0, (size_t) (n - u->n_blocks) * sizeof(uint32_t));
                u->merged_ms = a;
                u->n_blocks = n;
        }
        u->merged_ms[block] = ms ? ms : 1;      /* 0 means "not merged" */
        u->merges++;
        return 0;
}

void undone_broken(UndoneSample *u, uint32_t page, uint64_t now_ms, uint64_t window_ms) {
        uint32_t block = page / BLOCK;

        if (!undone_sampled(page) || block >= u->n_blocks || u->merged_ms[block] == 0)
                return;
        u->undone++;
        /* uint32_t milliseconds wrap after 49 days: the difference does not. */
        if (window_ms > 0 && (uint32_t) now_ms - u->merged_ms[block] <= window_ms)
                u->undone_in_scan++;
        u->merged_ms[block] = 0;
}

void undone_sample_free(UndoneSample *u) {
        free(u->merged_ms);
        *u = (UndoneSample) {};
}
