/* snapshot.c — save a paused VM into a folder and bring it back in a new
 * process. Format (rfc/runtime.md, "Native engine snapshots"):
 *
 *   DIR/state.bin   header (108 bytes, little-endian) + body of sections
 *   DIR/memory.raw  guest RAM, file offset = RAM index (slot 0 then slot 1);
 *                   all-zero pages are holes (a sparse file)
 *
 * Header: "OVMSNAP1", u32 version, u32 arch, u32 header length, char
 * vendor[12], u32 family, model, stepping, u32 features[8], u64 memory
 * bytes, u32 vCPUs, u32 disks, u64 body length, u32 body CRC-32, u32
 * header CRC-32 (over the 104 bytes before it).
 * Body: sections {u32 tag, u32 length, bytes}: VM (PIT2, clock, PIC
 * master/slave, IOAPIC), one VCPU per vCPU, SERIAL0, SERIAL1, I8042, PCI.
 * KVM structures are stored as the kernel's x86_64 ABI lays them out. */
#include <cpuid.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "ovm.h"


#define HDR_LEN 108
enum { SEC_VM = 1, SEC_VCPU = 2, SEC_SERIAL0 = 3, SEC_SERIAL1 = 4, SEC_I8042 = 5, SEC_PCI = 6 };

/* ------------------------------------------------------------- CRC-32 */

uint32_t ovm_crc32(uint32_t crc, const void *data, size_t len)
{
	static uint32_t table[256];
	static bool ready;
	if (!ready) {
		for (uint32_t i = 0; i < 256; i++) {
			uint32_t c = i;
			for (int k = 0; k < 8; k++)
				c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
			table[i] = c;
		}
		__atomic_store_n(&ready, true, __ATOMIC_RELEASE);
	}
	const uint8_t *p = data;
	crc = ~crc;
	while (len--)
		crc = table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* ------------------------------------------------------ CPU signature */

static const char *const feature_names[8] = {"1.ECX", "1.EDX", "7.0.EBX", "7.0.ECX", "7.0.EDX",
					     "0x80000001.ECX", "0x80000001.EDX", "0xD.1.EAX"};

static void features_from(const struct kvm_cpuid2 *c, uint32_t f[8])
{
	memset(f, 0, 8 * sizeof f[0]);
	for (uint32_t i = 0; i < c->nent; i++) {
		const struct kvm_cpuid_entry2 *e = &c->entries[i];
		if (e->function == 1) { f[0] = e->ecx; f[1] = e->edx; }
		if (e->function == 7 && e->index == 0) { f[2] = e->ebx; f[3] = e->ecx; f[4] = e->edx; }
		if (e->function == 0x80000001) { f[5] = e->ecx; f[6] = e->edx; }
		if (e->function == 0xd && e->index == 1) f[7] = e->eax;
	}
	/* Bits KVM or we set per vCPU, not host capabilities. */
	f[0] &= ~(1u << 31 | 1u << 27 | 1u << 5); /* hypervisor, OSXSAVE (follows CR4), VMX */
	f[1] &= ~(1u << 9);                        /* APIC (follows APIC_BASE) */
	f[3] &= ~(1u << 4);                        /* OSPKE (follows CR4.PKE) */
	f[5] &= ~(1u << 2);                        /* SVM */
}

static void host_ident(struct ovm_cpu_sig *s)
{
	unsigned a, b, c, d;
	__cpuid(0, a, b, c, d);
	memcpy(s->vendor, &b, 4);
	memcpy(s->vendor + 4, &d, 4);
	memcpy(s->vendor + 8, &c, 4);
	s->vendor[12] = 0;
	__cpuid(1, a, b, c, d);
	uint32_t fam = (a >> 8) & 0xf, model = (a >> 4) & 0xf;
	if (fam == 0xf)
		fam += (a >> 20) & 0xff;
	if (fam == 0x6 || fam >= 0xf)
		model |= ((a >> 16) & 0xf) << 4;
	s->family = fam;
	s->model = model;
	s->stepping = a & 0xf;
}

int ovm_cpu_sig_host(int kvm_fd, struct ovm_cpu_sig *out, struct ovm_err *err)
{
	memset(out, 0, sizeof *out);
	host_ident(out);
	struct kvm_cpuid2 *c;
	int rc = ovm_x86_supported_cpuid(kvm_fd, &c, err);
	if (rc)
		return rc;
	features_from(c, out->features);
	free(c);
	return 0;
}

int ovm_cpu_sig_check(const struct ovm_cpu_sig *snap, const struct ovm_cpu_sig *host, struct ovm_err *err)
{
	if (strncmp(snap->vendor, host->vendor, 12))
		return ovm_errf(err, ENOTSUP,
				"snapshot: taken on a %.12s CPU, this host is %.12s; boot the VM afresh instead",
				snap->vendor, host->vendor);
	for (int i = 0; i < 8; i++) {
		uint32_t missing = snap->features[i] & ~host->features[i];
		if (missing)
			return ovm_errf(err, ENOTSUP,
					"snapshot: the guest was shown CPU features this host lacks (CPUID %s bits 0x%08x; "
					"taken on %.12s family %u model %u, this host is family %u model %u); boot the VM "
					"afresh instead",
					feature_names[i], missing, snap->vendor, snap->family, snap->model, host->family,
					host->model);
	}
	return 0;
}

/* ------------------------------------------------------------- header */

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> 8 * i); }
static void put64(uint8_t *p, uint64_t v) { for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> 8 * i); }
static uint32_t get32(const uint8_t *p) { uint32_t v = 0; for (int i = 0; i < 4; i++) v |= (uint32_t)p[i] << 8 * i; return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v = 0; for (int i = 0; i < 8; i++) v |= (uint64_t)p[i] << 8 * i; return v; }

