/*
 * kvm-probe: does /dev/kvm really run guest code?
 *
 * Runs three tiny VMs (one vCPU, 2 MiB of memory each), one per way a guest
 * reaches the code that talks to us:
 *   real: 16-bit real-mode code at 0x1000, as a vCPU starts;
 *   long: 64-bit code with paging already on (identity-mapped 2 MiB page,
 *         CR0.PG|PE, CR4.PAE, EFER.LME|LMA), how our VMM enters Linux;
 *   boot: real-mode code that itself loads a GDT, enters protected mode, turns
 *         on PAE, EFER.LME and paging and far-jumps to 64-bit code, as a
 *         bzImage's setup code or a BIOS boot does.
 * Each ends in the same loop: write COUNT bytes to port 0x3f8 (starting at
 * SEED, adding 7 each time), then hlt. The probe checks every exit: COUNT
 * KVM_EXIT_IO exits with the expected bytes, then KVM_EXIT_HLT. A KVM that
 * runs some of these but hangs on another cannot run a Linux guest (the
 * kvm-pvm module on this project's build machines is one).
 *
 * Usage: kvm-probe [COUNT [SEED [TIMEOUT_S]]]   (defaults: 8 0x42 10)
 * Prints one line per mode:
 *   kvm-probe: ok: real mode, api 12, 8 bytes on port 0x3f8: 42 49 50 57 5e 65 6c 73, then hlt
 * or "kvm-probe: FAIL: <mode>: <what went wrong>" on stderr.
 * Exit status: 0 ok, 2 usage, 3 /dev/kvm cannot be opened, 4 wrong API version,
 * 5 VM setup failed, 6 KVM_RUN failed, 7 unexpected exit or data, 8 timed out.
 * A hang inside KVM_RUN is cut by SIGALRM (KVM_RUN returns EINTR); a kernel
 * that ignores signals there still needs the caller's own timeout.
 *
 * Built static by scripts/nested-kvm.sh and test/kvm/helpers.ts:
 *   cc -static -O2 -o kvm-probe test/nested/kvm-probe.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/kvm.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MEM_SIZE 0x200000
#define CODE_AT 0x1000
#define PML4_AT 0x2000
#define PDPT_AT 0x3000
#define PD_AT 0x4000
#define PORT 0x3f8
#define PARAM_COUNT 0x500 /* u32: how many bytes to write */
#define PARAM_SEED 0x504  /* u8: the first byte */
#define PARAM_SPIN 0x508  /* u32: rounds of work in the work mode */
#define SPIN_ROUNDS 20000000

/*
 * The guest programs, assembled by GNU as into .rodata and copied to CODE_AT;
 * addresses inside them are computed as (label - start + CODE_AT).
 */
