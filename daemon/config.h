/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * /etc/dedupd/dedupd.conf (dedupd.conf(5)): startup values of the
 * tunables ([Manager], checked by tunable_parse() like everywhere else),
 * who may register ([Registration]) and merge group rules ([MergeGroup],
 * first match wins, group 0 for VMs no rule matches).
 */

#include <stdbool.h>
#include <stdint.h>

typedef struct Manager Manager;
typedef struct Config Config;

/* Parse path. Every error is logged as "PATH:LINE: what" and then -EINVAL
 * is returned; a missing file is -ENOENT if must_exist, else an empty
 * config. */
int config_load(const char *path, bool must_exist, Config **ret);
Config *config_free(Config *c);
static inline void config_freep(Config **c) {
        config_free(*c);
}

/* Apply [Manager] and [Registration] AllowGroup to m. */
int config_apply(const Config *c, Manager *m);
/* [Registration] Socket=, or NULL. */
const char *config_socket(const Config *c);
/* [Registration] DomainDirectory=: where the libvirt hook writes one
 * UUID.conf with a [MergeGroup] per running domain. */
#define DEDUP_DOMAIN_DIR "/run/dedupd/domains"
const char *config_domain_dir(const Config *c);
bool config_has_rules(const Config *c);
/* The group of a VM by the first [MergeGroup] matching its name (a glob)
 * or uuid; 0 if none does. */
uint16_t config_merge_group(const Config *c, const char *name, const char *uuid);