int ovm_snap_encode(const struct ovm_snap_header *h, const uint8_t *body, struct ovm_buf *out, struct ovm_err *err)
{
	uint8_t hd[HDR_LEN];
	memset(hd, 0, sizeof hd);
	memcpy(hd, OVM_SNAP_MAGIC, 8);
	put32(hd + 8, h->version);
	put32(hd + 12, h->arch);
	put32(hd + 16, HDR_LEN);
	memcpy(hd + 20, h->cpu.vendor, 12);
	put32(hd + 32, h->cpu.family);
	put32(hd + 36, h->cpu.model);
	put32(hd + 40, h->cpu.stepping);
	for (int i = 0; i < 8; i++)
		put32(hd + 44 + 4 * i, h->cpu.features[i]);
	put64(hd + 76, h->mem_bytes);
	put32(hd + 84, h->ncpus);
	put32(hd + 88, h->ndisks);
	put64(hd + 92, h->body_len);
	put32(hd + 100, ovm_crc32(0, body, h->body_len));
	put32(hd + 104, ovm_crc32(0, hd, 104));
	if (ovm_buf_put(out, hd, sizeof hd) || ovm_buf_put(out, body, h->body_len))
		return ovm_errf(err, ENOMEM, "snapshot: out of memory");
	return 0;
}

int ovm_snap_decode(const uint8_t *d, size_t len, const char *what, struct ovm_snap_header *h,
		    const uint8_t **body, struct ovm_err *err)
{
	if (len < 16 || memcmp(d, OVM_SNAP_MAGIC, 8))
		return ovm_errf(err, EINVAL, "%s: not an ovm snapshot (no \"%s\" magic)", what, OVM_SNAP_MAGIC);
	memset(h, 0, sizeof *h);
	memcpy(h->magic, d, 8);
	h->version = get32(d + 8);
	h->arch = get32(d + 12);
	if (h->version != OVM_SNAP_VERSION)
		return ovm_errf(err, ENOTSUP, "%s: snapshot format version %u; this ovm reads version %u (boot afresh)",
				what, h->version, OVM_SNAP_VERSION);
	if (h->arch != OVM_SNAP_ARCH_X86_64)
		return ovm_errf(err, ENOTSUP, "%s: snapshot of architecture %u; this ovm restores x86_64 (1) only",
				what, h->arch);
	if (len < HDR_LEN || get32(d + 16) != HDR_LEN)
		return ovm_errf(err, EINVAL, "%s: header is %zu bytes, expected %u (truncated?)", what,
				len < HDR_LEN ? len : (size_t)get32(d + 16), HDR_LEN);
	if (get32(d + 104) != ovm_crc32(0, d, 104))
		return ovm_errf(err, EINVAL, "%s: header checksum mismatch (the file is damaged)", what);
	memcpy(h->cpu.vendor, d + 20, 12);
	h->cpu.vendor[12] = 0;
	h->cpu.family = get32(d + 32);
	h->cpu.model = get32(d + 36);
	h->cpu.stepping = get32(d + 40);
	for (int i = 0; i < 8; i++)
		h->cpu.features[i] = get32(d + 44 + 4 * i);
	h->mem_bytes = get64(d + 76);
	h->ncpus = get32(d + 84);
	h->ndisks = get32(d + 88);
	h->body_len = get64(d + 92);
	h->body_crc = get32(d + 100);
	if (h->body_len != len - HDR_LEN)
		return ovm_errf(err, EINVAL, "%s: body is %zu bytes, the header says %llu (truncated?)", what,
				len - HDR_LEN, (unsigned long long)h->body_len);
	if (ovm_crc32(0, d + HDR_LEN, h->body_len) != h->body_crc)
		return ovm_errf(err, EINVAL, "%s: body checksum mismatch (the file is damaged)", what);
	*body = d + HDR_LEN;
	return 0;
}

/* ------------------------------------------------------------ helpers */

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static int put_sec(struct ovm_buf *b, uint32_t tag, const struct ovm_buf *s, struct ovm_err *err)
{
	uint32_t hdr[2] = {tag, (uint32_t)s->len};
	if (ovm_buf_put(b, hdr, sizeof hdr) || ovm_buf_put(b, s->data, s->len))
		return ovm_errf(err, ENOMEM, "snapshot: out of memory");
	return 0;
}

