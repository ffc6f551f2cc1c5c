/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Writes the seed corpus of fuzz-proto: one valid message of every type
 * (first byte: the fd count it needs) into the directory given as argv[1].
 * The checked-in tests/fuzz/corpus/proto/ was made with it:
 *   tests/fuzz/fuzz-proto-seeds tests/fuzz/corpus/proto
 */

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dedup-proto.h"

static union {
        uint64_t align;
        uint8_t bytes[DEDUP_PROTO_MAX_MSG];
} buf;

static int write_seed(const char *dir, const char *name, uint8_t nfds) {
        const struct dedup_msg_header *hdr = (const void *) buf.bytes;
        char path[4096];
        FILE *f;

        if (dedup_proto_validate(buf.bytes, hdr->length, nfds, NULL) < 0) {
                fprintf(stderr, "seed %s does not validate\n", name);
                return -EINVAL;
        }
        snprintf(path, sizeof path, "%s/%s", dir, name);
        f = fopen(path, "we");
        if (!f) {
                fprintf(stderr, "%s: %m\n", path);
                return -errno;
        }
        fputc(nfds, f);
        fwrite(buf.bytes, 1, hdr->length, f);
        return fclose(f) == 0 ? 0 : -errno;
}

int main(int argc, char **argv) {
        int r = 0;

        if (argc != 2) {
                fprintf(stderr, "usage: %s DIR\n", argv[0]);
                return EXIT_FAILURE;
        }
        const char *dir = argv[1];

        memset(&buf, 0, sizeof buf);
        struct dedup_msg_hello *hello = (void *) buf.bytes;
        dedup_proto_init_header(&hello->hdr, DEDUP_MSG_HELLO, sizeof *hello, 1);
        strcpy(hello->name, "vm-1");
        strcpy(hello->uuid, "0b1e6a9c-3d5f-4a7e-9c2b-1f0e3d4c5b6a");
        hello->pid = 42;
        r |= write_seed(dir, "hello", 0);

        memset(&buf, 0, sizeof buf);
        struct dedup_msg_welcome *w = (void *) buf.bytes;
        dedup_proto_init_header(&w->hdr, DEDUP_MSG_WELCOME, sizeof *w, 1);
        w->vm_id = 3;
        r |= write_seed(dir, "welcome", 0);

        memset(&buf, 0, sizeof buf);
        struct dedup_msg_region *reg = (void *) buf.bytes;
        dedup_proto_init_header(&reg->hdr, DEDUP_MSG_REGION, sizeof *reg, 2);
        reg->size = 1 << 30;
        reg->hva = 0x7f0000000000;
        r |= write_seed(dir, "region", 2);

        memset(&buf, 0, sizeof buf);
        struct dedup_msg_pool *pool = (void *) buf.bytes;
        dedup_proto_init_header(&pool->hdr, DEDUP_MSG_POOL, sizeof *pool, 1);
        pool->pool_id = 1;
        pool->size = 64 << 20;
        r |= write_seed(dir, "pool", 1);

        for (int reply = 0; reply <= 1; reply++) {
                memset(&buf, 0, sizeof buf);
                struct dedup_msg_remap *m = (void *) buf.bytes;
                dedup_proto_init_header(&m->hdr, reply ? DEDUP_MSG_REMAP_REPLY : DEDUP_MSG_REMAP,
                                        (uint32_t) dedup_msg_remap_size(3), 5);
                m->count = 3;
                m->entries[0] = (struct dedup_remap_entry) { 0, 1, 4096, 8192, 1, reply ? DEDUP_REMAP_DONE : 0, 7 };
                m->entries[1] = (struct dedup_remap_entry) { 1, DEDUP_POOL_ZERO, 0, 0, 512, reply ? DEDUP_REMAP_ABORTED : 0, 8 };
                m->entries[2] = (struct dedup_remap_entry) { 0, 2, 1 << 20, 0, 16, reply ? DEDUP_REMAP_FAILED : 0, 9 };
                r |= write_seed(dir, reply ? "remap-reply" : "remap", 0);
        }

        /* MERGED_KEPT: pool named by inode in cookie; the last may be empty. */
        for (int last = 0; last < 2; last++) {
                memset(&buf, 0, sizeof buf);
                struct dedup_msg_remap *m = (void *) buf.bytes;
                m->count = last ? 0 : 2;
                m->flags = last ? DEDUP_KEPT_F_LAST : 0;
                dedup_proto_init_header(&m->hdr, DEDUP_MSG_MERGED_KEPT, (uint32_t) dedup_msg_remap_size(m->count), 9);
                m->entries[0] = (struct dedup_remap_entry) { 0, 0, 0, 4096, 3, 0, 1234 };
                m->entries[1] = (struct dedup_remap_entry) { 1, 0, 1 << 20, 1 << 21, 512, 0, 1234 };
                r |= write_seed(dir, last ? "merged-kept-last" : "merged-kept", 0);
        }

        const enum dedup_msg_type rt[] = { DEDUP_MSG_UNMERGE, DEDUP_MSG_UNMERGED, DEDUP_MSG_WRITTEN,
                                           DEDUP_MSG_ZERO_KEPT };
        const char *rn[] = { "unmerge", "unmerged", "written", "zero-kept" };
        for (int i = 0; i < 4; i++) {
                memset(&buf, 0, sizeof buf);
                struct dedup_msg_ranges *m = (void *) buf.bytes;
                dedup_proto_init_header(&m->hdr, rt[i], (uint32_t) dedup_msg_ranges_size(2), 6);
                m->count = 2;
                m->flags = rt[i] == DEDUP_MSG_UNMERGED ? DEDUP_RANGES_F_REPLY : 0;
                m->ranges[0] = (struct dedup_range) { 0, 1, 0 };
                m->ranges[1] = (struct dedup_range) { 2, 512, 1 << 21 };
                r |= write_seed(dir, rn[i], 0);
        }

        memset(&buf, 0, sizeof buf);
        dedup_proto_init_header((void *) buf.bytes, DEDUP_MSG_BYE, sizeof(struct dedup_msg_header), 9);
        r |= write_seed(dir, "bye", 0);

        memset(&buf, 0, sizeof buf);
        struct dedup_msg_error *e = (void *) buf.bytes;
        dedup_proto_init_header(&e->hdr, DEDUP_MSG_ERROR, sizeof *e, 1);
        e->error = EEXIST;
        strcpy(e->text, "VM 'vm-1' already registered");
        r |= write_seed(dir, "error", 0);

        return r == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
