/* test_virtio_blk.c — the whole virtio-blk device without KVM.
 *
 * A fake guest (a RAM buffer, the two buses, a recording ovm_irq) drives
 * the PCI config space and the BARs through ovm_bus_dispatch the way
 * Linux's virtio_pci_modern + virtio_blk drivers do: scan conf1, size and
 * program BARs, walk the capabilities, negotiate features, set up the
 * queue, then issue write, read (indirect), flush and get-id requests,
 * bad requests, INTx then MSI-X interrupts, save, tear down, restore into
 * a new device and carry on. The disk is a qcow2 overlay over a raw base
 * made by qemu-img; afterwards the overlay must pass `qemu-img check` and
 * hold exactly what the guest wrote. Exits 77 without qemu-img. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include "ovm.h"
#include "check.h"

#define RAM_SIZE (16u << 20)
#define DISK_SIZE (4u << 20)
#define NEW_BAR0 0xE0000000u

static uint8_t *ram;
static struct ovm_mem mem;
static struct ovm_bus pio, mmio;
static struct ovm_pci *pci;
static char dir[256];
static uint8_t *shadow; /* what the disk should hold */

/* ------------------------------------------------------------ fake irq */

static int line_level[32], line_changes;
static int msi_count;
static uint64_t msi_addr;
static uint32_t msi_data;

static int fake_set_line(void *opaque, uint32_t gsi, int level)
{
	(void)opaque;
	if (gsi < 32) {
		line_level[gsi] = level;
		line_changes++;
	}
	return 0;
}

static int fake_msi(void *opaque, uint64_t addr, uint32_t data)
{
	(void)opaque;
	msi_count++;
	msi_addr = addr;
	msi_data = data;
	return 0;
}

static const struct ovm_irq irq = {fake_set_line, fake_msi, NULL};

/* ---------------------------------------------------- guest-side access */

static uint32_t rd(struct ovm_bus *bus, uint64_t addr, uint32_t len)
{
	uint8_t d[8] = {0};
	ovm_bus_dispatch(bus, addr, d, len, false);
	uint32_t v = 0;
	for (uint32_t i = 0; i < len && i < 4; i++)
		v |= (uint32_t)d[i] << (8 * i);
	return v;
}

static void wr(struct ovm_bus *bus, uint64_t addr, uint32_t v, uint32_t len)
{
	uint8_t d[8];
	for (uint32_t i = 0; i < len; i++)
		d[i] = (uint8_t)(v >> (8 * i));
	ovm_bus_dispatch(bus, addr, d, len, true);
}

static uint32_t cfg_rd(int slot, uint32_t reg, uint32_t len)
{
	wr(&pio, 0xCF8, 0x80000000u | (uint32_t)slot << 11 | (reg & 0xfc), 4);
	return rd(&pio, 0xCFC + (reg & 3), len);
}

static void cfg_wr(int slot, uint32_t reg, uint32_t v, uint32_t len)
{
	wr(&pio, 0xCF8, 0x80000000u | (uint32_t)slot << 11 | (reg & 0xfc), 4);
	wr(&pio, 0xCFC + (reg & 3), v, len);
}

/* ------------------------------------------------ the driver's view */

struct drv {
	uint64_t common, isr, device, notify;
	uint32_t notify_mult;
	uint64_t msix_table, msix_pba;
	uint32_t msix_cap;
	uint32_t pcicfg_cap;
	uint64_t desc, avail, used;
	uint16_t qsize, avail_idx, used_seen;
	uint64_t heap; /* bump allocator for request buffers */
} D;

static uint64_t bar_addr(int b) { return cfg_rd(1, 0x10 + 4 * (uint32_t)b, 4) & ~0xfu; }

