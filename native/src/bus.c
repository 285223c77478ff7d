/* bus.c — port-I/O and MMIO dispatch by address range.
 *
 * Preconditions: registration and moves happen while no other thread
 * dispatches on the same bus (VM setup, or the one vCPU that programs a
 * PCI BAR); the table is a fixed array, so a lookup never sees freed
 * memory. Ranges never overlap. */
#include <errno.h>
#include <string.h>

#include "ovm.h"

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	/* [a, a+alen) and [b, b+blen), without computing a+alen (may wrap). */
	return a < b ? b - a < alen : a - b < blen;
}

static int check_free(struct ovm_bus *bus, int skip, uint64_t base, uint64_t len, const char *name,
		      struct ovm_err *err)
{
	if (len == 0 || base + len - 1 < base)
		return ovm_errf(err, EINVAL, "bus: range %s at 0x%llx len 0x%llx is empty or wraps",
				name ? name : "?", (unsigned long long)base, (unsigned long long)len);
	for (int i = 0; i < bus->n; i++) {
		if (i == skip)
			continue;
		if (overlaps(base, len, bus->r[i].base, bus->r[i].len))
			return ovm_errf(err, EEXIST, "bus: %s at 0x%llx+0x%llx overlaps %s at 0x%llx+0x%llx",
					name ? name : "?", (unsigned long long)base, (unsigned long long)len,
					bus->r[i].name ? bus->r[i].name : "?", (unsigned long long)bus->r[i].base,
					(unsigned long long)bus->r[i].len);
	}
	return 0;
}

int ovm_bus_register(struct ovm_bus *bus, uint64_t base, uint64_t len, ovm_io_fn fn, void *opaque,
		     const char *name, struct ovm_err *err)
{
	if (!fn)
		return ovm_errf(err, EINVAL, "bus: %s has no handler", name ? name : "?");
	if (bus->n >= OVM_BUS_MAX)
		return ovm_errf(err, ENOSPC, "bus: no room for %s (%d ranges)", name ? name : "?", OVM_BUS_MAX);
	int rc = check_free(bus, -1, base, len, name, err);
	if (rc)
		return rc;
	bus->r[bus->n++] = (struct ovm_io_range){base, len, fn, opaque, name};
	return 0;
}

int ovm_bus_move(struct ovm_bus *bus, uint64_t old_base, void *opaque, uint64_t new_base, struct ovm_err *err)
{
	for (int i = 0; i < bus->n; i++) {
		if (bus->r[i].base != old_base || bus->r[i].opaque != opaque)
			continue;
		int rc = check_free(bus, i, new_base, bus->r[i].len, bus->r[i].name, err);
		if (rc)
			return rc;
		bus->r[i].base = new_base;
		return 0;
	}
	return ovm_errf(err, ENOENT, "bus: no range at 0x%llx for this device", (unsigned long long)old_base);
}

/* An access must lie wholly inside one range; one that straddles an edge
 * is treated as unhandled (reads all ones). */
int ovm_bus_dispatch(struct ovm_bus *bus, uint64_t addr, uint8_t *data, uint32_t len, bool is_write)
{
	if (!is_write)
		memset(data, 0xff, len);
	for (int i = 0; i < bus->n; i++) {
		struct ovm_io_range *r = &bus->r[i];
		if (addr < r->base || addr - r->base >= r->len)
			continue;
		uint64_t off = addr - r->base;
		if (len > r->len - off)
			return 1;
		return r->fn(r->opaque, off, data, len, is_write);
	}
	return 1;
}
