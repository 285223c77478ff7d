/* test_bus.c — register, overlap, move, dispatch, unhandled reads. */
#include <errno.h>
#include <string.h>

#include "ovm.h"
#include "check.h"

struct dev {
	uint64_t last_off;
	uint32_t last_len;
	uint8_t last[8];
	int writes, reads;
};

static int dev_io(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct dev *d = opaque;
	d->last_off = off;
	d->last_len = len;
	if (is_write) {
		memcpy(d->last, data, len);
		d->writes++;
	} else {
		data[0] = 0x42; /* fills one byte only: the rest must stay 0xff */
		d->reads++;
	}
	return 0;
}

static int dev_fail(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	(void)opaque, (void)off, (void)data, (void)len, (void)is_write;
	return -EIO;
}

int main(void)
{
	struct ovm_bus bus = {0};
	struct ovm_err e = {0};
	struct dev a = {0}, b = {0};
	CHECK(ovm_bus_register(&bus, 0x3f8, 8, dev_io, &a, "com1", &e) == 0);
	CHECK(ovm_bus_register(&bus, 0x2f8, 8, dev_io, &b, "com2", &e) == 0);
	CHECK(ovm_bus_register(&bus, 0x3fc, 8, dev_io, &b, "clash", &e) == -EEXIST);
	CHECK(strstr(e.msg, "clash") && strstr(e.msg, "com1"), "%s", e.msg);
	CHECK(ovm_bus_register(&bus, 0x3f0, 9, dev_io, &b, "clash2", &e) == -EEXIST, "touches one byte");
	CHECK(ovm_bus_register(&bus, 0x3f0, 8, dev_io, &b, "adjacent", &e) == 0);
	CHECK(ovm_bus_register(&bus, 0x100, 0, dev_io, &b, "empty", &e) == -EINVAL);
	CHECK(ovm_bus_register(&bus, UINT64_MAX - 2, 8, dev_io, &b, "wraps", &e) == -EINVAL);
	CHECK(ovm_bus_register(&bus, 0x500, 8, NULL, &b, "nofn", &e) == -EINVAL);
	CHECK(ovm_bus_register(&bus, 0x600, 4, dev_fail, &b, "fails", &e) == 0);

	uint8_t d[8] = {1, 2, 3, 4};
	CHECK(ovm_bus_dispatch(&bus, 0x3f9, d, 1, true) == 0);
	CHECK(a.writes == 1 && a.last_off == 1 && a.last_len == 1 && a.last[0] == 1);
	memset(d, 0, sizeof d);
	CHECK(ovm_bus_dispatch(&bus, 0x3fc, d, 4, false) == 0);
	CHECK(a.reads == 1 && a.last_off == 4 && d[0] == 0x42 && d[1] == 0xff && d[3] == 0xff);
	CHECK(ovm_bus_dispatch(&bus, 0x3fe, d, 4, false) == 1, "straddles the end: unhandled");
	CHECK(d[0] == 0xff && d[3] == 0xff && a.reads == 1);
	CHECK(ovm_bus_dispatch(&bus, 0x80, d, 2, false) == 1 && d[0] == 0xff && d[1] == 0xff);
	CHECK(ovm_bus_dispatch(&bus, 0x80, d, 2, true) == 1);
	CHECK(ovm_bus_dispatch(&bus, 0x601, d, 1, true) == -EIO, "handler faults pass through");

	/* Move (a BAR reprogrammed). */
	CHECK(ovm_bus_move(&bus, 0x2f8, &a, 0x1000, &e) == -ENOENT, "wrong opaque");
	CHECK(ovm_bus_move(&bus, 0x2f8, &b, 0x3f4, &e) == -EEXIST);
	CHECK(ovm_bus_move(&bus, 0x2f8, &b, 0x2fc, &e) == 0, "may overlap its own old place");
	CHECK(ovm_bus_move(&bus, 0x2fc, &b, 0x1000, &e) == 0);
	CHECK(ovm_bus_dispatch(&bus, 0x2f8, d, 1, true) == 1, "old place is empty");
	CHECK(ovm_bus_dispatch(&bus, 0x1007, d, 1, true) == 0 && b.last_off == 7);

	/* Fill the table. */
	struct ovm_bus full = {0};
	int ok = 1;
	for (int i = 0; i < OVM_BUS_MAX; i++)
		ok &= ovm_bus_register(&full, 0x10000 + i * 16ull, 16, dev_io, &a, "r", &e) == 0;
	CHECK(ok);
	CHECK(ovm_bus_register(&full, 0x90000, 16, dev_io, &a, "extra", &e) == -ENOSPC);
	/* 64-bit MMIO high addresses. */
	CHECK(ovm_bus_register(&bus, 0xFFFFFFFFFFFFF000ull, 0x1000, dev_io, &a, "top", &e) == 0);
	CHECK(ovm_bus_dispatch(&bus, UINT64_MAX, d, 1, true) == 0 && a.last_off == 0xfff);
	return check_done("test_bus");
}
