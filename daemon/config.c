/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DOC: the config file parser. systemd-style INI: "[Section]" lines,
 * "Key=Value" lines, '#' and ';' comments. Every line is checked and every
 * bad one reported with its file and line before the load fails, so an
 * operator fixes a file in one go.
 */

#include <errno.h>
#include <fnmatch.h>
#include <grp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "dedup-engine.h"
#include "dedup-proto.h"
#include "manager.h"
#include "tunables.h"
#include "util.h"

#define MAX_PATTERNS 16

typedef struct MergeRule {
        unsigned line;
        uint32_t group;                 /* 0: no Group= yet */
        char *names[MAX_PATTERNS];
        char *uuids[MAX_PATTERNS];
        unsigned n_names, n_uuids;
} MergeRule;

struct Config {
        char *path;
        uint32_t values[64];            /* [Manager], by index in tunables[] */
        unsigned lines[64];             /* line of each, 0 = not set */
        char *allow_group;
        unsigned allow_group_line;
        char *socket;
        char *domain_dir;
        MergeRule *rules;
        size_t n_rules;
};

enum section { SECTION_NONE, SECTION_MANAGER, SECTION_REGISTRATION, SECTION_MERGE_GROUP };

typedef struct Parser {
        Config *c;
        enum section section;
        unsigned line;
        unsigned errors;
} Parser;

_printf_(2, 3) static void bad(Parser *p, const char *fmt, ...) {
        char msg[512];
        va_list ap;

        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
        log_error("%s:%u: %s", p->c->path, p->line, msg);
        p->errors++;
}

static char *strip(char *s) {
        char *e;

        s += strspn(s, " \t");
        e = s + strlen(s);
        while (e > s && strchr(" \t\r\n", e[-1]))
                *--e = 0;
        return s;
}

static int set_string(Parser *p, char **field, const char *key, const char *value) {
        if (*field) {
                bad(p, "%s= given twice", key);
                return 0;
        }
        *field = strdup(value);
        return *field ? 0 : -ENOMEM;
}

static int parse_manager(Parser *p, const char *key, const char *value) {
        const Tunable *t = tunable_find(key);
        char err[256];
        size_t i;

        if (!t || strcmp(t->name, key) != 0) {
                bad(p, "unknown key '%s' in [Manager]", key);
                return 0;
        }
        i = (size_t) (t - tunables);
        if (p->c->lines[i]) {
                bad(p, "%s= given twice (first on line %u)", key, p->c->lines[i]);
                return 0;
        }
        if (tunable_parse(t, value, &p->c->values[i], err, sizeof(err)) < 0) {
                bad(p, "%s", err);
                return 0;
        }
        p->c->lines[i] = p->line;
        return 0;
}

static int parse_registration(Parser *p, const char *key, const char *value) {
        if (strcmp(key, "AllowGroup") == 0) {
                if (!getgrnam(value)) {
                        bad(p, "unknown group '%s' for AllowGroup=", value);
                        return 0;
                }
                p->c->allow_group_line = p->line;
                return set_string(p, &p->c->allow_group, key, value);
        }
        if (strcmp(key, "Socket") == 0) {
                if (value[0] != '/') {
                        bad(p, "Socket= needs an absolute path, not '%s'", value);
                        return 0;
                }
                return set_string(p, &p->c->socket, key, value);
        }
        if (strcmp(key, "DomainDirectory") == 0) {
                if (value[0] != '/') {
                        bad(p, "DomainDirectory= needs an absolute path, not '%s'", value);
                        return 0;
                }
                return set_string(p, &p->c->domain_dir, key, value);
        }
        bad(p, "unknown key '%s' in [Registration]", key);
        return 0;
}

static int parse_merge_group(Parser *p, const char *key, const char *value) {
        MergeRule *rule = &p->c->rules[p->c->n_rules - 1];
        char *end, **slot;
        unsigned long g;

        if (strcmp(key, "Group") == 0) {
                errno = 0;
                g = strtoul(value, &end, 10);
                if (errno || end == value || *end || value[0] == '-' || g < 1 || g >= DEDUP_MAX_GROUPS)
                        bad(p, "Invalid value '%s' for Group: allowed 1..%u", value, DEDUP_MAX_GROUPS - 1);
                else if (rule->group)
                        bad(p, "Group= given twice in one [MergeGroup]");
                else
                        rule->group = (uint32_t) g;
                return 0;
        }
        if (strcmp(key, "Name") != 0 && strcmp(key, "Uuid") != 0) {
                bad(p, "unknown key '%s' in [MergeGroup]", key);
                return 0;
        }
        if (key[0] == 'U' && dedup_proto_check_uuid(value) < 0) {
                bad(p, "'%s' is not a uuid", value);
                return 0;
        }
        if ((key[0] == 'N' ? rule->n_names : rule->n_uuids) == MAX_PATTERNS) {
                bad(p, "more than %d %s= in one [MergeGroup]", MAX_PATTERNS, key);
                return 0;
        }
        slot = key[0] == 'N' ? &rule->names[rule->n_names++] : &rule->uuids[rule->n_uuids++];
        *slot = strdup(value);
        return *slot ? 0 : -ENOMEM;
}

static void check_rule(Parser *p) {
        MergeRule *rule;

        if (p->section != SECTION_MERGE_GROUP)
                return;
        rule = &p->c->rules[p->c->n_rules - 1];
        if (!rule->group)
                log_error("%s:%u: [MergeGroup] without Group=", p->c->path, rule->line), p->errors++;
        if (rule->n_names + rule->n_uuids == 0)
                log_error("%s:%u: [MergeGroup] without Name= or Uuid=", p->c->path, rule->line), p->errors++;
}

