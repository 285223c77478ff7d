/* qcow2.c — one qcow2 image (versions 2 and 3): reads, copy-on-write
 * writes, refcounts, and a crash-safe flush.
 *
 * Format facts used here (QEMU's docs/interop/qcow2.txt):
 *   header (big-endian): magic "QFI\xfb", version, backing file offset/size,
 *   cluster_bits, size, crypt_method, l1_size, l1_table_offset,
 *   refcount_table_offset, refcount_table_clusters, nb_snapshots,
 *   snapshots_offset; v3 adds incompatible/compatible/autoclear features,
 *   refcount_order and header_length.
 *   L1 entry: bits 9-55 = L2 table offset, bit 63 = COPIED (refcount 1).
 *   L2 entry: bits 9-55 = data cluster offset, bit 62 = compressed,
 *   bit 63 = COPIED, bit 0 = reads as zeros (v3).
 *   refcount table: 64-bit offsets of refcount blocks; a block holds
 *   cluster_size * 8 / refcount_bits refcounts.
 *
 * Metadata lives in memory (host byte order for L1/L2 and the refcount
 * table, on-disk bytes for refcount blocks) and is written back on flush,
 * in the order that keeps the image consistent after a crash at any
 * point: new clusters get their refcount before anything points at them
 * (a crash leaks at worst, never leaves a pointer to a free cluster).
 * New clusters are allocated at the end of the file.
 *
 * Precondition for every function: one caller at a time (disk.c locks). */
#include <endian.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovm.h"

#define QCOW_MAGIC 0x514649fbu
#define OFF_MASK 0x00fffffffffffe00ull /* bits 9-55 */
#define F_COPIED (1ull << 63)
#define F_COMPRESSED (1ull << 62)
#define F_ZERO 1ull

/* incompatible feature bits */
#define INC_DIRTY (1ull << 0)
#define INC_CORRUPT (1ull << 1)
#define INC_DATA_FILE (1ull << 2)
#define INC_COMPRESSION (1ull << 3)
#define INC_EXTL2 (1ull << 4)

/* header field offsets */
#define H_RT_OFFSET 48
#define H_RT_CLUSTERS 56
#define H_AUTOCLEAR 88

#define MAX_L1_BYTES (32u << 20)  /* as QEMU */
#define MAX_RT_BYTES (8u << 20)

struct ovm_qcow2 {
	int fd;
	char *path;
	bool writable;
	uint32_t version, cluster_bits, l2_bits;
	uint64_t cs; /* cluster size */
	uint64_t size;
	char *backing;

	uint64_t *l1;
	uint32_t l1_size;
	uint64_t l1_off;
	bool l1_dirty;
	uint64_t **l2; /* per L1 index; NULL = not loaded */
	bool *l2_dirty;

	uint32_t rc_bits;
	uint64_t rb_entries; /* refcounts per block */
	uint64_t *rt;        /* refcount table, rt_cap entries in memory */
	uint64_t rt_cap;
	uint64_t rt_off, rt_clusters; /* where the table is on disk */
	bool rt_dirty;
	uint8_t **rb; /* per table index; NULL = not loaded */
	bool *rb_dirty;

	uint64_t next_free; /* allocation point: end of file, cluster-aligned */
};

/* ------------------------------------------------------------ file I/O */

static int pread_full(struct ovm_qcow2 *q, void *buf, size_t len, uint64_t off, bool zero_past_eof,
		      const char *what, struct ovm_err *err)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = pread(q->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ovm_errf(err, EIO, "%s: reading %s at 0x%llx: %s", q->path, what,
					(unsigned long long)off, strerror(errno));
		if (n == 0) {
			if (!zero_past_eof)
				return ovm_errf(err, EIO, "%s: %s at 0x%llx is past the end of the file (truncated image?)",
						q->path, what, (unsigned long long)off);
			memset(p, 0, len);
			return 0;
		}
		p += n, off += (uint64_t)n, len -= (size_t)n;
	}
	return 0;
}

static int pwrite_full(struct ovm_qcow2 *q, const void *buf, size_t len, uint64_t off, const char *what,
		       struct ovm_err *err)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = pwrite(q->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return ovm_errf(err, errno == ENOSPC ? ENOSPC : EIO, "%s: writing %s at 0x%llx: %s", q->path,
					what, (unsigned long long)off, n < 0 ? strerror(errno) : "no progress");
		p += n, off += (uint64_t)n, len -= (size_t)n;
	}
	return 0;
}

