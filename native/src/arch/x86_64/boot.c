/* boot.c — load a Linux bzImage for the 64-bit boot protocol.
 *
 * Documentation/arch/x86/boot.rst: copy the setup header into a zeroed
 * boot_params ("zero page"), load the protected-mode kernel (which starts
 * at (setup_sects+1)*512 in the file) at 1 MiB, and enter at load+0x200 in
 * long mode with an identity map, a GDT holding __BOOT_CS/__BOOT_DS and
 * %rsi = the zero page. Pure: writes guest memory through ovm_gpa only. */
#include <errno.h>
#include <string.h>

#include "ovm.h"

/* boot_params offsets (arch/x86/include/uapi/asm/bootparam.h) */
#define BP_EXT_RAMDISK_IMAGE 0x0c0
#define BP_EXT_RAMDISK_SIZE 0x0c4
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES 0x1e8
#define BP_HDR 0x1f1
#define BP_E820_TABLE 0x2d0
#define BP_E820_MAX 128
/* setup_header fields, as offsets into the zero page / the image */
#define H_SETUP_SECTS 0x1f1
#define H_BOOT_FLAG 0x1fe
#define H_JUMP 0x200
#define H_HEADER 0x202
#define H_VERSION 0x206
#define H_TYPE_OF_LOADER 0x210
#define H_LOADFLAGS 0x211
#define H_RAMDISK_IMAGE 0x218
#define H_RAMDISK_SIZE 0x21c
#define H_HEAP_END_PTR 0x224
#define H_CMD_LINE_PTR 0x228
#define H_INITRD_ADDR_MAX 0x22c
#define H_XLOADFLAGS 0x236
#define H_CMDLINE_SIZE 0x238

#define LOADED_HIGH 0x01
#define CAN_USE_HEAP 0x80
#define XLF_KERNEL_64 0x01

static uint16_t rd16(const uint8_t *p) { return (uint16_t)(p[0] | p[1] << 8); }
static uint32_t rd32(const uint8_t *p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
static void wr16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void wr32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }
static void wr64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i)); }

int ovm_x86_e820(uint64_t ram, struct ovm_e820 *out, int max, struct ovm_err *err)
{
	if (ram < (2u << 20))
		return ovm_errf(err, EINVAL, "memory: %llu bytes is too little (need at least 2 MiB)",
				(unsigned long long)ram);
	if (max < 4)
		return ovm_errf(err, EINVAL, "e820: room for %d entries, need 4", max);
	int n = 0;
	uint64_t low = ram < OVM_MMIO_HOLE_START ? ram : OVM_MMIO_HOLE_START;
	out[n++] = (struct ovm_e820){0, OVM_BOOT_EBDA, OVM_E820_RAM};
	out[n++] = (struct ovm_e820){OVM_BOOT_EBDA, 0x100000 - OVM_BOOT_EBDA, OVM_E820_RESERVED};
	out[n++] = (struct ovm_e820){0x100000, low - 0x100000, OVM_E820_RAM};
	if (ram > low)
		out[n++] = (struct ovm_e820){OVM_MMIO_HOLE_END, ram - low, OVM_E820_RAM};
	return n;
}

uint64_t ovm_x86_gdt_entry(uint16_t flags, uint32_t base, uint32_t limit)
{
	return ((uint64_t)(base & 0xff000000u) << 32) | ((uint64_t)(flags & 0xf0ffu) << 40) |
	       ((uint64_t)(limit & 0x000f0000u) << 32) | ((uint64_t)(base & 0x00ffffffu) << 16) |
	       (uint64_t)(limit & 0x0000ffffu);
}

int ovm_x86_write_gdt(const struct ovm_mem *mem, struct ovm_err *err)
{
	uint64_t gdt[5] = {
		0,
		0,
		ovm_x86_gdt_entry(0xa09b, 0, 0xfffff), /* 0x10: 64-bit code, execute/read */
		ovm_x86_gdt_entry(0xc093, 0, 0xfffff), /* 0x18: data, read/write, 4 GiB flat */
		ovm_x86_gdt_entry(0x808b, 0, 0xfffff), /* 0x20: TSS (busy) */
	};
	uint8_t *p = ovm_gpa(mem, OVM_BOOT_GDT, sizeof gdt);
	uint8_t *idt = ovm_gpa(mem, OVM_BOOT_IDT, 8);
	if (!p || !idt)
		return ovm_errf(err, EINVAL, "boot: no RAM for the GDT at 0x%llx", (unsigned long long)OVM_BOOT_GDT);
	for (int i = 0; i < 5; i++)
		wr64(p + 8 * i, gdt[i]);
	memset(idt, 0, 8);
	return 0;
}

