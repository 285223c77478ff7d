/* test_virtqueue.c — the split ring with well-formed and hostile chains.
 * Guest RAM is a 1 MiB buffer; the queue's rings live at fixed addresses.
 * Run under -fsanitize=address,undefined with `make -C native asan`. */
#include <errno.h>
#include <string.h>

#include "ovm.h"
#include "check.h"

#define RAM (1u << 20)
#define DESC 0x1000
#define AVAIL 0x3000
#define USED 0x4000
#define IND 0x8000
#define BUF 0x10000

static uint8_t *ram;
static struct ovm_mem mem;
static struct ovm_vq vq;
static struct ovm_vq_seg segs[OVM_VQ_MAX_SEGS];
static int nsegs;
static uint16_t head;
static struct ovm_err e;

static void put_desc(uint64_t table, uint16_t i, uint64_t addr, uint32_t len, uint16_t flags, uint16_t next)
{
	uint8_t *p = ram + table + 16 * i;
	memcpy(p, &addr, 8);
	memcpy(p + 8, &len, 4);
	memcpy(p + 12, &flags, 2);
	memcpy(p + 14, &next, 2);
}

/* Offer head h as the next avail entry. */
static void offer(uint16_t h)
{
	uint16_t idx;
	memcpy(&idx, ram + AVAIL + 2, 2);
	memcpy(ram + AVAIL + 4 + 2 * (idx % vq.size), &h, 2);
	idx++;
	memcpy(ram + AVAIL + 2, &idx, 2);
}

static void reset(uint16_t size)
{
	memset(ram, 0, RAM);
	vq = (struct ovm_vq){.size = size, .ready = true, .desc = DESC, .avail = AVAIL, .used = USED};
	memset(&e, 0, sizeof e);
}

static int pop(void) { return ovm_vq_pop(&vq, &mem, segs, &nsegs, &head, &e); }

/* A pop that must fail with -EINVAL and a message containing `needle`. */
#define BAD(needle, want_head)                                                                             \
	do {                                                                                               \
		int rc_ = pop();                                                                           \
		CHECK(rc_ == -EINVAL, "rc %d, want -EINVAL for %s", rc_, needle);                          \
		CHECK(strstr(e.msg, needle), "message \"%s\" lacks \"%s\"", e.msg, needle);                \
		CHECK(head == (want_head), "head %u, want %u", head, (unsigned)(want_head));               \
	} while (0)

static void test_good(void)
{
	reset(8);
	CHECK(pop() == 0, "empty ring");
	put_desc(DESC, 0, BUF, 16, 1, 3);
	put_desc(DESC, 3, BUF + 100, 512, 1 | 2, 5);
	put_desc(DESC, 5, BUF + 700, 1, 2, 0);
	offer(0);
	CHECK(pop() == 1 && head == 0 && nsegs == 3);
	CHECK(segs[0].host == ram + BUF && segs[0].len == 16 && !segs[0].device_writes);
	CHECK(segs[1].host == ram + BUF + 100 && segs[1].len == 512 && segs[1].device_writes);
	CHECK(segs[2].host == ram + BUF + 700 && segs[2].len == 1 && segs[2].device_writes);
	CHECK(pop() == 0 && vq.last_avail == 1);
	CHECK(ovm_vq_push(&vq, &mem, 0, 513, &e) == 0);
	uint16_t uidx;
	uint32_t ue[2];
	memcpy(&uidx, ram + USED + 2, 2);
	memcpy(ue, ram + USED + 4, 8);
	CHECK(uidx == 1 && ue[0] == 0 && ue[1] == 513 && vq.used_idx == 1);

	/* Interrupt suppression: avail->flags bit 0. */
	CHECK(ovm_vq_want_interrupt(&vq, &mem));
	uint16_t fl = 1;
	memcpy(ram + AVAIL, &fl, 2);
	CHECK(!ovm_vq_want_interrupt(&vq, &mem), "VIRTQ_AVAIL_F_NO_INTERRUPT");
	fl = 0;
	memcpy(ram + AVAIL, &fl, 2);
	struct ovm_vq far = vq;
	far.avail = RAM + 4096;
	CHECK(ovm_vq_want_interrupt(&far, &mem), "unreadable flags: interrupt anyway");

	/* Indirect table of three. */
	put_desc(IND, 0, BUF, 16, 1, 2);
	put_desc(IND, 2, BUF + 16, 4096, 1 | 2, 1);
	put_desc(IND, 1, BUF + 8192, 1, 2, 0);
	put_desc(DESC, 6, IND, 48, 4, 0);
	offer(6);
	CHECK(pop() == 1 && head == 6 && nsegs == 3 && segs[1].len == 4096 && segs[2].host == ram + BUF + 8192);
	CHECK(ovm_vq_push(&vq, &mem, 6, 4097, &e) == 0);
	memcpy(ue, ram + USED + 4 + 8, 8);
	CHECK(ue[0] == 6 && ue[1] == 4097);

	/* 16-bit index wrap: last_avail 0xffff -> 0. */
	reset(4);
	vq.last_avail = 0xffff;
	vq.used_idx = 0xffff;
	uint16_t idx = 0xffff;
	memcpy(ram + AVAIL + 2, &idx, 2);
	put_desc(DESC, 2, BUF, 8, 0, 0);
	offer(2);
	offer(2);
	CHECK(pop() == 1 && head == 2 && vq.last_avail == 0);
	CHECK(pop() == 1 && head == 2 && vq.last_avail == 1);
	CHECK(pop() == 0);
	CHECK(ovm_vq_push(&vq, &mem, 2, 0, &e) == 0 && vq.used_idx == 0);
	memcpy(&uidx, ram + USED + 2, 2);
	CHECK(uidx == 0);
	/* A zero-length buffer is legal. */
	reset(4);
	put_desc(DESC, 0, BUF, 0, 0, 0);
	offer(0);
	CHECK(pop() == 1 && nsegs == 1 && segs[0].len == 0);
	/* Not ready: nothing is read. */
	reset(4);
	vq.ready = false;
	offer(0);
	CHECK(pop() == 0);
}