static int sync_file(struct ovm_qcow2 *q, struct ovm_err *err)
{
	while (fdatasync(q->fd) != 0) {
		if (errno != EINTR)
			return ovm_errf(err, EIO, "%s: fdatasync: %s", q->path, strerror(errno));
	}
	return 0;
}

static uint64_t rd64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return be64toh(v); }
static uint32_t rd32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return be32toh(v); }

/* Write a table of host-order 64-bit entries as big-endian, padded with
 * zeros to `bytes`. */
static int write_table(struct ovm_qcow2 *q, const uint64_t *t, uint64_t n, uint64_t bytes, uint64_t off,
		       const char *what, struct ovm_err *err)
{
	uint64_t *tmp = calloc(1, bytes);
	if (!tmp)
		return ovm_errf(err, ENOMEM, "%s: no memory for %s", q->path, what);
	for (uint64_t i = 0; i < n && i < bytes / 8; i++)
		tmp[i] = htobe64(t[i]);
	int rc = pwrite_full(q, tmp, bytes, off, what, err);
	free(tmp);
	return rc;
}

/* ----------------------------------------------------------- refcounts */

static uint64_t rb_get(const struct ovm_qcow2 *q, const uint8_t *blk, uint64_t i)
{
	uint32_t bits = q->rc_bits;
	if (bits >= 8) {
		uint64_t v = 0;
		const uint8_t *p = blk + i * (bits / 8);
		for (uint32_t k = 0; k < bits / 8; k++)
			v = v << 8 | p[k];
		return v;
	}
	uint64_t bit = i * bits;
	return (blk[bit / 8] >> (bit % 8)) & ((1u << bits) - 1);
}

static void rb_set(const struct ovm_qcow2 *q, uint8_t *blk, uint64_t i, uint64_t v)
{
	uint32_t bits = q->rc_bits;
	if (bits >= 8) {
		uint8_t *p = blk + i * (bits / 8);
		for (int k = (int)(bits / 8) - 1; k >= 0; k--, v >>= 8)
			p[k] = (uint8_t)v;
		return;
	}
	uint64_t bit = i * bits;
	uint8_t mask = (uint8_t)(((1u << bits) - 1) << (bit % 8));
	blk[bit / 8] = (uint8_t)((blk[bit / 8] & ~mask) | ((v << (bit % 8)) & mask));
}

static int rt_grow(struct ovm_qcow2 *q, uint64_t need, struct ovm_err *err)
{
	uint64_t cap = q->rt_cap ? q->rt_cap : 1;
	while (cap < need)
		cap *= 2;
	if (cap * 8 > MAX_RT_BYTES)
		return ovm_errf(err, EFBIG, "%s: refcount table would exceed %u MiB", q->path, MAX_RT_BYTES >> 20);
	uint64_t *rt = realloc(q->rt, cap * 8);
	if (!rt)
		return ovm_errf(err, ENOMEM, "%s: no memory for the refcount table", q->path);
	q->rt = rt;
	uint8_t **rb = realloc(q->rb, cap * sizeof *rb);
	if (!rb)
		return ovm_errf(err, ENOMEM, "%s: no memory for the refcount table", q->path);
	q->rb = rb;
	bool *rbd = realloc(q->rb_dirty, cap * sizeof *rbd);
	if (!rbd)
		return ovm_errf(err, ENOMEM, "%s: no memory for the refcount table", q->path);
	q->rb_dirty = rbd;
	for (uint64_t i = q->rt_cap; i < cap; i++) {
		q->rt[i] = 0;
		q->rb[i] = NULL;
		q->rb_dirty[i] = false;
	}
	q->rt_cap = cap;
	q->rt_dirty = true;
	return 0;
}

static int refcount_add(struct ovm_qcow2 *q, uint64_t host_off, int delta, uint64_t *out, struct ovm_err *err);

