/* vm.c — one KVM virtual machine: /dev/kvm, memory, irqchip, PIT, the
 * legacy devices, PCI disks and the vCPUs' lifetime.
 *
 * How a VM ends (the exit rule):
 *  - i8042 command 0xFE (Linux `reboot=k`), or KVM_EXIT_SHUTDOWN (a triple
 *    fault, Linux `reboot=t`), or KVM_SYSTEM_EVENT_RESET: the guest asked to
 *    reset. That is OVM_EXIT_RESET, unless the kernel printed
 *    "reboot: Power down" or "reboot: System halted" on COM1 before it, in
 *    which case it is OVM_EXIT_POWEROFF. Why: without ACPI (we offer none)
 *    Linux has no way to power off; `poweroff -f` prints "reboot: Power
 *    down", finds no pm_power_off, and the reboot syscall returns into
 *    do_exit(); when that was init, the kernel panics and, with panic=-1
 *    reboot=k, resets through the i8042. The printed line is the only sign
 *    that the reset was a power-off.
 *  - KVM_SYSTEM_EVENT_SHUTDOWN and KVM_EXIT_HLT (only seen without an
 *    in-kernel irqchip) are OVM_EXIT_POWEROFF.
 *  - KVM_EXIT_FAIL_ENTRY, KVM_EXIT_INTERNAL_ERROR, KVM_SYSTEM_EVENT_CRASH, a
 *    device fault or a failing KVM_RUN are OVM_EXIT_CRASHED with a detail.
 *  - ovm_vm_stop is OVM_EXIT_STOPPED (or the reason it is given). */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "ovm.h"


const char *ovm_exit_name(enum ovm_exit_reason r)
{
	switch (r) {
	case OVM_EXIT_NONE: return "running";
	case OVM_EXIT_POWEROFF: return "poweroff";
	case OVM_EXIT_RESET: return "reset";
	case OVM_EXIT_STOPPED: return "stopped";
	case OVM_EXIT_CRASHED: return "crashed";
	}
	return "?";
}

static int irq_set_line(void *opaque, uint32_t gsi, int level)
{
	struct ovm_vm *vm = opaque;
	struct kvm_irq_level l = {.irq = gsi, .level = (uint32_t)level};
	return ioctl(vm->vm_fd, KVM_IRQ_LINE, &l) < 0 ? -errno : 0;
}

static int irq_signal_msi(void *opaque, uint64_t addr, uint32_t data)
{
	struct ovm_vm *vm = opaque;
	struct kvm_msi m = {.address_lo = (uint32_t)addr, .address_hi = (uint32_t)(addr >> 32), .data = data};
	return ioctl(vm->vm_fd, KVM_SIGNAL_MSI, &m) < 0 ? -errno : 0;
}

static const char *const power_down_lines[] = {"reboot: Power down", "reboot: System halted"};

static void com_tx(struct ovm_vm *vm, int port, const uint8_t *data, size_t len)
{
	if (port == 0) {
		for (size_t i = 0; i < len; i++) {
			memmove(vm->tail, vm->tail + 1, sizeof vm->tail - 2);
			vm->tail[sizeof vm->tail - 2] = (char)data[i];
			vm->tail[sizeof vm->tail - 1] = 0;
			for (size_t j = 0; j < sizeof power_down_lines / sizeof power_down_lines[0]; j++) {
				size_t n = strlen(power_down_lines[j]);
				if (!memcmp(vm->tail + sizeof vm->tail - 1 - n, power_down_lines[j], n))
					vm->power_down_seen = true;
			}
		}
	}
	if (vm->cfg.on_serial)
		vm->cfg.on_serial(vm->cfg.opaque, port, data, len);
}
static void com1_tx(void *o, const uint8_t *d, size_t n) { com_tx(o, 0, d, n); }
static void com2_tx(void *o, const uint8_t *d, size_t n) { com_tx(o, 1, d, n); }

static void kbd_reset(void *opaque)
{
	struct ovm_vm *vm = opaque;
	if (vm->power_down_seen)
		ovm_vm_end(vm, OVM_EXIT_POWEROFF, "the guest powered off (\"Power down\", then a reset)");
	else
		ovm_vm_end(vm, OVM_EXIT_RESET, "the guest reset the CPU through the i8042");
}

