/* test_mem.c — ovm_gpa bounds, the MMIO hole and overflow; ovm_buf/ovm_rd. */
#include <errno.h>
#include <string.h>
#include <sys/mman.h>

#include "ovm.h"
#include "check.h"

#define GiB (1ull << 30)
#define MiB (1ull << 20)

static void test_small(void)
{
	static uint8_t ram[64 * 1024];
	struct ovm_mem m = {ram, sizeof ram};
	CHECK(ovm_gpa(&m, 0, 1) == ram);
	CHECK(ovm_gpa(&m, 0, sizeof ram) == ram);
	CHECK(ovm_gpa(&m, sizeof ram - 1, 1) == ram + sizeof ram - 1);
	CHECK(ovm_gpa(&m, sizeof ram, 0) == ram + sizeof ram, "len 0 at the end is allowed");
	CHECK(ovm_gpa(&m, sizeof ram, 1) == NULL);
	CHECK(ovm_gpa(&m, sizeof ram + 1, 0) == NULL);
	CHECK(ovm_gpa(&m, 1, sizeof ram) == NULL);
	CHECK(ovm_gpa(&m, 16, UINT64_MAX) == NULL, "gpa+len wraps");
	CHECK(ovm_gpa(&m, UINT64_MAX, 2) == NULL, "gpa+len wraps");
	CHECK(ovm_gpa(&m, UINT64_MAX - 4, 8) == NULL);
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END, 1) == NULL, "no slot 1 for small RAM");
	struct ovm_mem none = {NULL, 0};
	CHECK(ovm_gpa(&none, 0, 0) == NULL);
	CHECK(ovm_gpa(NULL, 0, 0) == NULL);
}

static void test_hole(void)
{
	/* 5 GiB of address space, never touched: slot 0 = 3 GiB, slot 1 = 2 GiB. */
	uint64_t size = 5 * GiB;
	uint8_t *host = mmap(NULL, size, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	REQUIRE(host != MAP_FAILED, "mmap 5 GiB PROT_NONE");
	struct ovm_mem m = {host, size};
	uint64_t low = OVM_MMIO_HOLE_START;
	CHECK(ovm_gpa(&m, low - 4, 4) == host + low - 4);
	CHECK(ovm_gpa(&m, low - 4, 8) == NULL, "crosses into the hole");
	CHECK(ovm_gpa(&m, low, 1) == NULL, "hole start");
	CHECK(ovm_gpa(&m, OVM_PCI_MMIO_BASE, 4) == NULL, "PCI BARs");
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END - 1, 1) == NULL, "hole end");
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END, 1) == host + low, "first byte of slot 1");
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END + 2 * GiB - 8, 8) == host + size - 8, "last bytes");
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END + 2 * GiB, 0) == host + size);
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END + 2 * GiB - 8, 9) == NULL, "past the end");
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END + 2 * GiB, 1) == NULL);
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END - 8, 16) == NULL, "hole into slot 1");
	CHECK(ovm_gpa(&m, OVM_MMIO_HOLE_END, UINT64_MAX) == NULL);
	CHECK(ovm_gpa(&m, UINT64_MAX - 1, 1) == NULL);
	/* Exactly 3 GiB: no slot 1. */
	struct ovm_mem m3 = {host, 3 * GiB};
	CHECK(ovm_gpa(&m3, OVM_MMIO_HOLE_END, 0) == NULL);
	CHECK(ovm_gpa(&m3, low, 0) == host + low, "len 0 at the end of slot 0");
	munmap(host, size);
}

static void test_buf(void)
{
	struct ovm_buf b = {0};
	uint32_t x = 0x11223344;
	for (int i = 0; i < 1000; i++)
		CHECK(ovm_buf_put(&b, &x, sizeof x) == 0);
	CHECK(b.len == 4000 && b.cap >= 4000);
	CHECK(ovm_buf_put(&b, &x, 0) == 0 && b.len == 4000);
	struct ovm_rd r = {b.data, b.len, 0};
	struct ovm_err e = {0};
	uint32_t y = 0;
	int ok = 1;
	for (int i = 0; i < 1000; i++)
		ok &= ovm_rd_get(&r, &y, 4, "word", &e) == 0 && y == x;
	CHECK(ok);
	CHECK(ovm_rd_get(&r, &y, 1, "trailer", &e) == -EINVAL);
	CHECK(e.code == EINVAL && strstr(e.msg, "trailer"), "msg: %s", e.msg);
	CHECK(r.off == 4000, "offset unchanged after a failed get");
	r.off = 3998;
	CHECK(ovm_rd_get(&r, &y, 4, "x", NULL) == -EINVAL, "NULL err is allowed");
	CHECK(ovm_rd_get(&r, &y, SIZE_MAX, "huge", &e) == -EINVAL);
	ovm_buf_free(&b);
	CHECK(b.data == NULL && b.len == 0);
	CHECK(ovm_errf(&e, ENOSPC, "disk %s full", "a.qcow2") == -ENOSPC);
	CHECK(e.code == ENOSPC && strcmp(e.msg, "disk a.qcow2 full") == 0);
	char longs[2000];
	memset(longs, 'x', sizeof longs - 1);
	longs[sizeof longs - 1] = 0;
	ovm_errf(&e, EIO, "%s", longs);
	CHECK(strlen(e.msg) == OVM_ERR_MAX - 1, "truncated, terminated");
}

int main(void)
{
	test_small();
	test_hole();
	test_buf();
	return check_done("test_mem");
}
