/* i8042.c — the PS/2 controller, reduced to what Linux needs to probe it
 * quickly and to reboot through it (reboot=k: command 0xFE pulses the
 * CPU reset line). No keyboard or mouse is attached: bytes sent to a
 * device get no answer, so Linux gives up on them at once.
 *
 * Ports: 0x60 data, 0x64 status (read) / command (write).
 * Commands: 0x20 read command byte, 0x60 write command byte, 0xAA self
 * test (0x55), 0xAB/0xA9 port tests (0x00), 0xA7/0xA8/0xAD/0xAE port
 * disable/enable, 0xD1 write output port (bit 0 clear = reset), 0xD2/0xD3
 * echo a byte as keyboard/aux input (used by Linux's MUX and loop tests),
 * 0xFE reset. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ovm.h"

#define ST_OBF 0x01
#define ST_SYS 0x04
#define ST_CMD 0x08
#define ST_AUXDATA 0x20

struct i8042_regs {
	uint8_t ctr;     /* command byte */
	uint8_t status;
	uint8_t out;     /* output buffer */
	uint8_t pending; /* command waiting for its data byte (0 = none) */
	uint8_t outport;
};

struct ovm_i8042 {
	pthread_mutex_t lock;
	struct i8042_regs r;
	struct ovm_irq irq;
	void (*reset)(void *);
	void *opaque;
};

static void put_out(struct ovm_i8042 *k, uint8_t v, bool aux)
{
	k->r.out = v;
	k->r.status |= ST_OBF;
	if (aux)
		k->r.status |= ST_AUXDATA;
	else
		k->r.status &= (uint8_t)~ST_AUXDATA;
	/* Edge on IRQ1/IRQ12 when that port's interrupt is enabled in the command byte. */
	uint32_t gsi = aux ? 12 : 1;
	if (k->irq.set_line && (k->r.ctr & (aux ? 0x02 : 0x01))) {
		k->irq.set_line(k->irq.opaque, gsi, 1);
		k->irq.set_line(k->irq.opaque, gsi, 0);
	}
}

static int i8042_io(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct ovm_i8042 *k = opaque;
	(void)len;
	bool do_reset = false;
	pthread_mutex_lock(&k->lock);
	if (!is_write) {
		if (off == 0) { /* port 0x60 */
			data[0] = k->r.out;
			k->r.status &= (uint8_t)~(ST_OBF | ST_AUXDATA);
		} else {        /* port 0x64 */
			data[0] = k->r.status;
		}
		pthread_mutex_unlock(&k->lock);
		return 0;
	}
	uint8_t v = data[0];
	if (off == 4) { /* command */
		k->r.status |= ST_CMD;
		k->r.pending = 0;
		switch (v) {
		case 0x20: put_out(k, k->r.ctr, false); break;
		case 0x60: case 0xd1: case 0xd2: case 0xd3: case 0xd4: k->r.pending = v; break;
		case 0xaa: put_out(k, 0x55, false); break;
		case 0xa9: case 0xab: put_out(k, 0x00, false); break;
		case 0xa7: k->r.ctr |= 0x20; break;
		case 0xa8: k->r.ctr &= (uint8_t)~0x20; break;
		case 0xad: k->r.ctr |= 0x10; break;
		case 0xae: k->r.ctr &= (uint8_t)~0x10; break;
		case 0xfe: do_reset = true; break;
		default: break;
		}
	} else {        /* data */
		k->r.status &= (uint8_t)~ST_CMD;
		switch (k->r.pending) {
		case 0x60: k->r.ctr = v; break;
		case 0xd1:
			k->r.outport = v;
			if (!(v & 1))
				do_reset = true;
			break;
		case 0xd2: put_out(k, v, false); break;
		case 0xd3: put_out(k, v, true); break;
		default: break; /* to a device that is not there: no answer */
		}
		k->r.pending = 0;
	}
	pthread_mutex_unlock(&k->lock);
	if (do_reset && k->reset)
		k->reset(k->opaque);
	return 0;
}

/* Each port is its own bus range (offset 0), so say which one. */
static int i8042_data_io(void *o, uint64_t off, uint8_t *d, uint32_t len, bool w)
{
	(void)off;
	return i8042_io(o, 0, d, len, w);
}
static int i8042_cmd_io(void *o, uint64_t off, uint8_t *d, uint32_t len, bool w)
{
	(void)off;
	return i8042_io(o, 4, d, len, w);
}

int ovm_i8042_create(struct ovm_i8042 **out, struct ovm_bus *pio, const struct ovm_irq *irq,
		     void (*reset)(void *), void *opaque, struct ovm_err *err)
{
	struct ovm_i8042 *k = calloc(1, sizeof *k);
	if (!k)
		return ovm_errf(err, ENOMEM, "i8042: out of memory");
	pthread_mutex_init(&k->lock, NULL);
	k->r.status = ST_SYS;
	k->r.ctr = 0x30; /* both ports disabled, no interrupts, until Linux writes it */
	k->r.outport = 0x01;
	if (irq)
		k->irq = *irq;
	k->reset = reset;
	k->opaque = opaque;
	/* Two single ports: 0x60 and 0x64 (0x61, the PC speaker/NMI port, stays unhandled). */
	int rc = ovm_bus_register(pio, 0x60, 1, i8042_data_io, k, "i8042-data", err);
	if (!rc)
		rc = ovm_bus_register(pio, 0x64, 1, i8042_cmd_io, k, "i8042-cmd", err);
	if (rc) {
		free(k);
		return rc;
	}
	*out = k;
	return 0;
}

int ovm_i8042_save(struct ovm_i8042 *k, struct ovm_buf *out, struct ovm_err *err)
{
	pthread_mutex_lock(&k->lock);
	struct i8042_regs r = k->r;
	pthread_mutex_unlock(&k->lock);
	if (ovm_buf_put(out, &r, sizeof r))
		return ovm_errf(err, ENOMEM, "i8042: out of memory saving state");
	return 0;
}

int ovm_i8042_load(struct ovm_i8042 *k, struct ovm_rd *in, struct ovm_err *err)
{
	struct i8042_regs r;
	int rc = ovm_rd_get(in, &r, sizeof r, "i8042 registers", err);
	if (rc)
		return rc;
	pthread_mutex_lock(&k->lock);
	k->r = r;
	pthread_mutex_unlock(&k->lock);
	return 0;
}

void ovm_i8042_destroy(struct ovm_i8042 *k)
{
	if (!k)
		return;
	pthread_mutex_destroy(&k->lock);
	free(k);
}