static void probe(void)
{
	/* Scan bus 0. */
	CHECK(cfg_rd(0, 0, 4) == 0x12378086, "host bridge ids %08x", cfg_rd(0, 0, 4));
	CHECK(cfg_rd(0, 0x0a, 2) == 0x0600, "host bridge class");
	CHECK(cfg_rd(1, 0, 2) == 0x1af4 && cfg_rd(1, 2, 2) == 0x1042, "virtio-blk ids %08x", cfg_rd(1, 0, 4));
	CHECK(cfg_rd(1, 0x08, 1) == 1, "revision 1");
	CHECK(cfg_rd(1, 0x2c, 2) == 0x1af4 && cfg_rd(1, 0x2e, 2) == 2, "subsystem ids");
	CHECK(cfg_rd(1, 0x0b, 1) == 0x01, "mass storage class");
	CHECK(cfg_rd(2, 0, 4) == 0xffffffffu, "empty slot");
	CHECK(cfg_rd(1, 0x3d, 1) == 1 && cfg_rd(1, 0x3c, 1) == ovm_pci_gsi(1), "INTA# on GSI %u", ovm_pci_gsi(1));
	wr(&pio, 0xCF8, 0x00000000u, 4); /* enable bit clear: no device */
	CHECK(rd(&pio, 0xCFC, 4) == 0xffffffffu);
	wr(&pio, 0xCF8, 0x80010000u, 4); /* bus 1 */
	CHECK(rd(&pio, 0xCFC, 4) == 0xffffffffu);
	CHECK(rd(&pio, 0xCF8, 4) == 0x80010000u, "address register reads back");

	/* Size the BARs with decoding off, as Linux does. */
	CHECK((cfg_rd(1, 4, 2) & 2) == 0, "MEM off at reset");
	uint32_t expect[6] = {0xffffc000u, 0xfffff000u, 0, 0, 0, 0};
	for (int b = 0; b < 6; b++) {
		uint32_t reg = 0x10 + 4 * (uint32_t)b, old = cfg_rd(1, reg, 4);
		cfg_wr(1, reg, 0xffffffffu, 4);
		uint32_t mask = cfg_rd(1, reg, 4);
		cfg_wr(1, reg, old, 4);
		CHECK(mask == expect[b], "BAR %d mask %08x", b, mask);
		CHECK(cfg_rd(1, reg, 4) == old, "BAR %d restored", b);
	}
	CHECK(bar_addr(0) >= OVM_PCI_MMIO_BASE && bar_addr(1) >= OVM_PCI_MMIO_BASE);
	CHECK(rd(&mmio, bar_addr(0) + 0x12, 2) == 0xffff, "no decoding while MEM is off");
	/* Reassign BAR 0 (as an OS may), then enable MEM and bus mastering. */
	cfg_wr(1, 0x10, NEW_BAR0, 4);
	cfg_wr(1, 4, 0x6, 2);
	CHECK(bar_addr(0) == NEW_BAR0);

	/* Walk the capability list. */
	CHECK(cfg_rd(1, 6, 2) & 0x10, "capabilities bit");
	int guard = 0;
	for (uint32_t c = cfg_rd(1, 0x34, 1); c && guard < 48; c = cfg_rd(1, c + 1, 1), guard++) {
		uint32_t id = cfg_rd(1, c, 1);
		if (id == 0x11) {
			D.msix_cap = c;
			uint32_t t = cfg_rd(1, c + 4, 4), p = cfg_rd(1, c + 8, 4);
			D.msix_table = bar_addr((int)(t & 7)) + (t & ~7u);
			D.msix_pba = bar_addr((int)(p & 7)) + (p & ~7u);
			CHECK((cfg_rd(1, c + 2, 2) & 0x7ff) == 1, "two MSI-X vectors");
			continue;
		}
		if (id != 0x09)
			continue;
		uint32_t type = cfg_rd(1, c + 3, 1), bar = cfg_rd(1, c + 4, 1), off = cfg_rd(1, c + 8, 4);
		uint64_t a = bar_addr((int)bar) + off;
		if (type == 1)
			D.common = a;
		else if (type == 2) {
			D.notify = a;
			D.notify_mult = cfg_rd(1, c + 16, 4);
		} else if (type == 3)
			D.isr = a;
		else if (type == 4)
			D.device = a;
		else if (type == 5)
			D.pcicfg_cap = c;
	}
	CHECK(guard < 48, "capability list ends");
	CHECK(D.common == NEW_BAR0 && D.isr && D.device && D.notify && D.notify_mult == 4 && D.msix_cap && D.pcicfg_cap,
	      "all capabilities found");
}

