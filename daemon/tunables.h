/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * The tunables of DESIGN.md §4 in one table: their D-Bus and config file
 * name (KSM's sysfs name in D-Bus style), command line option, type, range
 * and default. The command line, the config file and the D-Bus property
 * setters all go through tunable_parse() and tunable_set(), so a value is
 * checked the same way and refused with the same words wherever it comes
 * from.
 */

#include <stddef.h>
#include <stdint.h>

typedef struct Manager Manager;

typedef struct Tunable {
        const char *name;               /* "PagesToScan": D-Bus property, config key */
        const char *option;             /* "pages-to-scan": command line */
        char type;                      /* D-Bus signature: 'u', 'b' or 's' */
        uint32_t min, max;              /* 'u' range; 's': index into values */
        const char *const *values;      /* 's': the allowed strings, NULL-terminated */
        const char *help;
        uint32_t (*get)(const Manager *m);
        /* Value already in range; -EBUSY (with a reason in err) or 0. */
        int (*set)(Manager *m, uint32_t v, char *err, size_t errlen);
} Tunable;

extern const Tunable tunables[];
extern const size_t n_tunables;

/* By D-Bus name or by command line option; NULL if none. */
const Tunable *tunable_find(const char *name);

/* Text (a number; 0/1/yes/no/true/false for 'b'; one of values for 's')
 * to a value in range. On -EINVAL err says what was wrong and what is
 * allowed: "Invalid value '0' for PagesToScan: allowed 1..1000000". */
int tunable_parse(const Tunable *t, const char *text, uint32_t *ret, char *err, size_t errlen);

/* Check the range, apply, log the change. -EINVAL or -EBUSY with err set;
 * nothing changes on error. 0 if unchanged, 1 if changed. */
int tunable_set(Manager *m, const Tunable *t, uint32_t v, char *err, size_t errlen);

/* The value as text ("10000", "yes", "scan-time"), in buf. */
const char *tunable_format(const Tunable *t, uint32_t v, char *buf, size_t len);

/* Print "--option=RANGE  help (default D)" lines for --help. */
void tunables_print_help(const Manager *defaults);