/* A blob with its length first (u32). */
static int put_blob(struct ovm_buf *b, const void *p, uint32_t len)
{
	return ovm_buf_put(b, &len, sizeof len) || ovm_buf_put(b, p, len) ? -ENOMEM : 0;
}
static int get_blob(struct ovm_rd *r, void *p, uint32_t want, const char *what, struct ovm_err *err)
{
	uint32_t len;
	int rc = ovm_rd_get(r, &len, sizeof len, what, err);
	if (rc)
		return rc;
	if (len != want)
		return ovm_errf(err, EINVAL, "snapshot: %s is %u bytes, this host's KVM uses %u", what, len, want);
	return ovm_rd_get(r, p, len, what, err);
}

#define MSR_IA32_TSC 0x10
#define MSR_IA32_TSC_DEADLINE 0x6e0

/* MSRs worth saving (kvm-vmm.md §2), kept when KVM lists them. */
static const uint32_t snap_msrs[] = {
	0x10, 0x3b, 0x6e0, 0x174, 0x175, 0x176, 0xc0000081, 0xc0000082, 0xc0000083, 0xc0000084,
	0xc0000102, 0xc0000103, 0x277, 0x1a0, 0x48, 0x3a, 0xda0, 0xc001011f, 0x2ff,
	0x200, 0x201, 0x202, 0x203, 0x204, 0x205, 0x206, 0x207, 0x208, 0x209, 0x20a, 0x20b, 0x20c,
	0x20d, 0x20e, 0x20f, 0x250, 0x258, 0x259, 0x268, 0x269, 0x26a, 0x26b, 0x26c, 0x26d, 0x26e, 0x26f,
	0x11, 0x12, 0x4b564d00, 0x4b564d01, 0x4b564d02, 0x4b564d03, 0x4b564d04, 0x4b564d05, 0x4b564d06,
	0x4b564d07,
};
#define NSNAP (sizeof snap_msrs / sizeof snap_msrs[0])

struct msr_set {
	struct kvm_msrs h;
	struct kvm_msr_entry e[NSNAP];
};

static int msr_list(struct ovm_vm *vm, struct msr_set *m, struct ovm_err *err)
{
	struct { struct kvm_msr_list h; uint32_t idx[2048]; } l;
	l.h.nmsrs = 2048;
	if (ioctl(vm->kvm_fd, KVM_GET_MSR_INDEX_LIST, &l) < 0)
		return ovm_errf(err, errno, "KVM_GET_MSR_INDEX_LIST: %s", strerror(errno));
	memset(m, 0, sizeof *m);
	for (size_t i = 0; i < NSNAP; i++)
		for (uint32_t j = 0; j < l.h.nmsrs; j++)
			if (l.idx[j] == snap_msrs[i]) {
				m->e[m->h.nmsrs++].index = snap_msrs[i];
				break;
			}
	return 0;
}

static int xsave_size(struct ovm_vm *vm)
{
	int n = ioctl(vm->vm_fd, KVM_CHECK_EXTENSION, KVM_CAP_XSAVE2);
	return n > (int)sizeof(struct kvm_xsave) ? n : (int)sizeof(struct kvm_xsave);
}

/* ------------------------------------------------------------- saving */