/* Reset and negotiate; returns the status read back. */
static uint8_t negotiate(uint64_t extra_features)
{
	wr(&mmio, D.common + 0x14, 0, 1);
	CHECK(rd(&mmio, D.common + 0x14, 1) == 0, "reset");
	wr(&mmio, D.common + 0x14, 1, 1);
	wr(&mmio, D.common + 0x14, 1 | 2, 1);
	wr(&mmio, D.common + 0x00, 0, 4);
	uint64_t f = rd(&mmio, D.common + 0x04, 4);
	wr(&mmio, D.common + 0x00, 1, 4);
	f |= (uint64_t)rd(&mmio, D.common + 0x04, 4) << 32;
	CHECK(f & (1ull << 32), "VERSION_1");
	CHECK((f & (1ull << 9)) && (f & (1ull << 2)) && (f & (1ull << 6)) && (f & (1ull << 28)), "FLUSH SEG_MAX BLK_SIZE INDIRECT");
	CHECK(!(f & (1ull << 5)), "not RO");
	uint64_t want = (f & ((1ull << 32) | (1ull << 9) | (1ull << 2) | (1ull << 6) | (1ull << 28))) | extra_features;
	wr(&mmio, D.common + 0x08, 0, 4);
	wr(&mmio, D.common + 0x0c, (uint32_t)want, 4);
	wr(&mmio, D.common + 0x08, 1, 4);
	wr(&mmio, D.common + 0x0c, (uint32_t)(want >> 32), 4);
	wr(&mmio, D.common + 0x14, 1 | 2 | 8, 1);
	return (uint8_t)rd(&mmio, D.common + 0x14, 1);
}

static void wr64(uint64_t addr, uint64_t v)
{
	wr(&mmio, addr, (uint32_t)v, 4);
	wr(&mmio, addr + 4, (uint32_t)(v >> 32), 4);
}

static void setup_queue(uint16_t vector)
{
	wr(&mmio, D.common + 0x16, 0, 2);
	uint16_t max = (uint16_t)rd(&mmio, D.common + 0x18, 2);
	CHECK(max == 256, "queue max %u", max);
	D.qsize = 128;
	wr(&mmio, D.common + 0x18, D.qsize, 2);
	D.desc = 0x10000;
	D.avail = 0x20000;
	D.used = 0x21000;
	memset(ram + 0x10000, 0, 0x20000);
	wr64(D.common + 0x20, D.desc);
	wr64(D.common + 0x28, D.avail);
	wr64(D.common + 0x30, D.used);
	wr(&mmio, D.common + 0x1a, vector, 2);
	CHECK(rd(&mmio, D.common + 0x1a, 2) == vector, "queue vector");
	CHECK(rd(&mmio, D.common + 0x1e, 2) == 0, "notify off");
	wr(&mmio, D.common + 0x1c, 1, 2);
	CHECK(rd(&mmio, D.common + 0x1c, 2) == 1, "queue enabled");
	/* Another queue index does not exist. */
	wr(&mmio, D.common + 0x16, 1, 2);
	CHECK(rd(&mmio, D.common + 0x18, 2) == 0, "queue 1 has size 0");
	wr(&mmio, D.common + 0x16, 0, 2);
	wr(&mmio, D.common + 0x14, 1 | 2 | 8 | 4, 1);
	CHECK(rd(&mmio, D.common + 0x14, 1) == (1 | 2 | 8 | 4), "DRIVER_OK");
	D.avail_idx = D.used_seen = 0;
	D.heap = 0x100000;
}

