/* pci.c — a PCI host bridge on configuration mechanism #1 (ports
 * 0xCF8..0xCFF), bus 0, function 0 only.
 *
 * 0xCF8 is the 32-bit address register (bit 31 enable, bus 23:16, device
 * 15:11, function 10:8, register 7:2); 0xCFC..0xCFF is the data window.
 * Slot 0 is the host bridge (Intel 440FX ids, class 0x0600); devices get
 * slots 1, 2, ... Config space is 256 bytes per device; pci.c owns the
 * type-0 header (command, BARs, INTERRUPT_LINE) and hands writes elsewhere
 * to the device through its write mask and cfg_written hook.
 *
 * BARs: 32-bit, non-prefetchable memory BARs. Sizing is the usual dance:
 * the guest writes all ones and reads back ~(size - 1). A BAR is moved on
 * the MMIO bus when the guest programs a new address while COMMAND.MEM is
 * set (Linux clears MEM while it sizes), and accesses are ignored (reads
 * all ones) while MEM is clear or the address could not be mapped.
 *
 * Preconditions: config accesses come from one vCPU at a time (Linux takes
 * pci_lock around conf1 accesses); save/load run while vCPUs are paused. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ovm.h"

#define CFG_ADDR_PORT 0xCF8
#define CMD_IO 0x1
#define CMD_MEM 0x2
#define CMD_MASTER 0x4
#define CMD_INTX_DISABLE 0x400
#define BAR0 0x10
#define PCI_MMIO_LIMIT 0xFE000000ull /* IOAPIC, HPET and LAPIC live above */
#define MAX_SLOTS 32

struct ovm_pci {
	struct ovm_bus *pio, *mmio;
	struct ovm_irq irq;
	uint32_t addr; /* the 0xCF8 register */
	struct ovm_pci_dev host;
	struct ovm_pci_dev *dev[MAX_SLOTS]; /* dev[0] = &host */
	int nslots;
	uint64_t next_bar;
};

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }

uint32_t ovm_pci_gsi(int slot)
{
	static const uint32_t gsi[4] = {OVM_PCI_IRQ_BASE, 9, 10, 11};
	return gsi[(slot - 1) & 3];
}

const struct ovm_irq *ovm_pci_irq(const struct ovm_pci *pci) { return &pci->irq; }

/* -------------------------------------------------------------- BARs */

static int bar_io(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct ovm_pci_bar_ref *ref = opaque;
	struct ovm_pci_dev *d = ref->dev;
	uint32_t cur = get32(d->cfg + BAR0 + 4 * ref->bar) & ~0xfu;
	if (!(get16(d->cfg + 4) & CMD_MEM) || cur != d->bar_mapped[ref->bar])
		return 0; /* not decoding here: reads stay all ones */
	return d->ops->bar_io(d, ref->bar, off, data, len, is_write);
}

/* Move live BARs to the addresses the guest programmed. */
static void sync_bars(struct ovm_pci_dev *d)
{
	if (!(get16(d->cfg + 4) & CMD_MEM))
		return;
	for (int b = 0; b < OVM_PCI_BARS; b++) {
		if (!d->bar_size[b])
			continue;
		uint64_t cur = get32(d->cfg + BAR0 + 4 * b) & ~0xfu;
		if (cur == d->bar_mapped[b] || cur == 0)
			continue;
		/* An address that overlaps another range stays unmapped (the
		 * handler ignores it) until the guest picks a free one. */
		if (ovm_bus_move(d->pci->mmio, d->bar_mapped[b], &d->bar_ref[b], cur, NULL) == 0)
			d->bar_mapped[b] = cur;
	}
}

/* ------------------------------------------------------- config space */

static void update_line(struct ovm_pci_dev *d)
{
	if (!d->gsi || !d->pci->irq.set_line)
		return;
	int level = d->intx_level && !(get16(d->cfg + 4) & CMD_INTX_DISABLE);
	d->pci->irq.set_line(d->pci->irq.opaque, d->gsi, level);
}

void ovm_pci_intx(struct ovm_pci_dev *d, int level)
{
	d->intx_level = level != 0;
	update_line(d);
}

static void cfg_read(struct ovm_pci_dev *d, uint32_t reg, uint8_t *data, uint32_t len)
{
	if (d->ops && d->ops->cfg_read)
		d->ops->cfg_read(d, reg, len);
	memcpy(data, d->cfg + reg, len);
}

