/* ovm-vmm — the VMM core as a stand-alone program (no Node), for device
 * checks and benchmarks.
 *
 *   ovm-vmm boot --kernel K [--initrd I] [--cmdline C] [--mem MiB] [--cpus N]
 *                [--disk PATH[:PATH...][,ro]]... [--until TEXT] [--input TEXT]
 *                [--snapshot DIR] [--timeout SEC] [--keep-running]
 *   ovm-vmm restore DIR [--disk ...] [--until TEXT] [--input TEXT] [--timeout SEC] [--keep-running]
 *
 * The guest's COM1 goes to stdout, COM2 is discarded. Timings go to stderr
 * as "ovm-vmm: key=value" lines. --until waits for TEXT on COM1; then
 * --input TEXT is typed into COM1 ("\n" for newline; on restore it is typed
 * first, before waiting for --until), --snapshot pauses and
 * saves, and the VM is stopped unless --keep-running (then it runs until
 * it ends). A disk is a chain base:...:top; each file's format is found
 * from its magic (qcow2 or raw). Exit: 0 ok, 1 error, 2 timeout, 3 the
 * guest ended before the marker. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ovm.h"

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static const char *marker;
static size_t marker_matched;
static bool marker_seen, ended;
static double t0;

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

static void on_serial(void *opaque, int port, const uint8_t *data, size_t len)
{
	(void)opaque;
	if (port != 0)
		return;
	fwrite(data, 1, len, stdout);
	fflush(stdout);
	if (!marker)
		return;
	pthread_mutex_lock(&lock);
	for (size_t i = 0; i < len && !marker_seen; i++) {
		/* Simple matcher: restart on mismatch (markers have no self-overlap). */
		if (data[i] == (uint8_t)marker[marker_matched]) {
			if (!marker[++marker_matched]) {
				marker_seen = true;
				pthread_cond_broadcast(&cond);
			}
		} else {
			marker_matched = data[i] == (uint8_t)marker[0] ? 1 : 0;
		}
	}
	pthread_mutex_unlock(&lock);
}

static void on_exit_cb(void *opaque, enum ovm_exit_reason r, const char *detail)
{
	(void)opaque;
	fprintf(stderr, "\novm-vmm: exit=%s detail=\"%s\" at_ms=%.1f\n", ovm_exit_name(r), detail, now_ms() - t0);
	pthread_mutex_lock(&lock);
	ended = true;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
}

/* 1: marker, 0: ended first, -1: timeout */
static int wait_marker(double timeout_ms)
{
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += (time_t)(timeout_ms / 1000);
	dl.tv_nsec += (long)((timeout_ms - (double)(long)(timeout_ms / 1000) * 1000) * 1e6);
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	int r = -1;
	pthread_mutex_lock(&lock);
	for (;;) {
		if (marker && marker_seen) { r = 1; break; }
		if (ended) { r = 0; break; }
		if (pthread_cond_timedwait(&cond, &lock, &dl) == ETIMEDOUT) {
			r = marker && marker_seen ? 1 : ended ? 0 : -1;
			break;
		}
	}
	pthread_mutex_unlock(&lock);
	return r;
}

static void type_input(struct ovm_vm *vm, const char *input)
{
	size_t len = strlen(input), off = 0;
	double dl = now_ms() + 5000;
	while (off < len && now_ms() < dl) {
		int n = ovm_vm_serial_input(vm, 0, (const uint8_t *)input + off, len - off);
		if (n > 0)
			off += (size_t)n;
		else
			usleep(1000);
	}
}

static void usage(void)
{
	fprintf(stderr,
		"usage: ovm-vmm boot --kernel K [--initrd I] [--cmdline C] [--mem MiB] [--cpus N] [--disk PATH[:PATH...][,ro]]...\n"
		"                    [--until TEXT] [--input TEXT] [--snapshot DIR] [--timeout SEC] [--keep-running]\n"
		"       ovm-vmm restore DIR [--disk ...] [--until TEXT] [--input TEXT] [--timeout SEC] [--keep-running]\n");
}

static int parse_disk(struct ovm_disk_config *d, char *spec)
{
	char *comma = strchr(spec, ',');
	if (comma) {
		*comma = 0;
		if (strcmp(comma + 1, "ro")) {
			fprintf(stderr, "ovm-vmm: --disk %s: unknown option '%s' (only 'ro')\n", spec, comma + 1);
			return -1;
		}
		d->read_only = true;
	}
	for (char *p = strtok(spec, ":"); p; p = strtok(NULL, ":")) {
		if (d->n == OVM_MAX_CHAIN) {
			fprintf(stderr, "ovm-vmm: --disk: more than %d files in a chain\n", OVM_MAX_CHAIN);
			return -1;
		}
		char magic[4] = {0};
		int fd = open(p, O_RDONLY);
		if (fd < 0 || read(fd, magic, 4) != 4) {
			fprintf(stderr, "ovm-vmm: --disk %s: %s\n", p, fd < 0 ? strerror(errno) : "shorter than 4 bytes");
			if (fd >= 0)
				close(fd);
			return -1;
		}
		close(fd);
		d->paths[d->n] = p;
		d->formats[d->n] = memcmp(magic, "QFI\xfb", 4) ? "raw" : "qcow2";
		d->n++;
	}
	return 0;
}