static void test_hostile(void)
{
	reset(8);
	put_desc(DESC, 0, BUF, 8, 1, 1);
	put_desc(DESC, 1, BUF, 8, 1, 0);
	offer(0);
	BAD("loops", 0);
	CHECK(vq.last_avail == 1, "a bad chain is consumed");

	reset(4); /* a chain through every descriptor and back: longer than the queue */
	for (int i = 0; i < 4; i++)
		put_desc(DESC, (uint16_t)i, BUF, 8, 1, (uint16_t)((i + 1) % 4));
	offer(2);
	BAD("longer than the queue", 2);

	reset(8);
	put_desc(DESC, 0, BUF, 8, 1, 8);
	offer(0);
	BAD("past the queue", 0);

	reset(8);
	offer(9);
	BAD("head 9", OVM_VQ_NO_HEAD);

	reset(8);
	put_desc(DESC, 0, RAM - 8, 9, 0, 0);
	offer(0);
	BAD("not in guest RAM", 0);
	reset(8);
	put_desc(DESC, 0, RAM, 1, 0, 0);
	offer(0);
	BAD("not in guest RAM", 0);
	reset(8);
	put_desc(DESC, 0, UINT64_MAX - 3, 8, 0, 0);
	offer(0);
	BAD("not in guest RAM", 0);
	reset(8);
	put_desc(DESC, 0, 0, UINT32_MAX, 0, 0);
	offer(0);
	BAD("not in guest RAM", 0);

	/* Rings outside RAM or misaligned. */
	reset(8);
	offer(0);
	vq.desc = RAM - 64;
	BAD("descriptor table", 0);
	reset(8);
	vq.avail = RAM - 4;
	BAD("avail ring", OVM_VQ_NO_HEAD);
	reset(8);
	vq.avail = AVAIL + 1;
	BAD("misaligned", OVM_VQ_NO_HEAD);
	reset(8);
	vq.used = RAM - 8;
	CHECK(ovm_vq_push(&vq, &mem, 0, 0, &e) == -EINVAL && strstr(e.msg, "used ring"));
	reset(8);
	CHECK(ovm_vq_push(&vq, &mem, 8, 0, &e) == -EINVAL && strstr(e.msg, "head 8"));
	reset(6);
	offer(0);
	BAD("power of two", OVM_VQ_NO_HEAD);
	reset(8);
	vq.size = 2048;
	BAD("power of two", OVM_VQ_NO_HEAD);

	/* The avail index runs ahead by more than the queue. */
	reset(8);
	uint16_t idx = 9;
	memcpy(ram + AVAIL + 2, &idx, 2);
	BAD("ahead", OVM_VQ_NO_HEAD);
	CHECK(vq.last_avail == 0);

	/* Indirect tables. */
	reset(8);
	put_desc(DESC, 0, IND, 0, 4, 0);
	offer(0);
	BAD("indirect table length 0", 0);
	reset(8);
	put_desc(DESC, 0, IND, 40, 4, 0);
	offer(0);
	BAD("multiple of 16", 0);
	reset(8);
	put_desc(DESC, 0, RAM - 16, 32, 4, 0);
	offer(0);
	BAD("indirect table 0x", 0);
	reset(8);
	put_desc(IND, 0, IND + 0x100, 32, 4, 0); /* nested */
	put_desc(DESC, 0, IND, 16, 4, 0);
	offer(0);
	BAD("nested", 0);
	reset(8);
	put_desc(IND, 0, BUF, 8, 1, 1);
	put_desc(IND, 1, BUF, 8, 1, 0);
	put_desc(DESC, 0, IND, 32, 4, 0);
	offer(0);
	BAD("indirect table loops", 0);
	reset(8);
	put_desc(IND, 0, BUF, 8, 1, 2);
	put_desc(DESC, 0, IND, 32, 4, 0);
	offer(0);
	BAD("past the table", 0);
	reset(8);
	put_desc(IND, 0, BUF, 8, 0, 0);
	put_desc(DESC, 0, IND, 16, 4 | 1, 1);
	offer(0);
	BAD("NEXT", 0);
	reset(8);
	put_desc(DESC, 0, BUF, 8, 1, 1);
	put_desc(DESC, 1, IND, 16, 4, 0);
	put_desc(IND, 0, BUF, 8, 0, 0);
	offer(0);
	BAD("only descriptor", 0);
	reset(8);
	put_desc(IND, 0, RAM - 4, 8, 0, 0);
	put_desc(DESC, 0, IND, 16, 4, 0);
	offer(0);
	BAD("not in guest RAM", 0);
	reset(8);
	put_desc(DESC, 0, IND, 16 * 2048, 4, 0);
	offer(0);
	BAD("max", 0);
	/* More buffers than OVM_VQ_MAX_SEGS through a (legal-size) indirect table. */
	reset(8);
	for (int i = 0; i < 300; i++)
		put_desc(IND, (uint16_t)i, BUF, 1, 1, (uint16_t)(i + 1));
	put_desc(IND, 299, BUF, 1, 0, 0);
	put_desc(DESC, 0, IND, 300 * 16, 4, 0);
	offer(0);
	BAD("more than", 0);
}

