/* check.h — tiny assertion helpers for the native unit tests (no framework).
 * CHECK(cond, fmt, ...) counts a failure and prints where; tests end with
 * return check_done(name). */
#ifndef OVM_TEST_CHECK_H
#define OVM_TEST_CHECK_H
#include <stdio.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>

/* No format attribute on purpose: CHECK(cond) without a message passes "". */
static inline void check_note(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
}

static int check_failures, check_count;

#define CHECK(cond, ...)                                                                        \
	do {                                                                                    \
		check_count++;                                                                  \
		if (!(cond)) {                                                                  \
			check_failures++;                                                       \
			fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);         \
			check_note("" __VA_ARGS__);                                             \
			fprintf(stderr, "\n");                                                  \
		}                                                                               \
	} while (0)

/* Abort the test binary (a setup step failed and nothing later can run). */
#define REQUIRE(cond, ...)                                                                      \
	do {                                                                                    \
		bool req_ok_ = (cond); /* evaluated once */                                     \
		CHECK(req_ok_, __VA_ARGS__);                                                    \
		if (!req_ok_) {                                                                 \
			fprintf(stderr, "  (required: %s)\n", #cond);                              \
			exit(2);                                                                \
		}                                                                               \
	} while (0)

static inline int check_done(const char *name)
{
	printf("%s: %d checks, %d failed\n", name, check_count, check_failures);
	return check_failures ? 1 : 0;
}
#endif
