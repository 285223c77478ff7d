/* test_legacy.c — the 8250 UART and the i8042 as Linux drives them, with a
 * recording interrupt line instead of KVM. */
#include <errno.h>
#include <string.h>

#include "ovm.h"
#include "check.h"

static int line_level[16], line_edges[16];
static int set_line(void *o, uint32_t gsi, int level)
{
	(void)o;
	if (level && !line_level[gsi])
		line_edges[gsi]++;
	line_level[gsi] = level;
	return 0;
}
static struct ovm_irq irq = {set_line, NULL, NULL};
static uint8_t txbuf[256];
static size_t txlen;
static void tx(void *o, const uint8_t *d, size_t n)
{
	(void)o;
	memcpy(txbuf + txlen, d, n);
	txlen += n;
}
static int resets;
static void reset(void *o) { (void)o; resets++; }

static uint8_t in8(struct ovm_bus *b, uint16_t port)
{
	uint8_t v = 0;
	ovm_bus_dispatch(b, port, &v, 1, false);
	return v;
}
static void out8(struct ovm_bus *b, uint16_t port, uint8_t v) { ovm_bus_dispatch(b, port, &v, 1, true); }

static void test_uart(void)
{
	struct ovm_bus pio = {0};
	struct ovm_err err = {0};
	struct ovm_serial *s;
	REQUIRE(ovm_serial_create(&s, &pio, 0x3f8, 4, &irq, tx, NULL, &err) == 0, "%s", err.msg);
	/* Linux's autoconfig: scratch register, IER, loopback MSR test, FIFO. */
	out8(&pio, 0x3ff, 0xa5);
	CHECK(in8(&pio, 0x3ff) == 0xa5, "scratch");
	out8(&pio, 0x3f9, 0x0f);
	CHECK(in8(&pio, 0x3f9) == 0x0f, "IER holds 4 bits");
	out8(&pio, 0x3f9, 0);
	out8(&pio, 0x3fc, 0x1a); /* LOOP | OUT2 | RTS */
	CHECK((in8(&pio, 0x3fe) & 0xf0) == 0x90, "loopback MSR (CTS|DCD) is what Linux checks");
	out8(&pio, 0x3fc, 0x0b);
	CHECK(in8(&pio, 0x3fe) == 0xb0, "MSR: DCD|DSR|CTS");
	out8(&pio, 0x3fa, 0x07);
	CHECK((in8(&pio, 0x3fa) & 0xc0) == 0xc0, "FIFO enabled: a 16550A");
	/* Divisor latch does not leak into data. */
	out8(&pio, 0x3fb, 0x80);
	out8(&pio, 0x3f8, 0x01);
	out8(&pio, 0x3fb, 0x03);
	CHECK(txlen == 0, "DLL write is not a byte out");
	/* Transmit. */
	out8(&pio, 0x3f8, 'o');
	out8(&pio, 0x3f8, 'k');
	CHECK(txlen == 2 && !memcmp(txbuf, "ok", 2));
	CHECK((in8(&pio, 0x3fd) & 0x60) == 0x60, "THR empty");
	/* THRI: enabling it raises the line; reading IIR acknowledges it. */
	out8(&pio, 0x3f9, 0x02);
	CHECK(line_level[4] == 1, "THRI raises IRQ 4");
	CHECK((in8(&pio, 0x3fa) & 0x0f) == 0x02, "IIR says THRI");
	CHECK(line_level[4] == 0 && (in8(&pio, 0x3fa) & 0x01), "then no interrupt");
	/* Receive: host input fills the FIFO and raises the line while RDI is on. */
	out8(&pio, 0x3f9, 0x01);
	CHECK(ovm_serial_input(s, (const uint8_t *)"hi", 2) == 2);
	CHECK(line_level[4] == 1 && (in8(&pio, 0x3fd) & 1), "data ready + IRQ");
	CHECK((in8(&pio, 0x3fa) & 0x0f) == 0x04, "IIR says RDI");
	CHECK(in8(&pio, 0x3f8) == 'h' && in8(&pio, 0x3f8) == 'i');
	CHECK(line_level[4] == 0 && !(in8(&pio, 0x3fd) & 1), "drained: line low");
	/* A full FIFO takes what fits. */
	static uint8_t lots[OVM_SERIAL_FIFO + 10];
	memset(lots, 'x', sizeof lots);
	CHECK(ovm_serial_input(s, lots, sizeof lots) == OVM_SERIAL_FIFO);
	CHECK(ovm_serial_input(s, lots, 1) == 0);
	/* Save, drain one byte, load: the FIFO comes back. */
	struct ovm_buf b = {0};
	REQUIRE(ovm_serial_save(s, &b, &err) == 0, "%s", err.msg);
	in8(&pio, 0x3f8);
	struct ovm_rd rd = {b.data, b.len, 0};
	REQUIRE(ovm_serial_load(s, &rd, &err) == 0, "%s", err.msg);
	CHECK(rd.off == rd.len, "load reads exactly what save wrote");
	int n = 0;
	while (in8(&pio, 0x3fd) & 1) {
		in8(&pio, 0x3f8);
		n++;
	}
	CHECK(n == OVM_SERIAL_FIFO, "restored FIFO holds %d bytes", n);
	struct ovm_rd shortrd = {b.data, 5, 0};
	CHECK(ovm_serial_load(s, &shortrd, &err) == -EINVAL, "short state is refused");
	ovm_buf_free(&b);
	/* Sizes other than 1 byte read as all ones. */
	uint32_t w = 0;
	ovm_bus_dispatch(&pio, 0x3f8, (uint8_t *)&w, 4, false);
	CHECK(w == 0xffffffffu);
	ovm_serial_destroy(s);
}

