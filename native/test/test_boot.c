/* test_boot.c — the x86 loader without KVM: e820 with the MMIO hole, GDT
 * entries, identity page tables, the zero page a bzImage gets, and the
 * errors for images and sizes that cannot work. Uses the Debian fixture
 * kernel when test/.cache/fixtures/vmlinuz exists, plus synthetic images. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "ovm.h"
#include "check.h"

#define MiB (1ull << 20)
#define GiB (1ull << 30)

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static uint64_t rd64(const uint8_t *p) { return rd32(p) | (uint64_t)rd32(p + 4) << 32; }

static void test_e820(void)
{
	struct ovm_e820 m[8];
	struct ovm_err err = {0};
	int n = ovm_x86_e820(256 * MiB, m, 8, &err);
	CHECK(n == 3, "256 MiB: %d entries", n);
	CHECK(m[0].addr == 0 && m[0].size == OVM_BOOT_EBDA && m[0].type == OVM_E820_RAM);
	CHECK(m[1].addr == OVM_BOOT_EBDA && m[1].addr + m[1].size == MiB && m[1].type == OVM_E820_RESERVED);
	CHECK(m[2].addr == MiB && m[2].addr + m[2].size == 256 * MiB && m[2].type == OVM_E820_RAM);

	n = ovm_x86_e820(5 * GiB, m, 8, &err);
	CHECK(n == 4, "5 GiB: %d entries", n);
	CHECK(m[2].addr + m[2].size == OVM_MMIO_HOLE_START, "low RAM stops at the hole");
	CHECK(m[3].addr == OVM_MMIO_HOLE_END && m[3].size == 5 * GiB - OVM_MMIO_HOLE_START, "the rest above 4 GiB");
	uint64_t total = 0;
	for (int i = 0; i < n; i++)
		if (m[i].type == OVM_E820_RAM)
			total += m[i].size;
	CHECK(total == 5 * GiB - (MiB - OVM_BOOT_EBDA), "RAM adds up (minus the legacy hole)");

	n = ovm_x86_e820(3 * GiB, m, 8, &err);
	CHECK(n == 3 && m[2].addr + m[2].size == 3 * GiB, "exactly 3 GiB needs no high entry");
	CHECK(ovm_x86_e820(MiB, m, 8, &err) == -EINVAL && strstr(err.msg, "too little"), "%s", err.msg);
	CHECK(ovm_x86_e820(256 * MiB, m, 2, &err) == -EINVAL);
}

static void test_gdt(void)
{
	/* Known encodings (as Firecracker's and Linux's GDT_ENTRY). */
	CHECK(ovm_x86_gdt_entry(0xa09b, 0, 0xfffff) == 0x00af9b000000ffffull);
	CHECK(ovm_x86_gdt_entry(0xc093, 0, 0xfffff) == 0x00cf93000000ffffull);
	CHECK(ovm_x86_gdt_entry(0x808b, 0, 0xfffff) == 0x008f8b000000ffffull);
	CHECK(ovm_x86_gdt_entry(0xc093, 0x12345678, 0xabcde) == 0x12ca93345678bcdeull);
}

static void test_tables(struct ovm_mem *mem)
{
	struct ovm_err err = {0};
	REQUIRE(ovm_x86_write_gdt(mem, &err) == 0, "%s", err.msg);
	uint8_t *g = mem->host + OVM_BOOT_GDT;
	CHECK(rd64(g) == 0 && rd64(g + 8) == 0);
	CHECK(rd64(g + OVM_BOOT_CS) == 0x00af9b000000ffffull, "__BOOT_CS: 64-bit code");
	CHECK(rd64(g + OVM_BOOT_DS) == 0x00cf93000000ffffull, "__BOOT_DS: flat data");
	REQUIRE(ovm_x86_write_page_tables(mem, &err) == 0, "%s", err.msg);
	uint8_t *pml4 = mem->host + OVM_BOOT_PML4;
	CHECK(rd64(pml4) == ((OVM_BOOT_PML4 + 0x1000) | 3));
	CHECK(rd64(pml4 + 8) == 0, "only the first 512 GiB");
	/* Walk a few addresses through the tables: identity everywhere below 4 GiB. */
	uint64_t probes[] = {0, 0x100000, 0x1234567, 0x3fffffff, 0x40000000, 0xbfe00000, 0xfffff000};
	for (size_t i = 0; i < sizeof probes / sizeof probes[0]; i++) {
		uint64_t va = probes[i];
		uint64_t e4 = rd64(pml4 + 8 * ((va >> 39) & 511));
		uint64_t e3 = rd64(mem->host + (e4 & ~0xfffull) + 8 * ((va >> 30) & 511));
		uint64_t e2 = rd64(mem->host + (e3 & ~0xfffull) + 8 * ((va >> 21) & 511));
		CHECK((e2 & 0x81) == 0x81, "2 MiB page present for 0x%llx", (unsigned long long)va);
		uint64_t pa = (e2 & ~0x1fffffull) | (va & 0x1fffff);
		CHECK(pa == va, "0x%llx maps to 0x%llx", (unsigned long long)va, (unsigned long long)pa);
	}
	struct ovm_mem tiny = {mem->host, 0x9000};
	CHECK(ovm_x86_write_page_tables(&tiny, &err) == -EINVAL, "tables outside RAM are refused");
}