#define AT(label, start) "(" #label " - " #start " + 0x1000)"
__asm__(".pushsection .rodata\n"
        /* real: 16-bit */
        "probe_real_start:\n"
        ".code16\n"
        "movl (0x500), %ecx\n"
        "movb (0x504), %al\n"
        "movw $0x3f8, %dx\n"
        "1: outb %al, %dx\n"
        "addb $7, %al\n"
        "loopl 1b\n"
        "hlt\n"
        "probe_real_end:\n"
        /* long: 64-bit, entered with paging on */
        "probe_long_start:\n"
        ".code64\n"
        "probe_loop64:\n"
        "movl (0x500), %ecx\n"
        "movb (0x504), %al\n"
        "movw $0x3f8, %dx\n"
        "1: outb %al, %dx\n"
        "addb $7, %al\n"
        "loop 1b\n"
        "hlt\n"
        "probe_long_end:\n"
        /* spin: 64-bit, entered with paging on; first SPIN rounds of
         * ordinary work (a memory add and a multiply), then the output loop */
        "probe_spin_start:\n"
        ".code64\n"
        "movl (0x508), %ecx\n"
        "movl $0x7000, %ebx\n"
        "movl $1, %eax\n"
        "2: addl %eax, (%rbx)\n"
        "imull $3, %eax, %eax\n"
        "addl $8, %ebx\n"
        "andl $0x7fff, %ebx\n"
        "orl $0x7000, %ebx\n"
        "decl %ecx\n"
        "jnz 2b\n"
        "movl (0x500), %ecx\n"
        "movb (0x504), %al\n"
        "movw $0x3f8, %dx\n"
        "1: outb %al, %dx\n"
        "addb $7, %al\n"
        "loop 1b\n"
        "hlt\n"
        "probe_spin_end:\n"
        /* boot: real -> protected -> long mode by the guest itself */
        "probe_boot_start:\n"
        ".code16\n"
        "cli\n"
        "lgdtl " AT(probe_gdt_desc, probe_boot_start) "\n"
        "movl %cr0, %eax\n"
        "orl $1, %eax\n"
        "movl %eax, %cr0\n"
        "ljmpl $0x08, $" AT(probe_pm32, probe_boot_start) "\n"
        ".code32\n"
        "probe_pm32:\n"
        "movw $0x10, %ax\n"
        "movw %ax, %ds\n"
        "movw %ax, %es\n"
        "movw %ax, %ss\n"
        "movl %cr4, %eax\n"
        "orl $0x20, %eax\n" /* PAE */
        "movl %eax, %cr4\n"
        "movl $0x2000, %eax\n"
        "movl %eax, %cr3\n"
        "movl $0xc0000080, %ecx\n" /* EFER */
        "rdmsr\n"
        "orl $0x100, %eax\n" /* LME */
        "wrmsr\n"
        "movl %cr0, %eax\n"
        "orl $0x80000000, %eax\n" /* PG */
        "movl %eax, %cr0\n"
        "ljmpl $0x18, $" AT(probe_lm64, probe_boot_start) "\n"
        ".code64\n"
        "probe_lm64:\n"
        "movl (0x500), %ecx\n"
        "movb (0x504), %al\n"
        "movw $0x3f8, %dx\n"
        "1: outb %al, %dx\n"
        "addb $7, %al\n"
        "loop 1b\n"
        "hlt\n"
        ".p2align 3\n"
        "probe_gdt:\n"
        ".quad 0\n"
        ".quad 0x00cf9b000000ffff\n" /* 0x08: 32-bit code */
        ".quad 0x00cf93000000ffff\n" /* 0x10: data */
        ".quad 0x00af9b000000ffff\n" /* 0x18: 64-bit code */
        "probe_gdt_desc:\n"
        ".word probe_gdt_desc - probe_gdt - 1\n"
        ".long " AT(probe_gdt, probe_boot_start) "\n"
        "probe_boot_end:\n"
        ".popsection\n");
extern const uint8_t probe_real_start[], probe_real_end[], probe_long_start[], probe_long_end[], probe_boot_start[],
    probe_boot_end[], probe_spin_start[], probe_spin_end[];

enum mode { MODE_REAL, MODE_LONG, MODE_BOOT, MODE_SPIN };
static const char *const mode_names[] = {"real mode", "long mode", "boot (real to long mode)", "work (long mode)"};
struct guest_code {
  const uint8_t *start, *end;
};
static const struct guest_code codes[] = {
    {probe_real_start, probe_real_end}, {probe_long_start, probe_long_end}, {probe_boot_start, probe_boot_end}, {probe_spin_start, probe_spin_end}};

static volatile sig_atomic_t timed_out;
static void on_alarm(int sig) { (void)sig; timed_out = 1; }

static const char *mode_name;

static int fail(int code, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "kvm-probe: FAIL: %s: ", mode_name ? mode_name : "setup");
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  return code;
}

static long parse(const char *s, long lo, long hi, const char *what) {
  char *end;
  errno = 0;
  long v = strtol(s, &end, 0);
  if (errno || *end || v < lo || v > hi) {
    fprintf(stderr, "kvm-probe: %s must be a number in [%ld, %ld], got '%s'\n", what, lo, hi, s);
    exit(2);
  }
  return v;
}

/* Flat segment for long mode: code (l=1) or data. */
static void flat_segment(struct kvm_segment *seg, uint16_t selector, int code) {
  memset(seg, 0, sizeof *seg);
  seg->base = 0;
  seg->limit = 0xffffffff;
  seg->selector = selector;
  seg->type = code ? 11 : 3; /* execute/read accessed : read/write accessed */
  seg->present = 1;
  seg->s = 1;
  seg->g = 1;
  seg->l = code ? 1 : 0;
  seg->db = code ? 0 : 1;
}