void ovm_vm_end(struct ovm_vm *vm, enum ovm_exit_reason reason, const char *fmt, ...)
{
	pthread_mutex_lock(&vm->lock);
	bool first = vm->reason == OVM_EXIT_NONE;
	if (first) {
		vm->reason = reason;
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(vm->detail, sizeof vm->detail, fmt, ap);
		va_end(ap);
	}
	vm->stop = true;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	for (int i = 0; i < vm->ncpus; i++)
		ovm_vcpu_kick(vm, i);
	if (first && vm->cfg.on_exit)
		vm->cfg.on_exit(vm->cfg.opaque, reason, vm->detail);
}

static void kick_handler(int sig);
static int check_caps(int kvm_fd, struct ovm_err *err);

/* The probe guest runs the way a real boot does (irqchip, CPUID, long
 * mode through our GDT and page tables) and writes 'K' to 0x3f8 then
 * 'K' to 0x3f9: `mov dx,0x3f8; mov al,'K'; out dx,al; mov dx,0x3f9; out
 * dx,al; jmp $`. */
struct probe {
	int vcpu;
	struct kvm_run *run;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool done;
	int result;
	char why[160];
};

static void *probe_main(void *arg)
{
	struct probe *p = arg;
	sigset_t set;
	sigfillset(&set);
	sigdelset(&set, SIGRTMIN + 2);
	pthread_sigmask(SIG_SETMASK, &set, NULL);
	int result = 0, outs = 0;
	char why[160] = "";
	while (outs < 2) {
		if (ioctl(p->vcpu, KVM_RUN, 0) < 0) {
			result = errno;
			snprintf(why, sizeof why, "KVM_RUN of a test guest failed: %s", strerror(errno));
			break;
		}
		if (p->run->exit_reason == KVM_EXIT_IO && p->run->io.port == 0x3f8 + outs &&
		    *((uint8_t *)p->run + p->run->io.data_offset) == 'K') {
			outs++;
			continue;
		}
		result = EIO;
		snprintf(why, sizeof why, "a test guest exited with reason %u instead of running its code",
			 p->run->exit_reason);
		break;
	}
	pthread_mutex_lock(&p->lock);
	p->result = result;
	snprintf(p->why, sizeof p->why, "%s", why);
	p->done = true;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

#define PROBE_MEM (2u << 20)

const char *ovm_kvm_unavailable(char *buf, size_t len)
{
	int fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		snprintf(buf, len, "/dev/kvm does not open: %s", strerror(errno));
		return buf;
	}
	int v = ioctl(fd, KVM_GET_API_VERSION, 0);
	if (v != KVM_API_VERSION) {
		close(fd);
		snprintf(buf, len, "/dev/kvm speaks KVM API %d, not %d", v, KVM_API_VERSION);
		return buf;
	}
	struct ovm_err err = {0};
	if (check_caps(fd, &err)) {
		close(fd);
		snprintf(buf, len, "%s", err.msg);
		return buf;
	}
	/* kvm-pvm (paravirtual VMs without VT-x/SVM) serves /dev/kvm but boots
	 * only PVM-enabled guest kernels: a stock kernel hangs at once. */
	if (access("/sys/module/kvm_pvm", F_OK) == 0 && access("/sys/module/kvm_intel", F_OK) != 0 &&
	    access("/sys/module/kvm_amd", F_OK) != 0) {
		close(fd);
		snprintf(buf, len, "/dev/kvm is kvm-pvm (no VT-x/SVM here), which runs only PVM-enabled guest kernels; "
				   "stock kernels hang on it");
		return buf;
	}
	/* Opening is not enough (a broken nested KVM opens and then hangs its
	 * guests): run a few instructions in long mode, with a deadline. */
	const char *fail = NULL;
	struct kvm_cpuid2 *cpuid = NULL;
	int vm = ioctl(fd, KVM_CREATE_VM, 0), vcpu = -1;
	uint8_t *host = mmap(NULL, PROBE_MEM, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	struct kvm_run *run = MAP_FAILED;
	int rs = ioctl(fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	uint64_t idmap = OVM_IDENTITY_MAP_ADDR;
	if (vm < 0 || host == MAP_FAILED || rs <= 0 || ioctl(vm, KVM_SET_TSS_ADDR, (unsigned long)OVM_TSS_ADDR) < 0 ||
	    ioctl(vm, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0 || ioctl(vm, KVM_CREATE_IRQCHIP, 0) < 0) {
		fail = "cannot create a test VM";
		goto out;
	}
	struct ovm_mem mem = {host, PROBE_MEM};
	static const uint8_t code[] = {0x66, 0xba, 0xf8, 0x03, 0xb0, 'K', 0xee, 0x66, 0xba, 0xf9, 0x03, 0xee, 0xeb, 0xfe};
	memcpy(host + 0x1000, code, sizeof code);
	struct kvm_userspace_memory_region r = {.slot = 0, .guest_phys_addr = 0, .memory_size = PROBE_MEM,
						.userspace_addr = (uint64_t)(uintptr_t)host};
	struct ovm_x86_boot boot = {.entry = 0x1000, .zero_page = 0};
	if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &r) < 0 || (vcpu = ioctl(vm, KVM_CREATE_VCPU, 0)) < 0 ||
	    ovm_x86_write_gdt(&mem, &err) || ovm_x86_write_page_tables(&mem, &err) ||
	    ovm_x86_supported_cpuid(fd, &cpuid, &err) || ovm_x86_set_cpuid(vcpu, cpuid, 0, &err) ||
	    ovm_x86_setup_vcpu(vcpu, 0, &boot, &err)) {
		snprintf(buf, len, "/dev/kvm does not work: cannot set up a test vCPU: %s", err.msg[0] ? err.msg : strerror(errno));
		fail = buf;
		goto out;
	}
	run = mmap(NULL, (size_t)rs, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
	if (run == MAP_FAILED) {
		fail = "cannot map a test vCPU";
		goto out;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = kick_handler;
	sigaction(SIGRTMIN + 2, &sa, NULL);
	struct probe *p = calloc(1, sizeof *p); /* leaked if the probe thread never returns */
	p->vcpu = vcpu;
	p->run = run;
	pthread_mutex_init(&p->lock, NULL);
	pthread_cond_init(&p->cond, NULL);
	pthread_t t;
	if (pthread_create(&t, NULL, probe_main, p)) {
		free(p);
		fail = "cannot start a probe thread";
		goto out;
	}
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 3;
	pthread_mutex_lock(&p->lock);
	while (!p->done && pthread_cond_timedwait(&p->cond, &p->lock, &dl) != ETIMEDOUT)
		;
	bool done = p->done;
	pthread_mutex_unlock(&p->lock);
	if (!done) {
		__atomic_store_n(&run->immediate_exit, 1, __ATOMIC_SEQ_CST);
		pthread_kill(t, SIGRTMIN + 2);
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += 1;
		pthread_mutex_lock(&p->lock);
		while (!p->done && pthread_cond_timedwait(&p->cond, &p->lock, &dl) != ETIMEDOUT)
			;
		done = p->done;
		pthread_mutex_unlock(&p->lock);
		snprintf(buf, len, "/dev/kvm opens but its guests do not run (a test guest in long mode did not reach "
				   "its second instruction in 3 s: a broken nested KVM?)");
		fail = buf;
		if (!done) {
			pthread_detach(t);
			free(cpuid);
			return buf; /* the thread still uses the fds and memory: leave them */
		}
		pthread_join(t, NULL);
	} else {
		pthread_join(t, NULL);
		if (p->result) {
			snprintf(buf, len, "/dev/kvm does not work: %s", p->why);
			fail = buf;
		}
	}
	pthread_mutex_destroy(&p->lock);
	pthread_cond_destroy(&p->cond);
	free(p);
out:
	if (fail && fail != buf)
		snprintf(buf, len, "/dev/kvm does not work: %s", fail);
	free(cpuid);
	if (run != MAP_FAILED)
		munmap(run, (size_t)rs);
	if (vcpu >= 0)
		close(vcpu);
	if (vm >= 0)
		close(vm);
	if (host != MAP_FAILED)
		munmap(host, PROBE_MEM);
	close(fd);
	return fail ? buf : NULL;
}

static void kick_handler(int sig) { (void)sig; }

static int check_caps(int kvm_fd, struct ovm_err *err)
{
	static const struct { int cap; const char *name; } need[] = {
		{KVM_CAP_IRQCHIP, "IRQCHIP"}, {KVM_CAP_USER_MEMORY, "USER_MEMORY"},
		{KVM_CAP_SET_TSS_ADDR, "SET_TSS_ADDR"}, {KVM_CAP_PIT2, "PIT2"},
		{KVM_CAP_EXT_CPUID, "EXT_CPUID"}, {KVM_CAP_IMMEDIATE_EXIT, "IMMEDIATE_EXIT"},
		{KVM_CAP_ADJUST_CLOCK, "ADJUST_CLOCK"}, {KVM_CAP_IRQ_ROUTING, "IRQ_ROUTING"},
		{KVM_CAP_SET_IDENTITY_MAP_ADDR, "SET_IDENTITY_MAP_ADDR"},
		{KVM_CAP_VCPU_EVENTS, "VCPU_EVENTS"}, {KVM_CAP_XSAVE, "XSAVE"},
		{KVM_CAP_XCRS, "XCRS"}, {KVM_CAP_DEBUGREGS, "DEBUGREGS"},
	};
	for (size_t i = 0; i < sizeof need / sizeof need[0]; i++)
		if (ioctl(kvm_fd, KVM_CHECK_EXTENSION, need[i].cap) <= 0)
			return ovm_errf(err, ENOTSUP, "KVM lacks KVM_CAP_%s, which the VMM needs", need[i].name);
	return 0;
}

int ovm_vm_init_common(struct ovm_vm *vm, const struct ovm_vm_config *cfg, uint64_t mem_bytes, int ncpus,
		       int mem_fd, struct ovm_err *err)
{
	int rc;
	vm->kvm_fd = vm->vm_fd = -1;
	for (int i = 0; i < OVM_MAX_VCPUS; i++)
		vm->vcpu[i].fd = -1;
	pthread_mutex_init(&vm->lock, NULL);
	pthread_cond_init(&vm->cond, NULL);
	vm->cfg = *cfg;
	if (mem_bytes < (32ull << 20) || (mem_bytes & 0xfffff))
		return ovm_errf(err, EINVAL, "memory: %llu bytes; give a whole number of MiB, at least 32",
				(unsigned long long)mem_bytes);
	if (mem_bytes > (1ull << 40))
		return ovm_errf(err, EINVAL, "memory: %llu MiB is more than 1 TiB", (unsigned long long)(mem_bytes >> 20));
	if (ncpus < 1 || ncpus > OVM_MAX_VCPUS)
		return ovm_errf(err, EINVAL, "cpus: %d; this engine runs 1 to %d vCPUs", ncpus, OVM_MAX_VCPUS);
	vm->ncpus = ncpus;

	/* The kick signal interrupts KVM_RUN: no SA_RESTART. */
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = kick_handler;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGRTMIN + 2, &sa, NULL) < 0)
		return ovm_errf(err, errno, "sigaction(SIGRTMIN+2): %s", strerror(errno));

	vm->kvm_fd = open("/dev/kvm", O_RDWR | O_CLOEXEC);
	if (vm->kvm_fd < 0)
		return ovm_errf(err, errno, "/dev/kvm: %s", strerror(errno));
	int v = ioctl(vm->kvm_fd, KVM_GET_API_VERSION, 0);
	if (v != KVM_API_VERSION)
		return ovm_errf(err, ENOTSUP, "/dev/kvm speaks KVM API %d, not %d", v, KVM_API_VERSION);
	if ((rc = check_caps(vm->kvm_fd, err)))
		return rc;
	int rs = ioctl(vm->kvm_fd, KVM_GET_VCPU_MMAP_SIZE, 0);
	if (rs <= 0)
		return ovm_errf(err, errno, "KVM_GET_VCPU_MMAP_SIZE: %s", strerror(errno));
	vm->run_size = (size_t)rs;

	vm->vm_fd = ioctl(vm->kvm_fd, KVM_CREATE_VM, 0);
	if (vm->vm_fd < 0)
		return ovm_errf(err, errno, "KVM_CREATE_VM: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_SET_TSS_ADDR, (unsigned long)OVM_TSS_ADDR) < 0)
		return ovm_errf(err, errno, "KVM_SET_TSS_ADDR: %s", strerror(errno));
	uint64_t idmap = OVM_IDENTITY_MAP_ADDR;
	if (ioctl(vm->vm_fd, KVM_SET_IDENTITY_MAP_ADDR, &idmap) < 0)
		return ovm_errf(err, errno, "KVM_SET_IDENTITY_MAP_ADDR: %s", strerror(errno));
	if (ioctl(vm->vm_fd, KVM_CREATE_IRQCHIP, 0) < 0)
		return ovm_errf(err, errno, "KVM_CREATE_IRQCHIP: %s", strerror(errno));
	struct kvm_pit_config pit = {.flags = KVM_PIT_SPEAKER_DUMMY};
	if (ioctl(vm->vm_fd, KVM_CREATE_PIT2, &pit) < 0)
		return ovm_errf(err, errno, "KVM_CREATE_PIT2: %s", strerror(errno));

	/* Guest RAM: anonymous, or the snapshot's memory file mapped private. */
	int flags = MAP_PRIVATE | MAP_NORESERVE | (mem_fd < 0 ? MAP_ANONYMOUS : 0);
	void *host = mmap(NULL, mem_bytes, PROT_READ | PROT_WRITE, flags, mem_fd, 0);
	if (host == MAP_FAILED)
		return ovm_errf(err, errno, "memory: mmap of %llu MiB: %s", (unsigned long long)(mem_bytes >> 20),
				strerror(errno));
	vm->mem.host = host;
	vm->mem.size = mem_bytes;
	uint64_t low = mem_bytes < OVM_MMIO_HOLE_START ? mem_bytes : OVM_MMIO_HOLE_START;
	struct kvm_userspace_memory_region r0 = {
		.slot = 0, .guest_phys_addr = 0, .memory_size = low, .userspace_addr = (uint64_t)(uintptr_t)host};
	if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r0) < 0)
		return ovm_errf(err, errno, "KVM_SET_USER_MEMORY_REGION (slot 0): %s", strerror(errno));
	if (mem_bytes > low) {
		struct kvm_userspace_memory_region r1 = {
			.slot = 1, .guest_phys_addr = OVM_MMIO_HOLE_END, .memory_size = mem_bytes - low,
			.userspace_addr = (uint64_t)(uintptr_t)host + low};
		if (ioctl(vm->vm_fd, KVM_SET_USER_MEMORY_REGION, &r1) < 0)
			return ovm_errf(err, errno, "KVM_SET_USER_MEMORY_REGION (slot 1): %s", strerror(errno));
	}

	vm->irq = (struct ovm_irq){irq_set_line, irq_signal_msi, vm};
	if ((rc = ovm_serial_create(&vm->com[0], &vm->pio, 0x3f8, 4, &vm->irq, com1_tx, vm, err)))
		return rc;
	if ((rc = ovm_serial_create(&vm->com[1], &vm->pio, 0x2f8, 3, &vm->irq, com2_tx, vm, err)))
		return rc;
	if ((rc = ovm_i8042_create(&vm->kbd, &vm->pio, &vm->irq, kbd_reset, vm, err)))
		return rc;

	if ((rc = ovm_pci_create(&vm->pci, &vm->pio, &vm->mmio, &vm->irq, err)))
		return rc;
	for (int i = 0; i < cfg->ndisks; i++) {
		const struct ovm_disk_config *dc = &cfg->disks[i];
		struct ovm_disk *d;
		if ((rc = ovm_disk_open(&d, dc->paths, dc->formats, dc->n, dc->read_only, err)))
			return rc;
		char serial[24];
		snprintf(serial, sizeof serial, "ovm-disk%d", i);
		if ((rc = ovm_virtio_blk_add(vm->pci, &vm->mem, d, serial, err)))
			return rc;
		vm->disks[vm->ndisks++] = d;
	}

	if ((rc = ovm_x86_supported_cpuid(vm->kvm_fd, &vm->cpuid, err)))
		return rc;
	for (int i = 0; i < ncpus; i++)
		if ((rc = ovm_vcpu_create(vm, i, err)))
			return rc;
	return 0;
}