/* A minimal image with a valid header: setup_sects 1, protocol `ver`. */
static uint8_t *fake_image(size_t len, uint16_t ver, uint16_t xlf)
{
	uint8_t *k = calloc(1, len);
	k[0x1f1] = 1;
	k[0x1fe] = 0x55;
	k[0x1ff] = 0xaa;
	k[0x200] = 0xeb;
	k[0x201] = 0x6a; /* header ends at 0x26c */
	memcpy(k + 0x202, "HdrS", 4);
	k[0x206] = (uint8_t)ver;
	k[0x207] = (uint8_t)(ver >> 8);
	k[0x22c] = 0xff; k[0x22d] = 0xff; k[0x22e] = 0xff; k[0x22f] = 0x7f; /* initrd_addr_max */
	k[0x236] = (uint8_t)xlf;
	k[0x238] = 0xff; k[0x239] = 0x07; /* cmdline_size 2047 */
	for (size_t i = 0x400; i < len; i++)
		k[i] = (uint8_t)(i * 7);
	return k;
}

static void test_load_fake(struct ovm_mem *mem)
{
	struct ovm_err err = {0};
	struct ovm_x86_boot b;
	size_t len = 64 * 1024;
	uint8_t *k = fake_image(len, 0x020f, 1);
	uint8_t initrd[5000];
	memset(initrd, 0xa5, sizeof initrd);
	int rc = ovm_x86_load_linux(mem, k, len, initrd, sizeof initrd, "console=ttyS0 quiet", &b, &err);
	REQUIRE(rc == 0, "%s", err.msg);
	CHECK(b.entry == 0x100200 && b.zero_page == OVM_BOOT_ZERO_PAGE && b.protocol == 0x020f);
	CHECK(!memcmp(mem->host + OVM_BOOT_KERNEL, k + 0x400, len - 0x400), "kernel at 1 MiB from (setup_sects+1)*512");
	uint8_t *zp = mem->host + OVM_BOOT_ZERO_PAGE;
	CHECK(!memcmp(zp + 0x202, "HdrS", 4), "setup header copied");
	CHECK(zp[0x210] == 0xff, "type_of_loader");
	CHECK((zp[0x211] & 0x81) == 0x81, "LOADED_HIGH | CAN_USE_HEAP");
	CHECK(rd32(zp + 0x228) == OVM_BOOT_CMDLINE);
	CHECK(!strcmp((char *)mem->host + OVM_BOOT_CMDLINE, "console=ttyS0 quiet"));
	uint32_t ird = rd32(zp + 0x218);
	CHECK(rd32(zp + 0x21c) == sizeof initrd);
	CHECK((ird & 0xfff) == 0 && ird + sizeof initrd <= mem->size && ird == b.initrd_addr, "initrd page aligned at the top");
	CHECK(mem->size - ird < sizeof initrd + 4096, "as high as it goes");
	CHECK(!memcmp(mem->host + ird, initrd, sizeof initrd));
	CHECK(zp[0x1e8] == 3, "three e820 entries for 64 MiB");
	CHECK(rd64(zp + 0x2d0 + 40 + 0) == MiB && rd64(zp + 0x2d0 + 40 + 8) == mem->size - MiB &&
	      rd32(zp + 0x2d0 + 40 + 16) == 1, "e820[2]: RAM from 1 MiB");
	free(k);

	/* Refusals that name the problem. */
	k = fake_image(len, 0x020f, 1);
	memcpy(k + 0x202, "HdrX", 4);
	CHECK(ovm_x86_load_linux(mem, k, len, NULL, 0, "", &b, &err) == -EINVAL && strstr(err.msg, "not a bzImage"), "%s", err.msg);
	free(k);
	k = fake_image(len, 0x0206, 1);
	CHECK(ovm_x86_load_linux(mem, k, len, NULL, 0, "", &b, &err) == -EINVAL && strstr(err.msg, "2.06 is too old"), "%s", err.msg);
	free(k);
	k = fake_image(len, 0x020f, 0);
	CHECK(ovm_x86_load_linux(mem, k, len, NULL, 0, "", &b, &err) == -EINVAL && strstr(err.msg, "XLF_KERNEL_64"), "%s", err.msg);
	free(k);
	k = fake_image(len, 0x020f, 1);
	char big[3000];
	memset(big, 'x', sizeof big - 1);
	big[sizeof big - 1] = 0;
	CHECK(ovm_x86_load_linux(mem, k, len, NULL, 0, big, &b, &err) == -E2BIG && strstr(err.msg, "cmdline"), "%s", err.msg);
	size_t huge = mem->size;
	uint8_t *hi = malloc(huge);
	memset(hi, 1, huge);
	CHECK(ovm_x86_load_linux(mem, k, len, hi, huge, "", &b, &err) == -ENOMEM && strstr(err.msg, "initrd"), "%s", err.msg);
	free(hi);
	CHECK(ovm_x86_load_linux(mem, k, 0x300, NULL, 0, "", &b, &err) == -EINVAL, "truncated image");
	free(k);
}