static int parse_section(Parser *p, const char *name) {
        static const char *const names[] = {
                [SECTION_MANAGER] = "Manager",
                [SECTION_REGISTRATION] = "Registration",
                [SECTION_MERGE_GROUP] = "MergeGroup",
        };
        MergeRule *rules;

        check_rule(p);
        p->section = SECTION_NONE;
        for (size_t i = 1; i < ELEMENTSOF(names); i++)
                if (strcmp(name, names[i]) == 0)
                        p->section = (enum section) i;
        if (p->section == SECTION_NONE) {
                bad(p, "unknown section [%s]", name);
                return 0;
        }
        if (p->section != SECTION_MERGE_GROUP)
                return 0;
        rules = reallocarray(p->c->rules, p->c->n_rules + 1, sizeof(*rules));
        if (!rules)
                return -ENOMEM;
        p->c->rules = rules;
        rules[p->c->n_rules++] = (MergeRule) { .line = p->line };
        return 0;
}

static int parse_line(Parser *p, char *line) {
        char *eq, *key, *value, *end;

        line = strip(line);
        if (!*line || *line == '#' || *line == ';')
                return 0;
        if (*line == '[') {
                end = strchr(line, ']');
                if (!end || end[1]) {
                        bad(p, "malformed section header '%s'", line);
                        p->section = SECTION_NONE;
                        return 0;
                }
                *end = 0;
                return parse_section(p, line + 1);
        }
        eq = strchr(line, '=');
        if (!eq) {
                bad(p, "expected Key=Value, got '%s'", line);
                return 0;
        }
        *eq = 0;
        key = strip(line);
        value = strip(eq + 1);
        switch (p->section) {
        case SECTION_MANAGER:
                return parse_manager(p, key, value);
        case SECTION_REGISTRATION:
                return parse_registration(p, key, value);
        case SECTION_MERGE_GROUP:
                return parse_merge_group(p, key, value);
        default:
                bad(p, "%s= outside a known section", key);
                return 0;
        }
}

int config_load(const char *path, bool must_exist, Config **ret) {
        _cleanup_(config_freep) Config *c = NULL;
        _cleanup_fclose_ FILE *f = NULL;
        Parser p = {};
        char buf[4096];
        int r;

        if (n_tunables > ELEMENTSOF(c->values))
                return -E2BIG;
        c = calloc(1, sizeof(*c));
        if (!c || !(c->path = strdup(path)))
                return -ENOMEM;
        f = fopen(path, "re");
        if (!f) {
                if (errno == ENOENT && !must_exist) {
                        *ret = TAKE_PTR(c);
                        return 0;
                }
                return log_error_errno(-errno, "Cannot read config file '%s': %m", path);
        }
        p.c = c;
        while (fgets(buf, sizeof(buf), f)) {
                p.line++;
                if (!strchr(buf, '\n') && !feof(f)) {
                        bad(&p, "line longer than %zu bytes", sizeof(buf) - 2);
                        return -EINVAL;
                }
                r = parse_line(&p, buf);
                if (r < 0)
                        return log_error_errno(r, "%s:%u: %m", path, p.line);
        }
        check_rule(&p);
        if (p.errors)
                return -EINVAL;
        *ret = TAKE_PTR(c);
        return 0;
}

Config *config_free(Config *c) {
        if (!c)
                return NULL;
        for (size_t i = 0; i < c->n_rules; i++) {
                for (unsigned j = 0; j < c->rules[i].n_names; j++)
                        free(c->rules[i].names[j]);
                for (unsigned j = 0; j < c->rules[i].n_uuids; j++)
                        free(c->rules[i].uuids[j]);
        }
        free(c->rules);
        free(c->allow_group);
        free(c->socket);
        free(c->domain_dir);
        free(c->path);
        free(c);
        return NULL;
}

int config_apply(const Config *c, Manager *m) {
        struct group *g;
        char err[512];
        int r;

        for (size_t i = 0; i < n_tunables; i++) {
                if (!c->lines[i])
                        continue;
                r = tunable_set(m, &tunables[i], c->values[i], err, sizeof(err));
                if (r < 0)
                        return log_error_errno(r, "%s:%u: %s", c->path, c->lines[i], err);
        }
        if (c->allow_group) {
                g = getgrnam(c->allow_group);
                if (!g)
                        return log_error_errno(-ENOENT, "%s:%u: unknown group '%s' for AllowGroup=", c->path,
                                               c->allow_group_line, c->allow_group);
                m->allowed_gid = g->gr_gid;
        }
        return 0;
}

const char *config_socket(const Config *c) {
        return c->socket;
}

const char *config_domain_dir(const Config *c) {
        return c && c->domain_dir ? c->domain_dir : DEDUP_DOMAIN_DIR;
}

bool config_has_rules(const Config *c) {
        return c && c->n_rules > 0;
}

uint16_t config_merge_group(const Config *c, const char *name, const char *uuid) {
        for (size_t i = 0; c && i < c->n_rules; i++) {
                const MergeRule *rule = &c->rules[i];
                for (unsigned j = 0; j < rule->n_names; j++)
                        if (fnmatch(rule->names[j], name, 0) == 0)
                                return (uint16_t) rule->group;
                for (unsigned j = 0; j < rule->n_uuids; j++)
                        if (uuid[0] && strcasecmp(rule->uuids[j], uuid) == 0)
                                return (uint16_t) rule->group;
        }
        return 0;
}