int ovm_x86_write_page_tables(const struct ovm_mem *mem, struct ovm_err *err)
{
	/* PML4[0] -> PDPT; PDPT[0..3] -> four PDs of 512 2-MiB pages each: 4 GiB. */
	uint8_t *pml4 = ovm_gpa(mem, OVM_BOOT_PML4, 0x1000);
	uint8_t *pdpt = ovm_gpa(mem, OVM_BOOT_PML4 + 0x1000, 0x1000);
	uint8_t *pd = ovm_gpa(mem, OVM_BOOT_PML4 + 0x2000, 0x4000);
	if (!pml4 || !pdpt || !pd)
		return ovm_errf(err, EINVAL, "boot: no RAM for page tables at 0x%llx", (unsigned long long)OVM_BOOT_PML4);
	memset(pml4, 0, 0x1000);
	memset(pdpt, 0, 0x1000);
	wr64(pml4, (OVM_BOOT_PML4 + 0x1000) | 0x3); /* present, writable */
	for (uint64_t i = 0; i < 4; i++) {
		wr64(pdpt + 8 * i, (OVM_BOOT_PML4 + 0x2000 + 0x1000 * i) | 0x3);
		for (uint64_t j = 0; j < 512; j++)
			wr64(pd + 0x1000 * i + 8 * j, ((i << 30) | (j << 21)) | 0x83); /* present, writable, 2 MiB */
	}
	return 0;
}

int ovm_x86_load_linux(const struct ovm_mem *mem, const uint8_t *kernel, size_t kernel_len,
		       const uint8_t *initrd, size_t initrd_len, const char *cmdline,
		       struct ovm_x86_boot *out, struct ovm_err *err)
{
	if (kernel_len < 0x1000 || rd16(kernel + H_BOOT_FLAG) != 0xaa55 || memcmp(kernel + H_HEADER, "HdrS", 4))
		return ovm_errf(err, EINVAL, "kernel: not a bzImage (no 0xAA55 boot flag and \"HdrS\" at 0x202)");
	uint16_t version = rd16(kernel + H_VERSION);
	if (version < 0x020c)
		return ovm_errf(err, EINVAL, "kernel: boot protocol %u.%02u is too old (64-bit entry needs 2.12)",
				version >> 8, version & 0xff);
	if (!(rd16(kernel + H_XLOADFLAGS) & XLF_KERNEL_64))
		return ovm_errf(err, EINVAL, "kernel: no 64-bit entry point (XLF_KERNEL_64 clear): a 32-bit kernel?");
	unsigned setup_sects = kernel[H_SETUP_SECTS] ? kernel[H_SETUP_SECTS] : 4;
	size_t setup_len = (size_t)(setup_sects + 1) * 512;
	if (setup_len >= kernel_len)
		return ovm_errf(err, EINVAL, "kernel: setup_sects %u runs past the end of the file (%zu bytes)",
				setup_sects, kernel_len);
	size_t hdr_end = 0x202 + kernel[H_JUMP + 1]; /* the jump at 0x200 skips the header */
	if (hdr_end > setup_len || hdr_end > 0x1000)
		return ovm_errf(err, EINVAL, "kernel: setup header length %zu is not plausible", hdr_end - BP_HDR);

	size_t cmdlen = cmdline ? strlen(cmdline) : 0;
	uint32_t cmdmax = rd32(kernel + H_CMDLINE_SIZE);
	if (cmdlen >= OVM_BOOT_CMDLINE_MAX || (cmdmax && cmdlen > cmdmax))
		return ovm_errf(err, E2BIG, "cmdline: %zu bytes is longer than the kernel accepts (%u)", cmdlen,
				cmdmax && cmdmax < OVM_BOOT_CMDLINE_MAX - 1 ? cmdmax : OVM_BOOT_CMDLINE_MAX - 1);

