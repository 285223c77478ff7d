/* virtio_pci.c — the virtio 1.x PCI transport ("modern" only, spec 4.1).
 *
 * PCI ids: vendor 0x1AF4, device 0x1040 + virtio id, revision 1,
 * subsystem 0x1AF4/virtio id. Vendor capabilities (cap id 0x09) point into
 * BAR 0; MSI-X (cap id 0x11) has its table and PBA in BAR 1.
 *
 *   BAR 0 (16 KiB)  0x0000 common config   struct virtio_pci_common_cfg
 *                   0x1000 ISR status      read clears, lowers INTx
 *                   0x2000 device config   the device's (virtio-blk config)
 *                   0x3000 notify          queue q at 0x3000 + 4q (multiplier 4)
 *   BAR 1 (4 KiB)   0x000 MSI-X table (16 bytes per vector), 0x800 PBA
 *   config space    0x40 common cap, 0x50 ISR cap, 0x60 notify cap,
 *                   0x74 device cap, 0x84 PCI-config-access cap, 0x98 MSI-X
 *
 * Interrupts: with MSI-X enabled a queue's vector is signalled through
 * ovm_irq.signal_msi (or left pending in the PBA while masked); otherwise
 * ISR bit 0 is set and INTx raised until the driver reads ISR.
 *
 * Locking: one mutex per device; BAR and config accesses, save and load
 * hold it, and ops->notify runs under it (so it may call
 * ovm_virtio_interrupt, which expects the lock held). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ovm.h"

#define MAX_QUEUES 8
#define NO_VECTOR 0xffff

#define S_ACKNOWLEDGE 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_NEEDS_RESET 0x40
#define S_FAILED 0x80

#define F_VERSION_1 (1ull << 32)

#define R_COMMON 0x0000
#define R_COMMON_LEN 0x40
#define R_ISR 0x1000
#define R_DEVICE 0x2000
#define R_NOTIFY 0x3000
#define NOTIFY_MULT 4
#define BAR0_SIZE 0x4000
#define BAR1_SIZE 0x1000
#define MSIX_PBA 0x800

#define CAP_COMMON 0x40
#define CAP_ISR 0x50
#define CAP_NOTIFY 0x60
#define CAP_DEVICE 0x74
#define CAP_PCICFG 0x84
#define CAP_MSIX 0x98
#define PCICFG_DATA (CAP_PCICFG + 16)
#define MSIX_CTRL (CAP_MSIX + 2)
#define MSIX_ENABLE 0x8000
#define MSIX_FMASK 0x4000

struct ovm_virtio {
	struct ovm_pci_dev pci; /* first: the bridge hands us &pci */
	const struct ovm_virtio_ops *ops;
	void *dev;
	const struct ovm_mem *mem;
	pthread_mutex_t lock;
	uint64_t offered;
	uint16_t nvec;

	/* transport state (saved) */
	uint32_t dfselect, gfselect;
	uint64_t driver_features;
	uint8_t status, config_gen, isr;
	uint16_t queue_select, config_vector;
	struct ovm_vq vq[MAX_QUEUES];
	uint8_t msix[16 * (MAX_QUEUES + 1)];
	uint64_t pba;
};

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t get32(const uint8_t *p) { return (uint32_t)get16(p) | (uint32_t)get16(p + 2) << 16; }
static uint64_t get64(const uint8_t *p) { return (uint64_t)get32(p) | (uint64_t)get32(p + 4) << 32; }
static void put16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v, p[1] = (uint8_t)(v >> 8); }
static void put32(uint8_t *p, uint32_t v) { put16(p, (uint16_t)v), put16(p + 2, (uint16_t)(v >> 16)); }
static void put64(uint8_t *p, uint64_t v) { put32(p, (uint32_t)v), put32(p + 4, (uint32_t)(v >> 32)); }

static struct ovm_virtio *of(struct ovm_pci_dev *d) { return (struct ovm_virtio *)d; }

/* ---------------------------------------------------------- interrupts */

static bool msix_on(struct ovm_virtio *t) { return get16(t->pci.cfg + MSIX_CTRL) & MSIX_ENABLE; }