static int save_vcpu(struct ovm_vm *vm, struct ovm_vcpu *c, struct ovm_buf *b, struct ovm_err *err)
{
	int fd = c->fd;
#define GET(req, p, name)                                                                          \
	do {                                                                                       \
		if (ioctl(fd, req, p) < 0)                                                         \
			return ovm_errf(err, errno, "snapshot: vCPU %d: " name ": %s", c->id, strerror(errno)); \
	} while (0)
	uint32_t id = (uint32_t)c->id;
	if (ovm_buf_put(b, &id, sizeof id))
		return -ENOMEM;
	/* 1. MP state first: it makes KVM apply pending INIT/SIPI to the LAPIC. */
	struct kvm_mp_state mp;
	GET(KVM_GET_MP_STATE, &mp, "KVM_GET_MP_STATE");
	/* CPUID as the vCPU has it (never a cached copy). */
	struct kvm_cpuid2 *cpuid = calloc(1, sizeof *cpuid + 512 * sizeof(struct kvm_cpuid_entry2));
	if (!cpuid)
		return -ENOMEM;
	cpuid->nent = 512;
	if (ioctl(fd, KVM_GET_CPUID2, cpuid) < 0) {
		free(cpuid);
		return ovm_errf(err, errno, "snapshot: vCPU %d: KVM_GET_CPUID2: %s", c->id, strerror(errno));
	}
	/* Some kernels (seen on 6.1) leave nent as we passed it: drop the unused, all-zero tail. */
	static const struct kvm_cpuid_entry2 zero_entry;
	while (cpuid->nent > 1 && !memcmp(&cpuid->entries[cpuid->nent - 1], &zero_entry, sizeof zero_entry))
		cpuid->nent--;
	uint32_t clen = (uint32_t)(sizeof *cpuid + cpuid->nent * sizeof(struct kvm_cpuid_entry2));
	int rc = put_blob(b, cpuid, clen);
	free(cpuid);
	if (rc)
		return rc;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xcrs xcrs;
	struct kvm_debugregs dbg;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events ev;
	GET(KVM_GET_REGS, &regs, "KVM_GET_REGS");
	GET(KVM_GET_SREGS, &sregs, "KVM_GET_SREGS");
	int xs = xsave_size(vm);
	void *xsave = calloc(1, (size_t)xs);
	if (!xsave)
		return -ENOMEM;
	if (ioctl(fd, xs > (int)sizeof(struct kvm_xsave) ? KVM_GET_XSAVE2 : KVM_GET_XSAVE, xsave) < 0) {
		free(xsave);
		return ovm_errf(err, errno, "snapshot: vCPU %d: KVM_GET_XSAVE: %s", c->id, strerror(errno));
	}
	GET(KVM_GET_XCRS, &xcrs, "KVM_GET_XCRS");
	GET(KVM_GET_DEBUGREGS, &dbg, "KVM_GET_DEBUGREGS");
	GET(KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC");
	int khz = ioctl(fd, KVM_GET_TSC_KHZ, 0);
	uint32_t tsc_khz = khz > 0 ? (uint32_t)khz : 0;
	struct msr_set m;
	if ((rc = msr_list(vm, &m, err))) {
		free(xsave);
		return rc;
	}
	for (;;) { /* drop MSRs KVM refuses to read, one at a time */
		int n = ioctl(fd, KVM_GET_MSRS, &m);
		if (n < 0) {
			free(xsave);
			return ovm_errf(err, errno, "snapshot: vCPU %d: KVM_GET_MSRS: %s", c->id, strerror(errno));
		}
		if ((uint32_t)n >= m.h.nmsrs)
			break;
		memmove(&m.e[n], &m.e[n + 1], (m.h.nmsrs - (uint32_t)n - 1) * sizeof m.e[0]);
		m.h.nmsrs--;
	}
	/* A zero TSC deadline is stored as the TSC, so the timer fires after restore (Firecracker #4618). */
	uint64_t tsc = 0;
	for (uint32_t i = 0; i < m.h.nmsrs; i++)
		if (m.e[i].index == MSR_IA32_TSC)
			tsc = m.e[i].data;
	for (uint32_t i = 0; i < m.h.nmsrs; i++)
		if (m.e[i].index == MSR_IA32_TSC_DEADLINE && m.e[i].data == 0)
			m.e[i].data = tsc;
	GET(KVM_GET_VCPU_EVENTS, &ev, "KVM_GET_VCPU_EVENTS"); /* last */
	rc = put_blob(b, &mp, sizeof mp);
	rc = rc ?: put_blob(b, &regs, sizeof regs);
	rc = rc ?: put_blob(b, &sregs, sizeof sregs);
	rc = rc ?: put_blob(b, xsave, (uint32_t)xs);
	rc = rc ?: put_blob(b, &xcrs, sizeof xcrs);
	rc = rc ?: put_blob(b, &dbg, sizeof dbg);
	rc = rc ?: put_blob(b, &lapic, sizeof lapic);
	rc = rc ?: put_blob(b, &tsc_khz, sizeof tsc_khz);
	rc = rc ?: put_blob(b, &m.h.nmsrs, sizeof m.h.nmsrs);
	rc = rc ?: ovm_buf_put(b, m.e, m.h.nmsrs * sizeof m.e[0]);
	rc = rc ?: put_blob(b, &ev, sizeof ev);
	free(xsave);
	return rc ? ovm_errf(err, ENOMEM, "snapshot: out of memory") : 0;
#undef GET
}

static int save_vm_state(struct ovm_vm *vm, struct ovm_buf *b, struct ovm_err *err)
{
	struct kvm_pit_state2 pit;
	struct kvm_clock_data clock;
	struct kvm_irqchip chip[3];
	memset(&clock, 0, sizeof clock);
	if (ioctl(vm->vm_fd, KVM_GET_PIT2, &pit) < 0)
		return ovm_errf(err, errno, "snapshot: KVM_GET_PIT2: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_GET_CLOCK, &clock) < 0)
		return ovm_errf(err, errno, "snapshot: KVM_GET_CLOCK: %s", strerror(errno));
	for (int i = 0; i < 3; i++) {
		memset(&chip[i], 0, sizeof chip[i]);
		chip[i].chip_id = (uint32_t)i;
		if (ioctl(vm->vm_fd, KVM_GET_IRQCHIP, &chip[i]) < 0)
			return ovm_errf(err, errno, "snapshot: KVM_GET_IRQCHIP %d: %s", i, strerror(errno));
	}
	int rc = put_blob(b, &pit, sizeof pit);
	rc = rc ?: put_blob(b, &clock, sizeof clock);
	for (int i = 0; i < 3; i++)
		rc = rc ?: put_blob(b, &chip[i], sizeof chip[i]);
	return rc ? ovm_errf(err, ENOMEM, "snapshot: out of memory") : 0;
}

static int write_all(int fd, const void *p, size_t len, off_t off)
{
	const uint8_t *q = p;
	while (len) {
		ssize_t n = pwrite(fd, q, len, off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		q += n;
		len -= (size_t)n;
		off += n;
	}
	return 0;
}

static bool page_zero(const uint8_t *p)
{
	const uint64_t *q = (const uint64_t *)p;
	for (int i = 0; i < 512; i += 4)
		if (q[i] | q[i + 1] | q[i + 2] | q[i + 3])
			return false;
	return true;
}

/* Write RAM with zero pages left as holes; returns bytes written or -errno. */
static int64_t write_memory(const struct ovm_mem *mem, int fd)
{
	if (ftruncate(fd, (off_t)mem->size) < 0)
		return -errno;
	uint64_t written = 0, run = 0, start = 0;
	for (uint64_t off = 0; off <= mem->size; off += 4096) {
		bool data = off < mem->size && !page_zero(mem->host + off);
		if (data) {
			if (!run)
				start = off;
			run += 4096;
			if (run < (8u << 20))
				continue;
		}
		if (run) {
			int rc = write_all(fd, mem->host + start, run, (off_t)start);
			if (rc)
				return rc;
			written += run;
			run = 0;
		}
	}
	return (int64_t)written;
}

static int write_file_atomic(const char *dir, const char *name, const void *data, size_t len,
			     struct ovm_err *err)
{
	char tmp[4096], dst[4096];
	snprintf(tmp, sizeof tmp, "%s/.%s.tmp", dir, name);
	snprintf(dst, sizeof dst, "%s/%s", dir, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return ovm_errf(err, errno, "snapshot: %s: %s", tmp, strerror(errno));
	int rc = write_all(fd, data, len, 0);
	if (!rc && fsync(fd) < 0)
		rc = -errno;
	close(fd);
	if (!rc && rename(tmp, dst) < 0)
		rc = -errno;
	if (rc) {
		unlink(tmp);
		return ovm_errf(err, -rc, "snapshot: writing %s: %s", dst, strerror(-rc));
	}
	return 0;
}

int ovm_vm_snapshot(struct ovm_vm *vm, const char *dir, struct ovm_snap_stats *st, struct ovm_err *err)
{
	double t0 = now_ms();
	memset(st, 0, sizeof *st);
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return ovm_errf(err, errno, "snapshot: mkdir %s: %s", dir, strerror(errno));
	int rc = ovm_vm_pause(vm, err);
	if (rc)
		return rc;
	double tp = now_ms();
	if (vm->pci && (rc = ovm_pci_flush(vm->pci, err)))
		return rc;

	struct ovm_buf body = {0}, sec = {0}, file = {0};
	rc = save_vm_state(vm, &sec, err);
	rc = rc ?: put_sec(&body, SEC_VM, &sec, err);
	for (int i = 0; !rc && i < vm->ncpus; i++) {
		sec.len = 0;
		rc = save_vcpu(vm, &vm->vcpu[i], &sec, err);
		rc = rc ?: put_sec(&body, SEC_VCPU, &sec, err);
	}
	if (!rc) { sec.len = 0; rc = ovm_serial_save(vm->com[0], &sec, err); rc = rc ?: put_sec(&body, SEC_SERIAL0, &sec, err); }
	if (!rc) { sec.len = 0; rc = ovm_serial_save(vm->com[1], &sec, err); rc = rc ?: put_sec(&body, SEC_SERIAL1, &sec, err); }
	if (!rc) { sec.len = 0; rc = ovm_i8042_save(vm->kbd, &sec, err); rc = rc ?: put_sec(&body, SEC_I8042, &sec, err); }
	if (!rc && vm->pci) { sec.len = 0; rc = ovm_pci_save(vm->pci, &sec, err); rc = rc ?: put_sec(&body, SEC_PCI, &sec, err); }

	struct ovm_snap_header h;
	memset(&h, 0, sizeof h);
	if (!rc) {
		h.version = OVM_SNAP_VERSION;
		h.arch = OVM_SNAP_ARCH_X86_64;
		host_ident(&h.cpu);
		/* The features the guest was shown (vCPU 0's CPUID, read back above). */
		struct kvm_cpuid2 *c = calloc(1, sizeof *c + 512 * sizeof(struct kvm_cpuid_entry2));
		if (!c)
			rc = ovm_errf(err, ENOMEM, "snapshot: out of memory");
		else {
			c->nent = 512;
			if (ioctl(vm->vcpu[0].fd, KVM_GET_CPUID2, c) < 0)
				rc = ovm_errf(err, errno, "snapshot: KVM_GET_CPUID2: %s", strerror(errno));
			else
				features_from(c, h.cpu.features);
			free(c);
		}
		h.mem_bytes = vm->mem.size;
		h.ncpus = (uint32_t)vm->ncpus;
		h.ndisks = (uint32_t)vm->cfg.ndisks;
		h.body_len = body.len;
	}
	rc = rc ?: ovm_snap_encode(&h, body.data, &file, err);

	/* Memory first, state last: a folder with state.bin is complete, so an
	 * older state.bin goes before the memory file is replaced. */
	if (!rc) {
		char sp[4096];
		snprintf(sp, sizeof sp, "%s/state.bin", dir);
		unlink(sp);
	}
	if (!rc) {
		char tmp[4096], dst[4096];
		snprintf(tmp, sizeof tmp, "%s/.memory.raw.tmp", dir);
		snprintf(dst, sizeof dst, "%s/memory.raw", dir);
		int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0) {
			rc = ovm_errf(err, errno, "snapshot: %s: %s", tmp, strerror(errno));
		} else {
			int64_t n = write_memory(&vm->mem, fd);
			if (n >= 0 && fsync(fd) < 0)
				n = -errno;
			close(fd);
			if (n >= 0 && rename(tmp, dst) < 0)
				n = -errno;
			if (n < 0) {
				unlink(tmp);
				rc = ovm_errf(err, (int)-n, "snapshot: writing %s: %s", dst, strerror((int)-n));
			} else {
				st->mem_bytes_written = (uint64_t)n;
			}
		}
	}
	if (!rc) {
		rc = write_file_atomic(dir, "state.bin", file.data, file.len, err);
	}
	if (!rc) {
		int dfd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd >= 0) {
			fsync(dfd);
			close(dfd);
		}
	}
	st->state_bytes = file.len;
	ovm_buf_free(&body);
	ovm_buf_free(&sec);
	ovm_buf_free(&file);
	double t1 = now_ms();
	st->paused_ms = t1 - tp;
	st->total_ms = t1 - t0;
	return rc;
}

/* ----------------------------------------------------------- restoring */

static int set_clock(struct ovm_vm *vm, const struct kvm_clock_data *clock, struct ovm_err *err)
{
	/* KVM_CLOCK_REALTIME: KVM moves kvmclock on by the wall time since the snapshot. */
	struct kvm_clock_data set;
	memset(&set, 0, sizeof set);
	set.clock = clock->clock;
	set.flags = clock->flags & KVM_CLOCK_REALTIME;
	set.realtime = clock->realtime;
	if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &set) < 0) {
		set.flags = 0;
		if (ioctl(vm->vm_fd, KVM_SET_CLOCK, &set) < 0)
			return ovm_errf(err, errno, "restore: KVM_SET_CLOCK: %s", strerror(errno));
	}
	return 0;
}

