/* SPDX-License-Identifier: LGPL-2.1-or-later */
#pragma once

/* Connecting to a D-Bus given by address, for dedupd (--bus=ADDRESS) and
 * dedupctl (--address=ADDRESS) alike. */

#include <stdbool.h>
#include <systemd/sd-bus.h>

static inline int bus_open_address(const char *address, sd_bus **ret) {
        sd_bus *bus = NULL;
        int r;

        r = sd_bus_new(&bus);
        if (r >= 0)
                r = sd_bus_set_address(bus, address);
        if (r >= 0)
                r = sd_bus_set_bus_client(bus, true);
        if (r >= 0)
                r = sd_bus_start(bus);
        if (r < 0) {
                sd_bus_unref(bus);
                return r;
        }
        *ret = bus;
        return 0;
}
