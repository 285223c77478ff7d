/* virtio_blk.c — a virtio block device (virtio 1.x, section 5.2) over an
 * ovm_disk, behind the virtio-pci transport.
 *
 * One request queue. A request is a chain: a 16-byte header the device
 * reads (le32 type, le32 reserved, le64 sector), data (read by the device
 * for OUT, written for IN/GET_ID), and a status byte the device writes
 * last. Buffers the device reads come before those it writes. Requests
 * are served synchronously on the vCPU thread that notified.
 *
 * Errors: a request that is malformed, out of range or fails on the disk
 * completes with VIRTIO_BLK_S_IOERR; an unknown type with UNSUPP. A chain
 * the virtqueue refuses completes with IOERR in its last writable byte
 * when it has one, else with nothing written; a queue whose rings are
 * unusable puts the device in DEVICE_NEEDS_RESET. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ovm.h"

#define T_IN 0
#define T_OUT 1
#define T_FLUSH 4
#define T_GET_ID 8
#define S_OK 0
#define S_IOERR 1
#define S_UNSUPP 2

#define F_SEG_MAX (1ull << 2)
#define F_RO (1ull << 5)
#define F_BLK_SIZE (1ull << 6)
#define F_FLUSH (1ull << 9)
#define F_INDIRECT_DESC (1ull << 28)

#define QUEUE_MAX 256
#define SEG_MAX (OVM_VQ_MAX_SEGS - 2) /* header and status take two */
#define CONFIG_LEN 0x40
#define ID_BYTES 20
#define CHUNK (1u << 20) /* bounce buffer: requests are streamed through it */

struct blk {
	struct ovm_virtio_ops ops;
	struct ovm_disk *disk;
	char serial[ID_BYTES];
	uint8_t *bounce;
	struct ovm_err last_err; /* why the last request failed (for debugging) */
	uint64_t requests, errors;
};

/* A request's buffers as two byte streams: what the device reads (rd) and
 * what it writes (wr); `at` skips into a stream. */
struct sg {
	struct ovm_vq_seg *s;
	int n;
};

static void put32(uint8_t *p, uint32_t v) { for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i)); }

static void sg_copy(struct sg *g, uint64_t at, uint8_t *buf, uint64_t len, bool to_guest)
{
	for (int i = 0; i < g->n && len; i++) {
		uint64_t l = g->s[i].len;
		if (at >= l) {
			at -= l;
			continue;
		}
		uint64_t k = l - at < len ? l - at : len;
		if (to_guest)
			memcpy(g->s[i].host + at, buf, k);
		else
			memcpy(buf, g->s[i].host + at, k);
		buf += k, len -= k, at = 0;
	}
}

static uint64_t sg_len(const struct sg *g)
{
	uint64_t t = 0;
	for (int i = 0; i < g->n; i++)
		t += g->s[i].len;
	return t;
}

static uint8_t fail(struct blk *b, uint8_t status)
{
	b->errors++;
	return status;
}

/* Serve one well-formed chain; returns bytes written into guest buffers. */
static uint32_t serve(struct blk *b, struct ovm_vq_seg *segs, int n)
{
	int nr = 0;
	while (nr < n && !segs[nr].device_writes)
		nr++;
	struct sg rd = {segs, nr}, wr = {segs + nr, n - nr};
	bool mixed = false; /* a device-readable buffer after a writable one */
	for (int i = nr; i < n; i++)
		mixed |= !segs[i].device_writes;
	/* The status byte is the last byte of the last writable buffer. */
	uint8_t *status = NULL;
	for (int i = n - 1; i >= nr && !status; i--)
		if (segs[i].device_writes && segs[i].len)
			status = segs[i].host + segs[i].len - 1;
	b->requests++;
	if (!status) {
		b->errors++;
		return 0; /* nowhere to put a status byte */
	}
	uint64_t wlen = sg_len(&wr);
	uint64_t data_in = wlen - 1;
	uint8_t st = S_OK;
	uint32_t written = 1;

	uint8_t hdr[16];
	uint64_t rlen = sg_len(&rd);
	if (rlen < 16 || mixed) {
		ovm_errf(&b->last_err, EINVAL, "virtio-blk: request with %s", mixed ? "readable buffers after writable ones" : "a short header");
		*status = fail(b, S_IOERR);
		return 1;
	}
	sg_copy(&rd, 0, hdr, 16, false);
	uint32_t type;
	uint64_t sector;
	memcpy(&type, hdr, 4);
	memcpy(&sector, hdr + 8, 8);
	uint64_t size = ovm_disk_size(b->disk);

	switch (type) {
	case T_IN:
	case T_OUT: {
		uint64_t len = type == T_IN ? data_in : rlen - 16;
		if (len % 512 || sector > size / 512 || len > size - sector * 512) {
			ovm_errf(&b->last_err, EIO, "virtio-blk: %s of %llu bytes at sector %llu is outside the disk or not whole sectors",
				 type == T_IN ? "read" : "write", (unsigned long long)len, (unsigned long long)sector);
			st = fail(b, S_IOERR);
			break;
		}
		if (type == T_OUT && ovm_disk_read_only(b->disk)) {
			ovm_errf(&b->last_err, EROFS, "virtio-blk: write to a read-only disk");
			st = fail(b, S_IOERR);
			break;
		}
		for (uint64_t done = 0; done < len; done += CHUNK) {
			size_t k = len - done < CHUNK ? (size_t)(len - done) : CHUNK;
			uint64_t off = sector * 512 + done;
			int rc;
			if (type == T_IN) {
				rc = ovm_disk_read(b->disk, off, b->bounce, k, &b->last_err);
				if (rc == 0)
					sg_copy(&wr, done, b->bounce, k, true);
			} else {
				sg_copy(&rd, 16 + done, b->bounce, k, false);
				rc = ovm_disk_write(b->disk, off, b->bounce, k, &b->last_err);
			}
			if (rc) {
				st = fail(b, S_IOERR);
				break;
			}
		}
		if (type == T_IN && st == S_OK)
			written += (uint32_t)len;
		break;
	}
	case T_FLUSH:
		if (ovm_disk_flush(b->disk, &b->last_err))
			st = fail(b, S_IOERR);
		break;
	case T_GET_ID: {
		uint8_t id[ID_BYTES];
		memcpy(id, b->serial, ID_BYTES);
		uint64_t k = data_in < ID_BYTES ? data_in : ID_BYTES;
		sg_copy(&wr, 0, id, k, true);
		written += (uint32_t)k;
		break;
	}
	default:
		st = fail(b, S_UNSUPP);
	}
	*status = st;
	return written;
}