/* The refcount block for table index bi, loaded or (when `create`) made. */
static int rb_load(struct ovm_qcow2 *q, uint64_t bi, bool create, uint8_t **out, struct ovm_err *err)
{
	*out = NULL;
	if (bi >= q->rt_cap) {
		if (!create)
			return 0;
		int rc = rt_grow(q, bi + 1, err);
		if (rc)
			return rc;
	}
	if (q->rb[bi]) {
		*out = q->rb[bi];
		return 0;
	}
	uint64_t boff = q->rt[bi] & OFF_MASK;
	if (q->rt[bi] & (q->cs - 1) || (q->rt[bi] && !boff))
		return ovm_errf(err, EIO, "%s: refcount table entry %llu (0x%llx) is not cluster-aligned (corrupt image)",
				q->path, (unsigned long long)bi, (unsigned long long)q->rt[bi]);
	if (!boff && !create)
		return 0;
	uint8_t *blk = calloc(1, q->cs);
	if (!blk)
		return ovm_errf(err, ENOMEM, "%s: no memory for a refcount block", q->path);
	if (boff) {
		int rc = pread_full(q, blk, q->cs, boff, false, "refcount block", err);
		if (rc) {
			free(blk);
			return rc;
		}
		q->rb[bi] = blk;
		*out = blk;
		return 0;
	}
	/* A new block at the end of the file; it needs a refcount itself,
	 * which may land in this very block (usual) or a later new one. */
	boff = q->next_free;
	q->next_free += q->cs;
	q->rb[bi] = blk;
	q->rt[bi] = boff;
	q->rb_dirty[bi] = true;
	q->rt_dirty = true;
	int rc = refcount_add(q, boff, 1, NULL, err);
	if (rc)
		return rc;
	*out = q->rb[bi];
	return 0;
}

/* Add delta (+1/-1) to the refcount of the cluster at host_off. */
static int refcount_add(struct ovm_qcow2 *q, uint64_t host_off, int delta, uint64_t *out, struct ovm_err *err)
{
	uint64_t ci = host_off >> q->cluster_bits;
	uint64_t bi = ci / q->rb_entries, ei = ci % q->rb_entries;
	uint8_t *blk;
	int rc = rb_load(q, bi, true, &blk, err);
	if (rc)
		return rc;
	uint64_t v = rb_get(q, blk, ei);
	uint64_t max = q->rc_bits == 64 ? UINT64_MAX : (1ull << q->rc_bits) - 1;
	if ((delta < 0 && v == 0) || (delta > 0 && v == max))
		return ovm_errf(err, EIO, "%s: refcount of cluster 0x%llx would %s (corrupt image)", q->path,
				(unsigned long long)host_off, delta < 0 ? "go below 0" : "overflow");
	v = delta < 0 ? v - 1 : v + 1;
	rb_set(q, blk, ei, v);
	q->rb_dirty[bi] = true;
	if (out)
		*out = v;
	return 0;
}

static int refcount_get(struct ovm_qcow2 *q, uint64_t host_off, uint64_t *out, struct ovm_err *err)
{
	uint64_t ci = host_off >> q->cluster_bits;
	uint64_t bi = ci / q->rb_entries;
	uint8_t *blk;
	int rc = rb_load(q, bi, false, &blk, err);
	if (rc)
		return rc;
	*out = blk ? rb_get(q, blk, ci % q->rb_entries) : 0;
	return 0;
}

/* A fresh cluster at the end of the file, with refcount 1. */
static int alloc_cluster(struct ovm_qcow2 *q, uint64_t *out, struct ovm_err *err)
{
	uint64_t off = q->next_free, v;
	int rc = refcount_get(q, off, &v, err);
	if (rc)
		return rc;
	if (v)
		return ovm_errf(err, EIO, "%s: cluster 0x%llx past the end of the file has refcount %llu (corrupt image)",
				q->path, (unsigned long long)off, (unsigned long long)v);
	q->next_free += q->cs;
	rc = refcount_add(q, off, 1, NULL, err);
	if (rc)
		return rc;
	*out = off;
	return 0;
}

/* ------------------------------------------------------------- L1 / L2 */

static int l2_load(struct ovm_qcow2 *q, uint32_t l1i, uint64_t **out, struct ovm_err *err)
{
	*out = NULL;
	if (q->l2[l1i]) {
		*out = q->l2[l1i];
		return 0;
	}
	uint64_t e = q->l1[l1i], off = e & OFF_MASK;
	if (!off)
		return 0;
	if (off & (q->cs - 1))
		return ovm_errf(err, EIO, "%s: L1 entry %u points at unaligned 0x%llx (corrupt image)", q->path, l1i,
				(unsigned long long)off);
	uint64_t *t = malloc(q->cs);
	if (!t)
		return ovm_errf(err, ENOMEM, "%s: no memory for an L2 table", q->path);
	int rc = pread_full(q, t, q->cs, off, false, "L2 table", err);
	if (rc) {
		free(t);
		return rc;
	}
	for (uint64_t i = 0; i < q->cs / 8; i++)
		t[i] = be64toh(t[i]);
	q->l2[l1i] = t;
	*out = t;
	return 0;
}