static int restore_vm_state(struct ovm_vm *vm, struct ovm_rd *r, struct kvm_clock_data *clock, struct ovm_err *err)
{
	struct kvm_pit_state2 pit;
	struct kvm_irqchip chip[3];
	int rc = get_blob(r, &pit, sizeof pit, "PIT state", err);
	rc = rc ?: get_blob(r, clock, sizeof *clock, "clock", err);
	for (int i = 0; i < 3; i++)
		rc = rc ?: get_blob(r, &chip[i], sizeof chip[i], "irqchip", err);
	if (rc)
		return rc;
	if (ioctl(vm->vm_fd, KVM_SET_PIT2, &pit) < 0)
		return ovm_errf(err, errno, "restore: KVM_SET_PIT2: %s", strerror(errno));
	for (int i = 0; i < 3; i++)
		if (ioctl(vm->vm_fd, KVM_SET_IRQCHIP, &chip[i]) < 0)
			return ovm_errf(err, errno, "restore: KVM_SET_IRQCHIP %d: %s", i, strerror(errno));
	return 0;
}

static int restore_vcpu(struct ovm_vm *vm, struct ovm_rd *r, struct ovm_err *err)
{
	uint32_t id;
	int rc = ovm_rd_get(r, &id, sizeof id, "vCPU id", err);
	if (rc)
		return rc;
	if (id >= (uint32_t)vm->ncpus)
		return ovm_errf(err, EINVAL, "restore: vCPU %u in a VM of %d", id, vm->ncpus);
	int fd = vm->vcpu[id].fd;
#define SET(req, p, name)                                                                          \
	do {                                                                                       \
		if (ioctl(fd, req, p) < 0)                                                         \
			return ovm_errf(err, errno, "restore: vCPU %u: " name ": %s", id, strerror(errno)); \
	} while (0)
	uint32_t clen;
	if ((rc = ovm_rd_get(r, &clen, sizeof clen, "CPUID length", err)))
		return rc;
	if (clen < sizeof(struct kvm_cpuid2) || clen > sizeof(struct kvm_cpuid2) + 4096 * sizeof(struct kvm_cpuid_entry2))
		return ovm_errf(err, EINVAL, "restore: CPUID table of %u bytes", clen);
	struct kvm_cpuid2 *cpuid = malloc(clen);
	if (!cpuid)
		return -ENOMEM;
	rc = ovm_rd_get(r, cpuid, clen, "CPUID", err);
	if (!rc && sizeof *cpuid + cpuid->nent * sizeof(struct kvm_cpuid_entry2) != clen)
		rc = ovm_errf(err, EINVAL, "restore: CPUID table says %u entries in %u bytes", cpuid->nent, clen);
	if (!rc && ioctl(fd, KVM_SET_CPUID2, cpuid) < 0)
		rc = ovm_errf(err, errno, "restore: vCPU %u: KVM_SET_CPUID2 (%u entries): %s", id, cpuid->nent,
			      strerror(errno));
	free(cpuid);
	if (rc)
		return rc;

	struct kvm_mp_state mp;
	struct kvm_regs regs;
	struct kvm_sregs sregs;
	struct kvm_xcrs xcrs;
	struct kvm_debugregs dbg;
	struct kvm_lapic_state lapic;
	struct kvm_vcpu_events ev;
	uint32_t tsc_khz, nmsrs;
	int xs = xsave_size(vm);
	void *xsave = calloc(1, (size_t)xs);
	if (!xsave)
		return -ENOMEM;
	rc = get_blob(r, &mp, sizeof mp, "MP state", err);
	rc = rc ?: get_blob(r, &regs, sizeof regs, "registers", err);
	rc = rc ?: get_blob(r, &sregs, sizeof sregs, "special registers", err);
	rc = rc ?: get_blob(r, xsave, (uint32_t)xs, "XSAVE area", err);
	rc = rc ?: get_blob(r, &xcrs, sizeof xcrs, "XCRs", err);
	rc = rc ?: get_blob(r, &dbg, sizeof dbg, "debug registers", err);
	rc = rc ?: get_blob(r, &lapic, sizeof lapic, "LAPIC", err);
	rc = rc ?: get_blob(r, &tsc_khz, sizeof tsc_khz, "TSC frequency", err);
	rc = rc ?: get_blob(r, &nmsrs, sizeof nmsrs, "MSR count", err);
	if (!rc && nmsrs > NSNAP)
		rc = ovm_errf(err, EINVAL, "restore: %u MSRs saved, at most %zu expected", nmsrs, NSNAP);
	struct msr_set m, dl;
	memset(&m, 0, sizeof m);
	memset(&dl, 0, sizeof dl);
	rc = rc ?: ovm_rd_get(r, m.e, nmsrs * sizeof m.e[0], "MSRs", err);
	rc = rc ?: get_blob(r, &ev, sizeof ev, "vCPU events", err);
	if (rc) {
		free(xsave);
		return rc;
	}
	/* The TSC deadline goes after the TSC (and after the LAPIC), or KVM drops it. */
	for (uint32_t i = 0; i < nmsrs; i++) {
		if (m.e[i].index == MSR_IA32_TSC_DEADLINE)
			dl.e[dl.h.nmsrs++] = m.e[i];
		else
			m.e[m.h.nmsrs++] = m.e[i];
	}

	if (tsc_khz) {
		int cur = ioctl(fd, KVM_GET_TSC_KHZ, 0);
		if (cur > 0 && (uint64_t)(cur > (int)tsc_khz ? cur - (int)tsc_khz : (int)tsc_khz - cur) * 4000 > tsc_khz &&
		    ioctl(fd, KVM_SET_TSC_KHZ, (unsigned long)tsc_khz) < 0) {
			free(xsave);
			return ovm_errf(err, ENOTSUP,
					"restore: the snapshot's TSC runs at %u kHz, this host's at %d kHz, and KVM cannot "
					"scale it (%s); boot the VM afresh instead",
					tsc_khz, cur, strerror(errno));
		}
	}
	if (ioctl(fd, KVM_SET_MP_STATE, &mp) < 0 || ioctl(fd, KVM_SET_REGS, &regs) < 0 ||
	    ioctl(fd, KVM_SET_SREGS, &sregs) < 0 ||
	    ioctl(fd, xs > (int)sizeof(struct kvm_xsave) ? KVM_SET_XSAVE : KVM_SET_XSAVE, xsave) < 0) {
		int e = errno;
		free(xsave);
		return ovm_errf(err, e, "restore: vCPU %u: setting MP state/registers/XSAVE: %s", id, strerror(e));
	}
	free(xsave);
	SET(KVM_SET_XCRS, &xcrs, "KVM_SET_XCRS");
	SET(KVM_SET_DEBUGREGS, &dbg, "KVM_SET_DEBUGREGS");
	SET(KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC");
	int n = ioctl(fd, KVM_SET_MSRS, &m);
	if (n < 0 || (uint32_t)n != m.h.nmsrs)
		return ovm_errf(err, n < 0 ? errno : EINVAL, "restore: vCPU %u: KVM_SET_MSRS refused MSR 0x%x", id,
				n < 0 ? 0 : m.e[n].index);
	if (dl.h.nmsrs && ioctl(fd, KVM_SET_MSRS, &dl) != (int)dl.h.nmsrs)
		return ovm_errf(err, EINVAL, "restore: vCPU %u: KVM_SET_MSRS refused the TSC deadline", id);
	SET(KVM_SET_VCPU_EVENTS, &ev, "KVM_SET_VCPU_EVENTS");
	/* Tell the guest its clock was stopped (no soft-lockup warnings); EINVAL if it has no kvmclock. */
	if (ioctl(fd, KVM_KVMCLOCK_CTRL, 0) < 0 && errno != EINVAL)
		return ovm_errf(err, errno, "restore: vCPU %u: KVM_KVMCLOCK_CTRL: %s", id, strerror(errno));
	return 0;
#undef SET
}

static int read_all(const char *path, uint8_t **out, size_t *len, struct ovm_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ovm_errf(err, errno, "restore: %s: %s", path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || st.st_size > (64 << 20)) {
		close(fd);
		return ovm_errf(err, EINVAL, "restore: %s: not a state file (over 64 MiB)", path);
	}
	uint8_t *b = malloc((size_t)st.st_size + 1);
	size_t got = 0;
	while (b && got < (size_t)st.st_size) {
		ssize_t n = read(fd, b + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	close(fd);
	if (!b || got != (size_t)st.st_size) {
		free(b);
		return ovm_errf(err, EIO, "restore: %s: short read", path);
	}
	*out = b;
	*len = got;
	return 0;
}

int ovm_vm_restore(struct ovm_vm **out, const struct ovm_vm_config *cfg, const char *dir, struct ovm_err *err)
{
	char sp[4096], mp[4096];
	snprintf(sp, sizeof sp, "%s/state.bin", dir);
	snprintf(mp, sizeof mp, "%s/memory.raw", dir);
	uint8_t *data = NULL;
	size_t len = 0;
	int rc = read_all(sp, &data, &len, err);
	if (rc)
		return rc;
	struct ovm_snap_header h;
	const uint8_t *body;
	struct ovm_vm *vm = NULL;
	int mfd = -1;
	if ((rc = ovm_snap_decode(data, len, sp, &h, &body, err)))
		goto out;
	if (h.ncpus < 1 || h.ncpus > OVM_MAX_VCPUS) {
		rc = ovm_errf(err, ENOTSUP, "restore: %s has %u vCPUs; this engine runs 1 to %d", sp, h.ncpus, OVM_MAX_VCPUS);
		goto out;
	}
	if (h.ndisks != (uint32_t)cfg->ndisks) {
		rc = ovm_errf(err, EINVAL, "restore: the snapshot had %u disks, %d given: give the same disks", h.ndisks,
			      cfg->ndisks);
		goto out;
	}
	mfd = open(mp, O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (mfd < 0 || fstat(mfd, &st) < 0) {
		rc = ovm_errf(err, errno, "restore: %s: %s", mp, strerror(errno));
		goto out;
	}
	if ((uint64_t)st.st_size != h.mem_bytes) {
		rc = ovm_errf(err, EINVAL, "restore: %s is %lld bytes, the snapshot's RAM is %llu", mp,
			      (long long)st.st_size, (unsigned long long)h.mem_bytes);
		goto out;
	}
	vm = calloc(1, sizeof *vm);
	if (!vm) {
		rc = ovm_errf(err, ENOMEM, "restore: out of memory");
		goto out;
	}
	if ((rc = ovm_vm_init_common(vm, cfg, h.mem_bytes, (int)h.ncpus, mfd, err)))
		goto out;
	struct ovm_cpu_sig host;
	if ((rc = ovm_cpu_sig_host(vm->kvm_fd, &host, err)) || (rc = ovm_cpu_sig_check(&h.cpu, &host, err)))
		goto out;

	struct ovm_rd r = {body, h.body_len, 0};
	int vcpus = 0;
	bool have_vm = false;
	struct kvm_clock_data clock;
	while (!rc && r.off < r.len) {
		uint32_t sh[2];
		if ((rc = ovm_rd_get(&r, sh, sizeof sh, "section header", err)))
			break;
		if (sh[1] > r.len - r.off) {
			rc = ovm_errf(err, EINVAL, "restore: section %u runs past the end of %s", sh[0], sp);
			break;
		}
		struct ovm_rd s = {r.data + r.off, sh[1], 0};
		r.off += sh[1];
		switch (sh[0]) {
		case SEC_VM: rc = restore_vm_state(vm, &s, &clock, err); have_vm = true; break;
		case SEC_VCPU:
			if (!have_vm)
				rc = ovm_errf(err, EINVAL, "restore: vCPU state before VM state in %s", sp);
			else
				rc = restore_vcpu(vm, &s, err), vcpus++;
			break;
		case SEC_SERIAL0: rc = ovm_serial_load(vm->com[0], &s, err); break;
		case SEC_SERIAL1: rc = ovm_serial_load(vm->com[1], &s, err); break;
		case SEC_I8042: rc = ovm_i8042_load(vm->kbd, &s, err); break;
		case SEC_PCI:
			if (!vm->pci)
				rc = ovm_errf(err, ENOTSUP, "restore: the snapshot has PCI state, this VM has no PCI bus");
			else
				rc = ovm_pci_load(vm->pci, &s, err);
			break;
		default:
			rc = ovm_errf(err, ENOTSUP, "restore: unknown section %u in %s (from a newer ovm?)", sh[0], sp);
		}
		if (!rc && s.off != s.len)
			rc = ovm_errf(err, EINVAL, "restore: section %u of %s has %zu bytes left over", sh[0], sp,
				      s.len - s.off);
	}
	/* kvmclock last, once every vCPU has its TSC (QEMU's order too): set
	 * before them, the TSC writes that follow move the clock's base. */
	if (!rc && have_vm)
		rc = set_clock(vm, &clock, err);
	if (!rc && vcpus != vm->ncpus)
		rc = ovm_errf(err, EINVAL, "restore: %s holds %d vCPU states for %d vCPUs", sp, vcpus, vm->ncpus);
out:
	free(data);
	if (mfd >= 0)
		close(mfd); /* the mapping keeps the file */
	if (rc) {
		if (vm) {
			vm->cfg.on_exit = NULL;
			ovm_vm_destroy(vm);
		}
		return rc;
	}
	*out = vm;
	return 0;
}
