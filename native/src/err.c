/* err.c — error messages: the one place C code records why it failed. */
#include <stdarg.h>
#include <stdio.h>

#include "ovm.h"

int ovm_errf(struct ovm_err *err, int code, const char *fmt, ...)
{
	if (code <= 0)
		code = 5; /* EIO: a caller bug must still read as a failure */
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof err->msg, fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return -code;
}