enum kind { K_UNALLOC, K_ZERO, K_DATA };

/* Classify L2 entry e: K_DATA sets *host. Compressed or misaligned is -EIO. */
static int classify(struct ovm_qcow2 *q, uint64_t e, uint64_t guest, uint64_t *host, struct ovm_err *err)
{
	if (e & F_COMPRESSED)
		return ovm_errf(err, ENOTSUP, "%s: compressed cluster at guest offset 0x%llx: compressed images are not supported (convert with qemu-img convert -O qcow2 without -c)",
				q->path, (unsigned long long)guest);
	uint64_t off = e & OFF_MASK;
	if (off & (q->cs - 1))
		return ovm_errf(err, EIO, "%s: L2 entry for guest offset 0x%llx points at unaligned 0x%llx (corrupt image)",
				q->path, (unsigned long long)guest, (unsigned long long)off);
	if (q->version >= 3 && (e & F_ZERO))
		return K_ZERO;
	if (!off)
		return K_UNALLOC;
	*host = off;
	return K_DATA;
}

/* Look up the L2 entry for guest offset `off`; *slot is NULL when no L2
 * table covers it (and `alloc` is false). */
static int l2_slot(struct ovm_qcow2 *q, uint64_t off, bool alloc, uint64_t **slot, uint32_t *l1i_out,
		   struct ovm_err *err)
{
	*slot = NULL;
	uint64_t l1i = off >> (q->cluster_bits + q->l2_bits);
	uint64_t l2i = (off >> q->cluster_bits) & ((1ull << q->l2_bits) - 1);
	if (l1i >= q->l1_size) {
		if (alloc)
			return ovm_errf(err, EIO, "%s: guest offset 0x%llx is beyond the L1 table (%u entries)", q->path,
					(unsigned long long)off, q->l1_size);
		return 0;
	}
	uint64_t *t;
	int rc = l2_load(q, (uint32_t)l1i, &t, err);
	if (rc)
		return rc;
	if (t && alloc && !(q->l1[l1i] & F_COPIED))
		return ovm_errf(err, EIO, "%s: L2 table for guest offset 0x%llx is shared (no COPIED flag); writing to images with internal snapshots is not supported",
				q->path, (unsigned long long)off);
	if (!t && alloc) {
		uint64_t l2off;
		rc = alloc_cluster(q, &l2off, err);
		if (rc)
			return rc;
		t = calloc(1, q->cs);
		if (!t)
			return ovm_errf(err, ENOMEM, "%s: no memory for an L2 table", q->path);
		q->l2[l1i] = t;
		q->l2_dirty[l1i] = true;
		q->l1[l1i] = l2off | F_COPIED;
		q->l1_dirty = true;
	}
	if (t) {
		*slot = &t[l2i];
		if (l1i_out)
			*l1i_out = (uint32_t)l1i;
	}
	return 0;
}

/* ----------------------------------------------------------------- open */

static int fail_open(struct ovm_qcow2 *q, int rc)
{
	q->writable = false; /* nothing to flush: the image was not touched */
	ovm_qcow2_close(q, NULL);
	return rc;
}

