/*
 * ovm.h — the whole internal API of ovm's native KVM engine (the VMM).
 *
 * One header, like Solo5's hvt: every function that crosses a file is
 * declared here with its preconditions. Files (see design.md):
 *   vm.c vcpu.c serial.c i8042.c snapshot.c       core (owner: core)
 *   arch/x86_64/{boot,cpu}.c                      zero page, e820, GDT, page tables, CPUID, MSRs
 *   bus.c mem.c err.c buf.c                        shared helpers
 *   pci.c virtio_pci.c virtqueue.c virtio_blk.c   PCI host bridge + virtio (owner: block)
 *   qcow2.c disk.c                                  block backends: raw and qcow2 chains
 *   binding.c                                       the only file that includes node_api.h
 *
 * Rules
 * - Nothing here exits or aborts the process. Functions return 0 (or a
 *   count) on success and a negative errno on failure, after writing a
 *   message into the caller's `struct ovm_err` with ovm_errf(). Only
 *   binding.c turns that into a JS exception.
 * - Every guest-physical access goes through ovm_gpa() (bounds-checked,
 *   overflow-safe). No other code adds offsets to mem->host.
 * - The core (everything but binding.c) does not include node_api.h, so
 *   it also links into the stand-alone tools in native/tools/ and the
 *   unit tests in native/test/.
 */
#ifndef OVM_H
#define OVM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <pthread.h>

/* ---------------------------------------------------------------- errors */

#define OVM_ERR_MAX 512

/* An error message slot. `code` is a positive errno (0 = no error). */
struct ovm_err {
	int code;
	char msg[OVM_ERR_MAX];
};

/* Record an error: `code` is a positive errno; returns -code so callers
 * can write `return ovm_errf(err, EINVAL, "virtio-blk: ...", ...)`.
 * `err` may be NULL (the message is then dropped). */