static void msix_fire(struct ovm_virtio *t, uint16_t vec)
{
	if (vec >= t->nvec)
		return;
	const uint8_t *e = t->msix + 16 * vec;
	if ((get16(t->pci.cfg + MSIX_CTRL) & MSIX_FMASK) || (get32(e + 12) & 1)) {
		t->pba |= 1ull << vec;
		return;
	}
	t->pba &= ~(1ull << vec);
	const struct ovm_irq *irq = ovm_pci_irq(t->pci.pci);
	if (irq->signal_msi)
		irq->signal_msi(irq->opaque, get64(e), get32(e + 8));
}

/* Deliver vectors left pending while masked. */
static void msix_unmasked(struct ovm_virtio *t)
{
	if (!msix_on(t))
		return;
	for (uint16_t v = 0; v < t->nvec; v++)
		if (t->pba & (1ull << v))
			msix_fire(t, v);
}

static void raise(struct ovm_virtio *t, uint8_t isr_bit, uint16_t vec)
{
	if (msix_on(t)) {
		if (vec != NO_VECTOR)
			msix_fire(t, vec);
		return;
	}
	t->isr |= isr_bit;
	ovm_pci_intx(&t->pci, 1);
}

int ovm_virtio_interrupt(struct ovm_virtio *t, int q)
{
	if (q < 0 || q >= t->ops->num_queues)
		return -EINVAL;
	raise(t, 1, t->vq[q].msix_vector);
	return 0;
}

void ovm_virtio_fail(struct ovm_virtio *t, const char *why)
{
	(void)why; /* the guest sees DEVICE_NEEDS_RESET; the reason is for the caller's log */
	if (t->status & S_NEEDS_RESET)
		return;
	t->status |= S_NEEDS_RESET;
	t->config_gen++;
	raise(t, 2, t->config_vector);
}

struct ovm_vq *ovm_virtio_queue(struct ovm_virtio *t, int q)
{
	return q >= 0 && q < t->ops->num_queues ? &t->vq[q] : NULL;
}
const struct ovm_mem *ovm_virtio_mem(struct ovm_virtio *t) { return t->mem; }
uint64_t ovm_virtio_driver_features(struct ovm_virtio *t) { return t->driver_features; }

/* --------------------------------------------------------------- reset */

static void reset(struct ovm_virtio *t)
{
	t->status = 0;
	t->dfselect = t->gfselect = 0;
	t->driver_features = 0;
	t->queue_select = 0;
	t->config_vector = NO_VECTOR;
	t->isr = 0;
	ovm_pci_intx(&t->pci, 0);
	for (int q = 0; q < MAX_QUEUES; q++)
		t->vq[q] = (struct ovm_vq){.size = t->ops->queue_max, .msix_vector = NO_VECTOR};
}

/* ------------------------------------------------------- common config */

static struct ovm_vq *selected(struct ovm_virtio *t)
{
	return t->queue_select < t->ops->num_queues ? &t->vq[t->queue_select] : NULL;
}

static void common_render(struct ovm_virtio *t, uint8_t *c)
{
	memset(c, 0, R_COMMON_LEN);
	put32(c + 0x00, t->dfselect);
	put32(c + 0x04, t->dfselect < 2 ? (uint32_t)(t->offered >> (32 * t->dfselect)) : 0);
	put32(c + 0x08, t->gfselect);
	put32(c + 0x0c, t->gfselect < 2 ? (uint32_t)(t->driver_features >> (32 * t->gfselect)) : 0);
	put16(c + 0x10, t->config_vector);
	put16(c + 0x12, (uint16_t)t->ops->num_queues);
	c[0x14] = t->status;
	c[0x15] = t->config_gen;
	put16(c + 0x16, t->queue_select);
	struct ovm_vq *vq = selected(t);
	if (vq) {
		put16(c + 0x18, vq->size);
		put16(c + 0x1a, vq->msix_vector);
		put16(c + 0x1c, vq->ready);
		put16(c + 0x1e, t->queue_select); /* queue_notify_off */
		put64(c + 0x20, vq->desc);
		put64(c + 0x28, vq->avail);
		put64(c + 0x30, vq->used);
	}
}

static bool touches(uint64_t off, uint32_t len, uint64_t field, uint32_t flen)
{
	return off < field + flen && field < off + len;
}