int ovm_qcow2_open(struct ovm_qcow2 **out, int fd, const char *path, bool writable, struct ovm_err *err)
{
	*out = NULL;
	struct ovm_qcow2 *q = calloc(1, sizeof *q);
	if (!q) {
		close(fd);
		return ovm_errf(err, ENOMEM, "%s: no memory", path);
	}
	q->fd = fd;
	q->writable = writable;
	q->path = strdup(path);
	if (!q->path)
		return fail_open(q, ovm_errf(err, ENOMEM, "%s: no memory", path));

	uint8_t h[112] = {0};
	struct stat st;
	if (fstat(fd, &st) != 0)
		return fail_open(q, ovm_errf(err, EIO, "%s: fstat: %s", path, strerror(errno)));
	if (st.st_size < 72)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: too short for a qcow2 header (%lld bytes)", path,
					     (long long)st.st_size));
	int rc = pread_full(q, h, sizeof h, 0, true, "header", err);
	if (rc)
		return fail_open(q, rc);
	if (rd32(h) != QCOW_MAGIC)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: not a qcow2 image (bad magic)", path));
	q->version = rd32(h + 4);
	if (q->version != 2 && q->version != 3)
		return fail_open(q, ovm_errf(err, ENOTSUP, "%s: qcow2 version %u is not supported (only 2 and 3)", path,
					     q->version));
	uint64_t bf_off = rd64(h + 8);
	uint32_t bf_len = rd32(h + 16);
	q->cluster_bits = rd32(h + 20);
	q->size = rd64(h + 24);
	uint32_t crypt = rd32(h + 32);
	q->l1_size = rd32(h + 36);
	q->l1_off = rd64(h + 40);
	q->rt_off = rd64(h + 48);
	q->rt_clusters = rd32(h + 56);
	uint32_t nb_snap = rd32(h + 60);
	uint64_t incompat = 0, autoclear = 0;
	uint32_t rc_order = 4, hdr_len = 72;
	if (q->version == 3) {
		incompat = rd64(h + 72);
		autoclear = rd64(h + 88);
		rc_order = rd32(h + 96);
		hdr_len = rd32(h + 100);
		if (hdr_len < 104)
			return fail_open(q, ovm_errf(err, EINVAL, "%s: header_length %u is below 104 (corrupt image)", path, hdr_len));
	}
	if (q->cluster_bits < 9 || q->cluster_bits > 21)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: cluster_bits %u out of range 9..21", path, q->cluster_bits));
	q->cs = 1ull << q->cluster_bits;
	q->l2_bits = q->cluster_bits - 3;
	if (crypt)
		return fail_open(q, ovm_errf(err, ENOTSUP, "%s: encrypted qcow2 (crypt_method %u) is not supported", path, crypt));
	if (incompat & INC_CORRUPT)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: the image is marked corrupt; repair it with qemu-img check -r all", path));
	if (incompat & INC_DATA_FILE)
		return fail_open(q, ovm_errf(err, ENOTSUP, "%s: external data files are not supported", path));
	if (incompat & INC_COMPRESSION)
		return fail_open(q, ovm_errf(err, ENOTSUP, "%s: a non-zlib compression type is not supported", path));
	if (incompat & INC_EXTL2)
		return fail_open(q, ovm_errf(err, ENOTSUP, "%s: extended L2 entries (subclusters) are not supported", path));
	if (incompat & ~(INC_DIRTY | INC_CORRUPT | INC_DATA_FILE | INC_COMPRESSION | INC_EXTL2))
		return fail_open(q, ovm_errf(err, ENOTSUP, "%s: unknown incompatible feature bits 0x%llx", path,
					     (unsigned long long)(incompat & ~0x1full)));
	if ((incompat & INC_DIRTY) && writable)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: the image is dirty (lazy refcounts, not closed cleanly); run qemu-img check -r all first", path));
	if (rc_order > 6)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: refcount_order %u out of range 0..6", path, rc_order));
	if (nb_snap && writable)
		return fail_open(q, ovm_errf(err, ENOTSUP, "%s: has %u internal snapshot(s); writing to such images is not supported", path, nb_snap));
	q->rc_bits = 1u << rc_order;
	q->rb_entries = q->cs * 8 / q->rc_bits;

	if (bf_off) {
		if (bf_len == 0 || bf_len > 1023 || bf_off > (uint64_t)st.st_size || bf_len > (uint64_t)st.st_size - bf_off)
			return fail_open(q, ovm_errf(err, EINVAL, "%s: backing file name (offset %llu, %u bytes) is out of range",
						     path, (unsigned long long)bf_off, bf_len));
		q->backing = calloc(1, bf_len + 1);
		if (!q->backing)
			return fail_open(q, ovm_errf(err, ENOMEM, "%s: no memory", path));
		rc = pread_full(q, q->backing, bf_len, bf_off, false, "backing file name", err);
		if (rc)
			return fail_open(q, rc);
	}

	/* L1 table. Each entry maps 2^(cluster_bits + l2_bits) bytes. */
	uint64_t per_l1 = 1ull << (q->cluster_bits + q->l2_bits);
	uint64_t need_l1 = q->size / per_l1 + (q->size % per_l1 != 0);
	if ((uint64_t)q->l1_size * 8 > MAX_L1_BYTES)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: L1 table of %u entries is too large", path, q->l1_size));
	if (q->l1_size < need_l1 && writable)
		return fail_open(q, ovm_errf(err, EINVAL, "%s: L1 table (%u entries) does not cover the virtual size (needs %llu)",
					     path, q->l1_size, (unsigned long long)need_l1));
	if (q->l1_size && (q->l1_off & (q->cs - 1)))
		return fail_open(q, ovm_errf(err, EINVAL, "%s: L1 table offset 0x%llx is not cluster-aligned", path,
					     (unsigned long long)q->l1_off));
	q->l1 = calloc(q->l1_size ? q->l1_size : 1, 8);
	q->l2 = calloc(q->l1_size ? q->l1_size : 1, sizeof *q->l2);
	q->l2_dirty = calloc(q->l1_size ? q->l1_size : 1, sizeof *q->l2_dirty);
	if (!q->l1 || !q->l2 || !q->l2_dirty)
		return fail_open(q, ovm_errf(err, ENOMEM, "%s: no memory for the L1 table", path));
	if (q->l1_size) {
		rc = pread_full(q, q->l1, (size_t)q->l1_size * 8, q->l1_off, false, "L1 table", err);
		if (rc)
			return fail_open(q, rc);
		for (uint32_t i = 0; i < q->l1_size; i++)
			q->l1[i] = be64toh(q->l1[i]);
	}

	/* Refcount table. */
	if (q->rt_clusters == 0 || q->rt_clusters * q->cs > MAX_RT_BYTES || (q->rt_off & (q->cs - 1)))
		return fail_open(q, ovm_errf(err, EINVAL, "%s: refcount table (offset 0x%llx, %llu clusters) is invalid", path,
					     (unsigned long long)q->rt_off, (unsigned long long)q->rt_clusters));
	uint64_t n = q->rt_clusters * q->cs / 8;
	rc = rt_grow(q, n, err);
	if (rc)
		return fail_open(q, rc);
	rc = pread_full(q, q->rt, n * 8, q->rt_off, false, "refcount table", err);
	if (rc)
		return fail_open(q, rc);
	for (uint64_t i = 0; i < n; i++)
		q->rt[i] = be64toh(q->rt[i]);
	q->rt_dirty = false;

	/* Refuse compressed clusters up front (and validate every L2 entry),
	 * rather than failing a guest read later. Loads every L2 table. */
	for (uint32_t i = 0; i < q->l1_size; i++) {
		uint64_t *t;
		if ((rc = l2_load(q, i, &t, err)))
			return fail_open(q, rc);
		for (uint64_t k = 0; t && k < q->cs / 8; k++) {
			uint64_t host;
			rc = classify(q, t[k], (i * per_l1) + (k << q->cluster_bits), &host, err);
			if (rc < 0)
				return fail_open(q, rc);
		}
	}

	q->next_free = ((uint64_t)st.st_size + q->cs - 1) & ~(q->cs - 1);

	/* Unknown auto-clear features must be cleared before a write (spec). */
	if (writable && autoclear) {
		uint64_t z = 0;
		if ((rc = pwrite_full(q, &z, 8, H_AUTOCLEAR, "header autoclear bits", err)) ||
		    (rc = sync_file(q, err)))
			return fail_open(q, rc);
	}
	*out = q;
	return 0;
}

