/* vcpu.c — one thread per vCPU running KVM_RUN and serving its exits.
 *
 * Pausing (Firecracker's scheme): the requester sets vm->pause_req under
 * vm->lock, then sets run->immediate_exit and sends SIGRTMIN+2 to the
 * thread. The thread checks pause_req under the lock before each KVM_RUN;
 * if the flag was set after that check, immediate_exit makes KVM_RUN
 * return EINTR at once, and the thread clears immediate_exit before it
 * checks again. So a pause or stop is never lost, and stop() works even
 * while the guest spins with interrupts off.
 *
 * Thread rule: vCPU ioctls other than KVM_RUN (snapshot, restore) are made
 * by the VM's owner only while every vCPU thread is parked or not started,
 * so no two threads ever use a vCPU fd at once. (KVM allows this; the
 * kernel doc says only that the first ioctl after a thread switch may be
 * slower.) */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/kvm.h>

#include "ovm.h"

#define SIG_KICK (SIGRTMIN + 2)

int ovm_vcpu_create(struct ovm_vm *vm, int id, struct ovm_err *err)
{
	struct ovm_vcpu *c = &vm->vcpu[id];
	c->vm = vm;
	c->id = id;
	c->fd = ioctl(vm->vm_fd, KVM_CREATE_VCPU, (unsigned long)id);
	if (c->fd < 0)
		return ovm_errf(err, errno, "KVM_CREATE_VCPU %d: %s", id, strerror(errno));
	void *run = mmap(NULL, vm->run_size, PROT_READ | PROT_WRITE, MAP_SHARED, c->fd, 0);
	if (run == MAP_FAILED)
		return ovm_errf(err, errno, "vCPU %d: mmap kvm_run: %s", id, strerror(errno));
	c->run = run;
	return 0;
}

void ovm_vcpu_kick(struct ovm_vm *vm, int id)
{
	struct ovm_vcpu *c = &vm->vcpu[id];
	if (!c->run)
		return;
	__atomic_store_n(&c->run->immediate_exit, 1, __ATOMIC_SEQ_CST);
	if (c->thread_started && !pthread_equal(c->tid, pthread_self()))
		pthread_kill(c->tid, SIG_KICK);
}

static const char *exit_name(uint32_t r)
{
	switch (r) {
	case KVM_EXIT_UNKNOWN: return "UNKNOWN";
	case KVM_EXIT_EXCEPTION: return "EXCEPTION";
	case KVM_EXIT_DEBUG: return "DEBUG";
	case KVM_EXIT_IRQ_WINDOW_OPEN: return "IRQ_WINDOW_OPEN";
	case KVM_EXIT_NMI: return "NMI";
	default: return "?";
	}
}

static void crash_regs(struct ovm_vcpu *c, const char *what)
{
	struct kvm_regs r;
	struct kvm_sregs s;
	memset(&r, 0, sizeof r);
	memset(&s, 0, sizeof s);
	ioctl(c->fd, KVM_GET_REGS, &r);
	ioctl(c->fd, KVM_GET_SREGS, &s);
	ovm_vm_end(c->vm, OVM_EXIT_CRASHED, "vCPU %d: %s (rip=0x%llx rsp=0x%llx cr0=0x%llx cr3=0x%llx cr4=0x%llx efer=0x%llx)",
		   c->id, what, (unsigned long long)r.rip, (unsigned long long)r.rsp, (unsigned long long)s.cr0,
		   (unsigned long long)s.cr3, (unsigned long long)s.cr4, (unsigned long long)s.efer);
}