static int notify(void *dev, struct ovm_virtio *t, int q)
{
	struct blk *b = dev;
	struct ovm_vq *vq = ovm_virtio_queue(t, q);
	const struct ovm_mem *mem = ovm_virtio_mem(t);
	struct ovm_vq_seg segs[OVM_VQ_MAX_SEGS];
	struct ovm_err err = {0};
	int used = 0;
	for (;;) {
		int n;
		uint16_t head;
		int rc = ovm_vq_pop(vq, mem, segs, &n, &head, &err);
		if (rc == 0)
			break;
		uint32_t written;
		if (rc > 0) {
			written = serve(b, segs, n);
		} else if (head != OVM_VQ_NO_HEAD) {
			/* A bad chain: IOERR into its last writable byte seen, if any. */
			b->errors++;
			b->last_err = err;
			written = 0;
			for (int i = n - 1; i >= 0; i--)
				if (segs[i].device_writes && segs[i].len) {
					segs[i].host[segs[i].len - 1] = S_IOERR;
					written = 1;
					break;
				}
		} else {
			b->last_err = err;
			ovm_virtio_fail(t, err.msg);
			break;
		}
		if (ovm_vq_push(vq, mem, head, written, &err)) {
			b->last_err = err;
			ovm_virtio_fail(t, err.msg);
			break;
		}
		used++;
	}
	if (used && ovm_vq_want_interrupt(vq, mem))
		ovm_virtio_interrupt(t, q);
	return 0;
}

static void config_rw(void *dev, uint32_t off, uint8_t *data, uint32_t len, bool is_write)
{
	struct blk *b = dev;
	if (is_write)
		return; /* nothing writable: we do not offer CONFIG_WCE */
	uint8_t c[CONFIG_LEN] = {0};
	uint64_t cap = ovm_disk_size(b->disk) / 512;
	put32(c + 0x00, (uint32_t)cap);
	put32(c + 0x04, (uint32_t)(cap >> 32));
	put32(c + 0x0c, SEG_MAX); /* seg_max */
	put32(c + 0x14, 512);     /* blk_size */
	c[0x22] = 1;              /* num_queues (meaningful with MQ only) */
	memcpy(data, c + off, len);
}

static int blk_flush(void *dev, struct ovm_err *err)
{
	struct blk *b = dev;
	return ovm_disk_flush(b->disk, err);
}

static void blk_destroy(void *dev)
{
	struct blk *b = dev;
	ovm_disk_close(b->disk);
	free(b->bounce);
	free(b);
}

int ovm_virtio_blk_add(struct ovm_pci *pci, const struct ovm_mem *mem, struct ovm_disk *disk, const char *serial,
		       struct ovm_err *err)
{
	struct blk *b = calloc(1, sizeof *b);
	uint8_t *bounce = malloc(CHUNK);
	if (!b || !bounce) {
		free(b);
		free(bounce);
		ovm_disk_close(disk);
		return ovm_errf(err, ENOMEM, "virtio-blk: no memory");
	}
	b->disk = disk;
	b->bounce = bounce;
	if (serial)
		memcpy(b->serial, serial, strnlen(serial, ID_BYTES)); /* zero-padded, unterminated at 20 */
	b->ops = (struct ovm_virtio_ops){
		.name = "virtio-blk",
		.device_id = 2,
		.features = F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_INDIRECT_DESC | (ovm_disk_read_only(disk) ? F_RO : 0),
		.config_len = CONFIG_LEN,
		.num_queues = 1,
		.queue_max = QUEUE_MAX,
		.config_rw = config_rw,
		.notify = notify,
		.flush = blk_flush,
		.destroy = blk_destroy,
	};
	int rc = ovm_virtio_pci_create(pci, mem, &b->ops, b, NULL, err);
	if (rc)
		blk_destroy(b);
	return rc;
}