uint64_t ovm_qcow2_size(const struct ovm_qcow2 *q) { return q->size; }
const char *ovm_qcow2_backing(const struct ovm_qcow2 *q) { return q->backing; }

/* ---------------------------------------------------------------- read */

static int read_below(ovm_backing_read_fn backing, void *ctx, uint64_t off, void *buf, size_t len,
		      struct ovm_err *err)
{
	if (!backing) {
		memset(buf, 0, len);
		return 0;
	}
	return backing(ctx, off, buf, len, err);
}

int ovm_qcow2_read(struct ovm_qcow2 *q, uint64_t off, void *buf, size_t len, ovm_backing_read_fn backing,
		   void *ctx, struct ovm_err *err)
{
	uint8_t *p = buf;
	if (off > q->size || len > q->size - off)
		return ovm_errf(err, EIO, "%s: read of %zu bytes at 0x%llx is past the virtual size", q->path, len,
				(unsigned long long)off);
	while (len) {
		/* A run of clusters of one kind (contiguous on the host for data). */
		uint64_t in = off & (q->cs - 1);
		size_t n = 0;
		int kind = -1;
		uint64_t host0 = 0;
		while (n < len) {
			uint64_t *slot, host = 0;
			uint64_t g = off + n;
			int rc = l2_slot(q, g, false, &slot, NULL, err);
			if (rc)
				return rc;
			int k = slot ? classify(q, *slot, g, &host, err) : K_UNALLOC;
			if (k < 0)
				return k;
			if (kind == -1) {
				kind = k;
				host0 = host;
			} else if (k != kind || (k == K_DATA && host != host0 + in + n)) {
				break;
			}
			size_t step = (size_t)(q->cs - (g & (q->cs - 1)));
			n += step < len - n ? step : len - n;
		}
		int rc = 0;
		if (kind == K_DATA)
			rc = pread_full(q, p, n, host0 + in, true, "data", err);
		else if (kind == K_ZERO)
			memset(p, 0, n);
		else
			rc = read_below(backing, ctx, off, p, n, err);
		if (rc)
			return rc;
		p += n, off += n, len -= n;
	}
	return 0;
}

