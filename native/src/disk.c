/* disk.c — a guest disk: a raw file, or a chain of images (base first)
 * whose reads fall through to the layer below and whose writes go
 * copy-on-write into the top image only.
 *
 * The chain is given explicitly (paths in an artifact are digests, so the
 * names recorded in qcow2 headers are not used to find files), but it must
 * agree with the headers: a qcow2 with a backing file needs a layer below
 * it, one without must not have one; a raw image can only be the base.
 * All I/O on one disk is serialised by its mutex (a device may be driven
 * from several vCPU threads). Files are flock'ed: the writable top
 * exclusively, everything else shared, so two VMs never write one image
 * nor read one that another writes. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ovm.h"

/* A chain, including images pushed on top while the VM runs. */
#define OVM_DISK_MAX_LAYERS 64

struct layer {
	char *path;
	int fd;                 /* raw only (qcow2 owns its fd) */
	struct ovm_qcow2 *q;    /* qcow2 only */
	uint64_t size;
};

struct ovm_disk {
	pthread_mutex_t lock;
	bool read_only;
	int n;
	struct layer *l;
	uint64_t size;
};

struct below {
	struct ovm_disk *d;
	int i; /* the layer to read from; -1 = nothing (zeros) */
};

static int raw_pread(struct layer *L, void *buf, size_t len, uint64_t off, struct ovm_err *err)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = pread(L->fd, p, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return ovm_errf(err, EIO, "%s: read at 0x%llx: %s", L->path, (unsigned long long)off, strerror(errno));
		if (n == 0) { /* the file shrank under us: read zeros */
			memset(p, 0, len);
			return 0;
		}
		p += n, off += (uint64_t)n, len -= (size_t)n;
	}
	return 0;
}

static int layer_read(struct ovm_disk *d, int i, uint64_t off, void *buf, size_t len, struct ovm_err *err);

static int below_read(void *ctx, uint64_t off, void *buf, size_t len, struct ovm_err *err)
{
	struct below *b = ctx;
	return layer_read(b->d, b->i, off, buf, len, err);
}

/* Read [off, off+len) as layer i sees it (zeros past its virtual size). */
static int layer_read(struct ovm_disk *d, int i, uint64_t off, void *buf, size_t len, struct ovm_err *err)
{
	if (i < 0) {
		memset(buf, 0, len);
		return 0;
	}
	struct layer *L = &d->l[i];
	size_t n = len;
	if (off >= L->size)
		n = 0;
	else if (len > L->size - off)
		n = (size_t)(L->size - off);
	if (n < len)
		memset((uint8_t *)buf + n, 0, len - n);
	if (!n)
		return 0;
	if (!L->q)
		return raw_pread(L, buf, n, off, err);
	struct below b = {d, i - 1};
	return ovm_qcow2_read(L->q, off, buf, n, below_read, &b, err);
}

static int is_qcow2_file(int fd)
{
	uint8_t m[4];
	return pread(fd, m, 4, 0) == 4 && m[0] == 'Q' && m[1] == 'F' && m[2] == 'I' && m[3] == 0xfb;
}

static void layer_free(struct layer *L);

static void disk_free(struct ovm_disk *d)
{
	for (int i = 0; i < d->n; i++)
		layer_free(&d->l[i]);
	free(d->l);
	pthread_mutex_destroy(&d->lock);
	free(d);
}

/* Open one image of a chain into L (fd, flock, format checks). `top_rw`:
 * it is the writable top. Chain rules (backing file or not) are the
 * caller's. On error L holds what must be freed (disk_free/layer_free). */