	/* The protected-mode kernel at 1 MiB. */
	size_t pm_len = kernel_len - setup_len;
	uint8_t *dst = ovm_gpa(mem, OVM_BOOT_KERNEL, pm_len);
	if (!dst)
		return ovm_errf(err, ENOMEM, "kernel: %zu bytes do not fit in %llu MiB of RAM at 1 MiB", pm_len,
				(unsigned long long)(mem->size >> 20));
	memcpy(dst, kernel + setup_len, pm_len);

	/* The initrd, page aligned, as high as allowed. */
	uint64_t irdaddr = 0;
	if (initrd && initrd_len) {
		uint64_t max = rd32(kernel + H_INITRD_ADDR_MAX);
		uint64_t low_end = mem->size < OVM_MMIO_HOLE_START ? mem->size : OVM_MMIO_HOLE_START;
		uint64_t top = (max + 1 < low_end ? max + 1 : low_end);
		uint64_t kernel_end = OVM_BOOT_KERNEL + pm_len;
		if (initrd_len > top || ((top - initrd_len) & ~0xfffull) < kernel_end)
			return ovm_errf(err, ENOMEM,
					"initrd: %zu bytes do not fit below 0x%llx (RAM %llu MiB, kernel up to 0x%llx)",
					initrd_len, (unsigned long long)top, (unsigned long long)(mem->size >> 20),
					(unsigned long long)kernel_end);
		irdaddr = (top - initrd_len) & ~0xfffull;
		uint8_t *p = ovm_gpa(mem, irdaddr, initrd_len);
		if (!p)
			return ovm_errf(err, EINVAL, "initrd: address 0x%llx is not RAM", (unsigned long long)irdaddr);
		memcpy(p, initrd, initrd_len);
	}

	/* The command line. */
	char *cl = ovm_gpa(mem, OVM_BOOT_CMDLINE, OVM_BOOT_CMDLINE_MAX);
	if (!cl)
		return ovm_errf(err, EINVAL, "cmdline: no RAM at 0x%llx", (unsigned long long)OVM_BOOT_CMDLINE);
	memset(cl, 0, OVM_BOOT_CMDLINE_MAX);
	if (cmdlen)
		memcpy(cl, cmdline, cmdlen);

	/* The zero page. */
	uint8_t *zp = ovm_gpa(mem, OVM_BOOT_ZERO_PAGE, 0x1000);
	if (!zp)
		return ovm_errf(err, EINVAL, "boot: no RAM for the zero page");
	memset(zp, 0, 0x1000);
	memcpy(zp + BP_HDR, kernel + BP_HDR, hdr_end - BP_HDR);
	zp[H_TYPE_OF_LOADER] = 0xff;
	zp[H_LOADFLAGS] |= LOADED_HIGH | CAN_USE_HEAP;
	wr16(zp + H_HEAP_END_PTR, 0xfe00);
	wr32(zp + H_CMD_LINE_PTR, (uint32_t)OVM_BOOT_CMDLINE);
	wr32(zp + BP_EXT_CMD_LINE_PTR, 0);
	wr32(zp + H_RAMDISK_IMAGE, (uint32_t)irdaddr);
	wr32(zp + H_RAMDISK_SIZE, (uint32_t)initrd_len);
	wr32(zp + BP_EXT_RAMDISK_IMAGE, (uint32_t)(irdaddr >> 32));
	wr32(zp + BP_EXT_RAMDISK_SIZE, (uint32_t)((uint64_t)initrd_len >> 32));

	struct ovm_e820 map[8];
	int n = ovm_x86_e820(mem->size, map, 8, err);
	if (n < 0)
		return n;
	zp[BP_E820_ENTRIES] = (uint8_t)n;
	for (int i = 0; i < n; i++) {
		uint8_t *e = zp + BP_E820_TABLE + 20 * i;
		wr64(e, map[i].addr);
		wr64(e + 8, map[i].size);
		wr32(e + 16, map[i].type);
	}

	int rc = ovm_x86_write_gdt(mem, err);
	if (!rc)
		rc = ovm_x86_write_page_tables(mem, err);
	if (rc)
		return rc;
	out->entry = OVM_BOOT_KERNEL + 0x200;
	out->zero_page = OVM_BOOT_ZERO_PAGE;
	out->initrd_addr = irdaddr;
	out->initrd_size = initrd_len;
	out->protocol = version;
	return 0;
}
