/* mem.c — the one bounds-checked guest-physical to host translation.
 *
 * Layout: RAM byte i (0 <= i < size) is at guest-physical i when
 * i < OVM_MMIO_HOLE_START (slot 0), else at OVM_MMIO_HOLE_END + (i -
 * OVM_MMIO_HOLE_START) (slot 1, above 4 GiB). A range must lie wholly in
 * one slot: nothing guest-visible is contiguous across the hole. */
#include "ovm.h"

void *ovm_gpa(const struct ovm_mem *mem, uint64_t gpa, uint64_t len)
{
	if (!mem || !mem->host)
		return NULL;
	uint64_t low = mem->size < OVM_MMIO_HOLE_START ? mem->size : OVM_MMIO_HOLE_START;
	uint64_t high = mem->size - low; /* bytes in slot 1 */

	/* Slot 0: [0, low). Written as subtractions so nothing overflows. */
	if (gpa <= low && len <= low - gpa)
		return mem->host + gpa;
	/* Slot 1: [HOLE_END, HOLE_END + high). */
	if (high && gpa >= OVM_MMIO_HOLE_END) {
		uint64_t rel = gpa - OVM_MMIO_HOLE_END;
		if (rel <= high && len <= high - rel)
			return mem->host + low + rel;
	}
	return NULL;
}