static int open_layer(struct layer *L, const char *path, const char *fmt, int i, int n, bool top_rw,
		      struct ovm_err *err)
{
	L->fd = -1;
	if (!path || !fmt)
		return ovm_errf(err, EINVAL, "disk: image %d of the chain has no path or format", i);
	bool qcow2 = strcmp(fmt, "qcow2") == 0;
	if (!qcow2 && strcmp(fmt, "raw") != 0)
		return ovm_errf(err, EINVAL, "%s: format \"%s\" is not supported (raw or qcow2)", path, fmt);
	if (!qcow2 && i > 0)
		return ovm_errf(err, EINVAL, "%s: a raw image can only be the base of a chain (it is image %d of %d)",
				path, i + 1, n);
	if (!(L->path = strdup(path)))
		return ovm_errf(err, ENOMEM, "disk: no memory");
	int fd = open(path, (top_rw ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (fd < 0)
		return ovm_errf(err, errno == ENOENT ? ENOENT : EIO, "%s: cannot open%s: %s", path,
				top_rw ? " for writing" : "", strerror(errno));
	struct stat st;
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		close(fd);
		return ovm_errf(err, EINVAL, "%s: not a regular file", path);
	}
	/* One writer or many readers per file among ovm processes (flock;
	 * QEMU's own OFD locks are separate). A file system without locks
	 * (ENOLCK, EOPNOTSUPP) is used unlocked. */
	if (flock(fd, (top_rw ? LOCK_EX : LOCK_SH) | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
		close(fd);
		return ovm_errf(err, EBUSY, "%s: in use by another VM (%s); stop it first or use a copy", path,
				top_rw ? "this one would write it" : "it is being written");
	}
	if (!qcow2) {
		L->fd = fd;
		if (is_qcow2_file(fd))
			return ovm_errf(err, EINVAL, "%s: is a qcow2 image but was given as raw (the guest would see the qcow2 metadata)", path);
		if (st.st_size % 512)
			return ovm_errf(err, EINVAL, "%s: raw image size %lld is not a multiple of 512 bytes; pad it (truncate -s %%512)",
					path, (long long)st.st_size);
		L->size = (uint64_t)st.st_size;
		return 0;
	}
	int rc = ovm_qcow2_open(&L->q, fd, path, top_rw, err);
	if (rc)
		return rc;
	L->size = ovm_qcow2_size(L->q);
	if (L->size % 512)
		return ovm_errf(err, EINVAL, "%s: virtual size %llu is not a multiple of 512 bytes", path,
				(unsigned long long)L->size);
	return 0;
}

static void layer_free(struct layer *L)
{
	if (L->q)
		ovm_qcow2_close(L->q, NULL);
	else if (L->fd >= 0)
		close(L->fd);
	free(L->path);
	*L = (struct layer){.fd = -1};
}

int ovm_disk_open(struct ovm_disk **out, const char *const *paths, const char *const *formats, int n,
		  bool read_only, struct ovm_err *err)
{
	*out = NULL;
	if (n < 1 || n > OVM_DISK_MAX_LAYERS)
		return ovm_errf(err, EINVAL, "disk: a chain has 1 to %d images, not %d", OVM_DISK_MAX_LAYERS, n);
	struct ovm_disk *d = calloc(1, sizeof *d);
	struct layer *l = calloc((size_t)n, sizeof *l);
	if (!d || !l) {
		free(d);
		free(l);
		return ovm_errf(err, ENOMEM, "disk: no memory");
	}
	pthread_mutex_init(&d->lock, NULL);
	d->l = l;
	d->read_only = read_only;
	int rc = 0;
	for (int i = 0; i < n && !rc; i++) {
		struct layer *L = &l[i];
		d->n = i + 1;
		if ((rc = open_layer(L, paths[i], formats[i], i, n, !read_only && i == n - 1, err)) || !L->q)
			continue;
		const char *bf = ovm_qcow2_backing(L->q);
		if (bf && i == 0)
			rc = ovm_errf(err, EINVAL, "%s: has backing file \"%s\" but is the base of the chain; give the backing image too",
				      paths[i], bf);
		else if (!bf && i > 0)
			rc = ovm_errf(err, EINVAL, "%s: has no backing file but the chain puts %s below it", paths[i], paths[i - 1]);
	}
	if (rc) {
		disk_free(d);
		return rc;
	}
	d->size = l[n - 1].size;
	*out = d;
	return 0;
}

int ovm_disk_push_top(struct ovm_disk *d, const char *path, struct ovm_err *err)
{
	if (d->read_only)
		return ovm_errf(err, EROFS, "%s: the disk is read-only; it has no top image to freeze", d->l[d->n - 1].path);
	struct layer L = {.fd = -1};
	pthread_mutex_lock(&d->lock);
	int rc = 0;
	if (d->n >= OVM_DISK_MAX_LAYERS) {
		rc = ovm_errf(err, E2BIG, "%s: the chain already has %d images, the most a disk can have", path, d->n);
		goto out;
	}
	if ((rc = open_layer(&L, path, "qcow2", d->n, d->n + 1, true, err)))
		goto bad;
	if (!ovm_qcow2_backing(L.q)) {
		rc = ovm_errf(err, EINVAL, "%s: has no backing file; the new top must back onto %s", path, d->l[d->n - 1].path);
		goto bad;
	}
	if (L.size != d->size) {
		rc = ovm_errf(err, EINVAL, "%s: virtual size %llu differs from the disk's %llu bytes", path,
			      (unsigned long long)L.size, (unsigned long long)d->size);
		goto bad;
	}
	struct layer *grown = realloc(d->l, (size_t)(d->n + 1) * sizeof *grown);
	if (!grown) {
		rc = ovm_errf(err, ENOMEM, "disk: no memory");
		goto bad;
	}
	d->l = grown;
	/* Freeze the old top only once the new one is known good: on a failed
	 * flush nothing has changed and the guest keeps writing the old top. */
	struct layer *top = &d->l[d->n - 1];
	if (top->q)
		rc = ovm_qcow2_freeze(top->q, err);
	else
		while (fdatasync(top->fd) != 0 && !rc)
			if (errno != EINTR)
				rc = ovm_errf(err, EIO, "%s: fdatasync: %s", top->path, strerror(errno));
	if (rc)
		goto bad;
	if (!top->q)
		(void)flock(top->fd, LOCK_SH | LOCK_NB);
	d->l[d->n++] = L;
	goto out;
bad:
	layer_free(&L);
out:
	pthread_mutex_unlock(&d->lock);
	return rc;
}

int ovm_disk_layers(const struct ovm_disk *d) { return d->n; }
const char *ovm_disk_layer_path(const struct ovm_disk *d, int i) { return i >= 0 && i < d->n ? d->l[i].path : NULL; }

uint64_t ovm_disk_size(const struct ovm_disk *d) { return d->size; }
bool ovm_disk_read_only(const struct ovm_disk *d) { return d->read_only; }

static int check_range(struct ovm_disk *d, uint64_t off, size_t len, const char *op, struct ovm_err *err)
{
	if (off % 512)
		return ovm_errf(err, EIO, "%s: %s at 0x%llx is not 512-byte aligned", d->l[d->n - 1].path, op,
				(unsigned long long)off);
	if (off > d->size || len > d->size - off)
		return ovm_errf(err, EIO, "%s: %s of %zu bytes at 0x%llx is past the end of the disk (%llu bytes)",
				d->l[d->n - 1].path, op, len, (unsigned long long)off, (unsigned long long)d->size);
	return 0;
}

/* The disk's mutex is held for everything that looks at the chain (a push
 * may grow it, moving d->l). */
int ovm_disk_read(struct ovm_disk *d, uint64_t off, void *buf, size_t len, struct ovm_err *err)
{
	pthread_mutex_lock(&d->lock);
	int rc = check_range(d, off, len, "read", err);
	if (!rc)
		rc = layer_read(d, d->n - 1, off, buf, len, err);
	pthread_mutex_unlock(&d->lock);
	return rc < 0 ? (rc == -ENOMEM ? rc : -EIO) : 0;
}

int ovm_disk_write(struct ovm_disk *d, uint64_t off, const void *buf, size_t len, struct ovm_err *err)
{
	pthread_mutex_lock(&d->lock);
	struct layer *top = &d->l[d->n - 1];
	int rc = d->read_only ? ovm_errf(err, EROFS, "%s: the disk is read-only", top->path)
			      : check_range(d, off, len, "write", err);
	if (rc) {
		pthread_mutex_unlock(&d->lock);
		return rc;
	}
	if (top->q) {
		struct below b = {d, d->n - 2};
		rc = ovm_qcow2_write(top->q, off, buf, len, below_read, &b, err);
	} else {
		const uint8_t *p = buf;
		while (len) {
			ssize_t n = pwrite(top->fd, p, len, (off_t)off);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0) {
				rc = ovm_errf(err, errno == ENOSPC ? ENOSPC : EIO, "%s: write at 0x%llx: %s", top->path,
					      (unsigned long long)off, n < 0 ? strerror(errno) : "no progress");
				break;
			}
			p += n, off += (uint64_t)n, len -= (size_t)n;
		}
	}
	pthread_mutex_unlock(&d->lock);
	return rc;
}

int ovm_disk_flush(struct ovm_disk *d, struct ovm_err *err)
{
	if (d->read_only)
		return 0;
	int rc = 0;
	pthread_mutex_lock(&d->lock);
	struct layer *top = &d->l[d->n - 1];
	if (top->q)
		rc = ovm_qcow2_flush(top->q, err);
	else
		while (fdatasync(top->fd) != 0)
			if (errno != EINTR) {
				rc = ovm_errf(err, EIO, "%s: fdatasync: %s", top->path, strerror(errno));
				break;
			}
	pthread_mutex_unlock(&d->lock);
	return rc;
}

void ovm_disk_close(struct ovm_disk *d)
{
	if (!d)
		return;
	struct ovm_err e = {0};
	ovm_disk_flush(d, &e); /* best effort: close has no error path; flush first to see errors */
	disk_free(d);
}