/* Random garbage in the table and rings: no crash, every segment in RAM. */
static void test_fuzz(void)
{
	uint64_t s = 0x1234567;
	int popped = 0, bad = 0, outside = 0;
	for (int round = 0; round < 3000; round++) {
		reset(16);
		for (int k = 0; k < 400; k++) {
			s ^= s << 13, s ^= s >> 7, s ^= s << 17;
			/* Mostly plausible values so chains get long. */
			uint32_t at = (uint32_t)(s % 4);
			uint64_t v = s >> 8;
			if (at == 0)
				put_desc(DESC, (uint16_t)(v % 16), v % 3 ? BUF + (v % 4096) : v, (uint32_t)(v >> 20) % 8192,
					 (uint16_t)((v >> 40) & 7), (uint16_t)((v >> 44) % 20));
			else if (at == 1)
				put_desc(IND, (uint16_t)(v % 32), v % 5 ? BUF + (v % 9000) : IND, (uint32_t)(v >> 24) % 600,
					 (uint16_t)((v >> 40) & 7), (uint16_t)((v >> 44) % 40));
			else
				memcpy(ram + (at == 2 ? AVAIL : DESC) + (v % 64), &s, 2);
		}
		if (round % 8) { /* usually a plausible avail idx, so chains get walked */
			uint16_t idx = (uint16_t)(vq.last_avail + 1 + s % 16);
			memcpy(ram + AVAIL + 2, &idx, 2);
			for (int k = 0; k < 16; k++) {
				uint16_t h = (uint16_t)((s >> k) % 18);
				memcpy(ram + AVAIL + 4 + 2 * k, &h, 2);
			}
		}
		for (int k = 0; k < 20; k++) {
			int rc = pop();
			if (rc == 1) {
				popped++;
				for (int j = 0; j < nsegs; j++)
					if (segs[j].host < ram || segs[j].host + segs[j].len > ram + RAM)
						outside++;
				ovm_vq_push(&vq, &mem, head, 0, &e);
			} else if (rc < 0) {
				bad++;
				CHECK(e.msg[0], "an error has a message");
			}
		}
	}
	CHECK(outside == 0, "%d segments outside RAM", outside);
	CHECK(popped > 100 && bad > 100, "fuzz reached both paths (popped %d, bad %d)", popped, bad);
}

int main(void)
{
	static uint8_t backing[RAM + 64];
	ram = backing;
	mem = (struct ovm_mem){ram, RAM};
	test_good();
	test_hostile();
	test_fuzz();
	return check_done("test_virtqueue");
}
