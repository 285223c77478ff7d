/* cpu.c — CPUID, MSRs, FPU, LAPIC and the long-mode registers a vCPU
 * starts with (see kvm-vmm.md §1, "Minimum to boot a stock Linux"). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

#include "ovm.h"

#define CPUID_MAX 256

int ovm_x86_supported_cpuid(int kvm_fd, struct kvm_cpuid2 **out, struct ovm_err *err)
{
	for (int n = CPUID_MAX; n <= 4096; n *= 2) {
		struct kvm_cpuid2 *c = calloc(1, sizeof *c + n * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			return ovm_errf(err, ENOMEM, "cpuid: out of memory");
		c->nent = n;
		if (ioctl(kvm_fd, KVM_GET_SUPPORTED_CPUID, c) == 0) {
			/* KVM emulates the TSC-deadline LAPIC timer but leaves its bit
			 * (1.ECX[24]) out of the supported list (a capability says it).
			 * Without it Linux calibrates the APIC timer against the PIT,
			 * which fails under emulation ("APIC timer disabled due to
			 * verification failure"), and an SMP guest's timers stop. */
			if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, KVM_CAP_TSC_DEADLINE_TIMER) > 0)
				for (uint32_t i = 0; i < c->nent; i++)
					if (c->entries[i].function == 1)
						c->entries[i].ecx |= 1u << 24;
			*out = c;
			return 0;
		}
		int e = errno;
		free(c);
		if (e != E2BIG)
			return ovm_errf(err, e, "KVM_GET_SUPPORTED_CPUID: %s", strerror(e));
	}
	return ovm_errf(err, E2BIG, "KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

int ovm_x86_set_cpuid(int vcpu_fd, const struct kvm_cpuid2 *sup, int id, struct ovm_err *err)
{
	size_t sz = sizeof *sup + sup->nent * sizeof(struct kvm_cpuid_entry2);
	struct kvm_cpuid2 *c = malloc(sz);
	if (!c)
		return ovm_errf(err, ENOMEM, "cpuid: out of memory");
	memcpy(c, sup, sz);
	for (uint32_t i = 0; i < c->nent; i++) {
		struct kvm_cpuid_entry2 *e = &c->entries[i];
		switch (e->function) {
		case 1:
			e->ebx = (e->ebx & 0x00ffffffu) | ((uint32_t)id << 24);
			e->ecx &= ~(1u << 5); /* VMX: nested state is not saved */
			e->ecx |= 1u << 31;  /* running under a hypervisor */
			break;
		case 0xb:
		case 0x1f:
			e->edx = (uint32_t)id;
			break;
		case 0x80000001:
			e->ecx &= ~(1u << 2); /* SVM */
			break;
		}
	}
	int rc = 0;
	if (ioctl(vcpu_fd, KVM_SET_CPUID2, c) < 0)
		rc = ovm_errf(err, errno, "KVM_SET_CPUID2: %s", strerror(errno));
	free(c);
	return rc;
}

#define MSR_IA32_SYSENTER_CS 0x174
#define MSR_IA32_SYSENTER_ESP 0x175
#define MSR_IA32_SYSENTER_EIP 0x176
#define MSR_STAR 0xc0000081
#define MSR_LSTAR 0xc0000082
#define MSR_CSTAR 0xc0000083
#define MSR_SYSCALL_MASK 0xc0000084
#define MSR_KERNEL_GS_BASE 0xc0000102
#define MSR_IA32_MISC_ENABLE 0x1a0
#define MSR_MTRR_DEF_TYPE 0x2ff

static int set_msrs(int fd, struct ovm_err *err)
{
	static const struct { uint32_t idx; uint64_t val; } boot[] = {
		{MSR_IA32_SYSENTER_CS, 0}, {MSR_IA32_SYSENTER_ESP, 0}, {MSR_IA32_SYSENTER_EIP, 0},
		{MSR_STAR, 0}, {MSR_CSTAR, 0}, {MSR_KERNEL_GS_BASE, 0}, {MSR_SYSCALL_MASK, 0},
		{MSR_LSTAR, 0},
		{MSR_IA32_MISC_ENABLE, 1},                 /* fast string operations */
		{MSR_MTRR_DEF_TYPE, (1u << 11) | 6},       /* MTRRs on, default write-back */
	};
	enum { N = sizeof boot / sizeof boot[0] };
	struct {
		struct kvm_msrs h;
		struct kvm_msr_entry e[N];
	} m;
	memset(&m, 0, sizeof m);
	m.h.nmsrs = N;
	for (int i = 0; i < N; i++) {
		m.e[i].index = boot[i].idx;
		m.e[i].data = boot[i].val;
	}
	int r = ioctl(fd, KVM_SET_MSRS, &m);
	if (r < 0)
		return ovm_errf(err, errno, "KVM_SET_MSRS: %s", strerror(errno));
	if (r != N)
		return ovm_errf(err, EINVAL, "KVM_SET_MSRS: MSR 0x%x refused", boot[r].idx);
	return 0;
}

static void seg(struct kvm_segment *s, uint16_t sel, uint8_t type, bool code)
{
	memset(s, 0, sizeof *s);
	s->base = 0;
	s->limit = 0xffffffff;
	s->selector = sel;
	s->type = type;
	s->present = 1;
	s->s = 1;
	s->g = 1;
	if (code)
		s->l = 1;
	else
		s->db = 1;
}

int ovm_x86_setup_vcpu(int fd, int id, const struct ovm_x86_boot *boot, struct ovm_err *err)
{
	int rc = set_msrs(fd, err);
	if (rc)
		return rc;

	struct kvm_fpu fpu;
	memset(&fpu, 0, sizeof fpu);
	fpu.fcw = 0x37f;
	fpu.mxcsr = 0x1f80;
	if (ioctl(fd, KVM_SET_FPU, &fpu) < 0)
		return ovm_errf(err, errno, "KVM_SET_FPU: %s", strerror(errno));

	/* LAPIC: LINT0 = ExtINT (the PIC's output), LINT1 = NMI. */
	struct kvm_lapic_state la;
	if (ioctl(fd, KVM_GET_LAPIC, &la) < 0)
		return ovm_errf(err, errno, "KVM_GET_LAPIC: %s", strerror(errno));
	uint32_t *lint0 = (uint32_t *)(la.regs + 0x350), *lint1 = (uint32_t *)(la.regs + 0x360);
	*lint0 = (*lint0 & ~0x700u & ~(1u << 16)) | (7u << 8);
	*lint1 = (*lint1 & ~0x700u & ~(1u << 16)) | (4u << 8);
	if (ioctl(fd, KVM_SET_LAPIC, &la) < 0)
		return ovm_errf(err, errno, "KVM_SET_LAPIC: %s", strerror(errno));

	if (id != 0 || !boot)
		return 0; /* APs wait for INIT/SIPI (KVM keeps them in MP_STATE_UNINITIALIZED) */

	struct kvm_sregs sr;
	if (ioctl(fd, KVM_GET_SREGS, &sr) < 0)
		return ovm_errf(err, errno, "KVM_GET_SREGS: %s", strerror(errno));
	seg(&sr.cs, OVM_BOOT_CS, 0xb, true);
	seg(&sr.ds, OVM_BOOT_DS, 0x3, false);
	sr.es = sr.fs = sr.gs = sr.ss = sr.ds;
	memset(&sr.tr, 0, sizeof sr.tr);
	sr.tr.selector = OVM_BOOT_TSS;
	sr.tr.limit = 0xffff;
	sr.tr.type = 0xb;
	sr.tr.present = 1;
	sr.gdt.base = OVM_BOOT_GDT;
	sr.gdt.limit = 5 * 8 - 1;
	sr.idt.base = OVM_BOOT_IDT;
	sr.idt.limit = 7;
	sr.cr3 = OVM_BOOT_PML4;
	sr.cr4 |= 1u << 5;                 /* PAE */
	sr.cr0 |= 0x80000001u;              /* PG | PE */
	sr.cr0 &= ~(1u << 30 | 1u << 29);   /* caches on (CD, NW clear) */
	sr.efer |= (1u << 8) | (1u << 10); /* LME | LMA */
	if (ioctl(fd, KVM_SET_SREGS, &sr) < 0)
		return ovm_errf(err, errno, "KVM_SET_SREGS: %s", strerror(errno));

	struct kvm_regs r;
	memset(&r, 0, sizeof r);
	r.rflags = 2;
	r.rip = boot->entry;
	r.rsi = boot->zero_page;
	r.rsp = r.rbp = OVM_BOOT_STACK;
	if (ioctl(fd, KVM_SET_REGS, &r) < 0)
		return ovm_errf(err, errno, "KVM_SET_REGS: %s", strerror(errno));
	return 0;
}
