/* mptable.c — an Intel MultiProcessor Specification 1.4 table, so that
 * Linux without ACPI starts the application processors and routes
 * interrupts through the IOAPIC (as kvmtool's x86/mptable.c and
 * Firecracker's mptable.rs do; written from the spec).
 *
 * At OVM_BOOT_EBDA (reserved in e820): the floating pointer "_MP_", then
 * the configuration table "PCMP" with one processor entry per vCPU (APIC
 * ID = vCPU index, vCPU 0 the BSP), a PCI bus (0) and an ISA bus (1), the
 * IOAPIC (ID = ncpus, at 0xfec00000), ISA IRQs 0..15 on the same IOAPIC
 * pins (except those given to PCI INTx), INTA of PCI slots 1..npci on
 * ovm_pci_gsi(slot) (level, active low), and LINT0 = ExtINT, LINT1 = NMI. */
#include <errno.h>
#include <string.h>

#include "ovm.h"

#define MPC_BUS_PCI 0
#define MPC_BUS_ISA 1

static uint8_t sum(const uint8_t *p, size_t n)
{
	uint8_t s = 0;
	while (n--)
		s = (uint8_t)(s + *p++);
	return s;
}

static void w16(uint8_t *p, uint16_t v) { p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); }
static void w32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }

int ovm_x86_write_mptable(const struct ovm_mem *mem, int ncpus, int npci, struct ovm_err *err)
{
	if (ncpus < 1 || ncpus > 254)
		return ovm_errf(err, EINVAL, "mptable: %d CPUs", ncpus);
	const uint64_t base = OVM_BOOT_EBDA;
	const size_t room = 0xa0000 - OVM_BOOT_EBDA;
	uint8_t *p = ovm_gpa(mem, base, room);
	if (!p)
		return ovm_errf(err, EINVAL, "mptable: no RAM at 0x%llx", (unsigned long long)base);
	memset(p, 0, room);
	uint8_t *fp = p, *ct = p + 16, *e = ct + 44;
	uint16_t count = 0;
	uint8_t ioapic_id = (uint8_t)ncpus;
	bool pci_gsi[16] = {false};
	for (int s = 1; s <= npci; s++)
		if (ovm_pci_gsi(s) < 16)
			pci_gsi[ovm_pci_gsi(s)] = true;

	for (int i = 0; i < ncpus; i++, e += 20, count++) {
		e[0] = 0;                       /* processor */
		e[1] = (uint8_t)i;              /* local APIC ID */
		e[2] = 0x14;                    /* local APIC version */
		e[3] = (uint8_t)(1 | (i == 0 ? 2 : 0)); /* enabled, BSP */
		w32(e + 4, 0x600);              /* CPU signature: family 6 */
		w32(e + 8, 0x201);              /* features: FPU, APIC */
	}
	e[0] = 1; e[1] = MPC_BUS_PCI; memcpy(e + 2, "PCI   ", 6); e += 8; count++;
	e[0] = 1; e[1] = MPC_BUS_ISA; memcpy(e + 2, "ISA   ", 6); e += 8; count++;
	e[0] = 2; e[1] = ioapic_id; e[2] = 0x11; e[3] = 1; w32(e + 4, 0xfec00000u); e += 8; count++;
	for (int irq = 0; irq < 16; irq++) {
		if (pci_gsi[irq])
			continue;
		e[0] = 3; e[1] = 0 /* INT */; w16(e + 2, 0 /* conforms to the bus */);
		e[4] = MPC_BUS_ISA; e[5] = (uint8_t)irq; e[6] = ioapic_id;
		e[7] = (uint8_t)(irq == 0 ? 2 : irq); /* KVM routes GSI 0 to IOAPIC pin 2 */
		e += 8;
		count++;
	}
	for (int s = 1; s <= npci; s++) {
		e[0] = 3; e[1] = 0; w16(e + 2, 0x0f /* active low, level */);
		e[4] = MPC_BUS_PCI; e[5] = (uint8_t)(s << 2 /* INTA */); e[6] = ioapic_id;
		e[7] = (uint8_t)ovm_pci_gsi(s);
		e += 8;
		count++;
	}
	e[0] = 4; e[1] = 3 /* ExtINT */; e[4] = MPC_BUS_ISA; e[5] = 0; e[6] = 0xff; e[7] = 0; e += 8; count++;
	e[0] = 4; e[1] = 1 /* NMI */; e[4] = MPC_BUS_ISA; e[5] = 0; e[6] = 0xff; e[7] = 1; e += 8; count++;
	size_t len = (size_t)(e - ct);
	if (16 + len > room)
		return ovm_errf(err, ENOSPC, "mptable: %zu bytes do not fit in the EBDA", 16 + len);

	memcpy(ct, "PCMP", 4);
	w16(ct + 4, (uint16_t)len);
	ct[6] = 4; /* spec 1.4 */
	memcpy(ct + 8, "OVM     ", 8);
	memcpy(ct + 16, "OVM-KVM     ", 12);
	w16(ct + 34, count);
	w32(ct + 36, 0xfee00000u);
	ct[7] = (uint8_t)(0 - sum(ct, len));

	memcpy(fp, "_MP_", 4);
	w32(fp + 4, (uint32_t)(base + 16));
	fp[8] = 1;  /* length in 16-byte units */
	fp[9] = 4;  /* spec 1.4 */
	fp[10] = (uint8_t)(0 - sum(fp, 16));
	return 0;
}