static uint64_t alloc(uint32_t len)
{
	uint64_t a = D.heap;
	D.heap = (D.heap + len + 63) & ~63ull;
	REQUIRE(D.heap < RAM_SIZE, "test heap");
	return a;
}

static void desc(uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *p = ram + table + 16 * i;
	memcpy(p, &addr, 8);
	memcpy(p + 8, &len, 4);
	memcpy(p + 12, &flags, 2);
	memcpy(p + 14, &next, 2);
}

/* Publish head h and notify queue 0; returns the used length, or -1 when
 * the device did not complete it. */
static int64_t submit(uint16_t h)
{
	memcpy(ram + D.avail + 4 + 2 * (D.avail_idx % D.qsize), &h, 2);
	D.avail_idx++;
	memcpy(ram + D.avail + 2, &D.avail_idx, 2);
	wr(&mmio, D.notify + 0 * D.notify_mult, 0, 2);
	uint16_t uidx;
	memcpy(&uidx, ram + D.used + 2, 2);
	if (uidx == D.used_seen)
		return -1;
	uint32_t e[2];
	memcpy(e, ram + D.used + 4 + 8 * (D.used_seen % D.qsize), 8);
	D.used_seen++;
	CHECK(e[0] == h, "used id %u, want %u", e[0], h);
	return e[1];
}

struct req {
	uint64_t hdr, data, status;
};

/* A request as Linux builds it: header, data split in two, status. */
static int64_t request(uint32_t type, uint64_t sector, uint32_t len, bool device_writes, struct req *r, bool indirect)
{
	r->hdr = alloc(16);
	r->data = alloc(len ? len : 1);
	r->status = alloc(1);
	uint32_t t32 = type, zero = 0;
	memcpy(ram + r->hdr, &t32, 4);
	memcpy(ram + r->hdr + 4, &zero, 4);
	memcpy(ram + r->hdr + 8, &sector, 8);
	ram[r->status] = 0xee;
	uint16_t fw = device_writes ? 2 : 0;
	uint64_t table = D.desc;
	uint16_t base = (uint16_t)((D.avail_idx * 4) % D.qsize);
	if (indirect)
		table = alloc(16 * 4), base = 0;
	uint32_t half = len / 2;
	uint16_t n = 0;
	desc(table, base + n, r->hdr, 16, 1, base + n + 1), n++;
	if (len) {
		desc(table, base + n, r->data, half, fw | 1, base + n + 1), n++;
		desc(table, base + n, r->data + half, len - half, fw | 1, base + n + 1), n++;
	}
	desc(table, base + n, r->status, 1, 2, 0), n++;
	uint16_t h = (uint16_t)((D.avail_idx * 4) % D.qsize);
	if (indirect)
		desc(D.desc, h, table, 16u * n, 4, 0);
	return submit(h);
}

static void disk_write(uint64_t sector, uint32_t len, uint8_t seed)
{
	struct req r;
	uint64_t data = D.heap + 64; /* where request() will put the data */
	for (uint32_t i = 0; i < len; i++)
		ram[data + i] = (uint8_t)(seed + i * 7);
	int64_t u = request(1, sector, len, false, &r, false);
	CHECK(r.data == data);
	CHECK(u == 1 && ram[r.status] == 0, "write sector %llu: used %lld status %u", (unsigned long long)sector,
	      (long long)u, ram[r.status]);
	memcpy(shadow + sector * 512, ram + r.data, len);
}

static void disk_read_check(uint64_t sector, uint32_t len, bool indirect, const char *what)
{
	struct req r;
	int64_t u = request(0, sector, len, true, &r, indirect);
	CHECK(u == len + 1 && ram[r.status] == 0, "%s: used %lld status %u", what, (long long)u, ram[r.status]);
	CHECK(memcmp(ram + r.data, shadow + sector * 512, len) == 0, "%s: data", what);
}

