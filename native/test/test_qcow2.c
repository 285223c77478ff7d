/* test_qcow2.c — block backends against the real qemu-img / qemu-io.
 *
 * Images are made by qemu-img (v2 and v3, backing chains, zero clusters,
 * several cluster sizes and refcount widths); what ovm_disk_read returns is
 * compared with `qemu-img convert -O raw`; every image our writer touched
 * must pass `qemu-img check`; random writes are checked against a shadow
 * copy. Exits 77 (skip) when qemu-img is missing. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ovm.h"
#include "check.h"

static char dir[256];
static bool have_qemu_io;

/* Run a shell command in the temp dir; returns its exit status. */
__attribute__((format(printf, 1, 2))) static int sh(const char *fmt, ...)
{
	char cmd[4096];
	int n = snprintf(cmd, sizeof cmd, "cd '%s' && ( ", dir);
	va_list ap;
	va_start(ap, fmt);
	n += vsnprintf(cmd + n, sizeof cmd - (size_t)n, fmt, ap);
	va_end(ap);
	snprintf(cmd + n, sizeof cmd - (size_t)n, " ) >/dev/null 2>>'%s/log'", dir);
	int st = system(cmd);
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

static char *p(const char *name)
{
	static char bufs[8][512];
	static int k;
	char *b = bufs[k++ % 8];
	snprintf(b, 512, "%s/%s", dir, name);
	return b;
}

static uint8_t *slurp(const char *name, size_t *len)
{
	FILE *f = fopen(p(name), "rb");
	if (!f)
		return NULL;
	fseek(f, 0, SEEK_END);
	long n = ftell(f);
	fseek(f, 0, SEEK_SET);
	uint8_t *b = malloc(n ? (size_t)n : 1);
	if (fread(b, 1, (size_t)n, f) != (size_t)n) {
		free(b);
		b = NULL;
	}
	fclose(f);
	*len = (size_t)n;
	return b;
}

static int open_chain(struct ovm_disk **d, int n, const char **names, const char **fmts, bool ro, struct ovm_err *e)
{
	const char *paths[8];
	for (int i = 0; i < n; i++)
		paths[i] = p(names[i]);
	return ovm_disk_open(d, paths, fmts, n, ro, e);
}

/* Our view of the whole disk equals qemu's (convert -O raw of the top). */
static bool same_as_qemu(struct ovm_disk *d, const char *top, const char *what)
{
	if (sh("rm -f cmp.raw && qemu-img convert -U -O raw %s cmp.raw", top) != 0) {
		CHECK(0, "%s: qemu-img convert failed", what);
		return false;
	}
	size_t qlen;
	uint8_t *q = slurp("cmp.raw", &qlen);
	uint64_t size = ovm_disk_size(d);
	uint8_t *o = malloc(size);
	struct ovm_err e = {0};
	int rc = ovm_disk_read(d, 0, o, size, &e);
	bool ok = q && rc == 0 && qlen == size && memcmp(o, q, size) == 0;
	if (!ok) {
		size_t first = 0;
		while (q && rc == 0 && first < size && first < qlen && o[first] == q[first])
			first++;
		CHECK(0, "%s: ours differs from qemu (rc %d %s, sizes %llu/%zu, first diff at %zu)", what, rc, e.msg,
		      (unsigned long long)size, qlen, first);
	} else {
		CHECK(ok);
	}
	free(q);
	free(o);
	return ok;
}

static void check_image(const char *top, const char *what)
{
	int st = sh("qemu-img check -U %s", top);
	CHECK(st == 0, "%s: qemu-img check %s exited %d (see %s/log)", what, top, st, dir);
}

static uint64_t rnd_state = 0x9e3779b97f4a7c15ull;
static uint64_t rnd(void)
{
	rnd_state ^= rnd_state << 13;
	rnd_state ^= rnd_state >> 7;
	rnd_state ^= rnd_state << 17;
	return rnd_state;
}

/* 1. Read a three-level chain: raw base, v3 middle with data and zero
 * clusters, v2 top; compare with qemu at each level. */
static void test_chain_read(void)
{
	REQUIRE(sh("head -c 3M /dev/urandom > base.raw") == 0);
	REQUIRE(sh("qemu-img create -f qcow2 -o compat=1.1,cluster_size=65536 -b base.raw -F raw mid.qcow2 4M") == 0);
	if (have_qemu_io)
		REQUIRE(sh("qemu-io -c 'write -P 0x11 60k 100k' -c 'write -z 1M 128k' -c 'write -P 0x22 2900k 300k' "
			   "-c 'write -z 3200k 64k' mid.qcow2") == 0);
	REQUIRE(sh("qemu-img create -f qcow2 -o compat=0.10,cluster_size=4096 -b mid.qcow2 -F qcow2 top.qcow2 5M") == 0);
	if (have_qemu_io)
		REQUIRE(sh("qemu-io -c 'write -P 0x33 1020k 8k' -c 'write -P 0x44 4M 4k' top.qcow2") == 0);

	const char *names[] = {"base.raw", "mid.qcow2", "top.qcow2"};
	const char *fmts[] = {"raw", "qcow2", "qcow2"};
	struct ovm_disk *d;
	struct ovm_err e = {0};
	for (int n = 1; n <= 3; n++) {
		int rc = open_chain(&d, n, names, fmts, true, &e);
		CHECK(rc == 0, "open %d levels: %s", n, e.msg);
		if (rc)
			continue;
		CHECK(ovm_disk_read_only(d));
		CHECK(ovm_disk_size(d) == (n == 1 ? 3u << 20 : n == 2 ? 4u << 20 : 5u << 20));
		char what[32];
		snprintf(what, sizeof what, "chain of %d", n);
		same_as_qemu(d, names[n - 1], what);
		uint8_t b[512];
		CHECK(ovm_disk_write(d, 0, b, 512, &e) == -EROFS, "read-only refuses writes");
		CHECK(strstr(e.msg, "read-only"), "%s", e.msg);
		CHECK(ovm_disk_read(d, ovm_disk_size(d) - 512, b, 1024, &e) == -EIO, "past the end");
		CHECK(strstr(e.msg, "past the end"), "%s", e.msg);
		CHECK(ovm_disk_read(d, 100, b, 512, &e) == -EIO, "unaligned");
		ovm_disk_close(d);
	}
	if (have_qemu_io) {
		/* Spot checks that do not depend on qemu agreeing with us. */
		CHECK(open_chain(&d, 3, names, fmts, true, &e) == 0, "%s", e.msg);
		uint8_t b[4096];
		CHECK(ovm_disk_read(d, 1032 * 1024, b, 4096, &e) == 0);
		bool z = true;
		for (int i = 0; i < 4096; i++)
			z &= b[i] == 0;
		CHECK(z, "v3 zero cluster over random base reads as zeros");
		CHECK(ovm_disk_read(d, 1020 * 1024, b, 4096, &e) == 0 && b[0] == 0x33 && b[4095] == 0x33);
		CHECK(ovm_disk_read(d, 4u << 20, b, 4096, &e) == 0 && b[0] == 0x44, "top beyond the middle's size");
		CHECK(ovm_disk_read(d, (4u << 20) + 4096, b, 4096, &e) == 0 && b[0] == 0 && b[4095] == 0,
		      "past a lower image's end reads zeros");
		ovm_disk_close(d);
	}
}

/* 2. Random writes into a fresh overlay against a shadow copy. */
static void fuzz(const char *create_opts, uint64_t size, int ops, size_t maxlen, int flush_every, const char *what)
{
	REQUIRE(sh("rm -f fb.qcow2 fz.qcow2 && qemu-img create -f qcow2 %s fb.qcow2 %llu", create_opts,
		   (unsigned long long)size) == 0);
	if (have_qemu_io)
		REQUIRE(sh("qemu-io -c 'write -P 0x5a 0 %llu' -c 'write -z %llu %llu' fb.qcow2", (unsigned long long)size / 3,
			   (unsigned long long)size / 6, (unsigned long long)size / 12) == 0);
	REQUIRE(sh("qemu-img create -f qcow2 %s -b fb.qcow2 -F qcow2 fz.qcow2 %llu", create_opts,
		   (unsigned long long)size) == 0);
	REQUIRE(sh("rm -f cmp.raw && qemu-img convert -O raw fz.qcow2 cmp.raw") == 0);
	size_t slen;
	uint8_t *shadow = slurp("cmp.raw", &slen);
	REQUIRE(shadow && slen == size);

	const char *names[] = {"fb.qcow2", "fz.qcow2"};
	const char *fmts[] = {"qcow2", "qcow2"};
	struct ovm_disk *d;
	struct ovm_err e = {0};
	REQUIRE(open_chain(&d, 2, names, fmts, false, &e) == 0, "%s: %s", what, e.msg);
	uint8_t *buf = malloc(maxlen), *got = malloc(maxlen);
	int bad = 0, failed = 0;
	for (int i = 0; i < ops; i++) {
		uint64_t off = (rnd() % (size / 512)) * 512;
		size_t len = 1 + rnd() % maxlen;
		if (len > size - off)
			len = (size_t)(size - off);
		if (rnd() % 3) {
			for (size_t k = 0; k < len; k++)
				buf[k] = (uint8_t)rnd();
			if (ovm_disk_write(d, off, buf, len, &e) != 0) {
				failed++;
				fprintf(stderr, "%s: write failed: %s\n", what, e.msg);
				break;
			}
			memcpy(shadow + off, buf, len);
		} else {
			if (ovm_disk_read(d, off, got, len, &e) != 0 || memcmp(got, shadow + off, len) != 0)
				bad++;
		}
		if (flush_every && i % flush_every == flush_every - 1) {
			CHECK(ovm_disk_flush(d, &e) == 0, "%s: flush: %s", what, e.msg);
			/* Consistent on disk while still open (a crash now loses nothing). */
			check_image("fz.qcow2", what);
		}
	}
	CHECK(failed == 0 && bad == 0, "%s: %d failed writes, %d mismatched reads", what, failed, bad);
	ovm_disk_close(d);
	check_image("fz.qcow2", what);
	REQUIRE(sh("rm -f cmp.raw && qemu-img convert -O raw fz.qcow2 cmp.raw") == 0);
	size_t qlen;
	uint8_t *q = slurp("cmp.raw", &qlen);
	CHECK(q && qlen == size && memcmp(q, shadow, size) == 0, "%s: qemu reads what we wrote", what);
	free(q);
	/* Reopen: our reader agrees as well; the base was never written. */
	REQUIRE(open_chain(&d, 2, names, fmts, true, &e) == 0, "%s", e.msg);
	uint8_t *all = malloc(size);
	CHECK(ovm_disk_read(d, 0, all, size, &e) == 0 && memcmp(all, shadow, size) == 0, "%s: reopened", what);
	ovm_disk_close(d);
	free(all);
	free(buf);
	free(got);
	free(shadow);
	check_image("fb.qcow2", what);
}

/* 3. Images we must refuse, naming the file and the feature. */
static void expect_refused(const char *name, const char *fmt, bool ro, const char *needle, const char *what)
{
	struct ovm_disk *d = NULL;
	struct ovm_err e = {0};
	const char *names[] = {name};
	const char *fmts[] = {fmt};
	int rc = open_chain(&d, 1, names, fmts, ro, &e);
	CHECK(rc < 0 && d == NULL, "%s: should be refused (rc %d)", what, rc);
	CHECK(strstr(e.msg, name) && strstr(e.msg, needle), "%s: message \"%s\" should name %s and \"%s\"", what, e.msg,
	      name, needle);
	if (rc == 0)
		ovm_disk_close(d);
}

static void set_header_u64(const char *name, off_t off, uint64_t v)
{
	int fd = open(p(name), O_RDWR);
	uint64_t be = __builtin_bswap64(v);
	CHECK(fd >= 0 && pwrite(fd, &be, 8, off) == 8);
	close(fd);
}

static void test_refusals(void)
{
	REQUIRE(sh("head -c 1M /dev/urandom > r.raw && head -c 1M /dev/zero | tr '\\0' a > a.raw && qemu-img convert -c -O qcow2 a.raw comp.qcow2") == 0);
	expect_refused("comp.qcow2", "qcow2", true, "compressed", "compressed clusters");
	if (sh("qemu-img create -f qcow2 --object secret,id=s0,data=pw -o encrypt.format=aes,encrypt.key-secret=s0 enc.qcow2 1M") == 0)
		expect_refused("enc.qcow2", "qcow2", true, "encrypted", "encryption");
	if (sh("qemu-img create -f qcow2 -o data_file=ext.raw ext.qcow2 1M") == 0)
		expect_refused("ext.qcow2", "qcow2", true, "external data", "data file");
	REQUIRE(sh("qemu-img create -f qcow2 plain.qcow2 1M && cp plain.qcow2 dirty.qcow2 && cp plain.qcow2 corrupt.qcow2 "
		   "&& cp plain.qcow2 unk.qcow2 && cp plain.qcow2 snap.qcow2 && qemu-img snapshot -c s1 snap.qcow2") == 0);
	set_header_u64("dirty.qcow2", 72, 1);
	set_header_u64("corrupt.qcow2", 72, 2);
	set_header_u64("unk.qcow2", 72, 1ull << 40);
	expect_refused("dirty.qcow2", "qcow2", false, "dirty", "dirty bit, writable");
	expect_refused("corrupt.qcow2", "qcow2", true, "corrupt", "corrupt bit");
	expect_refused("unk.qcow2", "qcow2", true, "unknown incompatible", "unknown feature");
	expect_refused("snap.qcow2", "qcow2", false, "snapshot", "internal snapshot, writable");
	expect_refused("plain.qcow2", "raw", true, "qcow2", "qcow2 given as raw");
	expect_refused("r.raw", "qcow2", true, "not a qcow2", "raw given as qcow2");
	expect_refused("r.raw", "vmdk", true, "vmdk", "unknown format");
	expect_refused("missing.qcow2", "qcow2", true, "cannot open", "missing file");
	REQUIRE(sh("head -c 1000 /dev/zero > odd.raw") == 0);
	expect_refused("odd.raw", "raw", false, "multiple of 512", "odd raw size");

	struct ovm_disk *d;
	struct ovm_err e = {0};
	/* Dirty but read-only is fine (reads do not need refcounts). */
	const char *n1[] = {"dirty.qcow2"}, *f1[] = {"qcow2"};
	CHECK(open_chain(&d, 1, n1, f1, true, &e) == 0, "%s", e.msg);
	if (d)
		ovm_disk_close(d);
	const char *n2[] = {"snap.qcow2"};
	CHECK(open_chain(&d, 1, n2, f1, true, &e) == 0, "snapshots read-only: %s", e.msg);
	if (d)
		ovm_disk_close(d);
	/* Chains must agree with the headers. */
	REQUIRE(sh("qemu-img create -f qcow2 -b plain.qcow2 -F qcow2 ov.qcow2 1M") == 0);
	const char *n3[] = {"ov.qcow2"};
	CHECK(open_chain(&d, 1, n3, f1, true, &e) < 0 && strstr(e.msg, "backing file"), "%s", e.msg);
	const char *n4[] = {"plain.qcow2", "plain.qcow2"}, *f4[] = {"qcow2", "qcow2"};
	CHECK(open_chain(&d, 2, n4, f4, true, &e) < 0 && strstr(e.msg, "no backing file"), "%s", e.msg);
	const char *n5[] = {"plain.qcow2", "r.raw"}, *f5[] = {"qcow2", "raw"};
	CHECK(open_chain(&d, 2, n5, f5, true, &e) < 0 && strstr(e.msg, "only be the base"), "%s", e.msg);
	check_image("plain.qcow2", "refusals left images alone");
}

/* 4. Raw images, read-write, and a raw base under a qcow2 top. */
static void test_raw(void)
{
	REQUIRE(sh("head -c 2M /dev/urandom > rw.raw && cp rw.raw rw.orig") == 0);
	const char *n[] = {"rw.raw"}, *f[] = {"raw"};
	struct ovm_disk *d;
	struct ovm_err e = {0};
	REQUIRE(open_chain(&d, 1, n, f, false, &e) == 0, "%s", e.msg);
	CHECK(!ovm_disk_read_only(d) && ovm_disk_size(d) == 2u << 20);
	uint8_t b[8192];
	memset(b, 0xcd, sizeof b);
	CHECK(ovm_disk_write(d, 4096, b, sizeof b, &e) == 0);
	CHECK(ovm_disk_write(d, (2u << 20) - 4096, b, sizeof b, &e) == -EIO, "past the end");
	CHECK(ovm_disk_flush(d, &e) == 0);
	ovm_disk_close(d);
	size_t len;
	uint8_t *raw = slurp("rw.raw", &len), *orig = slurp("rw.orig", &len);
	CHECK(raw[4095] == orig[4095] && raw[4096] == 0xcd && raw[4096 + 8191] == 0xcd && raw[4096 + 8192] == orig[4096 + 8192]);
	free(raw);
	free(orig);

	/* qcow2 over raw: the raw base must stay untouched. */
	REQUIRE(sh("cp rw.raw rw.before && qemu-img create -f qcow2 -b rw.raw -F raw rwtop.qcow2 2M") == 0);
	const char *n2[] = {"rw.raw", "rwtop.qcow2"}, *f2[] = {"raw", "qcow2"};
	REQUIRE(open_chain(&d, 2, n2, f2, false, &e) == 0, "%s", e.msg);
	memset(b, 0x77, sizeof b);
	CHECK(ovm_disk_write(d, 65536 + 512, b, 1024, &e) == 0);
	CHECK(ovm_disk_flush(d, &e) == 0, "%s", e.msg);
	same_as_qemu(d, "rwtop.qcow2", "qcow2 over raw, flushed, still open");
	ovm_disk_close(d);
	check_image("rwtop.qcow2", "qcow2 over raw");
	CHECK(sh("cmp rw.raw rw.before") == 0, "the raw base was not written");
}

/* 4b. Locks: one writer or many readers per image. */
static void test_locks(void)
{
	REQUIRE(sh("rm -f lk.qcow2 && qemu-img create -f qcow2 lk.qcow2 1M") == 0);
	const char *n[] = {"lk.qcow2"}, *f[] = {"qcow2"};
	struct ovm_disk *w, *r1, *r2, *x;
	struct ovm_err e = {0};
	REQUIRE(open_chain(&w, 1, n, f, false, &e) == 0, "%s", e.msg);
	CHECK(open_chain(&x, 1, n, f, false, &e) == -EBUSY && strstr(e.msg, "in use"), "second writer: %s", e.msg);
	CHECK(open_chain(&x, 1, n, f, true, &e) == -EBUSY, "reader while written: %s", e.msg);
	ovm_disk_close(w);
	CHECK(open_chain(&r1, 1, n, f, true, &e) == 0 && open_chain(&r2, 1, n, f, true, &e) == 0, "two readers");
	CHECK(open_chain(&x, 1, n, f, false, &e) == -EBUSY, "writer while read");
	ovm_disk_close(r1);
	ovm_disk_close(r2);
	/* A shared base under two writable tops is fine. */
	REQUIRE(sh("qemu-img create -f qcow2 -b lk.qcow2 -F qcow2 lk1.qcow2 && qemu-img create -f qcow2 -b lk.qcow2 -F qcow2 lk2.qcow2") == 0);
	const char *c1[] = {"lk.qcow2", "lk1.qcow2"}, *c2[] = {"lk.qcow2", "lk2.qcow2"}, *f2[] = {"qcow2", "qcow2"};
	CHECK(open_chain(&r1, 2, c1, f2, false, &e) == 0 && open_chain(&r2, 2, c2, f2, false, &e) == 0, "%s", e.msg);
	CHECK(open_chain(&x, 1, n, f, false, &e) == -EBUSY, "the base is read by both");
	ovm_disk_close(r1);
	ovm_disk_close(r2);
}

/* 4c. Pushing a new top while the disk is open (the builder's layer per
 * step): writes before the push stay in the old top, later ones go to the
 * new one only; reads see both; each image passes qemu-img check and holds
 * only what was written while it was the top; refusals change nothing. */
static void test_push_top(void)
{
	REQUIRE(sh("rm -f pb.raw pt*.qcow2 && head -c 4M /dev/urandom > pb.raw && "
		   "qemu-img create -q -f qcow2 -o cluster_size=65536 -b pb.raw -F raw pt0.qcow2 4M && "
		   "qemu-img create -q -f qcow2 -b pt0.qcow2 -F qcow2 pt1.qcow2 4M && "
		   "qemu-img create -q -f qcow2 -b pt1.qcow2 -F qcow2 pt2.qcow2 4M && "
		   "qemu-img create -q -f qcow2 -b pt0.qcow2 -F qcow2 ptbig.qcow2 8M && "
		   "qemu-img create -q -f qcow2 ptnob.qcow2 4M") == 0);
	const char *n[] = {"pb.raw", "pt0.qcow2"}, *f[] = {"raw", "qcow2"};
	struct ovm_disk *d;
	struct ovm_err e = {0};
	REQUIRE(open_chain(&d, 2, n, f, false, &e) == 0, "%s", e.msg);
	uint8_t a[65536], b[65536], r[65536];
	memset(a, 0xa1, sizeof a);
	memset(b, 0xb2, sizeof b);
	CHECK(ovm_disk_write(d, 0, a, sizeof a, &e) == 0, "%s", e.msg);
	/* refusals first: nothing may change */
	CHECK(ovm_disk_push_top(d, p("nope.qcow2"), &e) == -ENOENT, "missing file: %s", e.msg);
	CHECK(ovm_disk_push_top(d, p("ptbig.qcow2"), &e) == -EINVAL && strstr(e.msg, "differs"), "size: %s", e.msg);
	CHECK(ovm_disk_push_top(d, p("ptnob.qcow2"), &e) == -EINVAL && strstr(e.msg, "no backing"), "backing: %s", e.msg);
	CHECK(ovm_disk_push_top(d, p("pb.raw"), &e) < 0, "a raw file cannot be a top");
	CHECK(ovm_disk_layers(d) == 2, "layers after refusals: %d", ovm_disk_layers(d));
	CHECK(ovm_disk_push_top(d, p("pt1.qcow2"), &e) == 0, "push: %s", e.msg);
	CHECK(ovm_disk_layers(d) == 3 && strcmp(ovm_disk_layer_path(d, 2), p("pt1.qcow2")) == 0);
	/* The frozen top may now be read by others, and no longer written by anyone. */
	const char *frozen[] = {"pb.raw", "pt0.qcow2"};
	struct ovm_disk *x;
	CHECK(open_chain(&x, 2, frozen, f, true, &e) == 0, "the frozen top opens shared: %s", e.msg);
	if (x)
		ovm_disk_close(x);
	CHECK(ovm_disk_write(d, 65536, b, sizeof b, &e) == 0, "%s", e.msg);
	CHECK(ovm_disk_write(d, 8192, b, 4096, &e) == 0, "overwrite inside the old top's cluster: %s", e.msg);
	CHECK(ovm_disk_push_top(d, p("pt2.qcow2"), &e) == 0, "second push: %s", e.msg);
	CHECK(ovm_disk_read(d, 0, r, sizeof r, &e) == 0 && r[0] == 0xa1 && r[8192] == 0xb2 && r[12288] == 0xa1,
	      "reads fall through both pushed layers");
	same_as_qemu(d, "pt2.qcow2", "after two pushes");
	ovm_disk_close(d);
	check_image("pt0.qcow2", "frozen first top");
	check_image("pt1.qcow2", "frozen second top");
	check_image("pt2.qcow2", "last top (written nothing)");
	/* What each image holds: pt0 only cluster 0; pt1 clusters 0 (copy-up of the 4K write) and 1; pt2 nothing. */
	CHECK(sh("qemu-img map -U --output=json pt0.qcow2 | grep -c '\"depth\": 0, .*\"data\": true' | grep -qx 1") == 0,
	      "pt0 holds one cluster");
	/* (qemu-img check leaves "allocated-clusters" out when it is 0) */
	CHECK(sh("qemu-img check -U --output=json pt2.qcow2 > c.json && ! grep -q allocated-clusters c.json") == 0,
	      "the last top holds nothing");
	CHECK(sh("test \"$(qemu-img check -U --output=json pt1.qcow2 | grep -o '\"allocated-clusters\": [0-9]*')\" = '\"allocated-clusters\": 2'") == 0,
	      "the middle top holds two clusters");
	/* read-only disks have no top to push */
	const char *ro[] = {"pb.raw"}, *rf[] = {"raw"};
	REQUIRE(open_chain(&d, 1, ro, rf, true, &e) == 0, "%s", e.msg);
	CHECK(ovm_disk_push_top(d, p("pt2.qcow2"), &e) == -EROFS, "read-only: %s", e.msg);
	ovm_disk_close(d);
}

/* 5. A crash (process death without close) after a flush leaves a
 * consistent image that holds everything flushed. */
static void test_crash(void)
{
	REQUIRE(sh("rm -f cr.qcow2 && qemu-img create -f qcow2 -o cluster_size=4096 cr.qcow2 8M") == 0);
	pid_t pid = fork();
	if (pid == 0) {
		const char *n[] = {"cr.qcow2"}, *f[] = {"qcow2"};
		struct ovm_disk *d;
		struct ovm_err e = {0};
		if (open_chain(&d, 1, n, f, false, &e))
			_exit(3);
		uint8_t b[65536];
		memset(b, 0xee, sizeof b);
		for (int i = 0; i < 40; i++)
			if (ovm_disk_write(d, (uint64_t)i * 131072, b, sizeof b, &e))
				_exit(4);
		if (ovm_disk_flush(d, &e))
			_exit(5);
		memset(b, 0x99, sizeof b);
		for (int i = 0; i < 40; i++)
			if (ovm_disk_write(d, (uint64_t)i * 131072 + 65536, b, sizeof b, &e))
				_exit(6);
		_exit(0); /* no flush, no close */
	}
	int st;
	waitpid(pid, &st, 0);
	CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child status %d", st);
	int rc = sh("qemu-img check cr.qcow2");
	CHECK(rc == 0 || rc == 3, "after a crash: check exit %d (0 clean, 3 leaks only)", rc);
	const char *n[] = {"cr.qcow2"}, *f[] = {"qcow2"};
	struct ovm_disk *d;
	struct ovm_err e = {0};
	REQUIRE(open_chain(&d, 1, n, f, true, &e) == 0, "%s", e.msg);
	uint8_t b[65536];
	bool ok = true;
	for (int i = 0; i < 40; i++) {
		ok &= ovm_disk_read(d, (uint64_t)i * 131072, b, sizeof b, &e) == 0;
		for (size_t k = 0; k < sizeof b; k++)
			ok &= b[k] == 0xee;
	}
	CHECK(ok, "flushed data survived the crash");
	ovm_disk_close(d);
}

int main(void)
{
	if (system("qemu-img --version >/dev/null 2>&1") != 0) {
		printf("SKIP test_qcow2: qemu-img not installed\n");
		return 77;
	}
	have_qemu_io = system("qemu-io --version >/dev/null 2>&1") == 0;
	snprintf(dir, sizeof dir, "%s/ovm-qcow2-XXXXXX", getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	REQUIRE(mkdtemp(dir), "mkdtemp");

	test_chain_read();
	test_refusals();
	test_raw();
	test_locks();
	test_push_top();
	test_crash();
	fuzz("-o compat=1.1,cluster_size=65536", 8u << 20, 400, 200000, 100, "v3 64K");
	fuzz("-o compat=0.10,cluster_size=4096", 4u << 20, 400, 40000, 150, "v2 4K");
	fuzz("-o compat=1.1,cluster_size=512,refcount_bits=64", 6u << 20, 600, 20000, 200, "v3 512B refcount64 (table grows)");
	fuzz("-o compat=1.1,cluster_size=1024,refcount_bits=1", 2u << 20, 300, 9000, 0, "v3 1K refcount1");
	fuzz("-o compat=1.1,cluster_size=2048,refcount_bits=8", 3u << 20, 300, 30000, 77, "v3 2K refcount8");
	fuzz("-o compat=1.1,cluster_size=2M", 16u << 20, 60, 3u << 20, 20, "v3 2M clusters");

	int failed = check_done("test_qcow2");
	if (!failed)
		sh("rm -rf '%s'", dir);
	else
		fprintf(stderr, "images kept in %s\n", dir);
	return failed;
}
