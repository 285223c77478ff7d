/* serial.c — an 8250/16550A UART (COM1 console, COM2 agent channel).
 *
 * Registers (offset from base; DLAB = LCR bit 7):
 *   0 RBR (read) / THR (write) / DLL     4 MCR (bit 4: loopback)
 *   1 IER / DLM                          5 LSR (DR, THRE, TEMT)
 *   2 IIR (read) / FCR (write)           6 MSR (loopback mirrors MCR)
 *   3 LCR                                7 SCR
 * Transmit is instant: THR is always empty. The line is level-driven
 * with KVM_IRQ_LINE: high while an enabled interrupt is pending. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ovm.h"

#define IER_RDI 0x01
#define IER_THRI 0x02
#define IIR_NONE 0x01
#define IIR_THRI 0x02
#define IIR_RDI 0x04
#define IIR_FIFO 0xc0
#define LSR_DR 0x01
#define LSR_THRE 0x20
#define LSR_TEMT 0x40
#define MCR_LOOP 0x10
#define LCR_DLAB 0x80

struct serial_regs {
	uint8_t ier, lcr, mcr, scr, fcr, dll, dlm, thri_pending, level;
	uint16_t rx_head, rx_len;
};

struct ovm_serial {
	pthread_mutex_t lock;
	struct serial_regs r;
	uint8_t rx[OVM_SERIAL_FIFO];
	uint32_t gsi;
	struct ovm_irq irq;
	void (*tx)(void *, const uint8_t *, size_t);
	void *opaque;
};

static uint8_t iir(struct ovm_serial *s)
{
	uint8_t fifo = (s->r.fcr & 1) ? IIR_FIFO : 0;
	if ((s->r.ier & IER_RDI) && s->r.rx_len)
		return IIR_RDI | fifo;
	if ((s->r.ier & IER_THRI) && s->r.thri_pending)
		return IIR_THRI | fifo;
	return IIR_NONE | fifo;
}

/* Called with the lock held. */
static void update_irq(struct ovm_serial *s)
{
	uint8_t level = (iir(s) & IIR_NONE) ? 0 : 1;
	if (level != s->r.level) {
		s->r.level = level;
		if (s->irq.set_line)
			s->irq.set_line(s->irq.opaque, s->gsi, level);
	}
}

static void rx_push(struct ovm_serial *s, uint8_t b)
{
	if (s->r.rx_len < OVM_SERIAL_FIFO) {
		s->rx[(s->r.rx_head + s->r.rx_len) % OVM_SERIAL_FIFO] = b;
		s->r.rx_len++;
	}
}

static int serial_io(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct ovm_serial *s = opaque;
	if (len != 1) {
		if (!is_write)
			memset(data, 0xff, len);
		return 0;
	}
	uint8_t out = 0;
	bool have_out = false;
	pthread_mutex_lock(&s->lock);
	bool dlab = s->r.lcr & LCR_DLAB;
	if (is_write) {
		uint8_t v = *data;
		switch (off) {
		case 0:
			if (dlab) {
				s->r.dll = v;
			} else if (s->r.mcr & MCR_LOOP) {
				rx_push(s, v);
				s->r.thri_pending = 1;
			} else {
				out = v;
				have_out = true;
				s->r.thri_pending = 1;
			}
			break;
		case 1:
			if (dlab) {
				s->r.dlm = v;
			} else {
				/* Enabling THRI with an empty THR raises it at once (as 16550s do). */
				if ((v & IER_THRI) && !(s->r.ier & IER_THRI))
					s->r.thri_pending = 1;
				s->r.ier = v & 0x0f;
			}
			break;
		case 2:
			s->r.fcr = v & 0xc9;
			if (v & 0x02) { /* clear the receive FIFO */
				s->r.rx_head = 0;
				s->r.rx_len = 0;
			}
			break;
		case 3: s->r.lcr = v; break;
		case 4: s->r.mcr = v & 0x1f; break;
		case 7: s->r.scr = v; break;
		default: break; /* LSR/MSR writes are ignored */
		}
	} else {
		uint8_t v = 0xff;
		switch (off) {
		case 0:
			if (dlab) {
				v = s->r.dll;
			} else if (s->r.rx_len) {
				v = s->rx[s->r.rx_head];
				s->r.rx_head = (uint16_t)((s->r.rx_head + 1) % OVM_SERIAL_FIFO);
				s->r.rx_len--;
			} else {
				v = 0;
			}
			break;
		case 1: v = dlab ? s->r.dlm : s->r.ier; break;
		case 2:
			v = iir(s);
			if ((v & 0x0f) == IIR_THRI)
				s->r.thri_pending = 0; /* reading IIR acknowledges THRI */
			break;
		case 3: v = s->r.lcr; break;
		case 4: v = s->r.mcr; break;
		case 5: v = LSR_THRE | LSR_TEMT | (s->r.rx_len ? LSR_DR : 0); break;
		case 6:
			if (s->r.mcr & MCR_LOOP) {
				uint8_t m = s->r.mcr;
				v = (uint8_t)(((m & 0x02) ? 0x10 : 0) | ((m & 0x01) ? 0x20 : 0) |
					      ((m & 0x04) ? 0x40 : 0) | ((m & 0x08) ? 0x80 : 0));
			} else {
				v = 0xb0; /* DCD, DSR, CTS */
			}
			break;
		case 7: v = s->r.scr; break;
		}
		*data = v;
	}
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	if (have_out && s->tx)
		s->tx(s->opaque, &out, 1);
	return 0;
}