static int sh(const char *cmd)
{
	char full[1024];
	snprintf(full, sizeof full, "cd '%s' && ( %s ) >/dev/null 2>&1", dir, cmd);
	int st = system(full);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static void make_device(void)
{
	memset(&pio, 0, sizeof pio);
	memset(&mmio, 0, sizeof mmio);
	struct ovm_err e = {0};
	REQUIRE(ovm_pci_create(&pci, &pio, &mmio, &irq, &e) == 0, "%s", e.msg);
	char base[300], top[300];
	snprintf(base, sizeof base, "%s/base.raw", dir);
	snprintf(top, sizeof top, "%s/top.qcow2", dir);
	const char *paths[] = {base, top}, *fmts[] = {"raw", "qcow2"};
	struct ovm_disk *d;
	REQUIRE(ovm_disk_open(&d, paths, fmts, 2, false, &e) == 0, "%s", e.msg);
	REQUIRE(ovm_virtio_blk_add(pci, &mem, d, "ovm-test-serial-0123456789", &e) == 0, "%s", e.msg);
}

int main(void)
{
	if (system("qemu-img --version >/dev/null 2>&1") != 0) {
		printf("SKIP test_virtio_blk: qemu-img not installed\n");
		return 77;
	}
	snprintf(dir, sizeof dir, "%s/ovm-vblk-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	REQUIRE(mkdtemp(dir));
	REQUIRE(sh("head -c 4M /dev/urandom > base.raw && cp base.raw base.orig && qemu-img create -f qcow2 -b base.raw -F raw top.qcow2 4M") == 0);
	char path[300];
	snprintf(path, sizeof path, "%s/base.raw", dir);
	FILE *f = fopen(path, "rb");
	shadow = malloc(DISK_SIZE);
	REQUIRE(f && fread(shadow, 1, DISK_SIZE, f) == DISK_SIZE);
	fclose(f);
	ram = calloc(1, RAM_SIZE);
	mem = (struct ovm_mem){ram, RAM_SIZE};

	make_device();
	probe();

	/* Features: an unoffered bit makes FEATURES_OK fail to stick. */
	CHECK(!(negotiate(1ull << 35) & 8), "unoffered feature refused");
	CHECK(negotiate(0) & 8, "FEATURES_OK");
	/* Device config. */
	uint64_t cap = rd(&mmio, D.device, 4) | (uint64_t)rd(&mmio, D.device + 4, 4) << 32;
	CHECK(cap == DISK_SIZE / 512, "capacity %llu", (unsigned long long)cap);
	CHECK(rd(&mmio, D.device + 0x14, 4) == 512 && rd(&mmio, D.device + 0x0c, 4) == 254, "blk_size, seg_max");
	/* The PCI-config access window reads common config too. */
	cfg_wr(1, D.pcicfg_cap + 4, 0, 1);
	cfg_wr(1, D.pcicfg_cap + 8, 0x12, 4);
	cfg_wr(1, D.pcicfg_cap + 12, 2, 4);
	CHECK(cfg_rd(1, D.pcicfg_cap + 16, 2) == 1, "num_queues via VIRTIO_PCI_CAP_PCI_CFG");

	/* ---- INTx mode */
	setup_queue(0xffff);
	int changes = line_changes;
	uint32_t gsi = ovm_pci_gsi(1);
	disk_write(130, 4096, 1); /* not cluster-aligned: copy-up from the base */
	CHECK(line_level[gsi] == 1 && line_changes > changes, "INTx raised");
	CHECK(rd(&mmio, D.isr, 1) == 1, "ISR: queue interrupt");
	CHECK(line_level[gsi] == 0, "reading ISR lowers INTx");
	CHECK(rd(&mmio, D.isr, 1) == 0, "ISR cleared by reading");
	{ /* The driver asks for no interrupt: the request completes silently. */
		uint16_t fl = 1;
		memcpy(ram + D.avail, &fl, 2);
		int before = line_changes;
		disk_write(200, 512, 8);
		CHECK(line_changes == before && rd(&mmio, D.isr, 1) == 0, "VIRTQ_AVAIL_F_NO_INTERRUPT honoured");
		fl = 0;
		memcpy(ram + D.avail, &fl, 2);
	}
	disk_read_check(128, 8192, true, "indirect read across the written range");
	disk_read_check(0, 512, false, "read of untouched sector 0 (from the base)");
	disk_write(8191 - 15, 8192, 9); /* the disk's last 16 sectors */
	disk_read_check(8191 - 15, 8192, false, "read of the last sectors");
	struct req r;
	CHECK(request(4, 0, 0, false, &r, false) == 1 && ram[r.status] == 0, "flush");
	CHECK(request(8, 0, 20, true, &r, false) == 21 && ram[r.status] == 0 &&
	      memcmp(ram + r.data, "ovm-test-serial-0123", 20) == 0, "GET_ID");
	/* Bad requests. */
	CHECK(request(0, 8191, 1024, true, &r, false) == 1 && ram[r.status] == 1, "read past the end: IOERR");
	CHECK(request(1, UINT64_MAX / 256, 512, false, &r, false) == 1 && ram[r.status] == 1, "huge sector: IOERR");
	CHECK(request(1, 10, 100, false, &r, false) == 1 && ram[r.status] == 1, "partial sector: IOERR");
	CHECK(request(77, 0, 0, false, &r, false) == 1 && ram[r.status] == 2, "unknown type: UNSUPP");
	{ /* a data buffer outside RAM: completes with IOERR in the status byte */
		uint16_t h = (uint16_t)((D.avail_idx * 4) % D.qsize);
		uint64_t hdr = alloc(16), st = alloc(1);
		uint32_t t = 1;
		memcpy(ram + hdr, &t, 4);
		memset(ram + hdr + 4, 0, 12);
		ram[st] = 0xee;
		desc(D.desc, h, hdr, 16, 1, (uint16_t)(h + 1));
		desc(D.desc, (uint16_t)(h + 1), st, 1, 2 | 1, (uint16_t)(h + 2));
		desc(D.desc, (uint16_t)(h + 2), RAM_SIZE - 256, 4096, 0, 0);
		CHECK(submit(h) == 1 && ram[st] == 1, "hostile chain: IOERR, status %u", ram[st]);
		/* a short header */
		h = (uint16_t)((D.avail_idx * 4) % D.qsize);
		desc(D.desc, h, hdr, 8, 1, (uint16_t)(h + 1));
		desc(D.desc, (uint16_t)(h + 1), st, 1, 2, 0);
		ram[st] = 0xee;
		CHECK(submit(h) == 1 && ram[st] == 1, "short header: IOERR");
	}
	CHECK(rd(&mmio, D.common + 0x14, 1) == 15, "device still healthy after bad requests");

	/* ---- MSI-X mode: vector 1 for the queue, 0 for config. */
	cfg_wr(1, D.msix_cap + 2, 0x8000, 2);
	wr(&mmio, D.msix_table + 16 + 0, 0xfee00000u, 4);
	wr(&mmio, D.msix_table + 16 + 4, 0, 4);
	wr(&mmio, D.msix_table + 16 + 8, 0x4041, 4);
	wr(&mmio, D.msix_table + 16 + 12, 0, 4); /* unmask */
	wr(&mmio, D.common + 0x16, 0, 2);
	wr(&mmio, D.common + 0x1a, 1, 2);
	CHECK(rd(&mmio, D.common + 0x1a, 2) == 1);
	wr(&mmio, D.common + 0x1a, 7, 2);
	CHECK(rd(&mmio, D.common + 0x1a, 2) == 0xffff, "a vector past the table reads NO_VECTOR");
	wr(&mmio, D.common + 0x1a, 1, 2);
	int msis = msi_count, lines = line_changes;
	disk_write(2048, 65536 + 4096, 3);
	CHECK(msi_count == msis + 1 && msi_addr == 0xfee00000u && msi_data == 0x4041, "MSI-X delivered");
	CHECK(line_changes == lines, "no INTx with MSI-X on");
	wr(&mmio, D.msix_table + 16 + 12, 1, 4); /* mask */
	disk_write(4000, 1024, 4);
	CHECK(msi_count == msis + 1 && (rd(&mmio, D.msix_pba, 4) & 2), "masked: pending in the PBA");
	wr(&mmio, D.msix_table + 16 + 12, 0, 4);
	CHECK(msi_count == msis + 2 && !(rd(&mmio, D.msix_pba, 4) & 2), "unmasked: delivered, PBA clear");

	/* ---- Save, tear down, restore into a new device, carry on. */
	struct ovm_buf st = {0};
	struct ovm_err e = {0};
	CHECK(ovm_pci_flush(pci, &e) == 0, "%s", e.msg);
	CHECK(ovm_pci_save(pci, &st, &e) == 0, "%s", e.msg);
	ovm_pci_destroy(pci); /* closes the disk */
	CHECK(sh("qemu-img check top.qcow2") == 0, "overlay consistent after the first session");
	make_device();
	CHECK(rd(&mmio, NEW_BAR0 + 0x12, 2) == 0xffff, "fresh device is not at the reprogrammed BAR yet");
	struct ovm_rd in = {st.data, st.len, 0};
	CHECK(ovm_pci_load(pci, &in, &e) == 0, "load: %s", e.msg);
	CHECK(in.off == in.len, "load consumed the whole state");
	CHECK(bar_addr(0) == NEW_BAR0 && rd(&mmio, NEW_BAR0 + 0x14, 1) == 15, "restored BAR and status");
	msis = msi_count;
	disk_write(300, 2048, 5);
	CHECK(msi_count == msis + 1 && msi_data == 0x4041, "MSI-X after restore");
	disk_read_check(0, 16384, true, "read after restore");
	disk_read_check(2040, 8192, false, "read after restore (MSI-X range)");
	struct ovm_rd bad = {st.data, st.len - 3, 0};
	CHECK(ovm_pci_load(pci, &bad, &e) == -EINVAL && strstr(e.msg, "truncated"), "truncated state: %s", e.msg);
	ovm_buf_free(&st);

	/* Reset: the queue stops. */
	wr(&mmio, D.common + 0x14, 0, 1);
	CHECK(rd(&mmio, D.common + 0x1c, 2) == 0, "queue disabled by reset");
	CHECK(request(0, 0, 512, true, &r, false) == -1, "no service after reset");
	/* DEVICE_NEEDS_RESET when the rings leave RAM. */
	CHECK(negotiate(0) & 8);
	wr(&mmio, D.common + 0x16, 0, 2);
	wr64(D.common + 0x20, RAM_SIZE - 16);
	wr(&mmio, D.common + 0x1c, 1, 2);
	CHECK(rd(&mmio, D.common + 0x1c, 2) == 0 && (rd(&mmio, D.common + 0x14, 1) & 0x40), "bad rings: NEEDS_RESET");

	ovm_pci_destroy(pci);
	CHECK(sh("qemu-img check top.qcow2") == 0, "qemu-img check passes on the overlay");
	CHECK(sh("qemu-img convert -O raw top.qcow2 out.raw") == 0);
	snprintf(path, sizeof path, "%s/out.raw", dir);
	f = fopen(path, "rb");
	uint8_t *out = malloc(DISK_SIZE);
	CHECK(f && fread(out, 1, DISK_SIZE, f) == DISK_SIZE && memcmp(out, shadow, DISK_SIZE) == 0,
	      "the overlay holds exactly what the guest wrote");
	if (f)
		fclose(f);
	CHECK(sh("cmp -s base.raw base.orig") == 0, "the base image was never written");
	free(out);
	int failed = check_done("test_virtio_blk");
	if (!failed) {
		char cmd[300];
		snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			return 1;
	} else {
		fprintf(stderr, "files kept in %s\n", dir);
	}
	return failed;
}
