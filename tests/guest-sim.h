/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/*
 * guest-sim: content model shared by the simulator's threads.
 *
 * Every byte of guest RAM is a pure function of (layout, page, generation):
 * nothing about the expected content is stored, so the verifier can check
 * every byte of every page against a value it regenerates, and a page that
 * dedupd maps from the wrong place, loses, or lets a write through at the
 * wrong moment shows up as a MISMATCH.
 *
 * The layout (which page holds which kind of content) is a function of the
 * image seed and the percentages, computed once. The generation of a page
 * comes from its seqlock version counter (see guest-sim.c): a page's
 * generation is version / 2, and an odd version means "being written".
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SIM_PAGE_SIZE 4096u
#define SIM_PAGE_WORDS (SIM_PAGE_SIZE / 8u)

/* Layout is assigned in runs of this many pages, as a guest's page cache
 * and heaps come in runs: adjacent duplicates let dedupd collapse a run of
 * merged pages into one VMA. */
#define SIM_RUN_PAGES 16u

/* What a page holds when its generation is 0 (its layout kind). */
enum sim_kind {
        SIM_KIND_UNIQUE = 0,    /* f(seed, page): nobody else has it */
        SIM_KIND_IMAGE,         /* f(image_seed, image index): shared "OS image" */
        SIM_KIND_ZERO,          /* all zero */
        SIM_KIND_VOLATILE,      /* f(seed, page, generation), rewritten all the time */
        _SIM_KIND_MAX,
};

/* Bit in sim_layout.kinds[]: writers also rewrite this image or zero page. */
#define SIM_KIND_CHURN 0x80u
#define SIM_KIND_MASK 0x7fu

/* Content tags written into the header word of every non-zero page, so a
 * mismatch report can say whose content was found. */
enum sim_tag {
        SIM_TAG_UNIQUE = 1,     /* unique, volatile and churned pages: index is the page */
        SIM_TAG_IMAGE = 2,      /* index is the image index */
        SIM_TAG_COMMON = 3,     /* a few image pages repeat one of 8 blocks: index is the block */
};

/* Header word 0 is SIM_MAGIC << 32 | tag << 28 | (generation & 0x0fffffff);
 * header word 1 is the index. The rest of the page is noise from a key. */
#define SIM_MAGIC UINT64_C(0x6753494d) /* "gSIM" */

struct sim_layout {
        uint64_t n_pages;
        uint64_t shift;         /* image content of layout position q sits at page q + shift */
        uint64_t image_seed;
        uint64_t seed;
        unsigned pct[_SIM_KIND_MAX];
        unsigned churn_pct;
        uint8_t *kinds;         /* n_pages entries: enum sim_kind | SIM_KIND_CHURN */
        uint64_t count[_SIM_KIND_MAX];
        uint64_t n_churn;
        uint64_t n_common;      /* image pages holding one of the common blocks */
        uint64_t n_partial;     /* image pages with a zero tail */
};

/* Expected content of one page, resolved from (kind, seeds, index, generation). */
struct sim_content {
        uint64_t key;           /* noise key */
        uint64_t w0, w1;        /* header words */
        unsigned end;           /* words [end, 512) are zero; 0 means the whole page is zero */
};

static inline uint64_t sim_mix64(uint64_t x) {
        /* splitmix64 finaliser */
        x ^= x >> 30;
        x *= UINT64_C(0xbf58476d1ce4e5b9);
        x ^= x >> 27;
        x *= UINT64_C(0x94d049bb133111eb);
        x ^= x >> 31;
        return x;
}

/* Noise word i of a page with this key: counter based (every word
 * independent, so the CPU overlaps them), one multiply per word. */
static inline uint64_t sim_noise(uint64_t key, unsigned i) {
        uint64_t x = key + (uint64_t) i * UINT64_C(0x9e3779b97f4a7c15);
        x ^= x >> 31;
        x *= UINT64_C(0xd6e8feb86659fd93);
        x ^= x >> 29;
        return x;
}

int sim_layout_init(struct sim_layout *l);
void sim_layout_done(struct sim_layout *l);

static inline unsigned sim_layout_kind(const struct sim_layout *l, uint64_t page) {
        return l->kinds[page] & SIM_KIND_MASK;
}

static inline bool sim_layout_writable(const struct sim_layout *l, uint64_t page) {
        return (l->kinds[page] & SIM_KIND_CHURN) || sim_layout_kind(l, page) == SIM_KIND_VOLATILE;
}

const char *sim_kind_name(unsigned kind);

void sim_content_describe(const struct sim_layout *l, uint64_t page, uint32_t gen, struct sim_content *ret);
void sim_content_fill(void *page, const struct sim_content *c);

/* -1 if the page matches, else the byte offset of the first difference. */
int sim_content_check(const void *page, const struct sim_content *c);

/* Byte `offset` of the expected content. */
uint8_t sim_content_byte(const struct sim_content *c, unsigned offset);

/* Writes "tag:index:gen" or "zero" or "foreign" describing what a page
 * actually holds, judged by its header. */
void sim_content_identify(const void *page, char *buf, size_t size);

/* ---- options (guest-sim-options.c) ---------------------------------- */

/* How many MISMATCH lines are printed; all are counted. */
#define SIM_MISMATCH_REPORTS 8

/* A write that found its page write-protected by a userfaultfd (memfd
 * backend) and left it unprotected faulted: a copy-on-write break of a
 * merged page, or a write the daemon's merge held. Such writes go into a
 * latency histogram of 1 us buckets up to SIM_FAULT_HIST_USEC. */
#define SIM_FAULT_HIST_USEC 1024u

/* Stats file refresh when --stats-file is given without --stats-interval-ms. */
#define SIM_STATS_FILE_DEFAULT_MSEC 500

enum sim_backend {
        SIM_BACKEND_MEMFD,
        SIM_BACKEND_ANON_KSM,
};

struct sim_options {
        char name[64];
        const char *uuid;               /* NULL: none */
        const char *socket_path;        /* NULL: library default */
        enum sim_backend backend;
        uint64_t size_mib;
        unsigned n_writers;
        uint64_t write_rate;            /* writes per second per writer, 0 = unthrottled */
        uint64_t duration_ms;           /* 0 = until SIGTERM/SIGINT */
        uint64_t churn_after_ms;        /* churn writes begin this long after start */
        uint64_t writes_after_ms;       /* no writes at all before this long after start */
        uint64_t max_writes;            /* per writer, 0 = no limit */
        uint64_t verify_interval_ms;    /* pause between verify passes, 0 = continuous */
        uint64_t stats_interval_ms;     /* stdout stats line period, 0 = none */
        const char *stats_file;
        const char *ready_file;
        uint64_t hang_timeout_ms;       /* 0 = no watchdog */
        bool require_daemon;
        bool no_dedup;
        bool seed_set;
        int64_t corrupt_after_ms;       /* hidden self-test fault, -1 = off; main thread */
        int64_t stall_after_ms;         /* hidden self-test fault, -1 = off; writer 0 once started */
};

/* Parses argv into o and the layout parameters of l (percentages, seeds,
 * shift, churn; sets l->n_pages), both preset with defaults. 0 to run, 1
 * after --help, -EINVAL on a usage error (already printed). */
int sim_options_parse(struct sim_options *o, struct sim_layout *l, int argc, char *argv[]);
