/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * guest-sim: page layout and content generation (see guest-sim.h).
 *
 * Layout: guest RAM is cut into runs of SIM_RUN_PAGES pages; each group of
 * 100 consecutive runs is dealt a permutation (seeded by the image seed and
 * the group) of 100 slots, and a run's slot decides its kind by the
 * percentages. So the percentages hold exactly per group, kinds are mixed
 * over the whole guest, and two sims with the same image seed and
 * percentages have the same layout. The whole layout is then shifted by
 * --shift pages (wrapping), so image content of image index q sits at page
 * (q + shift) mod n_pages.
 *
 * Content: every non-zero page starts with a 16-byte header naming its
 * origin (tag, index, generation), followed by noise from a 64-bit key
 * derived from the same. Identical keys happen only where intended: image
 * pages of one image seed, and the 8 common blocks.
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "guest-sim.h"

/* Salts keep the different derivations from colliding on equal inputs. */
#define SALT_PERM    UINT64_C(0x5045524d5045524d)
#define SALT_CHURN   UINT64_C(0x434855524e434855)
#define SALT_VARIETY UINT64_C(0x5641524945545956)
#define SALT_KEY     UINT64_C(0x4b45594b45594b45)

/* Image pages: 1 in 64 holds one of SIM_COMMON_BLOCKS blocks that repeat
 * inside a guest (like a guest's many identical pages of 0xff or of a
 * common library); 1 in 8 of the others has a zero tail (the last page of
 * a file in page cache). Both still merge across sims of one image seed. */
#define SIM_COMMON_BLOCKS 8u

static uint64_t content_key(uint64_t seed, unsigned tag, uint64_t index, uint32_t gen) {
        return sim_mix64(sim_mix64(sim_mix64(seed ^ SALT_KEY ^ tag) + index) + gen);
}

const char *sim_kind_name(unsigned kind) {
        static const char *const names[_SIM_KIND_MAX] = {
                [SIM_KIND_UNIQUE] = "unique",
                [SIM_KIND_IMAGE] = "image",
                [SIM_KIND_ZERO] = "zero",
                [SIM_KIND_VOLATILE] = "volatile",
        };
        return kind < _SIM_KIND_MAX ? names[kind] : "?";
}

static unsigned slot_kind(const struct sim_layout *l, unsigned slot) {
        static const unsigned order[] = { SIM_KIND_IMAGE, SIM_KIND_ZERO, SIM_KIND_UNIQUE, SIM_KIND_VOLATILE };
        unsigned edge = 0;

        for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
                edge += l->pct[order[i]];
                if (slot < edge)
                        return order[i];
        }
        return SIM_KIND_UNIQUE; /* the rest */
}

static uint64_t image_variety(const struct sim_layout *l, uint64_t q) {
        return sim_mix64(l->image_seed ^ SALT_VARIETY ^ (q * UINT64_C(0x9e3779b97f4a7c15)));
}

int sim_layout_init(struct sim_layout *l) {
        uint64_t n_runs = (l->n_pages + SIM_RUN_PAGES - 1) / SIM_RUN_PAGES;
        uint8_t *run_kind, *kinds;
        unsigned perm[100];

        if (l->n_pages == 0)
                return -EINVAL;

        run_kind = malloc(n_runs);
        kinds = malloc(l->n_pages);
        if (!run_kind || !kinds) {
                free(run_kind);
                free(kinds);
                return -ENOMEM;
        }

        for (uint64_t r = 0; r < n_runs; r++) {
                unsigned slot = r % 100;

                if (slot == 0) {
                        /* Fisher-Yates with a generator seeded per group */
                        uint64_t s = l->image_seed ^ SALT_PERM ^ (r / 100);

                        for (unsigned i = 0; i < 100; i++)
                                perm[i] = i;
                        for (unsigned i = 99; i > 0; i--) {
                                unsigned j;

                                s += UINT64_C(0x9e3779b97f4a7c15);
                                j = sim_mix64(s) % (i + 1);
                                unsigned t = perm[i];
                                perm[i] = perm[j];
                                perm[j] = t;
                        }
                }
                run_kind[r] = slot_kind(l, perm[slot]);
        }

        memset(l->count, 0, sizeof(l->count));
        l->n_churn = l->n_common = l->n_partial = 0;
        for (uint64_t p = 0; p < l->n_pages; p++) {
                uint64_t q = (p + l->n_pages - l->shift) % l->n_pages;
                unsigned k = run_kind[q / SIM_RUN_PAGES];

                kinds[p] = k;
                l->count[k]++;
                if (k == SIM_KIND_IMAGE) {
                        uint64_t h = image_variety(l, q);

                        if (h % 64 == 1)
                                l->n_common++;
                        else if (h % 8 == 0)
                                l->n_partial++;
                }
                if ((k == SIM_KIND_IMAGE || k == SIM_KIND_ZERO) &&
                    sim_mix64(l->seed ^ SALT_CHURN ^ p) % 100 < l->churn_pct) {
                        kinds[p] |= SIM_KIND_CHURN;
                        l->n_churn++;
                }
        }

        free(run_kind);
        l->kinds = kinds;
        return 0;
}