int ovm_errf(struct ovm_err *err, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* --------------------------------------------------------- guest memory */

/* Guest RAM: one anonymous (or MAP_PRIVATE file) mapping that the guest
 * sees at guest-physical 0 .. size. RAM above OVM_MMIO_HOLE_START moves
 * above 4 GiB (slot 1) so that the PCI hole stays free. */
#define OVM_MMIO_HOLE_START 0xC0000000ull /* 3 GiB: PCI BARs live here */
#define OVM_MMIO_HOLE_END 0x100000000ull  /* 4 GiB */

struct ovm_mem {
	uint8_t *host;  /* host address of guest RAM byte 0 */
	uint64_t size;  /* bytes of RAM (both slots together) */
};

/* Translate [gpa, gpa+len) to a host pointer, or NULL when any byte of it
 * is not RAM (out of bounds, in the MMIO hole, or gpa+len overflows).
 * len may be 0 (then gpa must be <= the end of RAM). The only way to touch
 * guest memory. */
void *ovm_gpa(const struct ovm_mem *mem, uint64_t gpa, uint64_t len);

/* -------------------------------------------------------------- buffers */

/* A growable byte buffer for device state (snapshot). */
struct ovm_buf {
	uint8_t *data;
	size_t len, cap;
};
int ovm_buf_put(struct ovm_buf *b, const void *data, size_t len); /* -ENOMEM */
void ovm_buf_free(struct ovm_buf *b);

/* Sequential reader over saved state; every get fails with -EINVAL (and
 * a message naming `what`) when the state is too short. */
struct ovm_rd {
	const uint8_t *data;
	size_t len, off;
};
int ovm_rd_get(struct ovm_rd *r, void *out, size_t len, const char *what, struct ovm_err *err);

/* ---------------------------------------------------------------- buses */

/* A handler for an I/O port or MMIO range. `off` is relative to the
 * range's base; len is 1, 2, 4 or 8. On a read the handler fills `data`
 * (little-endian); unhandled bits read as 0xff. Called on a vCPU thread;
 * a device with state shared with other threads locks itself. Returns 0,
 * or -errno for a fault the VMM should report (the guest is then stopped
 * with that message). */
typedef int (*ovm_io_fn)(void *opaque, uint64_t off, uint8_t *data, uint32_t len, bool is_write);

#define OVM_BUS_MAX 64

struct ovm_io_range {
	uint64_t base, len;
	ovm_io_fn fn;
	void *opaque;
	const char *name;
};

struct ovm_bus {
	struct ovm_io_range r[OVM_BUS_MAX];
	int n;
};

/* Register [base, base+len). Fails with -EEXIST on overlap, -ENOSPC when full. */
int ovm_bus_register(struct ovm_bus *bus, uint64_t base, uint64_t len, ovm_io_fn fn,
		     void *opaque, const char *name, struct ovm_err *err);
/* Move a registered range (PCI BAR reprogramming). -ENOENT if `opaque`+`old_base` unknown. */
int ovm_bus_move(struct ovm_bus *bus, uint64_t old_base, void *opaque, uint64_t new_base,
		 struct ovm_err *err);
/* Dispatch an access; an address with no handler reads as all ones and
 * ignores writes (returns 1 so the caller may count it). */
int ovm_bus_dispatch(struct ovm_bus *bus, uint64_t addr, uint8_t *data, uint32_t len, bool is_write);

/* ----------------------------------------------------------- interrupts */

/* How a device raises an interrupt, provided by vm.c (KVM_IRQ_LINE for
 * INTx/ISA lines, KVM_SIGNAL_MSI for MSI). Safe from any thread. Unit
 * tests pass a recording fake. */
struct ovm_irq {
	int (*set_line)(void *opaque, uint32_t gsi, int level);
	int (*signal_msi)(void *opaque, uint64_t addr, uint32_t data);
	void *opaque;
};

/* ------------------------------------------------------- block backends */

/* A disk as the guest sees it: a raw file, or a qcow2 chain (base first,
 * each later image's backing file being the one before). Reads fall
 * through the chain; writes go copy-on-write into the top image only
 * (whole clusters copied up from below), never into a lower one. */
struct ovm_disk;

/* Open a chain. paths[0] is the base. formats[i] is "raw" or "qcow2".
 * A read-only disk refuses writes with -EROFS. A qcow2 top image must be
 * qcow2 version 2 or 3 without compression/encryption/external data files
 * when writable; anything unsupported is refused naming the file and the
 * feature. */
int ovm_disk_open(struct ovm_disk **out, const char *const *paths, const char *const *formats,
		  int n, bool read_only, struct ovm_err *err);
uint64_t ovm_disk_size(const struct ovm_disk *d); /* virtual size in bytes */
bool ovm_disk_read_only(const struct ovm_disk *d);
/* Byte-granular I/O at a 512-byte-aligned offset. -EIO with a message on failure. */
int ovm_disk_read(struct ovm_disk *d, uint64_t off, void *buf, size_t len, struct ovm_err *err);
int ovm_disk_write(struct ovm_disk *d, uint64_t off, const void *buf, size_t len, struct ovm_err *err);
/* Make everything written so far durable (metadata too: L1/L2/refcounts). */
int ovm_disk_flush(struct ovm_disk *d, struct ovm_err *err);
/* Flush and close; the qcow2 top passes `qemu-img check` afterwards. */
void ovm_disk_close(struct ovm_disk *d);
/* Freeze the current top (flushed, then never written again) and continue
 * on `path`, an existing qcow2 whose backing file is that top and whose
 * virtual size is the disk's: later writes go there, reads fall through.
 * Atomic with respect to I/O (under the disk's mutex); a request either
 * completes before the switch or runs entirely on the new top. On error
 * nothing changes. */
int ovm_disk_push_top(struct ovm_disk *d, const char *path, struct ovm_err *err);
/* Images in the chain, and the path of image i (0 = base). */
int ovm_disk_layers(const struct ovm_disk *d);
const char *ovm_disk_layer_path(const struct ovm_disk *d, int i);

/* One qcow2 image (qcow2.c), the building block of a chain (disk.c).
 * `backing` reads the image below at the same guest offset (zeros past its
 * end); NULL means nothing is below (unallocated clusters read as zeros).
 * Precondition: the caller serialises all calls on one image (disk.c holds
 * the disk's mutex) and keeps offsets inside ovm_qcow2_size(). */
typedef int (*ovm_backing_read_fn)(void *ctx, uint64_t off, void *buf, size_t len, struct ovm_err *err);
struct ovm_qcow2;
/* Takes ownership of fd (closed by ovm_qcow2_close, or on failure). */
int ovm_qcow2_open(struct ovm_qcow2 **out, int fd, const char *path, bool writable, struct ovm_err *err);
uint64_t ovm_qcow2_size(const struct ovm_qcow2 *q);
/* The backing file name from the header, or NULL when there is none. */
const char *ovm_qcow2_backing(const struct ovm_qcow2 *q);
int ovm_qcow2_read(struct ovm_qcow2 *q, uint64_t off, void *buf, size_t len, ovm_backing_read_fn backing,
		   void *ctx, struct ovm_err *err);
/* Copy-on-write into this image: clusters not yet owned here are allocated
 * whole, the rest of the cluster copied up through `backing`. */
int ovm_qcow2_write(struct ovm_qcow2 *q, uint64_t off, const void *buf, size_t len,
		    ovm_backing_read_fn backing, void *ctx, struct ovm_err *err);
/* Data, then refcounts, then L2 tables, then L1, each stage fdatasync'd. */
int ovm_qcow2_flush(struct ovm_qcow2 *q, struct ovm_err *err);
/* Flush, then take no more writes (the image becomes a lower layer): the
 * exclusive flock is downgraded to shared. */
int ovm_qcow2_freeze(struct ovm_qcow2 *q, struct ovm_err *err);
/* Flushes (a failure is reported through err) and frees. */
int ovm_qcow2_close(struct ovm_qcow2 *q, struct ovm_err *err);

/* ------------------------------------------------------------- devices */

/* A device the VM owns. Each saves and restores its own state (Firecracker's
 * persist.rs per device); `save` appends to `out`, `load` reads exactly what
 * save wrote. `reset` is optional. */
struct ovm_device_ops {
	const char *name;
	int (*save)(void *dev, struct ovm_buf *out, struct ovm_err *err);
	int (*load)(void *dev, struct ovm_rd *in, struct ovm_err *err);
	void (*destroy)(void *dev);
};

/* -------------------------------------------------------------- PCI / virtio */

/* The PCI host bridge on conf1 (ports 0xCF8..0xCFF), bus 0. Devices get
 * consecutive slots; BARs are 32-bit memory BARs allocated in the MMIO
 * hole from OVM_PCI_MMIO_BASE. INTx: slot s (1..) uses GSI 5, 9, 10, 11,
 * 5, ... (ovm_pci_gsi), reported in config-space INTERRUPT_LINE; IRQ 8 is
 * the RTC's, so the first form (OVM_PCI_IRQ_BASE + s % 4) was dropped.
 * virtio-pci also offers MSI-X. */
#define OVM_PCI_MMIO_BASE 0xD0000000ull
#define OVM_PCI_IRQ_BASE 5

struct ovm_pci;

/* Create the bridge and register its conf1 ports on `pio` and BAR space on `mmio`. */
int ovm_pci_create(struct ovm_pci **out, struct ovm_bus *pio, struct ovm_bus *mmio,
		   const struct ovm_irq *irq, struct ovm_err *err);
void ovm_pci_destroy(struct ovm_pci *pci);

/* A virtio-blk device (modern virtio-pci, VIRTIO_F_VERSION_1) over `disk`,
 * which it owns from now on. Requests are served on the vCPU thread that
 * writes the queue notification. Bad descriptor chains complete with
 * VIRTIO_BLK_S_IOERR (or are skipped when not even a status byte can be
 * written) and never touch memory outside guest RAM. */
int ovm_virtio_blk_add(struct ovm_pci *pci, const struct ovm_mem *mem, struct ovm_disk *disk,
		       const char *serial, struct ovm_err *err);

/* Save/load the bridge and every device on it (config spaces, BARs,
 * virtqueue indices, MSI-X tables, feature bits). */
int ovm_pci_save(struct ovm_pci *pci, struct ovm_buf *out, struct ovm_err *err);
int ovm_pci_load(struct ovm_pci *pci, struct ovm_rd *in, struct ovm_err *err);
/* Flush every block device (before a snapshot or at stop). */
int ovm_pci_flush(struct ovm_pci *pci, struct ovm_err *err);

/* GSI of a device's INTx line in slot `slot` (>= 1). */
uint32_t ovm_pci_gsi(int slot);

/* A device on the bridge (the interface between pci.c and virtio_pci.c).
 * The device fills cfg (ids, class, capabilities), wmask (the bits the
 * guest may write in its capabilities; pci.c owns the header's), bar_size
 * and ops; ovm_pci_add assigns the slot, the BAR addresses and
 * INTERRUPT_LINE/PIN. BARs are 32-bit memory BARs whose size is a power of
 * two >= 4096; a BAR is live on the MMIO bus while COMMAND.MEM is set. */
#define OVM_PCI_BARS 6
struct ovm_pci_dev;
struct ovm_pci_dev_ops {
	/* An access inside BAR `bar` (off relative to it); decoding is on. */
	int (*bar_io)(struct ovm_pci_dev *dev, int bar, uint64_t off, uint8_t *data, uint32_t len, bool is_write);
	/* Optional: before the guest reads config bytes [off, off+len). */
	void (*cfg_read)(struct ovm_pci_dev *dev, uint32_t off, uint32_t len);
	/* Optional: after the guest wrote config bytes [off, off+len). */
	void (*cfg_written)(struct ovm_pci_dev *dev, uint32_t off, uint32_t len);
	int (*save)(struct ovm_pci_dev *dev, struct ovm_buf *out, struct ovm_err *err);
	int (*load)(struct ovm_pci_dev *dev, struct ovm_rd *in, struct ovm_err *err);
	int (*flush)(struct ovm_pci_dev *dev, struct ovm_err *err);
	void (*destroy)(struct ovm_pci_dev *dev);
};
struct ovm_pci_bar_ref {
	struct ovm_pci_dev *dev;
	int bar;
};
struct ovm_pci_dev {
	uint8_t cfg[256];
	uint8_t wmask[256];
	uint32_t bar_size[OVM_PCI_BARS];
	uint64_t bar_mapped[OVM_PCI_BARS]; /* where the BAR sits on the MMIO bus */
	struct ovm_pci_bar_ref bar_ref[OVM_PCI_BARS];
	const struct ovm_pci_dev_ops *ops;
	struct ovm_pci *pci;
	int slot;
	uint32_t gsi;
	int intx_level;
	const char *name;
};
/* Put `dev` in the next slot; the bridge owns it from now on (ops->destroy). */
int ovm_pci_add(struct ovm_pci *pci, struct ovm_pci_dev *dev, struct ovm_err *err);
/* Drive INTx (level 0/1); held low while COMMAND.INTX_DISABLE is set. */
void ovm_pci_intx(struct ovm_pci_dev *dev, int level);
/* The interrupt sink the bridge was created with (for MSI). */
const struct ovm_irq *ovm_pci_irq(const struct ovm_pci *pci);

/* The virtio-pci modern transport (virtio_pci.c) and a device behind it
 * (virtio_blk.c). The transport owns feature negotiation, the status
 * machine, the queues and MSI-X; the device serves queues and its config. */
struct ovm_virtio;
struct ovm_virtio_ops {
	const char *name;
	uint16_t device_id;  /* virtio id: 2 = block (PCI device 0x1040 + id) */
	uint64_t features;   /* offered; VIRTIO_F_VERSION_1 is added */
	uint32_t config_len; /* bytes of device config */
	int num_queues;
	uint16_t queue_max;
	/* Device config access at off (< config_len, len 1/2/4/8). */
	void (*config_rw)(void *dev, uint32_t off, uint8_t *data, uint32_t len, bool is_write);
	/* Queue q was notified while DRIVER_OK and ready: pop, serve, push,
	 * then ovm_virtio_interrupt(). Returns -errno only for a VMM fault. */
	int (*notify)(void *dev, struct ovm_virtio *t, int q);
	int (*flush)(void *dev, struct ovm_err *err);
	void (*destroy)(void *dev);
};
int ovm_virtio_pci_create(struct ovm_pci *pci, const struct ovm_mem *mem, const struct ovm_virtio_ops *ops,
			  void *dev, struct ovm_virtio **out, struct ovm_err *err);
struct ovm_vq *ovm_virtio_queue(struct ovm_virtio *t, int q);
const struct ovm_mem *ovm_virtio_mem(struct ovm_virtio *t);
uint64_t ovm_virtio_driver_features(struct ovm_virtio *t);
/* Tell the driver queue q has used buffers (MSI-X vector or INTx + ISR). */
int ovm_virtio_interrupt(struct ovm_virtio *t, int q);
/* Mark the device broken (DEVICE_NEEDS_RESET) with a config interrupt. */
void ovm_virtio_fail(struct ovm_virtio *t, const char *why);

/* The split virtqueue, apart from the transport so it can be unit-tested
 * with hostile descriptor tables. */
struct ovm_vq {
	uint16_t size;           /* queue size (power of two, <= 1024) */
	bool ready;
	uint64_t desc, avail, used; /* guest-physical addresses */
	uint16_t last_avail;     /* next avail ring entry to consume */
	uint16_t used_idx;       /* our used->idx shadow */
	uint16_t msix_vector;
};

/* One buffer of a chain, resolved to host memory. */
struct ovm_vq_seg {
	uint8_t *host;
	uint32_t len;
	bool device_writes; /* VIRTQ_DESC_F_WRITE */
};

#define OVM_VQ_MAX_SEGS 256
/* *head after a failed pop when no valid head could be read (queue heads are < 1024). */
#define OVM_VQ_NO_HEAD 0xFFFFu

/* Pop the next available chain: returns 1 and fills segs/nsegs/head, 0
 * when the ring is empty, -EINVAL (message says why) for a chain that
 * loops, is longer than the queue, points outside RAM, or uses an indirect
 * table that does. A bad chain's head is still returned in *head (when it
 * was in range) so the caller can complete it with an error. */
int ovm_vq_pop(struct ovm_vq *vq, const struct ovm_mem *mem, struct ovm_vq_seg *segs, int *nsegs,
	       uint16_t *head, struct ovm_err *err);
/* Put `head` on the used ring with `written` bytes. */
int ovm_vq_push(struct ovm_vq *vq, const struct ovm_mem *mem, uint16_t head, uint32_t written,
		struct ovm_err *err);
/* After pushing: false when the driver asked for no interrupt
 * (VIRTQ_AVAIL_F_NO_INTERRUPT; EVENT_IDX is not offered). */
bool ovm_vq_want_interrupt(const struct ovm_vq *vq, const struct ovm_mem *mem);

/* ---- core ---- */
/*
 * The VM (vm.c), its vCPU threads (vcpu.c), the legacy devices (serial.c,
 * i8042.c), the boot image (arch/x86_64/boot.c), CPU setup
 * (arch/x86_64/cpu.c) and snapshots (snapshot.c). Owner: core.
 */

/* ---- x86 boot (pure: unit-tested without KVM) */

/* Guest-physical layout of what the loader writes (Firecracker's, with
 * the GDT selectors of the Linux 64-bit boot protocol). */
#define OVM_BOOT_GDT 0x500ull
#define OVM_BOOT_IDT 0x520ull
#define OVM_BOOT_STACK 0x8ff0ull
#define OVM_BOOT_ZERO_PAGE 0x7000ull
#define OVM_BOOT_PML4 0x9000ull   /* then the PDPT at 0xa000, four PDs at 0xb000..0xe000 */
#define OVM_BOOT_CMDLINE 0x20000ull
#define OVM_BOOT_CMDLINE_MAX 4096
#define OVM_BOOT_KERNEL 0x100000ull /* protected-mode kernel; 64-bit entry at +0x200 */
#define OVM_BOOT_EBDA 0x9fc00ull     /* low RAM ends here (MP table lives here) */
#define OVM_BOOT_CS 0x10 /* __BOOT_CS */
#define OVM_BOOT_DS 0x18 /* __BOOT_DS */
#define OVM_BOOT_TSS 0x20
#define OVM_TSS_ADDR 0xfffbd000ull /* KVM_SET_TSS_ADDR (3 pages), in the MMIO hole */
#define OVM_IDENTITY_MAP_ADDR 0xfffbc000ull

#define OVM_E820_RAM 1
#define OVM_E820_RESERVED 2
struct ovm_e820 {
	uint64_t addr, size;
	uint32_t type;
};

/* The e820 map for `ram` bytes of RAM laid out as ovm_mem does: RAM below
 * the EBDA, the legacy hole reserved up to 1 MiB, RAM from 1 MiB up to
 * min(ram, 3 GiB), then the rest above 4 GiB. Returns the entry count
 * (<= max) or -EINVAL when ram is under 2 MiB or max is too small. */
int ovm_x86_e820(uint64_t ram, struct ovm_e820 *out, int max, struct ovm_err *err);

/* What the loader decided: where the vCPU starts. */
struct ovm_x86_boot {
	uint64_t entry;      /* 64-bit entry point (rip) */
	uint64_t zero_page;  /* rsi */
	uint64_t initrd_addr, initrd_size;
	uint16_t protocol;   /* boot protocol version from the header */
};

/* Load a bzImage (64-bit boot protocol, version >= 2.12 with
 * XLF_KERNEL_64) into `mem`: the protected-mode kernel at 1 MiB, the zero
 * page (setup header copied from the image, type_of_loader 0xff,
 * LOADED_HIGH|CAN_USE_HEAP, cmdline, e820, initrd), the initrd page-aligned
 * at the top of RAM below initrd_addr_max and below 3 GiB, the GDT and the
 * identity page tables (4 GiB with 2 MiB pages). Errors name what is wrong
 * with the image ("not a bzImage", "protocol 2.06 too old", "initrd of N
 * bytes does not fit below ..."). */
int ovm_x86_load_linux(const struct ovm_mem *mem, const uint8_t *kernel, size_t kernel_len,
		       const uint8_t *initrd, size_t initrd_len, const char *cmdline,
		       struct ovm_x86_boot *out, struct ovm_err *err);

/* Write the GDT (null, null, code 0x10, data 0x18, TSS 0x20) and the
 * identity-mapping page tables. Part of ovm_x86_load_linux; apart for tests. */
int ovm_x86_write_gdt(const struct ovm_mem *mem, struct ovm_err *err);
int ovm_x86_write_page_tables(const struct ovm_mem *mem, struct ovm_err *err);
/* A GDT entry as the CPU reads it (flags as in Firecracker's gdt_entry:
 * 0xa09b 64-bit code, 0xc093 data, 0x808b TSS). */
uint64_t ovm_x86_gdt_entry(uint16_t flags, uint32_t base, uint32_t limit);

/* An MP table (Intel MP spec 1.4, arch/x86_64/mptable.c) at OVM_BOOT_EBDA
 * for `ncpus` CPUs, the IOAPIC and INTA of PCI slots 1..npci, so that Linux
 * without ACPI starts the APs. Written only when ncpus > 1. */
int ovm_x86_write_mptable(const struct ovm_mem *mem, int ncpus, int npci, struct ovm_err *err);

/* ---- x86 CPU setup (arch/x86_64/cpu.c), on a vCPU fd */

struct kvm_cpuid2;
/* KVM_GET_SUPPORTED_CPUID into a malloc'd table (caller frees). */
int ovm_x86_supported_cpuid(int kvm_fd, struct kvm_cpuid2 **out, struct ovm_err *err);
/* Set the guest's CPUID from the supported table: APIC ID `id` in leaves
 * 1/0xB/0x1F, the hypervisor bit, VMX/SVM hidden, KVM's paravirt leaves
 * (0x40000000..) kept so kvmclock works. */
int ovm_x86_set_cpuid(int vcpu_fd, const struct kvm_cpuid2 *supported, int id, struct ovm_err *err);
/* Boot state of vCPU `id`: MSRs (MTRRs write-back, fast strings), FPU,
 * LAPIC LINT0=ExtINT / LINT1=NMI, and for the BSP (id 0) long mode at
 * `boot` (sregs, regs). APs are left for INIT/SIPI. */
int ovm_x86_setup_vcpu(int vcpu_fd, int id, const struct ovm_x86_boot *boot, struct ovm_err *err);

/* ---- legacy devices */

/* An 8250/16550A UART at I/O port `base` (8 ports) on ISA line `gsi`.
 * Transmitted bytes go to `out` (on the vCPU thread); ovm_serial_input
 * fills the receive FIFO. Locked internally: input may come from any thread. */
struct ovm_serial;
#define OVM_SERIAL_FIFO 1024
int ovm_serial_create(struct ovm_serial **out, struct ovm_bus *pio, uint16_t base, uint32_t gsi,
		      const struct ovm_irq *irq, void (*tx)(void *opaque, const uint8_t *data, size_t len),
		      void *opaque, struct ovm_err *err);
/* Queue host bytes for the guest; returns how many fit (0..len). */
int ovm_serial_input(struct ovm_serial *s, const uint8_t *data, size_t len);
int ovm_serial_save(struct ovm_serial *s, struct ovm_buf *out, struct ovm_err *err);
int ovm_serial_load(struct ovm_serial *s, struct ovm_rd *in, struct ovm_err *err);
void ovm_serial_destroy(struct ovm_serial *s);

/* The i8042 keyboard controller at 0x60/0x64: enough for Linux's probe
 * (self-test, command byte) and its reset line: command 0xFE calls `reset`. */
struct ovm_i8042;
int ovm_i8042_create(struct ovm_i8042 **out, struct ovm_bus *pio, const struct ovm_irq *irq,
		     void (*reset)(void *opaque), void *opaque, struct ovm_err *err);
int ovm_i8042_save(struct ovm_i8042 *k, struct ovm_buf *out, struct ovm_err *err);
int ovm_i8042_load(struct ovm_i8042 *k, struct ovm_rd *in, struct ovm_err *err);
void ovm_i8042_destroy(struct ovm_i8042 *k);

/* ---- the VM */

/* Up to 8 vCPUs: with more than one, an MP table tells Linux about the APs. */
#define OVM_MAX_VCPUS 8
#define OVM_MAX_DISKS 8
#define OVM_MAX_CHAIN 16

enum ovm_exit_reason {
	OVM_EXIT_NONE = 0,
	OVM_EXIT_POWEROFF, /* the guest powered off (see vm.c for the rule) */
	OVM_EXIT_RESET,    /* the guest rebooted (i8042 reset, triple fault; with panic=-1 a panic) */
	OVM_EXIT_STOPPED,  /* the host stopped it (ovm_vm_stop) */
	OVM_EXIT_CRASHED,  /* KVM refused to go on (entry failure, internal error, a device fault) */
};
const char *ovm_exit_name(enum ovm_exit_reason r);

struct ovm_disk_config {
	const char *paths[OVM_MAX_CHAIN];   /* base first */
	const char *formats[OVM_MAX_CHAIN]; /* "raw" / "qcow2" */
	int n;
	bool read_only;
};

/* Callbacks run on vCPU threads; they must not call back into the VM
 * except ovm_vm_serial_input (which takes its own lock). */
struct ovm_vm_config {
	uint64_t mem_bytes;
	int ncpus;
	const char *kernel, *initrd, *cmdline; /* ignored by restore */
	struct ovm_disk_config disks[OVM_MAX_DISKS];
	int ndisks;
	/* Bytes the guest wrote to COM1 (port 0) or COM2 (port 1). */
	void (*on_serial)(void *opaque, int port, const uint8_t *data, size_t len);
	/* The VM ended (called once, from the vCPU thread that saw it, or from ovm_vm_stop). */
	void (*on_exit)(void *opaque, enum ovm_exit_reason reason, const char *detail);
	void *opaque;
};

struct ovm_vm;

/* Create a VM from `cfg` and load its kernel: /dev/kvm, capabilities,
 * irqchip, PIT, memory, devices, vCPUs with their boot registers. The vCPUs
 * do not run until ovm_vm_start. */
int ovm_vm_create(struct ovm_vm **out, const struct ovm_vm_config *cfg, struct ovm_err *err);
/* Start one thread per vCPU. */
int ovm_vm_start(struct ovm_vm *vm, struct ovm_err *err);
/* Park every vCPU outside KVM_RUN (returns when all are parked). */
int ovm_vm_pause(struct ovm_vm *vm, struct ovm_err *err);
int ovm_vm_resume(struct ovm_vm *vm, struct ovm_err *err);
/* End the VM (any state) with `reason` unless it has already ended; joins the threads. */
void ovm_vm_stop(struct ovm_vm *vm, enum ovm_exit_reason reason);
/* Block until the VM has ended; returns the reason (and copies the detail). */
enum ovm_exit_reason ovm_vm_wait(struct ovm_vm *vm, char *detail, size_t detail_len);
/* Non-blocking: the reason, or OVM_EXIT_NONE while it runs. */
enum ovm_exit_reason ovm_vm_exit_reason(struct ovm_vm *vm);
/* Host to guest bytes on COM1 (port 0) or COM2 (port 1): returns how many
 * fit in the receive FIFO (the rest must be offered again later). Any thread. */
int ovm_vm_serial_input(struct ovm_vm *vm, int port, const uint8_t *data, size_t len);
/* Freeze disk `disk`'s top image and continue on `path` (an existing qcow2
 * backed by it; see ovm_disk_push_top). Any thread, VM running or paused. */
int ovm_vm_push_disk_top(struct ovm_vm *vm, int disk, const char *path, struct ovm_err *err);
/* Free everything (stops it first). */
void ovm_vm_destroy(struct ovm_vm *vm);
/* Human description of why KVM cannot be used here, or NULL when /dev/kvm works. */
const char *ovm_kvm_unavailable(char *buf, size_t len);

/* ---- VM internals, shared by vm.c, vcpu.c and snapshot.c only */

struct kvm_run;
struct ovm_vcpu {
	struct ovm_vm *vm;
	int id, fd;
	struct kvm_run *run;
	pthread_t tid;
	bool thread_started;
};

struct ovm_vm {
	int kvm_fd, vm_fd;
	size_t run_size;
	struct ovm_mem mem;
	struct ovm_bus pio, mmio;
	struct ovm_irq irq;
	struct ovm_serial *com[2];
	struct ovm_i8042 *kbd;
	struct ovm_pci *pci;
	struct kvm_cpuid2 *cpuid; /* KVM_GET_SUPPORTED_CPUID */
	int ncpus;
	struct ovm_vcpu vcpu[OVM_MAX_VCPUS];
	struct ovm_vm_config cfg;
	struct ovm_disk *disks[OVM_MAX_DISKS]; /* owned by their virtio-blk devices */
	int ndisks;

	pthread_mutex_t lock;
	pthread_cond_t cond;
	bool pause_req, stop, joined;
	int alive;  /* vCPU threads not yet returned */
	int parked; /* vCPU threads parked for pause_req */
	enum ovm_exit_reason reason;
	char detail[OVM_ERR_MAX];

	/* Poweroff rule (vm.c): the kernel's last words on COM1. */
	char tail[32];
	bool power_down_seen;
};

/* Create the vCPU fds, their kvm_run mappings and CPUID (no registers). */
int ovm_vcpu_create(struct ovm_vm *vm, int id, struct ovm_err *err);
/* Start vCPU `id`'s thread (all signals blocked but the kick signal). */
int ovm_vcpu_start(struct ovm_vm *vm, int id, struct ovm_err *err);
/* Make vCPU `id` leave KVM_RUN soon (immediate_exit + signal); any thread. */
void ovm_vcpu_kick(struct ovm_vm *vm, int id);
/* Record the end of the VM (first caller wins), stop and kick every vCPU,
 * call on_exit. Safe from vCPU threads. */
void ovm_vm_end(struct ovm_vm *vm, enum ovm_exit_reason reason, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* The VM's memory and KVM objects without devices or vCPUs (create and restore share it). */
int ovm_vm_init_common(struct ovm_vm *vm, const struct ovm_vm_config *cfg, uint64_t mem_bytes, int ncpus,
		       int mem_fd, struct ovm_err *err);

/* ---- snapshots (snapshot.c); format in rfc/runtime.md */

#define OVM_SNAP_MAGIC "OVMSNAP1"
#define OVM_SNAP_VERSION 1
#define OVM_SNAP_ARCH_X86_64 1

/* The CPU a snapshot was taken on, and what the guest was shown. */
struct ovm_cpu_sig {
	char vendor[13];
	uint32_t family, model, stepping;
	/* Guest-visible feature words: 1.ecx, 1.edx, 7.0.ebx, 7.0.ecx, 7.0.edx,
	 * 0x80000001.ecx, 0x80000001.edx, 0xd.1.eax. */
	uint32_t features[8];
};
/* This host's signature: vendor/family/model/stepping from CPUID, the
 * feature words from KVM_GET_SUPPORTED_CPUID (what it can offer a guest). */
int ovm_cpu_sig_host(int kvm_fd, struct ovm_cpu_sig *out, struct ovm_err *err);
/* 0 when a guest shown `snap` can run on a host offering `host`, else
 * -ENOTSUP with a message naming the vendor or the missing feature bits. */
int ovm_cpu_sig_check(const struct ovm_cpu_sig *snap, const struct ovm_cpu_sig *host, struct ovm_err *err);

struct ovm_snap_header {
	char magic[8];
	uint32_t version, arch;
	struct ovm_cpu_sig cpu;
	uint64_t mem_bytes;
	uint32_t ncpus;
	uint32_t ndisks;
	uint64_t body_len;
	uint32_t body_crc;
};
/* CRC-32 (IEEE 802.3, as zlib's crc32). */
uint32_t ovm_crc32(uint32_t crc, const void *data, size_t len);
/* Serialise header+body into `out` (fixed little-endian layout, header CRC). */
int ovm_snap_encode(const struct ovm_snap_header *h, const uint8_t *body, struct ovm_buf *out,
		    struct ovm_err *err);
/* Parse and verify: magic, version, arch, header and body checksums. On
 * success *body points into `data`. Messages name the file `what`. */
int ovm_snap_decode(const uint8_t *data, size_t len, const char *what, struct ovm_snap_header *h,
		    const uint8_t **body, struct ovm_err *err);

struct ovm_snap_stats {
	uint64_t mem_bytes_written; /* non-zero RAM written */
	uint64_t state_bytes;
	double paused_ms, total_ms;
};
/* Snapshot a VM into `dir` (created; files written under temp names and
 * renamed): state.bin and memory.raw. The VM is paused for it and left
 * paused; the caller resumes. */
int ovm_vm_snapshot(struct ovm_vm *vm, const char *dir, struct ovm_snap_stats *st, struct ovm_err *err);
/* Create a VM from a snapshot (cfg gives the disks and callbacks; memory
 * size and vCPU count come from the snapshot). memory.raw is mapped
 * MAP_PRIVATE (never written). The VM is ready for ovm_vm_start. */
int ovm_vm_restore(struct ovm_vm **out, const struct ovm_vm_config *cfg, const char *dir,
		   struct ovm_err *err);

#endif /* OVM_H */