static int run_mode(int kvm, int api, enum mode mode, long count, long seed, long timeout_s) {
  mode_name = mode_names[mode];
  timed_out = 0;
  alarm((unsigned)timeout_s); /* covers setup too: a broken KVM may hang anywhere */
  int vm = ioctl(kvm, KVM_CREATE_VM, 0);
  if (vm < 0) return fail(timed_out ? 8 : 5, "KVM_CREATE_VM: %s", strerror(errno));
  /* Intel needs a TSS for real mode; AMD ignores it. */
  (void)ioctl(vm, KVM_SET_TSS_ADDR, 0xfffbd000UL);

  uint8_t *mem = mmap(NULL, MEM_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (mem == MAP_FAILED) return fail(5, "mmap guest memory: %s", strerror(errno));
  struct guest_code code = codes[mode];
  memcpy(mem + CODE_AT, code.start, (size_t)(code.end - code.start));
  memcpy(mem + PARAM_COUNT, &(uint32_t){(uint32_t)count}, 4);
  mem[PARAM_SEED] = (uint8_t)seed;
  memcpy(mem + PARAM_SPIN, &(uint32_t){SPIN_ROUNDS}, 4);
  if (mode != MODE_REAL) { /* page tables: identity-map the first 2 MiB */
    uint64_t *pml4 = (uint64_t *)(mem + PML4_AT), *pdpt = (uint64_t *)(mem + PDPT_AT), *pd = (uint64_t *)(mem + PD_AT);
    pml4[0] = PDPT_AT | 0x3; /* present, writable */
    pdpt[0] = PD_AT | 0x3;
    pd[0] = 0x0 | 0x83; /* present, writable, 2 MiB page at 0 */
  }
  struct kvm_userspace_memory_region region = {
      .slot = 0, .guest_phys_addr = 0, .memory_size = MEM_SIZE, .userspace_addr = (uintptr_t)mem};
  if (ioctl(vm, KVM_SET_USER_MEMORY_REGION, &region) < 0)
    return fail(timed_out ? 8 : 5, "KVM_SET_USER_MEMORY_REGION: %s", strerror(errno));

  int vcpu = ioctl(vm, KVM_CREATE_VCPU, 0);
  if (vcpu < 0) return fail(timed_out ? 8 : 5, "KVM_CREATE_VCPU: %s", strerror(errno));
  int run_size = ioctl(kvm, KVM_GET_VCPU_MMAP_SIZE, 0);
  if (run_size < (int)sizeof(struct kvm_run)) return fail(5, "KVM_GET_VCPU_MMAP_SIZE returned %d", run_size);
  struct kvm_run *run = mmap(NULL, (size_t)run_size, PROT_READ | PROT_WRITE, MAP_SHARED, vcpu, 0);
  if (run == MAP_FAILED) return fail(5, "mmap kvm_run: %s", strerror(errno));

  /* The guest's CPUID, as any VMM sets it: without it (no LM bit) the boot
   * mode's own write of EFER.LME faults. */
  struct {
    struct kvm_cpuid2 head;
    struct kvm_cpuid_entry2 entries[256];
  } cpuid;
  memset(&cpuid, 0, sizeof cpuid);
  cpuid.head.nent = 256;
  if (ioctl(kvm, KVM_GET_SUPPORTED_CPUID, &cpuid) < 0) return fail(5, "KVM_GET_SUPPORTED_CPUID: %s", strerror(errno));
  if (ioctl(vcpu, KVM_SET_CPUID2, &cpuid) < 0) return fail(5, "KVM_SET_CPUID2: %s", strerror(errno));

  struct kvm_sregs sregs;
  if (ioctl(vcpu, KVM_GET_SREGS, &sregs) < 0) return fail(5, "KVM_GET_SREGS: %s", strerror(errno));
  if (mode == MODE_LONG || mode == MODE_SPIN) {
    flat_segment(&sregs.cs, 0x8, 1);
    flat_segment(&sregs.ds, 0x10, 0);
    sregs.es = sregs.fs = sregs.gs = sregs.ss = sregs.ds;
    sregs.cr3 = PML4_AT;
    sregs.cr4 = 1u << 5;                           /* PAE */
    sregs.cr0 = (1u << 0) | (1u << 4) | (1u << 31); /* PE, ET, PG */
    sregs.efer = (1u << 8) | (1u << 10);           /* LME, LMA */
  } else {
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
  }
  if (ioctl(vcpu, KVM_SET_SREGS, &sregs) < 0) return fail(5, "KVM_SET_SREGS: %s", strerror(errno));
  struct kvm_regs regs;
  memset(&regs, 0, sizeof regs);
  regs.rip = CODE_AT;
  regs.rflags = 0x2;
  regs.rsp = MEM_SIZE - 16;
  if (ioctl(vcpu, KVM_SET_REGS, &regs) < 0) return fail(5, "KVM_SET_REGS: %s", strerror(errno));

  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  char line[3 * 4096 + 1];
  size_t used = 0;
  long got = 0;
  uint8_t expect = (uint8_t)seed;
  line[0] = 0;
  for (;;) {
    if (ioctl(vcpu, KVM_RUN, 0) < 0) {
      if (errno == EINTR && timed_out) {
        if (mode == MODE_SPIN && got == 0)
          return fail(8, "timed out after %ld s: %d rounds of plain 64-bit guest code (well under a second on a "
                         "working KVM) did not finish, so this KVM cannot run a real guest",
                      timeout_s, SPIN_ROUNDS);
        return fail(8, "timed out after %ld s in KVM_RUN (%ld of %ld bytes seen): the guest never halted", timeout_s,
                    got, count);
      }
      if (errno == EINTR || errno == EAGAIN) continue;
      return fail(6, "KVM_RUN: %s", strerror(errno));
    }
    switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      if (run->io.direction != KVM_EXIT_IO_OUT || run->io.port != PORT || run->io.size != 1 || run->io.count != 1)
        return fail(7, "unexpected I/O exit: dir %u port 0x%x size %u count %u", run->io.direction, run->io.port,
                    run->io.size, run->io.count);
      uint8_t b = *((uint8_t *)run + run->io.data_offset);
      if (got >= count) return fail(7, "more than %ld bytes written to port 0x%x", count, PORT);
      if (b != expect) return fail(7, "byte %ld is 0x%02x, expected 0x%02x", got, b, expect);
      used += (size_t)snprintf(line + used, sizeof line - used, " %02x", b);
      expect = (uint8_t)(expect + 7);
      got++;
      break;
    }
    case KVM_EXIT_HLT:
      alarm(0);
      if (got != count) return fail(7, "halted after %ld of %ld bytes", got, count);
      clock_gettime(CLOCK_MONOTONIC, &t1);
      printf("kvm-probe: ok: %s, api %d, %ld bytes on port 0x%x:%s, then hlt (%.1f ms)\n", mode_name, api, count, PORT,
             line, (double)(t1.tv_sec - t0.tv_sec) * 1e3 + (double)(t1.tv_nsec - t0.tv_nsec) / 1e6);
      fflush(stdout);
      munmap(run, (size_t)run_size);
      close(vcpu);
      close(vm);
      munmap(mem, MEM_SIZE);
      return 0;
    case KVM_EXIT_FAIL_ENTRY:
      return fail(7, "KVM_EXIT_FAIL_ENTRY, hardware_entry_failure_reason 0x%llx",
                  (unsigned long long)run->fail_entry.hardware_entry_failure_reason);
    case KVM_EXIT_INTERNAL_ERROR:
      return fail(7, "KVM_EXIT_INTERNAL_ERROR, suberror %u", run->internal.suberror);
    case KVM_EXIT_SHUTDOWN: {
      struct kvm_regs r;
      struct kvm_sregs sr;
      if (ioctl(vcpu, KVM_GET_REGS, &r) < 0 || ioctl(vcpu, KVM_GET_SREGS, &sr) < 0)
        return fail(7, "KVM_EXIT_SHUTDOWN (triple fault) after %ld bytes", got);
      return fail(7, "KVM_EXIT_SHUTDOWN (triple fault) after %ld bytes at rip 0x%llx, cs 0x%x, cr0 0x%llx, efer 0x%llx",
                  got, (unsigned long long)r.rip, sr.cs.selector, (unsigned long long)sr.cr0,
                  (unsigned long long)sr.efer);
    }
    default:
      return fail(7, "unexpected exit reason %u after %ld bytes", run->exit_reason, got);
    }
  }
}

int main(int argc, char **argv) {
  if (argc > 4) {
    fprintf(stderr, "usage: kvm-probe [COUNT [SEED [TIMEOUT_S]]]\n");
    return 2;
  }
  long count = argc > 1 ? parse(argv[1], 1, 4096, "COUNT") : 8;
  long seed = argc > 2 ? parse(argv[2], 0, 255, "SEED") : 0x42;
  long timeout_s = argc > 3 ? parse(argv[3], 1, 3600, "TIMEOUT_S") : 10;

  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_alarm; /* no SA_RESTART: KVM_RUN returns EINTR */
  sigaction(SIGALRM, &sa, NULL);

  int kvm = open("/dev/kvm", O_RDWR | O_CLOEXEC);
  if (kvm < 0) return fail(3, "open /dev/kvm: %s", strerror(errno));
  int api = ioctl(kvm, KVM_GET_API_VERSION, 0);
  if (api != KVM_API_VERSION) return fail(4, "KVM_GET_API_VERSION returned %d, expected %d", api, KVM_API_VERSION);
  for (int m = MODE_REAL; m <= MODE_SPIN; m++) {
    int rc = run_mode(kvm, api, (enum mode)m, count, seed, timeout_s);
    if (rc) return rc;
  }
  return 0;
}