void sim_layout_done(struct sim_layout *l) {
        free(l->kinds);
        l->kinds = NULL;
}

static void content_set(struct sim_content *c, unsigned tag, uint64_t seed, uint64_t index, uint32_t gen) {
        c->key = content_key(seed, tag, index, gen);
        c->w0 = SIM_MAGIC << 32 | (uint64_t) tag << 28 | (gen & 0x0fffffffu);
        c->w1 = index;
        c->end = SIM_PAGE_WORDS;
}

void sim_content_describe(const struct sim_layout *l, uint64_t page, uint32_t gen, struct sim_content *ret) {
        unsigned kind = sim_layout_kind(l, page);
        uint64_t q, h;

        /* Image and zero pages: an even generation is the original content
         * (a churn write may restore it), an odd one is new content. */
        if ((kind == SIM_KIND_IMAGE || kind == SIM_KIND_ZERO) && (gen & 1))
                kind = SIM_KIND_UNIQUE;

        switch (kind) {
        case SIM_KIND_ZERO:
                *ret = (struct sim_content) { .end = 0 };
                return;
        case SIM_KIND_IMAGE:
                q = (page + l->n_pages - l->shift) % l->n_pages;
                h = image_variety(l, q);
                if (h % 64 == 1) {
                        content_set(ret, SIM_TAG_COMMON, l->image_seed, (h >> 8) % SIM_COMMON_BLOCKS, 0);
                        return;
                }
                content_set(ret, SIM_TAG_IMAGE, l->image_seed, q, 0);
                if (h % 8 == 0)
                        ret->end = 2 + (h >> 16) % (SIM_PAGE_WORDS - 2);
                return;
        default: /* unique, volatile, churned */
                content_set(ret, SIM_TAG_UNIQUE, l->seed, page, gen);
                return;
        }
}

void sim_content_fill(void *page, const struct sim_content *c) {
        uint64_t *w = page;

        if (c->end == 0) {
                memset(page, 0, SIM_PAGE_SIZE);
                return;
        }
        w[0] = c->w0;
        w[1] = c->w1;
        for (unsigned i = 2; i < c->end; i++)
                w[i] = sim_noise(c->key, i);
        for (unsigned i = c->end; i < SIM_PAGE_WORDS; i++)
                w[i] = 0;
}

static uint64_t expected_word(const struct sim_content *c, unsigned i) {
        if (i >= c->end)
                return 0;
        if (i == 0)
                return c->w0;
        if (i == 1)
                return c->w1;
        return sim_noise(c->key, i);
}

uint8_t sim_content_byte(const struct sim_content *c, unsigned offset) {
        uint64_t w = expected_word(c, offset / 8);

        return (uint8_t) (w >> (8 * (offset % 8))); /* little endian, like the stores */
}

int sim_content_check(const void *page, const struct sim_content *c) {
        const uint64_t *w = page;
        uint64_t d = 0;

        /* Fast path: OR together all differences, no branches. */
        if (c->end == 0) {
                for (unsigned i = 0; i < SIM_PAGE_WORDS; i++)
                        d |= w[i];
        } else {
                d = (w[0] ^ c->w0) | (w[1] ^ c->w1);
                for (unsigned i = 2; i < c->end; i++)
                        d |= w[i] ^ sim_noise(c->key, i);
                for (unsigned i = c->end; i < SIM_PAGE_WORDS; i++)
                        d |= w[i];
        }
        if (d == 0)
                return -1;

        /* Slow path: locate the first differing byte. */
        const uint8_t *b = page;
        for (unsigned off = 0; off < SIM_PAGE_SIZE; off++)
                if (b[off] != sim_content_byte(c, off))
                        return (int) off;

        return -1; /* the page changed under us to the right content */
}

void sim_content_identify(const void *page, char *buf, size_t size) {
        const uint64_t *w = page;
        static const char *const tags[] = { "?", "unique", "image", "common" };
        uint64_t any = 0;

        if (w[0] >> 32 == SIM_MAGIC) {
                unsigned tag = (w[0] >> 28) & 0xf;

                snprintf(buf, size, "%s:%llu:%u", tag < 4 ? tags[tag] : "?",
                         (unsigned long long) w[1], (unsigned) (w[0] & 0x0fffffffu));
                return;
        }
        for (unsigned i = 0; i < SIM_PAGE_WORDS; i++)
                any |= w[i];
        snprintf(buf, size, "%s", any ? "foreign" : "zero");
}