static void cfg_write(struct ovm_pci_dev *d, uint32_t reg, const uint8_t *data, uint32_t len)
{
	uint16_t old_cmd = get16(d->cfg + 4);
	bool bars = false;
	for (uint32_t i = 0; i < len; i++) {
		uint32_t r = reg + i;
		if (r >= BAR0 && r < BAR0 + 4 * OVM_PCI_BARS) {
			int b = (int)(r - BAR0) / 4;
			d->cfg[r] = data[i];
			if (r % 4 == 3 || i == len - 1) {
				/* Apply the BAR's mask once per dword touched. */
				uint32_t v = get32(d->cfg + BAR0 + 4 * b);
				v = d->bar_size[b] ? v & ~(d->bar_size[b] - 1) & ~0xfu : 0;
				put32(d->cfg + BAR0 + 4 * b, v);
				bars = true;
			}
			continue;
		}
		d->cfg[r] = (uint8_t)((d->cfg[r] & ~d->wmask[r]) | (data[i] & d->wmask[r]));
	}
	uint16_t cmd = get16(d->cfg + 4);
	if (bars || ((cmd ^ old_cmd) & CMD_MEM))
		sync_bars(d);
	if ((cmd ^ old_cmd) & CMD_INTX_DISABLE)
		update_line(d);
	if (d->ops && d->ops->cfg_written)
		d->ops->cfg_written(d, reg, len);
}

static struct ovm_pci_dev *addressed(struct ovm_pci *pci, uint32_t *reg)
{
	uint32_t a = pci->addr;
	if (!(a & 0x80000000u))
		return NULL;
	uint32_t bus = (a >> 16) & 0xff, slot = (a >> 11) & 0x1f, fn = (a >> 8) & 7;
	if (bus || fn || (int)slot >= pci->nslots)
		return NULL;
	*reg = a & 0xfc;
	return pci->dev[slot];
}

static int conf1_io(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct ovm_pci *pci = opaque;
	if (off < 4) {
		/* Only whole-dword accesses reach the address register (a byte
		 * at 0xCF9 is the PIIX reset register, 0xCFB the type-1 probe). */
		if (off != 0 || len != 4)
			return 0;
		if (is_write)
			pci->addr = get32(data) & 0x80fffffcu;
		else
			put32(data, pci->addr);
		return 0;
	}
	uint32_t reg;
	struct ovm_pci_dev *d = addressed(pci, &reg);
	if (!d)
		return 0; /* no device: reads all ones (vendor 0xffff) */
	reg += (uint32_t)(off - 4);
	if (reg + len > 256 || (reg & (len - 1)))
		return 0;
	if (is_write)
		cfg_write(d, reg, data, len);
	else
		cfg_read(d, reg, data, len);
	return 0;
}

/* ------------------------------------------------------------ devices */

static void header_wmask(struct ovm_pci_dev *d)
{
	put16(d->wmask + 4, CMD_IO | CMD_MEM | CMD_MASTER | CMD_INTX_DISABLE);
	d->wmask[0x0c] = 0xff; /* cache line size */
	d->wmask[0x0d] = 0xff; /* latency timer */
	d->wmask[0x3c] = 0xff; /* interrupt line (the OS may rewrite it) */
}

int ovm_pci_add(struct ovm_pci *pci, struct ovm_pci_dev *d, struct ovm_err *err)
{
	if (pci->nslots >= MAX_SLOTS)
		return ovm_errf(err, ENOSPC, "pci: no free slot for %s", d->name ? d->name : "device");
	int slot = pci->nslots;
	uint64_t next = pci->next_bar;
	for (int b = 0; b < OVM_PCI_BARS; b++) {
		uint32_t sz = d->bar_size[b];
		if (!sz)
			continue;
		if (sz < 4096 || (sz & (sz - 1)))
			return ovm_errf(err, EINVAL, "pci: %s BAR %d size 0x%x is not a power of two >= 4096",
					d->name ? d->name : "device", b, sz);
		next = (next + sz - 1) & ~(uint64_t)(sz - 1);
		if (next + sz > PCI_MMIO_LIMIT)
			return ovm_errf(err, ENOSPC, "pci: no MMIO space left for %s BAR %d", d->name ? d->name : "device", b);
		d->bar_ref[b] = (struct ovm_pci_bar_ref){d, b};
		int rc = ovm_bus_register(pci->mmio, next, sz, bar_io, &d->bar_ref[b], d->name, err);
		if (rc)
			return rc; /* earlier BARs of this device stay registered but are never decoded */
		d->bar_mapped[b] = next;
		put32(d->cfg + BAR0 + 4 * b, (uint32_t)next);
		next += sz;
	}
	pci->next_bar = next;
	d->pci = pci;
	d->slot = slot;
	d->gsi = ovm_pci_gsi(slot);
	d->cfg[0x3c] = (uint8_t)d->gsi;
	d->cfg[0x3d] = 1; /* INTA# */
	header_wmask(d);
	pci->dev[slot] = d;
	pci->nslots++;
	return 0;
}