int ovm_vm_push_disk_top(struct ovm_vm *vm, int disk, const char *path, struct ovm_err *err)
{
	if (disk < 0 || disk >= vm->ndisks)
		return ovm_errf(err, EINVAL, "disk %d: the VM has %d disk%s", disk, vm->ndisks, vm->ndisks == 1 ? "" : "s");
	return ovm_disk_push_top(vm->disks[disk], path, err);
}

static int read_file(const char *path, const char *what, uint8_t **out, size_t *len, struct ovm_err *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return ovm_errf(err, errno, "%s %s: %s", what, path, strerror(errno));
	struct stat st;
	if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return ovm_errf(err, EINVAL, "%s %s: not a regular file", what, path);
	}
	uint8_t *buf = malloc(st.st_size ? (size_t)st.st_size : 1);
	if (!buf) {
		close(fd);
		return ovm_errf(err, ENOMEM, "%s %s: out of memory for %lld bytes", what, path, (long long)st.st_size);
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			int e = n < 0 ? errno : EIO;
			free(buf);
			close(fd);
			return ovm_errf(err, e, "%s %s: read failed after %zu bytes: %s", what, path, got, strerror(e));
		}
		got += (size_t)n;
	}
	close(fd);
	*out = buf;
	*len = got;
	return 0;
}

