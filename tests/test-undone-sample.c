/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* UndoneSample: which pages are sampled, and what counts as undone in scan. */

#include <check.h>
#include <stdlib.h>

#include "check-suite.h"
#include "undone-sample.h"
#include "util.h"

#define BLOCKS 1024u

START_TEST(test_one_page_per_block) {
        unsigned pos_hist[64] = {};

        for (uint32_t b = 0; b < BLOCKS; b++) {
                unsigned n = 0;
                for (uint32_t p = b * 64; p < (b + 1) * 64; p++)
                        if (undone_sampled(p)) {
                                n++;
                                pos_hist[p % 64]++;
                        }
                ck_assert_uint_eq(n, 1);
        }
        /* Not always the same position: a layout repeating every 64 pages
         * would see only one kind of page. */
        for (unsigned i = 0; i < 64; i++)
                ck_assert_uint_lt(pos_hist[i], BLOCKS / 8);
}
END_TEST

START_TEST(test_counts) {
        UndoneSample u = {};
        unsigned k = 0;

        for (uint32_t p = 0; p < BLOCKS * 64; p++)
                ck_assert_int_eq(undone_merged(&u, p, 10000), 0);
        ck_assert_uint_eq(u.merges, BLOCKS);
        for (uint32_t p = 0; p < BLOCKS * 64; p++) {
                if (!undone_sampled(p)) {
                        undone_broken(&u, p, 10100, 1000); /* not sampled: ignored */
                        continue;
                }
                /* Half within the last scan's 1000 ms, half long after. */
                undone_broken(&u, p, k++ % 2 ? 10500 : 30000, 1000);
        }
        ck_assert_uint_eq(u.undone, BLOCKS);
        ck_assert_uint_eq(u.undone_in_scan, BLOCKS / 2);
        /* Broken again without a merge in between: nothing more. */
        for (uint32_t p = 0; p < BLOCKS * 64; p++)
                undone_broken(&u, p, 10500, 1000);
        ck_assert_uint_eq(u.undone, BLOCKS);
        undone_sample_free(&u);
}
END_TEST

START_TEST(test_window_and_wrap) {
        UndoneSample u = {};
        uint32_t p = 0;

        while (!undone_sampled(p))
                p++;
        /* No full scan finished yet: nothing is "within a scan". */
        ck_assert_int_eq(undone_merged(&u, p, 5000), 0);
        undone_broken(&u, p, 5001, 0);
        ck_assert_uint_eq(u.undone, 1);
        ck_assert_uint_eq(u.undone_in_scan, 0);
        /* The millisecond clock's low 32 bits wrap between merge and break. */
        ck_assert_int_eq(undone_merged(&u, p, (UINT64_C(1) << 32) - 100), 0);
        undone_broken(&u, p, (UINT64_C(1) << 32) + 200, 1000);
        ck_assert_uint_eq(u.undone_in_scan, 1);
        /* A page far beyond the others grows the table. */
        p = UINT32_C(3) << 30;
        while (!undone_sampled(p))
                p++;
        ck_assert_int_eq(undone_merged(&u, p, 7), 0);
        undone_broken(&u, p, 8, 1000);
        ck_assert_uint_eq(u.undone_in_scan, 2);
        undone_sample_free(&u);
}
END_TEST

int main(void) {
        const CheckCase cases[] = {
                { "one-page-per-block", test_one_page_per_block },
                { "counts", test_counts },
                { "window-and-wrap", test_window_and_wrap },
        };

        return check_run(check_suite("undone-sample", cases, ELEMENTSOF(cases), 0, NULL));
}