/* --------------------------------------------------------------- write */

int ovm_qcow2_write(struct ovm_qcow2 *q, uint64_t off, const void *buf, size_t len,
		    ovm_backing_read_fn backing, void *ctx, struct ovm_err *err)
{
	const uint8_t *p = buf;
	if (!q->writable)
		return ovm_errf(err, EROFS, "%s: opened read-only", q->path);
	if (off > q->size || len > q->size - off)
		return ovm_errf(err, EIO, "%s: write of %zu bytes at 0x%llx is past the virtual size", q->path, len,
				(unsigned long long)off);
	uint8_t *cbuf = NULL;
	int rc = 0;
	while (len) {
		uint64_t in = off & (q->cs - 1);
		size_t n = (size_t)(q->cs - in) < len ? (size_t)(q->cs - in) : len;
		uint64_t *slot, host = 0;
		if ((rc = l2_slot(q, off, true, &slot, NULL, err)))
			break;
		uint64_t e = *slot;
		int k = classify(q, e, off, &host, err);
		if (k < 0) {
			rc = k;
			break;
		}
		if (k == K_DATA && (e & F_COPIED)) {
			/* Owned by this image alone: write in place. */
			if ((rc = pwrite_full(q, p, n, host + in, "data", err)))
				break;
		} else {
			/* Build the whole cluster: what the guest sees now + the new bytes. */
			uint64_t cstart = off - in;
			size_t clen = (size_t)(q->size - cstart < q->cs ? q->size - cstart : q->cs);
			if (!cbuf && !(cbuf = malloc(q->cs))) {
				rc = ovm_errf(err, ENOMEM, "%s: no memory for a cluster", q->path);
				break;
			}
			memset(cbuf, 0, q->cs);
			if (n < clen) {
				if (k == K_DATA)
					rc = pread_full(q, cbuf, clen, host, true, "data", err);
				else if (k == K_UNALLOC)
					rc = read_below(backing, ctx, cstart, cbuf, clen, err);
				if (rc)
					break;
			}
			memcpy(cbuf + in, p, n);
			/* A preallocated zero cluster we own is reused in place. */
			uint64_t old = e & OFF_MASK;
			bool reuse = k == K_ZERO && old && (e & F_COPIED);
			uint64_t dst = old;
			if (!reuse && (rc = alloc_cluster(q, &dst, err)))
				break;
			if ((rc = pwrite_full(q, cbuf, q->cs, dst, "data", err)))
				break;
			*slot = dst | F_COPIED;
			if (!reuse && old && (rc = refcount_add(q, old, -1, NULL, err)))
				break; /* the old cluster was shared or a zero placeholder */
			uint32_t l1i = (uint32_t)(off >> (q->cluster_bits + q->l2_bits));
			q->l2_dirty[l1i] = true;
		}
		p += n, off += n, len -= n;
	}
	free(cbuf);
	return rc;
}

/* --------------------------------------------------------------- flush */

static int write_dirty_blocks(struct ovm_qcow2 *q, bool *wrote, struct ovm_err *err)
{
	for (uint64_t i = 0; i < q->rt_cap; i++) {
		if (!q->rb_dirty[i])
			continue;
		int rc = pwrite_full(q, q->rb[i], q->cs, q->rt[i] & OFF_MASK, "refcount block", err);
		if (rc)
			return rc;
		q->rb_dirty[i] = false;
		*wrote = true;
	}
	return 0;
}

/* The table outgrew its clusters: write it to new ones, point the header
 * at them, then free the old ones. Crash-safe: the header switches only
 * after the new table and the blocks it names are durable. */
