/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * Logging, after systemd's log.h: log_<level>(fmt, ...) and
 * log_<level>_errno(r, fmt, ...) write one line and the _errno forms return
 * -abs(r), so a caller writes
 * `return log_error_errno(r, "Failed to open '%s': %m", path);`. errno is set
 * to abs(r) while formatting, so %m names r.
 *
 * Targets: "console" writes stderr, each line starting with "<N>" when
 * stderr is the journal stream systemd gave us ($JOURNAL_STREAM) so journald
 * keeps the priority, else with the level's name; "journal" sends to
 * journald directly; "null" drops everything. The maximum level starts as
 * $DEDUPD_LOG_LEVEL (a syslog level name or number, default "info"); both
 * change at run time through org.freedesktop.LogControl1.
 */

#include <syslog.h>

#include "dedup-util.h"

#define _printf_(a, b) __attribute__((format(printf, a, b)))

/* "err", "warning", "debug", a digit 0-7... -> LOG_*; -EINVAL if unknown. */
int log_level_from_string(const char *s);
const char *log_level_to_string(int level);
int log_get_max_level(void);
void log_set_max_level(int level);

/* "console", "journal" or "null". */
const char *log_get_target(void);
int log_set_target(const char *target);

_printf_(3, 4) int log_internal(int level, int error, const char *fmt, ...);

#define log_full_errno(level, error, ...) log_internal((level), (error), __VA_ARGS__)
#define log_debug_errno(error, ...) log_full_errno(LOG_DEBUG, (error), __VA_ARGS__)
#define log_info_errno(error, ...) log_full_errno(LOG_INFO, (error), __VA_ARGS__)
#define log_notice_errno(error, ...) log_full_errno(LOG_NOTICE, (error), __VA_ARGS__)
#define log_warning_errno(error, ...) log_full_errno(LOG_WARNING, (error), __VA_ARGS__)
#define log_error_errno(error, ...) log_full_errno(LOG_ERR, (error), __VA_ARGS__)

#define log_debug(...) (void) log_full_errno(LOG_DEBUG, 0, __VA_ARGS__)
#define log_info(...) (void) log_full_errno(LOG_INFO, 0, __VA_ARGS__)
#define log_notice(...) (void) log_full_errno(LOG_NOTICE, 0, __VA_ARGS__)
#define log_warning(...) (void) log_full_errno(LOG_WARNING, 0, __VA_ARGS__)
#define log_error(...) (void) log_full_errno(LOG_ERR, 0, __VA_ARGS__)