static uint16_t valid_vector(struct ovm_virtio *t, uint16_t v)
{
	return v < t->nvec ? v : NO_VECTOR; /* NO_VECTOR read back = "could not assign" */
}

static void queue_enable(struct ovm_virtio *t, struct ovm_vq *vq)
{
	uint64_t s = vq->size;
	bool ok = s && s <= t->ops->queue_max && !(s & (s - 1)) && !(vq->desc & 15) && !(vq->avail & 1) &&
		  !(vq->used & 3) && ovm_gpa(t->mem, vq->desc, 16 * s) && ovm_gpa(t->mem, vq->avail, 6 + 2 * s) &&
		  ovm_gpa(t->mem, vq->used, 6 + 8 * s);
	if (!ok) {
		ovm_virtio_fail(t, "queue rings outside RAM, misaligned, or a bad size");
		return;
	}
	vq->last_avail = 0;
	vq->used_idx = 0;
	vq->ready = true;
}

static void status_write(struct ovm_virtio *t, uint8_t v)
{
	if (v == 0) {
		reset(t);
		return;
	}
	if ((v & S_FEATURES_OK) && !(t->status & S_FEATURES_OK)) {
		/* Accept only a subset of what we offered, with VERSION_1. */
		if ((t->driver_features & ~t->offered) || !(t->driver_features & F_VERSION_1))
			v &= (uint8_t)~S_FEATURES_OK;
	}
	if ((v & S_DRIVER_OK) && !(v & S_FEATURES_OK))
		v &= (uint8_t)~S_DRIVER_OK; /* DRIVER_OK before FEATURES_OK does not take */
	t->status = (uint8_t)(v | (t->status & S_NEEDS_RESET));
}

static void common_write(struct ovm_virtio *t, uint64_t off, const uint8_t *data, uint32_t len)
{
	uint8_t c[R_COMMON_LEN];
	common_render(t, c);
	memcpy(c + off, data, len);
	struct ovm_vq *vq = selected(t);
	bool q_writable = vq && !vq->ready;
	if (touches(off, len, 0x00, 4))
		t->dfselect = get32(c + 0x00);
	if (touches(off, len, 0x08, 4))
		t->gfselect = get32(c + 0x08);
	if (touches(off, len, 0x0c, 4) && t->gfselect < 2 && !(t->status & S_FEATURES_OK)) {
		uint64_t mask = 0xffffffffull << (32 * t->gfselect);
		t->driver_features = (t->driver_features & ~mask) | ((uint64_t)get32(c + 0x0c) << (32 * t->gfselect));
	}
	if (touches(off, len, 0x10, 2))
		t->config_vector = valid_vector(t, get16(c + 0x10));
	if (touches(off, len, 0x16, 2))
		t->queue_select = get16(c + 0x16);
	vq = selected(t);
	q_writable = vq && !vq->ready;
	if (touches(off, len, 0x18, 2) && q_writable) {
		uint16_t s = get16(c + 0x18);
		if (s && s <= t->ops->queue_max && !(s & (s - 1)))
			vq->size = s;
	}
	if (touches(off, len, 0x1a, 2) && vq)
		vq->msix_vector = valid_vector(t, get16(c + 0x1a));
	if (touches(off, len, 0x20, 8) && q_writable)
		vq->desc = get64(c + 0x20);
	if (touches(off, len, 0x28, 8) && q_writable)
		vq->avail = get64(c + 0x28);
	if (touches(off, len, 0x30, 8) && q_writable)
		vq->used = get64(c + 0x30);
	if (touches(off, len, 0x1c, 2) && q_writable && get16(c + 0x1c) == 1)
		queue_enable(t, vq);
	if (touches(off, len, 0x14, 1))
		status_write(t, c[0x14]);
}

/* ---------------------------------------------------------------- BARs */

