/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for dedup_proto_validate(): the first input byte is the
 * number of fds that "arrived" with the message, the rest is the message.
 * Whatever validation accepts must be safe for the handlers to walk: the
 * target re-reads every entry of an accepted batch and checks the rules a
 * handler relies on.
 */

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dedup-proto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_accepted(const uint8_t *msg, size_t len) {
        const struct dedup_msg_header *hdr = (const void *) msg;
        volatile uint64_t sink = 0;

        if (hdr->length != len || !dedup_msg_type_to_string(hdr->type))
                __builtin_trap();

        switch (hdr->type) {
        case DEDUP_MSG_REMAP:
        case DEDUP_MSG_REMAP_REPLY:
        case DEDUP_MSG_MERGED_KEPT: {
                const struct dedup_msg_remap *m = (const void *) msg;
                uint32_t min = hdr->type == DEDUP_MSG_MERGED_KEPT && m->flags == DEDUP_KEPT_F_LAST ? 0 : 1;
                if (dedup_msg_remap_size(m->count) != len || m->count < min || m->count > DEDUP_PROTO_MAX_ENTRIES)
                        __builtin_trap();
                for (uint32_t i = 0; i < m->count; i++) {
                        const struct dedup_remap_entry *e = &m->entries[i];
                        if (e->npages < 1 || e->npages > DEDUP_PROTO_MAX_RUN || e->offset % 4096 ||
                            e->pool_offset % 4096)
                                __builtin_trap();
                        sink += e->offset + e->pool_offset + e->cookie;
                }
                break;
        }
        case DEDUP_MSG_UNMERGE:
        case DEDUP_MSG_UNMERGED:
        case DEDUP_MSG_WRITTEN:
        case DEDUP_MSG_ZERO_KEPT: {
                const struct dedup_msg_ranges *m = (const void *) msg;
                if (dedup_msg_ranges_size(m->count) != len)
                        __builtin_trap();
                for (uint32_t i = 0; i < m->count; i++) {
                        if (m->ranges[i].npages < 1 || m->ranges[i].npages > DEDUP_PROTO_MAX_RUN)
                                __builtin_trap();
                        sink += m->ranges[i].offset + m->ranges[i].npages;
                }
                break;
        }
        case DEDUP_MSG_HELLO: {
                const struct dedup_msg_hello *m = (const void *) msg;
                size_t n = strlen(m->name);
                if (n < 1 || n > 63 || dedup_proto_check_name(m->name) < 0)
                        __builtin_trap();
                sink += n + strlen(m->uuid);
                break;
        }
        case DEDUP_MSG_ERROR: {
                const struct dedup_msg_error *m = (const void *) msg;
                sink += strlen(m->text);
                break;
        }
        default:
                break;
        }
        (void) sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
        const char *why = NULL;
        size_t nfds, len;
        uint8_t *msg;

        if (size < 1)
                return 0;
        nfds = data[0];
        len = size - 1;
        /* Receive buffers are aligned; malloc's copy is too, and exactly
         * sized, so that ASan sees any read past the message. */
        msg = malloc(len ? len : 1);
        if (!msg)
                return 0;
        memcpy(msg, data + 1, len);

        if (dedup_proto_validate(msg, len, nfds, &why) < 0) {
                if (!why || !*why)
                        __builtin_trap();
        } else
                check_accepted(msg, len);
        free(msg);
        return 0;
}