int ovm_vm_create(struct ovm_vm **out, const struct ovm_vm_config *cfg, struct ovm_err *err)
{
	struct ovm_vm *vm = calloc(1, sizeof *vm);
	if (!vm)
		return ovm_errf(err, ENOMEM, "vm: out of memory");
	uint8_t *kernel = NULL, *initrd = NULL;
	size_t klen = 0, ilen = 0;
	int rc = ovm_vm_init_common(vm, cfg, cfg->mem_bytes, cfg->ncpus ? cfg->ncpus : 1, -1, err);
	if (!rc && !cfg->kernel)
		rc = ovm_errf(err, EINVAL, "kernel: no kernel given");
	if (!rc)
		rc = read_file(cfg->kernel, "kernel", &kernel, &klen, err);
	if (!rc && cfg->initrd)
		rc = read_file(cfg->initrd, "initrd", &initrd, &ilen, err);
	struct ovm_x86_boot boot;
	if (!rc)
		rc = ovm_x86_load_linux(&vm->mem, kernel, klen, initrd, ilen, cfg->cmdline ? cfg->cmdline : "",
					&boot, err);
	free(kernel);
	free(initrd);
	if (!rc && vm->ncpus > 1)
		rc = ovm_x86_write_mptable(&vm->mem, vm->ncpus, cfg->ndisks, err);
	for (int i = 0; !rc && i < vm->ncpus; i++) {
		rc = ovm_x86_set_cpuid(vm->vcpu[i].fd, vm->cpuid, i, err);
		if (!rc)
			rc = ovm_x86_setup_vcpu(vm->vcpu[i].fd, i, &boot, err);
	}
	if (rc) {
		vm->cfg.on_exit = NULL; /* it never ran: no exit to report */
		ovm_vm_destroy(vm);
		return rc;
	}
	*out = vm;
	return 0;
}