int ovm_pci_create(struct ovm_pci **out, struct ovm_bus *pio, struct ovm_bus *mmio, const struct ovm_irq *irq,
		   struct ovm_err *err)
{
	*out = NULL;
	struct ovm_pci *pci = calloc(1, sizeof *pci);
	if (!pci)
		return ovm_errf(err, ENOMEM, "pci: no memory");
	pci->pio = pio;
	pci->mmio = mmio;
	if (irq)
		pci->irq = *irq;
	pci->next_bar = OVM_PCI_MMIO_BASE;
	struct ovm_pci_dev *h = &pci->host;
	put16(h->cfg + 0, 0x8086); /* Intel */
	put16(h->cfg + 2, 0x1237); /* 440FX host bridge */
	h->cfg[0x08] = 2;          /* revision */
	h->cfg[0x0a] = 0x00;       /* subclass: host bridge */
	h->cfg[0x0b] = 0x06;       /* class: bridge */
	h->name = "host bridge";
	header_wmask(h);
	h->pci = pci;
	pci->dev[0] = h;
	pci->nslots = 1;
	int rc = ovm_bus_register(pio, CFG_ADDR_PORT, 8, conf1_io, pci, "pci conf1", err);
	if (rc) {
		free(pci);
		return rc;
	}
	*out = pci;
	return 0;
}

void ovm_pci_destroy(struct ovm_pci *pci)
{
	if (!pci)
		return;
	for (int s = 1; s < pci->nslots; s++)
		if (pci->dev[s]->ops && pci->dev[s]->ops->destroy)
			pci->dev[s]->ops->destroy(pci->dev[s]);
	free(pci);
}

int ovm_pci_flush(struct ovm_pci *pci, struct ovm_err *err)
{
	int first = 0;
	for (int s = 1; s < pci->nslots; s++) {
		struct ovm_pci_dev *d = pci->dev[s];
		if (d->ops && d->ops->flush) {
			int rc = d->ops->flush(d, err);
			if (rc && !first)
				first = rc; /* flush the others anyway */
		}
	}
	return first;
}

/* ------------------------------------------------------- save / load */

/* Saved state (host byte order; the snapshot header names the arch):
 *   u32 magic "PCI1", u32 the 0xCF8 register, u32 number of slots, then per
 *   slot (0 = host bridge): 256 bytes of config space (BAR addresses and
 *   the command register included), i32 INTx level, and the device's own
 *   state (virtio_pci.c). Loading needs the same devices in the same slots
 *   (the VM is re-created with the same disks first); BARs are moved back
 *   to the saved addresses and the INTx line is re-driven. */
#define PCI_STATE_MAGIC 0x31494350u /* "PCI1" */

int ovm_pci_save(struct ovm_pci *pci, struct ovm_buf *out, struct ovm_err *err)
{
	uint32_t hdr[3] = {PCI_STATE_MAGIC, pci->addr, (uint32_t)pci->nslots};
	if (ovm_buf_put(out, hdr, sizeof hdr))
		return ovm_errf(err, ENOMEM, "pci: no memory for state");
	for (int s = 0; s < pci->nslots; s++) {
		struct ovm_pci_dev *d = pci->dev[s];
		int32_t lvl = d->intx_level;
		if (ovm_buf_put(out, d->cfg, sizeof d->cfg) || ovm_buf_put(out, &lvl, sizeof lvl))
			return ovm_errf(err, ENOMEM, "pci: no memory for state");
		if (d->ops && d->ops->save) {
			int rc = d->ops->save(d, out, err);
			if (rc)
				return rc;
		}
	}
	return 0;
}

int ovm_pci_load(struct ovm_pci *pci, struct ovm_rd *in, struct ovm_err *err)
{
	uint32_t hdr[3];
	int rc = ovm_rd_get(in, hdr, sizeof hdr, "pci header", err);
	if (rc)
		return rc;
	if (hdr[0] != PCI_STATE_MAGIC)
		return ovm_errf(err, EINVAL, "pci: saved state has a bad magic");
	if ((int)hdr[2] != pci->nslots)
		return ovm_errf(err, EINVAL, "pci: saved state has %u slots, this VM has %d (same disks needed)", hdr[2],
				pci->nslots);
	pci->addr = hdr[1];
	for (int s = 0; s < pci->nslots; s++) {
		struct ovm_pci_dev *d = pci->dev[s];
		uint8_t cfg[256];
		int32_t lvl;
		if ((rc = ovm_rd_get(in, cfg, sizeof cfg, "pci config space", err)) ||
		    (rc = ovm_rd_get(in, &lvl, sizeof lvl, "pci intx level", err)))
			return rc;
		if (memcmp(cfg, d->cfg, 4) != 0)
			return ovm_errf(err, EINVAL, "pci: slot %d was %04x:%04x when saved, is %04x:%04x now", s, get16(cfg),
					get16(cfg + 2), get16(d->cfg), get16(d->cfg + 2));
		memcpy(d->cfg, cfg, sizeof cfg);
		d->intx_level = lvl != 0;
		sync_bars(d);
		update_line(d);
		if (d->ops && d->ops->load && (rc = d->ops->load(d, in, err)))
			return rc;
	}
	return 0;
}
