/* virtqueue.c — the split virtqueue (virtio 1.x, section 2.7), device side.
 *
 * Layout in guest memory (little-endian):
 *   descriptor table: size x {u64 addr; u32 len; u16 flags; u16 next}
 *   avail ring: u16 flags; u16 idx; u16 ring[size]; u16 used_event
 *   used ring:  u16 flags; u16 idx; {u32 id; u32 len} ring[size]; u16 avail_event
 * Every address goes through ovm_gpa. Each descriptor is copied out of
 * guest memory once before it is checked (the guest may change it under
 * us). A chain may visit at most `size` descriptors of the main table and
 * at most len/16 of one indirect table, so loops end; an indirect table
 * inside an indirect table is refused.
 * Precondition: one thread at a time per queue (the vCPU that notified). */
#include <endian.h>
#include <errno.h>
#include <string.h>

#include "ovm.h"

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#define MAX_INDIRECT 1024 /* descriptors in one indirect table */

struct desc {
	uint64_t addr;
	uint32_t len;
	uint16_t flags, next;
};

static struct desc load_desc(const uint8_t *p)
{
	struct desc d;
	uint64_t a;
	uint32_t l;
	uint16_t f, n;
	memcpy(&a, p, 8);
	memcpy(&l, p + 8, 4);
	memcpy(&f, p + 12, 2);
	memcpy(&n, p + 14, 2);
	d.addr = le64toh(a);
	d.len = le32toh(l);
	d.flags = le16toh(f);
	d.next = le16toh(n);
	return d;
}

static bool size_ok(uint16_t size) { return size && size <= 1024 && !(size & (size - 1)); }

/* Append one buffer; -EINVAL when it is not RAM or the chain has too many. */
static int add_seg(const struct ovm_mem *mem, const struct desc *d, struct ovm_vq_seg *segs, int *nsegs,
		   uint16_t head, struct ovm_err *err)
{
	if (*nsegs >= OVM_VQ_MAX_SEGS)
		return ovm_errf(err, EINVAL, "virtqueue: chain %u has more than %d buffers", head, OVM_VQ_MAX_SEGS);
	uint8_t *h = ovm_gpa(mem, d->addr, d->len);
	if (!h)
		return ovm_errf(err, EINVAL, "virtqueue: chain %u: buffer 0x%llx+%u is not in guest RAM", head,
				(unsigned long long)d->addr, d->len);
	segs[*nsegs] = (struct ovm_vq_seg){h, d->len, (d->flags & F_WRITE) != 0};
	(*nsegs)++;
	return 0;
}

/* Walk an indirect table (its own descriptor `d` already checked). */
static int walk_indirect(const struct ovm_mem *mem, const struct desc *d, struct ovm_vq_seg *segs, int *nsegs,
			 uint16_t head, struct ovm_err *err)
{
	if (d->flags & F_NEXT)
		return ovm_errf(err, EINVAL, "virtqueue: chain %u: an indirect descriptor also has NEXT set", head);
	if (d->len == 0 || d->len % 16)
		return ovm_errf(err, EINVAL, "virtqueue: chain %u: indirect table length %u is not a positive multiple of 16",
				head, d->len);
	uint32_t n = d->len / 16;
	if (n > MAX_INDIRECT)
		return ovm_errf(err, EINVAL, "virtqueue: chain %u: indirect table of %u descriptors (max %d)", head, n,
				MAX_INDIRECT);
	const uint8_t *t = ovm_gpa(mem, d->addr, d->len);
	if (!t)
		return ovm_errf(err, EINVAL, "virtqueue: chain %u: indirect table 0x%llx+%u is not in guest RAM", head,
				(unsigned long long)d->addr, d->len);
	uint32_t i = 0;
	for (uint32_t visited = 0;; visited++) {
		if (visited >= n)
			return ovm_errf(err, EINVAL, "virtqueue: chain %u: indirect table loops", head);
		struct desc x = load_desc(t + 16 * i);
		if (x.flags & F_INDIRECT)
			return ovm_errf(err, EINVAL, "virtqueue: chain %u: nested indirect table", head);
		int rc = add_seg(mem, &x, segs, nsegs, head, err);
		if (rc)
			return rc;
		if (!(x.flags & F_NEXT))
			return 0;
		if (x.next >= n)
			return ovm_errf(err, EINVAL, "virtqueue: chain %u: indirect next %u is past the table (%u)", head,
					x.next, n);
		i = x.next;
	}
}

