/* buf.c — growable byte buffer (device state out) and bounded reader (state in). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "ovm.h"

/* Append len bytes. On -ENOMEM the buffer is unchanged. */
int ovm_buf_put(struct ovm_buf *b, const void *data, size_t len)
{
	if (len == 0)
		return 0;
	if (len > SIZE_MAX - b->len)
		return -ENOMEM;
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + len) {
			if (cap > SIZE_MAX / 2)
				return -ENOMEM;
			cap *= 2;
		}
		uint8_t *p = realloc(b->data, cap);
		if (!p)
			return -ENOMEM;
		b->data = p;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len += len;
	return 0;
}

void ovm_buf_free(struct ovm_buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/* Copy the next len bytes into out; -EINVAL naming `what` when fewer remain
 * (r->off is then unchanged). */
int ovm_rd_get(struct ovm_rd *r, void *out, size_t len, const char *what, struct ovm_err *err)
{
	if (r->off > r->len || len > r->len - r->off)
		return ovm_errf(err, EINVAL, "saved state is truncated: %s needs %zu bytes at offset %zu, %zu left",
				what ? what : "field", len, r->off, r->off <= r->len ? r->len - r->off : 0);
	if (len)
		memcpy(out, r->data + r->off, len);
	r->off += len;
	return 0;
}