static void unescape(char *s)
{
	char *o = s;
	for (; *s; s++) {
		if (s[0] == '\\' && s[1] == 'n') { *o++ = '\n'; s++; }
		else *o++ = *s;
	}
	*o = 0;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		usage();
		return 1;
	}
	setvbuf(stdout, NULL, _IOFBF, 1 << 16);
	bool restore = !strcmp(argv[1], "restore");
	if (!restore && strcmp(argv[1], "boot")) {
		usage();
		return 1;
	}
	struct ovm_vm_config cfg;
	memset(&cfg, 0, sizeof cfg);
	cfg.mem_bytes = 256ull << 20;
	cfg.ncpus = 1;
	cfg.cmdline = "console=ttyS0 reboot=k panic=-1 pci=conf1";
	cfg.on_serial = on_serial;
	cfg.on_exit = on_exit_cb;
	const char *snapdir = NULL, *restoredir = NULL;
	char *input = NULL;
	double timeout_s = 120;
	bool keep = false;
	int i = 2;
	if (restore) {
		if (argc < 3) {
			usage();
			return 1;
		}
		restoredir = argv[i++];
	}
	for (; i < argc; i++) {
		const char *a = argv[i];
		const char *v = i + 1 < argc ? argv[i + 1] : NULL;
		bool takes = strcmp(a, "--keep-running") != 0;
		if (takes && !v) {
			fprintf(stderr, "ovm-vmm: %s needs a value\n", a);
			return 1;
		}
		if (!strcmp(a, "--kernel")) cfg.kernel = v;
		else if (!strcmp(a, "--initrd")) cfg.initrd = v;
		else if (!strcmp(a, "--cmdline")) cfg.cmdline = v;
		else if (!strcmp(a, "--mem")) cfg.mem_bytes = strtoull(v, NULL, 10) << 20;
		else if (!strcmp(a, "--cpus")) cfg.ncpus = atoi(v);
		else if (!strcmp(a, "--until")) marker = v;
		else if (!strcmp(a, "--input")) { input = strdup(v); unescape(input); }
		else if (!strcmp(a, "--snapshot")) snapdir = v;
		else if (!strcmp(a, "--timeout")) timeout_s = strtod(v, NULL);
		else if (!strcmp(a, "--keep-running")) keep = true;
		else if (!strcmp(a, "--disk")) {
			if (cfg.ndisks == OVM_MAX_DISKS) {
				fprintf(stderr, "ovm-vmm: more than %d disks\n", OVM_MAX_DISKS);
				return 1;
			}
			if (parse_disk(&cfg.disks[cfg.ndisks++], argv[i + 1]))
				return 1;
		} else {
			fprintf(stderr, "ovm-vmm: unknown option %s\n", a);
			usage();
			return 1;
		}
		if (takes)
			i++;
	}
	if (!restore && !cfg.kernel) {
		fprintf(stderr, "ovm-vmm: boot needs --kernel\n");
		return 1;
	}

	struct ovm_err err = {0};
	struct ovm_vm *vm = NULL;
	t0 = now_ms();
	int rc = restore ? ovm_vm_restore(&vm, &cfg, restoredir, &err) : ovm_vm_create(&vm, &cfg, &err);
	if (rc) {
		fprintf(stderr, "ovm-vmm: %s\n", err.msg);
		return 1;
	}
	double t_created = now_ms();
	fprintf(stderr, "ovm-vmm: %s_setup_ms=%.2f\n", restore ? "restore" : "boot", t_created - t0);
	if ((rc = ovm_vm_start(vm, &err))) {
		fprintf(stderr, "ovm-vmm: %s\n", err.msg);
		ovm_vm_destroy(vm);
		return 1;
	}
	int status = 0;
	if (input && restore)
		type_input(vm, input);
	if (marker) {
		int w = wait_marker(timeout_s * 1000);
		if (w == 1) {
			fprintf(stderr, "\novm-vmm: marker_ms=%.1f (\"%s\" after %s)\n", now_ms() - t0, marker,
				restore ? "restore" : "boot");
		} else {
			fprintf(stderr, "\novm-vmm: %s before the marker \"%s\"\n",
				w == 0 ? "the guest ended" : "timeout", marker);
			status = w == 0 ? 3 : 2;
		}
	}
	if (!status && input && !restore)
		type_input(vm, input);
	if (!status && snapdir) {
		struct ovm_snap_stats st;
		if (ovm_vm_snapshot(vm, snapdir, &st, &err)) {
			fprintf(stderr, "ovm-vmm: snapshot: %s\n", err.msg);
			status = 1;
		} else {
			fprintf(stderr,
				"ovm-vmm: snapshot_dir=%s snapshot_ms=%.1f paused_ms=%.1f memory_bytes_written=%llu "
				"state_bytes=%llu\n",
				snapdir, st.total_ms, st.paused_ms, (unsigned long long)st.mem_bytes_written,
				(unsigned long long)st.state_bytes);
			if (keep)
				ovm_vm_resume(vm, NULL);
		}
	}
	if (keep && !status) {
		marker = NULL;
		if (wait_marker(timeout_s * 1000) < 0) {
			fprintf(stderr, "\novm-vmm: timeout waiting for the guest to end\n");
			status = 2;
		}
	}
	ovm_vm_stop(vm, OVM_EXIT_STOPPED);
	char detail[OVM_ERR_MAX];
	enum ovm_exit_reason r = ovm_vm_wait(vm, detail, sizeof detail);
	fflush(stdout);
	fprintf(stderr, "ovm-vmm: final=%s total_ms=%.1f\n", ovm_exit_name(r), now_ms() - t0);
	if (!status && r == OVM_EXIT_CRASHED)
		status = 1;
	ovm_vm_destroy(vm);
	free(input);
	return status;
}