static void test_i8042(void)
{
	struct ovm_bus pio = {0};
	struct ovm_err err = {0};
	struct ovm_i8042 *k;
	REQUIRE(ovm_i8042_create(&k, &pio, &irq, reset, NULL, &err) == 0, "%s", err.msg);
	CHECK(!(in8(&pio, 0x64) & 0x01), "nothing to read at first");
	out8(&pio, 0x64, 0xaa);
	CHECK((in8(&pio, 0x64) & 0x01) && in8(&pio, 0x60) == 0x55, "self test passes");
	CHECK(!(in8(&pio, 0x64) & 0x01), "read empties the buffer");
	out8(&pio, 0x64, 0x60);
	out8(&pio, 0x60, 0x47);
	out8(&pio, 0x64, 0x20);
	CHECK(in8(&pio, 0x60) == 0x47, "command byte round trip");
	int edges = line_edges[1];
	out8(&pio, 0x64, 0xd2);
	out8(&pio, 0x60, 0x99);
	CHECK(in8(&pio, 0x60) == 0x99 && line_edges[1] == edges + 1, "0xD2 echoes and pulses IRQ 1");
	out8(&pio, 0x60, 0xff); /* to the keyboard: nobody answers */
	CHECK(!(in8(&pio, 0x64) & 0x01), "no device, no answer");
	CHECK(resets == 0);
	out8(&pio, 0x64, 0xfe);
	CHECK(resets == 1, "0xFE pulses reset");
	out8(&pio, 0x64, 0xd1);
	out8(&pio, 0x60, 0xfe);
	CHECK(resets == 2, "output port bit 0 low resets too");
	CHECK(in8(&pio, 0x61) == 0xff, "unhandled ports read 0xff");
	struct ovm_buf b = {0};
	REQUIRE(ovm_i8042_save(k, &b, &err) == 0);
	struct ovm_rd rd = {b.data, b.len, 0};
	CHECK(ovm_i8042_load(k, &rd, &err) == 0 && rd.off == rd.len);
	ovm_buf_free(&b);
	ovm_i8042_destroy(k);
}

int main(void)
{
	test_uart();
	test_i8042();
	return check_done("test_legacy");
}