int ovm_vm_start(struct ovm_vm *vm, struct ovm_err *err)
{
	for (int i = 0; i < vm->ncpus; i++) {
		int rc = ovm_vcpu_start(vm, i, err);
		if (rc) {
			ovm_vm_end(vm, OVM_EXIT_CRASHED, "%s", err ? err->msg : "vCPU thread failed to start");
			return rc;
		}
	}
	return 0;
}

int ovm_vm_pause(struct ovm_vm *vm, struct ovm_err *err)
{
	pthread_mutex_lock(&vm->lock);
	if (vm->stop) {
		pthread_mutex_unlock(&vm->lock);
		return ovm_errf(err, ESRCH, "vm: it has ended (%s)", ovm_exit_name(vm->reason));
	}
	vm->pause_req = true;
	pthread_mutex_unlock(&vm->lock);
	for (int i = 0; i < vm->ncpus; i++)
		ovm_vcpu_kick(vm, i);
	pthread_mutex_lock(&vm->lock);
	while (vm->parked < vm->alive && !vm->stop)
		pthread_cond_wait(&vm->cond, &vm->lock);
	bool stopped = vm->stop;
	pthread_mutex_unlock(&vm->lock);
	if (stopped)
		return ovm_errf(err, ESRCH, "vm: it ended while pausing (%s)", ovm_exit_name(vm->reason));
	return 0;
}

