/* test_pci.c — the conf1 host bridge on its own: address register,
 * read-only header fields, byte/word accesses, BAR sizing and moves
 * (including a clash with another range), the INTx disable bit, and
 * save/load of config space. Uses a tiny dummy device with one BAR. */
#include <errno.h>
#include <string.h>

#include "ovm.h"
#include "check.h"

static struct ovm_bus pio, mmio;
static int level[32];

static int set_line(void *o, uint32_t gsi, int l)
{
	(void)o;
	if (gsi < 32)
		level[gsi] = l;
	return 0;
}

static uint32_t rd(struct ovm_bus *b, uint64_t a, uint32_t len)
{
	uint8_t d[4] = {0};
	ovm_bus_dispatch(b, a, d, len, false);
	return (uint32_t)d[0] | (uint32_t)d[1] << 8 | (uint32_t)d[2] << 16 | (uint32_t)d[3] << 24;
}

static void wr(struct ovm_bus *b, uint64_t a, uint32_t v, uint32_t len)
{
	uint8_t d[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
	ovm_bus_dispatch(b, a, d, len, true);
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

/* A device with one 8 KiB BAR holding a scratch register at offset 4. */
struct dummy {
	struct ovm_pci_dev pci;
	uint32_t reg;
	int accesses;
	bool destroyed;
};

static int dummy_bar(struct ovm_pci_dev *d, int bar, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct dummy *x = (struct dummy *)d;
	x->accesses++;
	if (bar != 2 || off != 4 || len != 4)
		return 0;
	if (is_write)
		memcpy(&x->reg, data, 4);
	else
		memcpy(data, &x->reg, 4);
	return 0;
}

static void dummy_destroy(struct ovm_pci_dev *d) { ((struct dummy *)d)->destroyed = true; }

static const struct ovm_pci_dev_ops dummy_ops = {.bar_io = dummy_bar, .destroy = dummy_destroy};

static int other_io(void *o, uint64_t off, uint8_t *d, uint32_t len, bool w)
{
	(void)o, (void)off, (void)len;
	if (!w)
		d[0] = 0x5a;
	return 0;
}

int main(void)
{
	struct ovm_err e = {0};
	struct ovm_irq irq = {set_line, NULL, NULL};
	struct ovm_pci *pci;
	REQUIRE(ovm_pci_create(&pci, &pio, &mmio, &irq, &e) == 0, "%s", e.msg);
	struct ovm_pci *again;
	CHECK(ovm_pci_create(&again, &pio, &mmio, &irq, &e) == -EEXIST, "conf1 ports taken once");

	/* Linux's type-1 probe: a byte to 0xCFB, then the address register. */
	wr(&pio, 0xCFB, 1, 1);
	wr(&pio, 0xCF8, 0x80000000u, 4);
	CHECK(rd(&pio, 0xCF8, 4) == 0x80000000u);
	wr(&pio, 0xCF9, 0x06, 1); /* PIIX reset register: ignored, address kept */
	CHECK(rd(&pio, 0xCF8, 4) == 0x80000000u);
	CHECK(rd(&pio, 0xCF8, 2) == 0xffff, "partial reads of the address register are unhandled");
	CHECK(cfg_rd(0, 0x0a, 2) == 0x0600 && cfg_rd(0, 0, 2) == 0x8086, "sanity check Linux does");
	cfg_wr(0, 0, 0x12345678u, 4);
	CHECK(cfg_rd(0, 0, 4) == 0x12378086u, "ids are read-only");
	CHECK(cfg_rd(0, 0x10, 4) == 0, "host bridge has no BARs");
	cfg_wr(0, 0x10, 0xffffffffu, 4);
	CHECK(cfg_rd(0, 0x10, 4) == 0, "unimplemented BAR sizes as 0");
	CHECK(cfg_rd(0, 0x1, 2) == 0xffff, "misaligned word access is ignored");
	CHECK(cfg_rd(0, 0x0b, 1) == 0x06 && cfg_rd(0, 0x0a, 1) == 0x00);

	struct dummy x = {0};
	x.pci.cfg[0] = 0x34, x.pci.cfg[1] = 0x12, x.pci.cfg[2] = 0x78, x.pci.cfg[3] = 0x56;
	x.pci.bar_size[2] = 8192;
	x.pci.ops = &dummy_ops;
	x.pci.name = "dummy";
	REQUIRE(ovm_pci_add(pci, &x.pci, &e) == 0, "%s", e.msg);
	CHECK(x.pci.slot == 1 && cfg_rd(1, 0, 4) == 0x56781234u);
	CHECK(cfg_rd(1, 0x3c, 1) == ovm_pci_gsi(1) && ovm_pci_gsi(1) == 5 && ovm_pci_gsi(2) == 9 && ovm_pci_gsi(4) == 11 &&
	      ovm_pci_gsi(5) == 5, "GSIs 5, 9, 10, 11");
	uint32_t bar = cfg_rd(1, 0x18, 4);
	CHECK(bar >= OVM_PCI_MMIO_BASE && bar % 8192 == 0, "BAR 2 at %08x", bar);
	CHECK(cfg_rd(1, 0x10, 4) == 0 && cfg_rd(1, 0x14, 4) == 0);

	/* Decoding off: nothing reaches the device. */
	CHECK(rd(&mmio, bar + 4, 4) == 0xffffffffu && x.accesses == 0);
	cfg_wr(1, 4, 2, 2);
	wr(&mmio, bar + 4, 0xabcd, 4);
	CHECK(x.reg == 0xabcd && rd(&mmio, bar + 4, 4) == 0xabcd);

	/* Sizing with byte writes, then a move while MEM is on. */
	cfg_wr(1, 4, 0, 2);
	for (uint32_t i = 0; i < 4; i++)
		cfg_wr(1, 0x18 + i, 0xff, 1);
	CHECK(cfg_rd(1, 0x18, 4) == 0xffffe000u, "size mask %08x", cfg_rd(1, 0x18, 4));
	cfg_wr(1, 0x18, 0xE0000000u, 4);
	CHECK(rd(&mmio, 0xE0000004u, 4) == 0xffffffffu, "not moved while MEM is off");
	cfg_wr(1, 4, 2, 2);
	CHECK(rd(&mmio, 0xE0000004u, 4) == 0xabcd, "moved when MEM turns on");
	CHECK(rd(&mmio, bar + 4, 4) == 0xffffffffu, "old place is free");
	cfg_wr(1, 0x18, 0xE0004000u, 4);
	CHECK(rd(&mmio, 0xE0004004u, 4) == 0xabcd, "moved while MEM is on");
	/* Onto another range: stays unmapped until a free address is chosen. */
	REQUIRE(ovm_bus_register(&mmio, 0xF0000000u, 0x1000, other_io, NULL, "other", &e) == 0);
	cfg_wr(1, 0x18, 0xF0000000u, 4);
	CHECK(rd(&mmio, 0xF0000000u, 1) == 0x5a, "the other range keeps its address");
	int acc = x.accesses;
	CHECK(rd(&mmio, 0xE0004004u, 4) == 0xffffffffu && x.accesses == acc, "the old address no longer decodes");
	cfg_wr(1, 0x18, 0xE0008000u, 4);
	CHECK(rd(&mmio, 0xE0008004u, 4) == 0xabcd, "mapped again at a free address");

	/* INTx and its disable bit. */
	ovm_pci_intx(&x.pci, 1);
	CHECK(level[5] == 1);
	cfg_wr(1, 4, 0x402, 2);
	CHECK(level[5] == 0, "INTX_DISABLE holds the line low");
	cfg_wr(1, 4, 0x002, 2);
	CHECK(level[5] == 1, "and releases it");
	ovm_pci_intx(&x.pci, 0);
	CHECK(level[5] == 0);
	cfg_wr(1, 0x3c, 11, 1);
	CHECK(cfg_rd(1, 0x3c, 1) == 11, "INTERRUPT_LINE is writable");
	cfg_wr(1, 0x3d, 3, 1);
	CHECK(cfg_rd(1, 0x3d, 1) == 1, "INTERRUPT_PIN is not");

	/* Save, scramble, load. */
	struct ovm_buf st = {0};
	CHECK(ovm_pci_save(pci, &st, &e) == 0);
	cfg_wr(1, 4, 0, 2);
	cfg_wr(1, 0x18, 0xE0010000u, 4);
	cfg_wr(1, 4, 2, 2);
	CHECK(rd(&mmio, 0xE0010004u, 4) == 0xabcd);
	struct ovm_rd in = {st.data, st.len, 0};
	CHECK(ovm_pci_load(pci, &in, &e) == 0, "%s", e.msg);
	CHECK(cfg_rd(1, 0x18, 4) == 0xE0008000u && rd(&mmio, 0xE0008004u, 4) == 0xabcd, "BAR back where it was saved");
	st.data[12 + 256 + 4] ^= 0xff; /* slot 1's vendor id */
	in = (struct ovm_rd){st.data, st.len, 0};
	CHECK(ovm_pci_load(pci, &in, &e) == -EINVAL && strstr(e.msg, "slot 1"), "%s", e.msg);
	ovm_buf_free(&st);

	/* A BAR size that is not a power of two is refused. */
	struct dummy y = {0};
	y.pci.bar_size[0] = 3000;
	y.pci.ops = &dummy_ops;
	CHECK(ovm_pci_add(pci, &y.pci, &e) == -EINVAL && strstr(e.msg, "power of two"));
	CHECK(cfg_rd(2, 0, 4) == 0xffffffffu, "slot 2 stays empty");

	ovm_pci_destroy(pci);
	CHECK(x.destroyed, "destroy reaches the device");
	return check_done("test_pci");
}