static int relocate_rt(struct ovm_qcow2 *q, struct ovm_err *err)
{
	uint64_t old_off = q->rt_off, old_n = q->rt_clusters;
	uint64_t k, start;
	int rc;
	for (;;) {
		k = (q->rt_cap * 8 + q->cs - 1) / q->cs;
		start = q->next_free;
		q->next_free += k * q->cs;
		for (uint64_t i = 0; i < k; i++)
			if ((rc = refcount_add(q, start + i * q->cs, 1, NULL, err)))
				return rc;
		if (q->rt_cap * 8 <= k * q->cs)
			break;
		/* Counting these clusters grew the table again: try once more. */
		for (uint64_t i = 0; i < k; i++)
			if ((rc = refcount_add(q, start + i * q->cs, -1, NULL, err)))
				return rc;
	}
	bool wrote = false;
	if ((rc = write_dirty_blocks(q, &wrote, err)) || (rc = sync_file(q, err)))
		return rc;
	if ((rc = write_table(q, q->rt, q->rt_cap, k * q->cs, start, "refcount table", err)) || (rc = sync_file(q, err)))
		return rc;
	uint8_t h[12];
	uint64_t be_off = htobe64(start);
	uint32_t be_n = htobe32((uint32_t)k);
	memcpy(h, &be_off, 8);
	memcpy(h + 8, &be_n, 4);
	if ((rc = pwrite_full(q, h, 12, H_RT_OFFSET, "header refcount table fields", err)) || (rc = sync_file(q, err)))
		return rc;
	q->rt_off = start;
	q->rt_clusters = k;
	q->rt_dirty = false;
	for (uint64_t i = 0; i < old_n; i++)
		if ((rc = refcount_add(q, old_off + i * q->cs, -1, NULL, err)))
			return rc;
	return 0;
}

int ovm_qcow2_flush(struct ovm_qcow2 *q, struct ovm_err *err)
{
	int rc;
	if (!q->writable)
		return 0;
	/* 1. refcounts (with the data written so far, in the same sync). */
	if (q->rt_dirty && q->rt_cap * 8 > q->rt_clusters * q->cs) {
		if ((rc = relocate_rt(q, err)))
			return rc;
	}
	bool wrote = false;
	if ((rc = write_dirty_blocks(q, &wrote, err)))
		return rc;
	if (wrote && (rc = sync_file(q, err)))
		return rc;
	if (q->rt_dirty) {
		if ((rc = write_table(q, q->rt, q->rt_cap, q->rt_clusters * q->cs, q->rt_off, "refcount table", err)) ||
		    (rc = sync_file(q, err)))
			return rc;
		q->rt_dirty = false;
	}
	/* 2. L2 tables, then 3. L1: a table is written before anything points to it. */
	wrote = false;
	for (uint32_t i = 0; i < q->l1_size; i++) {
		if (!q->l2_dirty[i])
			continue;
		if ((rc = write_table(q, q->l2[i], q->cs / 8, q->cs, q->l1[i] & OFF_MASK, "L2 table", err)))
			return rc;
		q->l2_dirty[i] = false;
		wrote = true;
	}
	if (wrote && (rc = sync_file(q, err)))
		return rc;
	if (q->l1_dirty) {
		if ((rc = write_table(q, q->l1, q->l1_size, (uint64_t)q->l1_size * 8, q->l1_off, "L1 table", err)))
			return rc;
		q->l1_dirty = false;
	}
	return sync_file(q, err);
}

int ovm_qcow2_freeze(struct ovm_qcow2 *q, struct ovm_err *err)
{
	int rc = ovm_qcow2_flush(q, err);
	if (rc)
		return rc;
	if (q->writable)
		(void)flock(q->fd, LOCK_SH | LOCK_NB); /* others may read it now; failure only keeps it exclusive */
	q->writable = false;
	return 0;
}

int ovm_qcow2_close(struct ovm_qcow2 *q, struct ovm_err *err)
{
	if (!q)
		return 0;
	int rc = 0;
	if (q->writable && q->l1 && q->rt)
		rc = ovm_qcow2_flush(q, err);
	if (q->fd >= 0)
		close(q->fd);
	for (uint32_t i = 0; q->l2 && i < q->l1_size; i++)
		free(q->l2[i]);
	for (uint64_t i = 0; q->rb && i < q->rt_cap; i++)
		free(q->rb[i]);
	free(q->l2);
	free(q->l2_dirty);
	free(q->l1);
	free(q->rt);
	free(q->rb);
	free(q->rb_dirty);
	free(q->backing);
	free(q->path);
	free(q);
	return rc;
}