int ovm_serial_create(struct ovm_serial **out, struct ovm_bus *pio, uint16_t base, uint32_t gsi,
		      const struct ovm_irq *irq, void (*tx)(void *, const uint8_t *, size_t), void *opaque,
		      struct ovm_err *err)
{
	struct ovm_serial *s = calloc(1, sizeof *s);
	if (!s)
		return ovm_errf(err, ENOMEM, "serial: out of memory");
	pthread_mutex_init(&s->lock, NULL);
	s->gsi = gsi;
	if (irq)
		s->irq = *irq;
	s->tx = tx;
	s->opaque = opaque;
	int rc = ovm_bus_register(pio, base, 8, serial_io, s, base == 0x3f8 ? "com1" : "com2", err);
	if (rc) {
		free(s);
		return rc;
	}
	*out = s;
	return 0;
}

int ovm_serial_input(struct ovm_serial *s, const uint8_t *data, size_t len)
{
	pthread_mutex_lock(&s->lock);
	size_t n = 0;
	while (n < len && s->r.rx_len < OVM_SERIAL_FIFO)
		rx_push(s, data[n++]);
	update_irq(s);
	pthread_mutex_unlock(&s->lock);
	return (int)n;
}

/* Saved as: struct serial_regs (fixed layout), then rx_len FIFO bytes in order. */
int ovm_serial_save(struct ovm_serial *s, struct ovm_buf *out, struct ovm_err *err)
{
	pthread_mutex_lock(&s->lock);
	struct serial_regs r = s->r;
	uint8_t fifo[OVM_SERIAL_FIFO];
	for (uint16_t i = 0; i < r.rx_len; i++)
		fifo[i] = s->rx[(r.rx_head + i) % OVM_SERIAL_FIFO];
	pthread_mutex_unlock(&s->lock);
	r.rx_head = 0;
	int rc = ovm_buf_put(out, &r, sizeof r);
	if (!rc)
		rc = ovm_buf_put(out, fifo, r.rx_len);
	if (rc)
		return ovm_errf(err, ENOMEM, "serial: out of memory saving state");
	return 0;
}

int ovm_serial_load(struct ovm_serial *s, struct ovm_rd *in, struct ovm_err *err)
{
	struct serial_regs r;
	int rc = ovm_rd_get(in, &r, sizeof r, "serial registers", err);
	if (rc)
		return rc;
	if (r.rx_len > OVM_SERIAL_FIFO)
		return ovm_errf(err, EINVAL, "serial: saved FIFO length %u exceeds %u", r.rx_len, OVM_SERIAL_FIFO);
	pthread_mutex_lock(&s->lock);
	rc = ovm_rd_get(in, s->rx, r.rx_len, "serial FIFO", err);
	if (!rc) {
		s->r = r;
		s->r.rx_head = 0;
		/* Re-assert the line as saved (the irqchip state was restored with it). */
		if (s->irq.set_line)
			s->irq.set_line(s->irq.opaque, s->gsi, s->r.level);
	}
	pthread_mutex_unlock(&s->lock);
	return rc;
}

void ovm_serial_destroy(struct ovm_serial *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->lock);
	free(s);
}