static int bar0(struct ovm_virtio *t, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	if (off < R_COMMON + R_COMMON_LEN) {
		if (off + len > R_COMMON_LEN)
			return 0;
		if (is_write) {
			common_write(t, off, data, len);
		} else {
			uint8_t c[R_COMMON_LEN];
			common_render(t, c);
			memcpy(data, c + off, len);
		}
	} else if (off >= R_ISR && off < R_ISR + 4) {
		if (!is_write) {
			memset(data, 0, len);
			data[0] = t->isr;
			t->isr = 0;
			ovm_pci_intx(&t->pci, 0);
		}
	} else if (off >= R_DEVICE && off < R_DEVICE + t->ops->config_len) {
		uint64_t o = off - R_DEVICE;
		if (o + len <= t->ops->config_len)
			t->ops->config_rw(t->dev, (uint32_t)o, data, len, is_write);
	} else if (off >= R_NOTIFY && off < R_NOTIFY + NOTIFY_MULT * (uint64_t)t->ops->num_queues) {
		int q = (int)((off - R_NOTIFY) / NOTIFY_MULT);
		if (is_write && (t->status & S_DRIVER_OK) && !(t->status & S_NEEDS_RESET) && t->vq[q].ready)
			return t->ops->notify(t->dev, t, q);
	} else if (!is_write) {
		memset(data, 0, len); /* unused parts of the BAR read as zeros */
	}
	return 0;
}

static int bar1(struct ovm_virtio *t, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	if (off + len <= 16ull * t->nvec) {
		if (!is_write) {
			memcpy(data, t->msix + off, len);
			return 0;
		}
		memcpy(t->msix + off, data, len);
		msix_unmasked(t);
	} else if (off >= MSIX_PBA && off + len <= MSIX_PBA + 8) {
		if (!is_write) {
			uint8_t p[8];
			put64(p, t->pba);
			memcpy(data, p + (off - MSIX_PBA), len);
		}
	} else if (!is_write) {
		memset(data, 0, len);
	}
	return 0;
}

