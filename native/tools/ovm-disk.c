/* ovm-disk — a small CLI over ovm_disk_* (for tests and debugging).
 *
 *   ovm-disk [-r] -c FMT:PATH [-c FMT:PATH ...] CMD [ARGS] [CMD [ARGS] ...]
 *
 * -c gives the chain base first (FMT is raw or qcow2); -r opens it
 * read-only. Commands run in order on one open disk:
 *   size              print the virtual size in bytes
 *   cat               write the whole virtual disk to stdout
 *   read OFF LEN      write LEN bytes at OFF to stdout
 *   write OFF FILE    write FILE's bytes at OFF (OFF 512-aligned)
 *   flush             make everything durable
 * Exit status: 0 ok, 1 an operation failed (message on stderr), 2 usage. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ovm.h"

static int usage(void)
{
	fprintf(stderr, "usage: ovm-disk [-r] -c FMT:PATH [-c FMT:PATH ...] {size|cat|read OFF LEN|write OFF FILE|flush}...\n");
	return 2;
}

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 0);
	if (errno || !*s || *end)
		return -1;
	*out = v;
	return 0;
}

static int out_all(const void *p, size_t n)
{
	return fwrite(p, 1, n, stdout) == n ? 0 : -1;
}

int main(int argc, char **argv)
{
	const char *paths[64], *fmts[64];
	int n = 0, i = 1;
	bool ro = false;
	for (; i < argc; i++) {
		if (strcmp(argv[i], "-r") == 0) {
			ro = true;
		} else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc && n < 64) {
			char *spec = argv[++i], *colon = strchr(spec, ':');
			if (!colon)
				return usage();
			*colon = 0;
			fmts[n] = spec;
			paths[n++] = colon + 1;
		} else {
			break;
		}
	}
	if (!n || i >= argc)
		return usage();
	struct ovm_err e = {0};
	struct ovm_disk *d;
	if (ovm_disk_open(&d, paths, fmts, n, ro, &e) < 0) {
		fprintf(stderr, "ovm-disk: %s\n", e.msg);
		return 1;
	}
	int rc = 0;
	const size_t chunk = 1 << 20;
	uint8_t *buf = malloc(chunk);
	for (; i < argc && rc == 0; i++) {
		const char *cmd = argv[i];
		uint64_t off, len;
		if (strcmp(cmd, "size") == 0) {
			printf("%llu\n", (unsigned long long)ovm_disk_size(d));
		} else if (strcmp(cmd, "flush") == 0) {
			rc = ovm_disk_flush(d, &e);
		} else if (strcmp(cmd, "cat") == 0 || strcmp(cmd, "read") == 0) {
			off = 0, len = ovm_disk_size(d);
			if (cmd[0] == 'r' && (i + 2 >= argc || parse_u64(argv[i + 1], &off) || parse_u64(argv[i + 2], &len))) {
				rc = usage();
				break;
			}
			if (cmd[0] == 'r')
				i += 2;
			while (len && rc == 0) {
				size_t k = len < chunk ? (size_t)len : chunk;
				rc = ovm_disk_read(d, off, buf, k, &e);
				if (rc == 0 && out_all(buf, k))
					rc = ovm_errf(&e, EIO, "stdout: %s", strerror(errno));
				off += k, len -= k;
			}
		} else if (strcmp(cmd, "write") == 0) {
			if (i + 2 >= argc || parse_u64(argv[i + 1], &off)) {
				rc = usage();
				break;
			}
			FILE *f = fopen(argv[i + 2], "rb");
			if (!f) {
				rc = ovm_errf(&e, errno, "%s: %s", argv[i + 2], strerror(errno));
				break;
			}
			size_t k;
			while (rc == 0 && (k = fread(buf, 1, chunk, f)) > 0) {
				rc = ovm_disk_write(d, off, buf, k, &e);
				off += k;
			}
			fclose(f);
			i += 2;
		} else {
			rc = usage();
		}
	}
	fflush(stdout);
	free(buf);
	ovm_disk_close(d);
	if (rc == 2)
		return 2;
	if (rc < 0) {
		fprintf(stderr, "ovm-disk: %s\n", e.msg);
		return 1;
	}
	return 0;
}