int ovm_vm_resume(struct ovm_vm *vm, struct ovm_err *err)
{
	pthread_mutex_lock(&vm->lock);
	bool stopped = vm->stop;
	vm->pause_req = false;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	if (stopped)
		return ovm_errf(err, ESRCH, "vm: it has ended (%s)", ovm_exit_name(vm->reason));
	return 0;
}

static void join_all(struct ovm_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	while (vm->alive > 0)
		pthread_cond_wait(&vm->cond, &vm->lock);
	bool join = !vm->joined;
	vm->joined = true;
	pthread_mutex_unlock(&vm->lock);
	if (!join)
		return;
	for (int i = 0; i < vm->ncpus; i++)
		if (vm->vcpu[i].thread_started)
			pthread_join(vm->vcpu[i].tid, NULL);
}

void ovm_vm_stop(struct ovm_vm *vm, enum ovm_exit_reason reason)
{
	ovm_vm_end(vm, reason, "stopped by the host");
	join_all(vm);
}

enum ovm_exit_reason ovm_vm_wait(struct ovm_vm *vm, char *detail, size_t detail_len)
{
	pthread_mutex_lock(&vm->lock);
	while (vm->reason == OVM_EXIT_NONE || vm->alive > 0)
		pthread_cond_wait(&vm->cond, &vm->lock);
	enum ovm_exit_reason r = vm->reason;
	if (detail && detail_len)
		snprintf(detail, detail_len, "%s", vm->detail);
	pthread_mutex_unlock(&vm->lock);
	return r;
}

