/* test_snapshot_format.c — the snapshot header without KVM: round trip,
 * and refusal (with the reason) of a damaged header or body, a wrong magic,
 * format version or architecture, a truncated file, and a CPU signature
 * this host cannot honour. */
#include <errno.h>
#include <string.h>

#include "ovm.h"
#include "check.h"

static struct ovm_snap_header sample(void)
{
	struct ovm_snap_header h;
	memset(&h, 0, sizeof h);
	h.version = OVM_SNAP_VERSION;
	h.arch = OVM_SNAP_ARCH_X86_64;
	memcpy(h.cpu.vendor, "AuthenticAMD", 13);
	h.cpu.family = 25;
	h.cpu.model = 1;
	h.cpu.stepping = 1;
	for (int i = 0; i < 8; i++)
		h.cpu.features[i] = 0x11111111u * (uint32_t)(i + 1);
	h.mem_bytes = 256ull << 20;
	h.ncpus = 1;
	h.ndisks = 2;
	return h;
}

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }

int main(void)
{
	struct ovm_err err = {0};
	/* CRC-32 check value (the standard "123456789" test vector). */
	CHECK(ovm_crc32(0, "123456789", 9) == 0xcbf43926u);
	CHECK(ovm_crc32(ovm_crc32(0, "1234", 4), "56789", 5) == 0xcbf43926u, "incremental");

	uint8_t body[300];
	for (size_t i = 0; i < sizeof body; i++)
		body[i] = (uint8_t)(i * 13 + 1);
	struct ovm_snap_header h = sample(), g;
	h.body_len = sizeof body;
	struct ovm_buf f = {0};
	REQUIRE(ovm_snap_encode(&h, body, &f, &err) == 0, "%s", err.msg);
	CHECK(f.len == 108 + sizeof body, "header is 108 bytes");
	CHECK(!memcmp(f.data, "OVMSNAP1", 8));
	const uint8_t *b = NULL;
	REQUIRE(ovm_snap_decode(f.data, f.len, "s/state.bin", &g, &b, &err) == 0, "%s", err.msg);
	CHECK(b == f.data + 108 && !memcmp(b, body, sizeof body));
	CHECK(g.version == 1 && g.arch == 1 && g.mem_bytes == h.mem_bytes && g.ncpus == 1 && g.ndisks == 2);
	CHECK(!strcmp(g.cpu.vendor, "AuthenticAMD") && g.cpu.family == 25 && g.cpu.model == 1 && g.cpu.stepping == 1);
	CHECK(!memcmp(g.cpu.features, h.cpu.features, sizeof h.cpu.features));

	uint8_t c[1024];
	/* Body damage: one flipped bit. */
	memcpy(c, f.data, f.len);
	c[108 + 17] ^= 0x04;
	CHECK(ovm_snap_decode(c, f.len, "s/state.bin", &g, &b, &err) == -EINVAL &&
	      strstr(err.msg, "s/state.bin: body checksum mismatch"), "%s", err.msg);
	/* Header damage. */
	memcpy(c, f.data, f.len);
	c[80] ^= 1;
	CHECK(ovm_snap_decode(c, f.len, "x", &g, &b, &err) == -EINVAL && strstr(err.msg, "header checksum"), "%s", err.msg);
	/* Wrong magic. */
	memcpy(c, f.data, f.len);
	c[0] = 'X';
	CHECK(ovm_snap_decode(c, f.len, "x", &g, &b, &err) == -EINVAL && strstr(err.msg, "not an ovm snapshot"), "%s", err.msg);
	/* A newer format version (checked before the checksum so the reason is the version). */
	memcpy(c, f.data, f.len);
	put32(c + 8, 2);
	CHECK(ovm_snap_decode(c, f.len, "x", &g, &b, &err) == -ENOTSUP &&
	      strstr(err.msg, "format version 2; this ovm reads version 1"), "%s", err.msg);
	/* Another architecture. */
	memcpy(c, f.data, f.len);
	put32(c + 12, 7);
	CHECK(ovm_snap_decode(c, f.len, "x", &g, &b, &err) == -ENOTSUP && strstr(err.msg, "architecture 7"), "%s", err.msg);
	/* Truncated: header only partly there, body cut. */
	CHECK(ovm_snap_decode(f.data, 60, "x", &g, &b, &err) == -EINVAL && strstr(err.msg, "truncated"), "%s", err.msg);
	CHECK(ovm_snap_decode(f.data, f.len - 1, "x", &g, &b, &err) == -EINVAL && strstr(err.msg, "truncated"), "%s", err.msg);
	CHECK(ovm_snap_decode(f.data, 4, "x", &g, &b, &err) == -EINVAL);
	ovm_buf_free(&f);

	/* CPU signatures: same vendor and a superset of features passes. */
	struct ovm_cpu_sig snap = sample().cpu, host = snap;
	CHECK(ovm_cpu_sig_check(&snap, &host, &err) == 0);
	host.features[2] |= 0xff000000u;
	host.model = 7;
	CHECK(ovm_cpu_sig_check(&snap, &host, &err) == 0, "more features on the host, other model: fine");
	host = snap;
	host.features[3] &= ~0x00000400u;
	CHECK(ovm_cpu_sig_check(&snap, &host, &err) == -ENOTSUP && strstr(err.msg, "CPUID 7.0.ECX bits 0x00000400"),
	      "%s", err.msg);
	host = snap;
	memcpy(host.vendor, "GenuineIntel", 13);
	CHECK(ovm_cpu_sig_check(&snap, &host, &err) == -ENOTSUP &&
	      strstr(err.msg, "taken on a AuthenticAMD CPU, this host is GenuineIntel"), "%s", err.msg);
	return check_done("test_snapshot_format");
}
