/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The page hash (XXH3-64 of 4 KiB) built for AVX2. Debian's libxxhash is
 * built for SSE2 and has no run-time dispatch; inlining XXH3 here with
 * -mavx2 (this file only) hashes a page about twice as fast, and XXH3's
 * result does not depend on the vector width. engine_hash() calls this only
 * when the CPU has AVX2. Nothing else is included here, so no shared inline
 * code is ever built for AVX2 by accident.
 */

#include <stdint.h>

#define XXH_INLINE_ALL
#include <xxhash.h>

uint64_t engine_hash_avx2(const void *page);

uint64_t engine_hash_avx2(const void *page) {
        return XXH3_64bits(page, 4096);
}