static int bar_io(struct ovm_pci_dev *d, int bar, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct ovm_virtio *t = of(d);
	pthread_mutex_lock(&t->lock);
	int rc = bar == 0 ? bar0(t, off, data, len, is_write) : bar1(t, off, data, len, is_write);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

/* VIRTIO_PCI_CAP_PCI_CFG: a window into the BARs through config space. */
static bool pcicfg_window(struct ovm_virtio *t, uint32_t *bar, uint32_t *off, uint32_t *len)
{
	*bar = t->pci.cfg[CAP_PCICFG + 4];
	*off = get32(t->pci.cfg + CAP_PCICFG + 8);
	*len = get32(t->pci.cfg + CAP_PCICFG + 12);
	return *bar <= 1 && (*len == 1 || *len == 2 || *len == 4) && *off % *len == 0 &&
	       *off < (*bar ? BAR1_SIZE : BAR0_SIZE);
}

static void cfg_read(struct ovm_pci_dev *d, uint32_t off, uint32_t len)
{
	struct ovm_virtio *t = of(d);
	uint32_t bar, o, l;
	if (touches(off, len, PCICFG_DATA, 4) && pcicfg_window(t, &bar, &o, &l)) {
		uint8_t v[4] = {0};
		bar_io(d, (int)bar, o, v, l, false);
		memcpy(d->cfg + PCICFG_DATA, v, 4);
	}
}

static void cfg_written(struct ovm_pci_dev *d, uint32_t off, uint32_t len)
{
	struct ovm_virtio *t = of(d);
	uint32_t bar, o, l;
	if (touches(off, len, PCICFG_DATA, 4) && pcicfg_window(t, &bar, &o, &l))
		bar_io(d, (int)bar, o, d->cfg + PCICFG_DATA, l, true);
	if (touches(off, len, MSIX_CTRL, 2)) {
		pthread_mutex_lock(&t->lock);
		if (msix_on(t))
			ovm_pci_intx(&t->pci, 0); /* INTx is not used with MSI-X */
		msix_unmasked(t);
		pthread_mutex_unlock(&t->lock);
	}
}

/* ------------------------------------------------------- save / load */

/* Saved state: struct tr_state, one struct vq_state per queue, then the
 * MSI-X table (16 bytes x (MAX_QUEUES + 1)). Requests are served
 * synchronously on the notifying vCPU, so no request is in flight at a
 * snapshot: the restored indices are the whole story (no kick needed). */
#define VIRTIO_STATE_VERSION 1

struct vq_state {
	uint64_t desc, avail, used;
	uint16_t size, last_avail, used_idx, msix_vector;
	uint8_t ready, pad[7];
};

struct tr_state {
	uint32_t version, nqueues;
	uint32_t dfselect, gfselect;
	uint64_t driver_features, pba;
	uint8_t status, config_gen, isr, pad;
	uint16_t queue_select, config_vector;
};

static int save(struct ovm_pci_dev *d, struct ovm_buf *out, struct ovm_err *err)
{
	struct ovm_virtio *t = of(d);
	pthread_mutex_lock(&t->lock);
	struct tr_state s = {VIRTIO_STATE_VERSION, (uint32_t)t->ops->num_queues, t->dfselect, t->gfselect,
			     t->driver_features, t->pba, t->status, t->config_gen, t->isr, 0, t->queue_select,
			     t->config_vector};
	int rc = ovm_buf_put(out, &s, sizeof s);
	for (int q = 0; !rc && q < t->ops->num_queues; q++) {
		struct ovm_vq *v = &t->vq[q];
		struct vq_state vs = {v->desc, v->avail, v->used, v->size, v->last_avail, v->used_idx, v->msix_vector,
				      v->ready, {0}};
		rc = ovm_buf_put(out, &vs, sizeof vs);
	}
	if (!rc)
		rc = ovm_buf_put(out, t->msix, sizeof t->msix);
	pthread_mutex_unlock(&t->lock);
	return rc ? ovm_errf(err, ENOMEM, "%s: no memory for state", t->ops->name) : 0;
}

static int load(struct ovm_pci_dev *d, struct ovm_rd *in, struct ovm_err *err)
{
	struct ovm_virtio *t = of(d);
	struct tr_state s;
	int rc = ovm_rd_get(in, &s, sizeof s, "virtio transport", err);
	if (rc)
		return rc;
	if (s.version != VIRTIO_STATE_VERSION || s.nqueues != (uint32_t)t->ops->num_queues)
		return ovm_errf(err, EINVAL, "%s: saved state version %u with %u queues, expected %u with %d", t->ops->name,
				s.version, s.nqueues, VIRTIO_STATE_VERSION, t->ops->num_queues);
	struct vq_state vs[MAX_QUEUES];
	for (int q = 0; q < t->ops->num_queues; q++)
		if ((rc = ovm_rd_get(in, &vs[q], sizeof vs[q], "virtqueue", err)))
			return rc;
	uint8_t msix[sizeof t->msix];
	if ((rc = ovm_rd_get(in, msix, sizeof msix, "msi-x table", err)))
		return rc;
	pthread_mutex_lock(&t->lock);
	t->dfselect = s.dfselect;
	t->gfselect = s.gfselect;
	t->driver_features = s.driver_features & t->offered;
	t->pba = s.pba;
	t->status = s.status;
	t->config_gen = s.config_gen;
	t->isr = s.isr;
	t->queue_select = s.queue_select;
	t->config_vector = valid_vector(t, s.config_vector);
	for (int q = 0; q < t->ops->num_queues; q++) {
		struct ovm_vq *v = &t->vq[q];
		*v = (struct ovm_vq){vs[q].size, vs[q].ready != 0, vs[q].desc, vs[q].avail, vs[q].used,
				     vs[q].last_avail, vs[q].used_idx, valid_vector(t, vs[q].msix_vector)};
	}
	memcpy(t->msix, msix, sizeof msix);
	pthread_mutex_unlock(&t->lock);
	return 0;
}

static int flush(struct ovm_pci_dev *d, struct ovm_err *err)
{
	struct ovm_virtio *t = of(d);
	if (!t->ops->flush)
		return 0;
	pthread_mutex_lock(&t->lock);
	int rc = t->ops->flush(t->dev, err);
	pthread_mutex_unlock(&t->lock);
	return rc;
}

static void destroy(struct ovm_pci_dev *d)
{
	struct ovm_virtio *t = of(d);
	if (t->ops->destroy)
		t->ops->destroy(t->dev);
	pthread_mutex_destroy(&t->lock);
	free(t);
}

static const struct ovm_pci_dev_ops pci_ops = {
	.bar_io = bar_io,
	.cfg_read = cfg_read,
	.cfg_written = cfg_written,
	.save = save,
	.load = load,
	.flush = flush,
	.destroy = destroy,
};

/* ------------------------------------------------------------- create */

static void vendor_cap(uint8_t *cfg, uint8_t at, uint8_t next, uint8_t len, uint8_t type, uint8_t bar, uint32_t off,
		       uint32_t length)
{
	cfg[at] = 0x09;
	cfg[at + 1] = next;
	cfg[at + 2] = len;
	cfg[at + 3] = type;
	cfg[at + 4] = bar;
	put32(cfg + at + 8, off);
	put32(cfg + at + 12, length);
}

int ovm_virtio_pci_create(struct ovm_pci *pci, const struct ovm_mem *mem, const struct ovm_virtio_ops *ops, void *dev,
			  struct ovm_virtio **out, struct ovm_err *err)
{
	if (out)
		*out = NULL;
	if (ops->num_queues < 1 || ops->num_queues > MAX_QUEUES || ops->config_len > 0x1000 ||
	    !ops->queue_max || ops->queue_max > 1024 || (ops->queue_max & (ops->queue_max - 1)))
		return ovm_errf(err, EINVAL, "%s: bad virtio device description", ops->name);
	struct ovm_virtio *t = calloc(1, sizeof *t);
	if (!t)
		return ovm_errf(err, ENOMEM, "%s: no memory", ops->name);
	t->ops = ops;
	t->dev = dev;
	t->mem = mem;
	t->offered = ops->features | F_VERSION_1;
	t->nvec = (uint16_t)(ops->num_queues + 1);
	pthread_mutex_init(&t->lock, NULL);
	for (int v = 0; v < t->nvec; v++)
		put32(t->msix + 16 * v + 12, 1); /* vectors start masked */
	reset(t);

	struct ovm_pci_dev *d = &t->pci;
	uint8_t *c = d->cfg;
	put16(c + 0x00, 0x1af4);
	put16(c + 0x02, (uint16_t)(0x1040 + ops->device_id));
	put16(c + 0x06, 0x10); /* status: capabilities list */
	c[0x08] = 1;           /* revision 1: modern */
	c[0x0a] = ops->device_id == 2 ? 0x00 : 0x80; /* storage/SCSI for block, "other" else */
	c[0x0b] = ops->device_id == 2 ? 0x01 : 0xff;
	put16(c + 0x2c, 0x1af4);
	put16(c + 0x2e, ops->device_id);
	c[0x34] = CAP_COMMON;
	vendor_cap(c, CAP_COMMON, CAP_ISR, 16, 1, 0, R_COMMON, R_COMMON_LEN);
	vendor_cap(c, CAP_ISR, CAP_NOTIFY, 16, 3, 0, R_ISR, 4);
	vendor_cap(c, CAP_NOTIFY, CAP_DEVICE, 20, 2, 0, R_NOTIFY, NOTIFY_MULT * (uint32_t)ops->num_queues);
	put32(c + CAP_NOTIFY + 16, NOTIFY_MULT);
	vendor_cap(c, CAP_DEVICE, CAP_PCICFG, 16, 4, 0, R_DEVICE, ops->config_len);
	vendor_cap(c, CAP_PCICFG, CAP_MSIX, 20, 5, 0, 0, 0);
	memset(d->wmask + CAP_PCICFG + 4, 0xff, 1);  /* bar */
	memset(d->wmask + CAP_PCICFG + 8, 0xff, 12); /* offset, length, data */
	c[CAP_MSIX] = 0x11;
	c[CAP_MSIX + 1] = 0;
	put16(c + MSIX_CTRL, (uint16_t)(t->nvec - 1));
	put32(c + CAP_MSIX + 4, 0 | 1);        /* table at BAR 1 + 0 */
	put32(c + CAP_MSIX + 8, MSIX_PBA | 1); /* PBA at BAR 1 + 0x800 */
	d->wmask[MSIX_CTRL + 1] = 0xc0;        /* enable, function mask */
	d->bar_size[0] = BAR0_SIZE;
	d->bar_size[1] = BAR1_SIZE;
	d->ops = &pci_ops;
	d->name = ops->name;
	int rc = ovm_pci_add(pci, d, err);
	if (rc) {
		pthread_mutex_destroy(&t->lock);
		free(t);
		return rc;
	}
	if (out)
		*out = t;
	return 0;
}