static void test_load_debian(struct ovm_mem *mem)
{
	const char *paths[] = {"../test/.cache/fixtures/vmlinuz", "test/.cache/fixtures/vmlinuz"};
	FILE *f = NULL;
	for (size_t i = 0; !f && i < 2; i++)
		f = fopen(paths[i], "rb");
	if (!f) {
		printf("test_boot: no fixture kernel (scripts/fixtures.sh): Debian image checks skipped\n");
		return;
	}
	fseek(f, 0, SEEK_END);
	long len = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *k = malloc((size_t)len);
	REQUIRE(fread(k, 1, (size_t)len, f) == (size_t)len);
	fclose(f);
	struct ovm_err err = {0};
	struct ovm_x86_boot b;
	REQUIRE(ovm_x86_load_linux(mem, k, (size_t)len, NULL, 0, "console=ttyS0", &b, &err) == 0, "%s", err.msg);
	CHECK(b.protocol >= 0x020f, "Debian 6.1 speaks protocol 2.15 (got %x)", b.protocol);
	uint8_t *zp = mem->host + OVM_BOOT_ZERO_PAGE;
	CHECK(rd16(zp + 0x236) & 1, "XLF_KERNEL_64");
	CHECK(rd32(zp + 0x218) == 0 && rd32(zp + 0x21c) == 0, "no initrd");
	free(k);
}

static void test_mptable(struct ovm_mem *mem)
{
	struct ovm_err err = {0};
	REQUIRE(ovm_x86_write_mptable(mem, 4, 2, &err) == 0, "%s", err.msg);
	uint8_t *fp = mem->host + OVM_BOOT_EBDA;
	CHECK(!memcmp(fp, "_MP_", 4) && fp[8] == 1 && fp[9] == 4);
	uint8_t s = 0;
	for (int i = 0; i < 16; i++)
		s = (uint8_t)(s + fp[i]);
	CHECK(s == 0, "floating pointer checksum");
	uint32_t ctp = rd32(fp + 4);
	REQUIRE(ctp > OVM_BOOT_EBDA && ctp < 0xa0000);
	uint8_t *ct = mem->host + ctp;
	CHECK(!memcmp(ct, "PCMP", 4) && ct[6] == 4);
	uint16_t len = rd16(ct + 4), n = rd16(ct + 34);
	s = 0;
	for (int i = 0; i < len; i++)
		s = (uint8_t)(s + ct[i]);
	CHECK(s == 0, "configuration table checksum");
	CHECK(rd32(ct + 36) == 0xfee00000u, "LAPIC address");
	int cpus = 0, bsp = 0, ioapic = 0, isa_ints = 0, pci_ints = 0, lints = 0;
	uint8_t *e = ct + 44;
	for (int i = 0; i < n; i++) {
		switch (e[0]) {
		case 0: cpus++; bsp += (e[3] & 2) ? 1 : 0; CHECK(e[1] == cpus - 1, "APIC IDs in order"); e += 20; break;
		case 2: ioapic++; CHECK(e[1] == 4 && rd32(e + 4) == 0xfec00000u, "IOAPIC after the CPUs' IDs"); e += 8; break;
		case 3:
			if (e[4] == 1) isa_ints++;
			else { pci_ints++; CHECK(e[7] == ovm_pci_gsi(e[5] >> 2) && rd16(e + 2) == 0x0f, "PCI INTA level/low on its GSI"); }
			e += 8;
			break;
		case 4: lints++; e += 8; break;
		default: e += 8; break;
		}
	}
	CHECK(e == ct + len, "entries fill the table exactly");
	CHECK(cpus == 4 && bsp == 1 && ioapic == 1 && pci_ints == 2 && lints == 2);
	CHECK(isa_ints == 16 - 2, "ISA IRQs minus the two PCI GSIs (%d)", isa_ints);
	CHECK(ovm_x86_write_mptable(mem, 0, 0, &err) == -EINVAL);
}

int main(void)
{
	struct ovm_mem mem = {mmap(NULL, 64 * MiB, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), 64 * MiB};
	REQUIRE(mem.host != MAP_FAILED);
	test_e820();
	test_gdt();
	test_tables(&mem);
	test_load_fake(&mem);
	test_load_debian(&mem);
	test_mptable(&mem);
	return check_done("test_boot");
}