enum ovm_exit_reason ovm_vm_exit_reason(struct ovm_vm *vm)
{
	pthread_mutex_lock(&vm->lock);
	enum ovm_exit_reason r = vm->reason;
	pthread_mutex_unlock(&vm->lock);
	return r;
}

int ovm_vm_serial_input(struct ovm_vm *vm, int port, const uint8_t *data, size_t len)
{
	if (port < 0 || port > 1 || !vm->com[port])
		return -EINVAL;
	return ovm_serial_input(vm->com[port], data, len);
}

void ovm_vm_destroy(struct ovm_vm *vm)
{
	if (!vm)
		return;
	ovm_vm_end(vm, OVM_EXIT_STOPPED, "destroyed");
	join_all(vm);
	for (int i = 0; i < OVM_MAX_VCPUS; i++) {
		if (vm->vcpu[i].run)
			munmap(vm->vcpu[i].run, vm->run_size);
		if (vm->vcpu[i].fd >= 0)
			close(vm->vcpu[i].fd);
	}
	if (vm->pci) {
		ovm_pci_flush(vm->pci, NULL);
		ovm_pci_destroy(vm->pci);
	}
	ovm_serial_destroy(vm->com[0]);
	ovm_serial_destroy(vm->com[1]);
	ovm_i8042_destroy(vm->kbd);
	if (vm->vm_fd >= 0)
		close(vm->vm_fd);
	if (vm->kvm_fd >= 0)
		close(vm->kvm_fd);
	if (vm->mem.host)
		munmap(vm->mem.host, vm->mem.size);
	free(vm->cpuid);
	pthread_mutex_destroy(&vm->lock);
	pthread_cond_destroy(&vm->cond);
	free(vm);
}
