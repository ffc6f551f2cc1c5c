/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * How every Check suite is built and run: one TCase per behaviour from a
 * table, run with CK_ENV so CK_RUN_CASE, CK_FORK and CK_VERBOSITY apply
 * (tests/README), exit status for automake.
 */

#include <check.h>
#include <stdlib.h>

#ifndef ELEMENTSOF
#define ELEMENTSOF(x) (sizeof(x) / sizeof((x)[0]))
#endif

typedef struct CheckCase {
        const char *name;
        const TTest *test;
        int timeout;            /* seconds; 0: the suite's default */
        int loops;              /* > 0: run as a loop test over 0..loops-1 */
} CheckCase;

static inline Suite *check_suite(const char *name, const CheckCase *cases, size_t n, int default_timeout,
                                 void (*teardown)(void)) {
        Suite *s = suite_create(name);

        for (size_t i = 0; i < n; i++) {
                TCase *tc = tcase_create(cases[i].name);
                int timeout = cases[i].timeout ? cases[i].timeout : default_timeout;

                if (timeout)
                        tcase_set_timeout(tc, timeout);
                if (teardown)
                        tcase_add_checked_fixture(tc, NULL, teardown);
                if (cases[i].loops > 0)
                        tcase_add_loop_test(tc, cases[i].test, 0, cases[i].loops);
                else
                        tcase_add_test(tc, cases[i].test);
                suite_add_tcase(s, tc);
        }
        return s;
}

/* Run s; EXIT_SUCCESS if every case passed. */
static inline int check_run(Suite *s) {
        SRunner *sr = srunner_create(s);
        int failed;

        srunner_run_all(sr, CK_ENV);
        failed = srunner_ntests_failed(sr);
        srunner_free(sr);
        return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