int ovm_vq_pop(struct ovm_vq *vq, const struct ovm_mem *mem, struct ovm_vq_seg *segs, int *nsegs, uint16_t *head,
	       struct ovm_err *err)
{
	*nsegs = 0;
	*head = OVM_VQ_NO_HEAD;
	if (!vq->ready)
		return 0;
	uint16_t size = vq->size;
	if (!size_ok(size))
		return ovm_errf(err, EINVAL, "virtqueue: size %u is not a power of two in 1..1024", size);
	if ((vq->desc & 15) || (vq->avail & 1) || (vq->used & 3))
		return ovm_errf(err, EINVAL, "virtqueue: rings are misaligned (desc 0x%llx, avail 0x%llx, used 0x%llx)",
				(unsigned long long)vq->desc, (unsigned long long)vq->avail, (unsigned long long)vq->used);
	uint8_t *avail = ovm_gpa(mem, vq->avail, 4 + 2ull * size + 2);
	if (!avail)
		return ovm_errf(err, EINVAL, "virtqueue: avail ring at 0x%llx is not in guest RAM",
				(unsigned long long)vq->avail);
	uint16_t idx = le16toh(__atomic_load_n((uint16_t *)(avail + 2), __ATOMIC_ACQUIRE));
	if (idx == vq->last_avail)
		return 0;
	if ((uint16_t)(idx - vq->last_avail) > size)
		return ovm_errf(err, EINVAL, "virtqueue: avail idx %u is more than %u ahead of %u", idx, size,
				vq->last_avail);
	uint16_t h;
	memcpy(&h, avail + 4 + 2 * (vq->last_avail % size), 2);
	h = le16toh(h);
	vq->last_avail++; /* consumed even when bad, so a bad chain is not retried forever */
	if (h >= size)
		return ovm_errf(err, EINVAL, "virtqueue: head %u is past the queue (size %u)", h, size);
	*head = h;
	const uint8_t *table = ovm_gpa(mem, vq->desc, 16ull * size);
	if (!table)
		return ovm_errf(err, EINVAL, "virtqueue: descriptor table at 0x%llx is not in guest RAM",
				(unsigned long long)vq->desc);
	uint16_t i = h;
	for (uint32_t visited = 0;; visited++) {
		if (visited >= size)
			return ovm_errf(err, EINVAL, "virtqueue: chain %u loops or is longer than the queue (%u)", h, size);
		struct desc d = load_desc(table + 16 * i);
		int rc;
		if (d.flags & F_INDIRECT) {
			if (*nsegs)
				return ovm_errf(err, EINVAL, "virtqueue: chain %u: an indirect table must be its only descriptor", h);
			rc = walk_indirect(mem, &d, segs, nsegs, h, err);
			return rc ? rc : 1;
		}
		if ((rc = add_seg(mem, &d, segs, nsegs, h, err)))
			return rc;
		if (!(d.flags & F_NEXT))
			return 1;
		if (d.next >= size)
			return ovm_errf(err, EINVAL, "virtqueue: chain %u: next %u is past the queue (size %u)", h, d.next, size);
		i = d.next;
	}
}

int ovm_vq_push(struct ovm_vq *vq, const struct ovm_mem *mem, uint16_t head, uint32_t written, struct ovm_err *err)
{
	uint16_t size = vq->size;
	if (!size_ok(size))
		return ovm_errf(err, EINVAL, "virtqueue: size %u is not a power of two in 1..1024", size);
	if (head >= size)
		return ovm_errf(err, EINVAL, "virtqueue: cannot complete head %u (size %u)", head, size);
	uint8_t *used = (vq->used & 3) ? NULL : ovm_gpa(mem, vq->used, 4 + 8ull * size + 2);
	if (!used)
		return ovm_errf(err, EINVAL, "virtqueue: used ring at 0x%llx is misaligned or not in guest RAM",
				(unsigned long long)vq->used);
	uint32_t e[2] = {htole32(head), htole32(written)};
	memcpy(used + 4 + 8 * (vq->used_idx % size), e, 8);
	vq->used_idx++;
	/* The entry must be visible before the index that publishes it. */
	__atomic_store_n((uint16_t *)(used + 2), htole16(vq->used_idx), __ATOMIC_RELEASE);
	return 0;
}

bool ovm_vq_want_interrupt(const struct ovm_vq *vq, const struct ovm_mem *mem)
{
	/* The used index must be visible before the flags are read (a driver
	 * that re-enables interrupts then checks the used ring must not miss
	 * both). */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	const uint8_t *avail = (vq->avail & 1) ? NULL : ovm_gpa(mem, vq->avail, 2);
	if (!avail)
		return true;
	uint16_t flags = le16toh(__atomic_load_n((const uint16_t *)avail, __ATOMIC_ACQUIRE));
	return !(flags & 1);
}