/* Serve one exit; returns false when the thread should stop. */
static bool handle_exit(struct ovm_vcpu *c)
{
	struct ovm_vm *vm = c->vm;
	struct kvm_run *run = c->run;
	char what[160];
	switch (run->exit_reason) {
	case KVM_EXIT_IO: {
		uint8_t *p = (uint8_t *)run + run->io.data_offset;
		bool out = run->io.direction == KVM_EXIT_IO_OUT;
		for (uint32_t i = 0; i < run->io.count; i++, p += run->io.size) {
			int rc = ovm_bus_dispatch(&vm->pio, run->io.port, p, run->io.size, out);
			if (rc < 0) {
				ovm_vm_end(vm, OVM_EXIT_CRASHED, "vCPU %d: device at port 0x%x failed: %s", c->id,
					   run->io.port, strerror(-rc));
				return false;
			}
		}
		return true;
	}
	case KVM_EXIT_MMIO: {
		int rc = ovm_bus_dispatch(&vm->mmio, run->mmio.phys_addr, run->mmio.data, run->mmio.len,
					  run->mmio.is_write);
		if (rc < 0) {
			ovm_vm_end(vm, OVM_EXIT_CRASHED, "vCPU %d: device at 0x%llx failed: %s", c->id,
				   (unsigned long long)run->mmio.phys_addr, strerror(-rc));
			return false;
		}
		return true;
	}
	case KVM_EXIT_SHUTDOWN:
		/* A triple fault: how Linux's reboot=t (and a broken guest) resets. */
		if (vm->power_down_seen)
			ovm_vm_end(vm, OVM_EXIT_POWEROFF, "the guest powered off (\"Power down\", then a reset)");
		else
			ovm_vm_end(vm, OVM_EXIT_RESET, "vCPU %d: triple fault (shutdown)", c->id);
		return false;
	case KVM_EXIT_SYSTEM_EVENT:
		switch (run->system_event.type) {
		case KVM_SYSTEM_EVENT_SHUTDOWN:
			ovm_vm_end(vm, OVM_EXIT_POWEROFF, "the guest powered off");
			break;
		case KVM_SYSTEM_EVENT_RESET:
			ovm_vm_end(vm, vm->power_down_seen ? OVM_EXIT_POWEROFF : OVM_EXIT_RESET, "the guest reset");
			break;
		default:
			ovm_vm_end(vm, OVM_EXIT_CRASHED, "vCPU %d: system event %u", c->id, run->system_event.type);
		}
		return false;
	case KVM_EXIT_HLT:
		ovm_vm_end(vm, OVM_EXIT_POWEROFF, "vCPU %d halted", c->id);
		return false;
	case KVM_EXIT_FAIL_ENTRY:
		snprintf(what, sizeof what, "KVM could not enter the guest (hardware reason 0x%llx)",
			 (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
		crash_regs(c, what);
		return false;
	case KVM_EXIT_INTERNAL_ERROR:
		snprintf(what, sizeof what, "KVM internal error, suberror %u", run->internal.suberror);
		crash_regs(c, what);
		return false;
	default:
		snprintf(what, sizeof what, "unexpected exit %u (%s)", run->exit_reason, exit_name(run->exit_reason));
		crash_regs(c, what);
		return false;
	}
}

/* After the kernel's "reboot: System halted"/"Power down" line, Linux
 * (no ACPI) parks the CPU in HLT with interrupts off; with an in-kernel
 * irqchip that HLT never leaves KVM_RUN. So once the line was seen, a timer
 * kicks this thread every 20 ms and it looks: halted with IF clear means
 * the guest has powered off. */
static bool halted_for_good(struct ovm_vcpu *c)
{
	struct kvm_mp_state mp;
	struct kvm_regs r;
	if (ioctl(c->fd, KVM_GET_MP_STATE, &mp) < 0 || ioctl(c->fd, KVM_GET_REGS, &r) < 0)
		return false;
	return mp.mp_state == KVM_MP_STATE_HALTED && !(r.rflags & (1u << 9));
}

static void arm_halt_timer(timer_t *t, bool *armed)
{
	struct sigevent sev;
	memset(&sev, 0, sizeof sev);
	sev.sigev_notify = SIGEV_THREAD_ID;
	sev.sigev_signo = SIG_KICK;
	sev._sigev_un._tid = (int)gettid();
	if (timer_create(CLOCK_MONOTONIC, &sev, t) < 0)
		return;
	struct itimerspec its = {{0, 20 * 1000000L}, {0, 20 * 1000000L}};
	if (timer_settime(*t, 0, &its, NULL) < 0) {
		timer_delete(*t);
		return;
	}
	*armed = true;
}

static void *vcpu_main(void *arg)
{
	struct ovm_vcpu *c = arg;
	struct ovm_vm *vm = c->vm;
	timer_t halt_timer;
	bool halt_armed = false;
	sigset_t set;
	sigfillset(&set);
	sigdelset(&set, SIG_KICK);
	pthread_sigmask(SIG_SETMASK, &set, NULL);
	for (;;) {
		pthread_mutex_lock(&vm->lock);
		while (vm->pause_req && !vm->stop) {
			vm->parked++;
			pthread_cond_broadcast(&vm->cond);
			pthread_cond_wait(&vm->cond, &vm->lock);
			vm->parked--;
		}
		bool stop = vm->stop;
		pthread_mutex_unlock(&vm->lock);
		if (stop)
			break;
		if (ioctl(c->fd, KVM_RUN, 0) < 0) {
			int e = errno;
			if (e == EINTR || e == EAGAIN) {
				__atomic_store_n(&c->run->immediate_exit, 0, __ATOMIC_SEQ_CST);
				if (vm->power_down_seen && halted_for_good(c)) {
					ovm_vm_end(vm, OVM_EXIT_POWEROFF, "the guest powered off (halted after \"%s\")",
						   "reboot: System halted/Power down");
					break;
				}
				continue;
			}
			ovm_vm_end(vm, OVM_EXIT_CRASHED, "vCPU %d: KVM_RUN: %s", c->id, strerror(e));
			break;
		}
		if (!handle_exit(c))
			break;
		if (vm->power_down_seen && !halt_armed)
			arm_halt_timer(&halt_timer, &halt_armed);
	}
	if (halt_armed)
		timer_delete(halt_timer);
	pthread_mutex_lock(&vm->lock);
	vm->alive--;
	pthread_cond_broadcast(&vm->cond);
	pthread_mutex_unlock(&vm->lock);
	return NULL;
}

int ovm_vcpu_start(struct ovm_vm *vm, int id, struct ovm_err *err)
{
	struct ovm_vcpu *c = &vm->vcpu[id];
	/* Start it with every signal blocked, so none lands before it sets its mask. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	pthread_mutex_lock(&vm->lock);
	vm->alive++;
	pthread_mutex_unlock(&vm->lock);
	int rc = pthread_create(&c->tid, NULL, vcpu_main, c);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (rc) {
		pthread_mutex_lock(&vm->lock);
		vm->alive--;
		pthread_mutex_unlock(&vm->lock);
		return ovm_errf(err, rc, "vCPU %d: pthread_create: %s", id, strerror(rc));
	}
	c->thread_started = true;
	return 0;
}
