/* binding.c — the Node-API face of the VMM; the only file that includes
 * node_api.h and the only place that throws.
 *
 *   unavailable() -> string | null
 *   create({kernel?, initrd?, cmdline?, memMiB?, cpus?, disks?: [{paths, formats, readOnly}],
 *           restoreDir?}, onEvent) -> handle
 *       onEvent({type: 'serial', port, data: Buffer}) and
 *       onEvent({type: 'exit', reason, detail}) arrive on the JS thread
 *   start(h), pause(h), resume(h), stop(h), destroy(h)
 *   input(h, port, buffer) -> bytes accepted (the rest must be offered again)
 *   snapshot(h, dir) -> Promise<{memBytes, stateBytes, pausedMs, totalMs}> (VM left paused)
 *
 * vCPU threads never call into JS: serial bytes go into a per-port buffer
 * (bounded: bytes beyond 4 MiB that JS has not drained are dropped and
 * counted) and a threadsafe function is poked when it turns non-empty. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <node_api.h>

#include "ovm.h"

#define OUT_MAX (4u << 20)

struct outbuf {
	uint8_t *data;
	size_t len, cap;
	uint64_t dropped;
	bool poked;
};

struct jvm {
	struct ovm_vm *vm;
	napi_threadsafe_function tsfn;
	pthread_mutex_t lock;
	struct outbuf out[2];
	bool exited, destroyed;
	enum ovm_exit_reason reason;
	char detail[OVM_ERR_MAX];
	bool exit_delivered;
	int refs; /* the JS handle and the threadsafe function; freed by the last finalizer (JS thread) */
};

enum { EV_SERIAL = 1, EV_EXIT = 2 };

static napi_value throw_err(napi_env env, int code, const char *msg)
{
	char c[32];
	snprintf(c, sizeof c, "OVM_E%d", code < 0 ? -code : code);
	napi_throw_error(env, c, msg);
	return NULL;
}

#define CALL(env, x)                                                                \
	do {                                                                        \
		if ((x) != napi_ok) {                                               \
			const napi_extended_error_info *i_;                         \
			napi_get_last_error_info(env, &i_);                         \
			bool pending_;                                              \
			napi_is_exception_pending(env, &pending_);                  \
			if (!pending_)                                              \
				napi_throw_error(env, NULL, i_ && i_->error_message ? i_->error_message : #x); \
			return NULL;                                                \
		}                                                                   \
	} while (0)

/* ---- events: vCPU threads -> JS */

static void on_serial(void *opaque, int port, const uint8_t *data, size_t len)
{
	struct jvm *j = opaque;
	bool poke = false;
	pthread_mutex_lock(&j->lock);
	struct outbuf *o = &j->out[port & 1];
	if (o->len + len > OUT_MAX) {
		o->dropped += len;
	} else {
		if (o->len + len > o->cap) {
			size_t cap = o->cap ? o->cap * 2 : 4096;
			while (cap < o->len + len)
				cap *= 2;
			uint8_t *p = realloc(o->data, cap);
			if (!p) {
				o->dropped += len;
				len = 0;
			} else {
				o->data = p;
				o->cap = cap;
			}
		}
		memcpy(o->data + o->len, data, len);
		o->len += len;
	}
	if (o->len && !o->poked) {
		o->poked = true;
		poke = true;
	}
	pthread_mutex_unlock(&j->lock);
	if (poke)
		napi_call_threadsafe_function(j->tsfn, (void *)(uintptr_t)(EV_SERIAL | (port << 4)), napi_tsfn_nonblocking);
}

static void on_exit_cb(void *opaque, enum ovm_exit_reason r, const char *detail)
{
	struct jvm *j = opaque;
	pthread_mutex_lock(&j->lock);
	j->exited = true;
	j->reason = r;
	snprintf(j->detail, sizeof j->detail, "%s", detail ? detail : "");
	pthread_mutex_unlock(&j->lock);
	napi_call_threadsafe_function(j->tsfn, (void *)(uintptr_t)EV_EXIT, napi_tsfn_nonblocking);
}

static void deliver_serial(napi_env env, napi_value cb, struct jvm *j, int port)
{
	pthread_mutex_lock(&j->lock);
	struct outbuf *o = &j->out[port];
	size_t len = o->len;
	void *copy = NULL;
	napi_value buf = NULL;
	if (len && napi_create_buffer_copy(env, len, o->data, &copy, &buf) != napi_ok)
		buf = NULL;
	o->len = 0;
	o->poked = false;
	pthread_mutex_unlock(&j->lock);
	if (!buf)
		return;
	napi_value ev, v, undef;
	napi_create_object(env, &ev);
	napi_create_string_utf8(env, "serial", NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, ev, "type", v);
	napi_create_int32(env, port, &v);
	napi_set_named_property(env, ev, "port", v);
	napi_set_named_property(env, ev, "data", buf);
	napi_get_undefined(env, &undef);
	napi_call_function(env, undef, cb, 1, &ev, NULL);
}

static void call_js(napi_env env, napi_value cb, void *context, void *data)
{
	struct jvm *j = context;
	if (!env || !cb)
		return;
	uintptr_t ev = (uintptr_t)data;
	if ((ev & 0xf) == EV_SERIAL) {
		deliver_serial(env, cb, j, (int)(ev >> 4) & 1);
		return;
	}
	/* Exit: deliver whatever output is left first, then the exit, once. */
	deliver_serial(env, cb, j, 0);
	deliver_serial(env, cb, j, 1);
	pthread_mutex_lock(&j->lock);
	bool first = !j->exit_delivered;
	j->exit_delivered = true;
	enum ovm_exit_reason r = j->reason;
	char detail[OVM_ERR_MAX];
	snprintf(detail, sizeof detail, "%s", j->detail);
	pthread_mutex_unlock(&j->lock);
	if (!first)
		return;
	napi_value e, v, undef;
	napi_create_object(env, &e);
	napi_create_string_utf8(env, "exit", NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, e, "type", v);
	napi_create_string_utf8(env, ovm_exit_name(r), NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, e, "reason", v);
	napi_create_string_utf8(env, detail, NAPI_AUTO_LENGTH, &v);
	napi_set_named_property(env, e, "detail", v);
	napi_get_undefined(env, &undef);
	napi_call_function(env, undef, cb, 1, &e, NULL);
	/* Nothing more will come: let Node exit when the user is done. */
	napi_unref_threadsafe_function(env, j->tsfn);
}

/* ---- argument helpers */

static bool get_str(napi_env env, napi_value obj, const char *key, char **out)
{
	bool has;
	*out = NULL;
	if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has)
		return true;
	napi_value v;
	napi_valuetype t;
	napi_get_named_property(env, obj, key, &v);
	napi_typeof(env, v, &t);
	if (t == napi_undefined || t == napi_null)
		return true;
	size_t len;
	if (napi_get_value_string_utf8(env, v, NULL, 0, &len) != napi_ok) {
		char m[96];
		snprintf(m, sizeof m, "config.%s must be a string", key);
		napi_throw_type_error(env, NULL, m);
		return false;
	}
	*out = malloc(len + 1);
	napi_get_value_string_utf8(env, v, *out, len + 1, &len);
	return true;
}

static bool get_num(napi_env env, napi_value obj, const char *key, double *out)
{
	bool has;
	if (napi_has_named_property(env, obj, key, &has) != napi_ok || !has)
		return true;
	napi_value v;
	napi_valuetype t;
	napi_get_named_property(env, obj, key, &v);
	napi_typeof(env, v, &t);
	if (t == napi_undefined)
		return true;
	if (napi_get_value_double(env, v, out) != napi_ok) {
		char m[96];
		snprintf(m, sizeof m, "config.%s must be a number", key);
		napi_throw_type_error(env, NULL, m);
		return false;
	}
	return true;
}

/* Strings the config holds until ovm_vm_create/restore has used them. */
struct strs {
	char *p[4 + OVM_MAX_DISKS * OVM_MAX_CHAIN * 2];
	int n;
};
static char *keep(struct strs *s, char *p)
{
	if (p && s->n < (int)(sizeof s->p / sizeof s->p[0]))
		s->p[s->n++] = p;
	return p;
}
static void free_strs(struct strs *s)
{
	for (int i = 0; i < s->n; i++)
		free(s->p[i]);
}

static bool get_disks(napi_env env, napi_value cfgv, struct ovm_vm_config *cfg, struct strs *s)
{
	bool has, isarr;
	if (napi_has_named_property(env, cfgv, "disks", &has) != napi_ok || !has)
		return true;
	napi_value arr;
	napi_get_named_property(env, cfgv, "disks", &arr);
	if (napi_is_array(env, arr, &isarr) != napi_ok || !isarr) {
		napi_throw_type_error(env, NULL, "config.disks must be an array");
		return false;
	}
	uint32_t n;
	napi_get_array_length(env, arr, &n);
	if (n > OVM_MAX_DISKS) {
		napi_throw_range_error(env, NULL, "config.disks: at most 8 disks");
		return false;
	}
	for (uint32_t i = 0; i < n; i++) {
		napi_value d, paths, formats, ro;
		napi_get_element(env, arr, i, &d);
		struct ovm_disk_config *dc = &cfg->disks[i];
		uint32_t np = 0, nf = 0;
		if (napi_get_named_property(env, d, "paths", &paths) != napi_ok ||
		    napi_get_array_length(env, paths, &np) != napi_ok ||
		    napi_get_named_property(env, d, "formats", &formats) != napi_ok ||
		    napi_get_array_length(env, formats, &nf) != napi_ok || np != nf || np == 0 || np > OVM_MAX_CHAIN) {
			napi_throw_type_error(env, NULL, "config.disks[i] needs paths[] and formats[] of the same length (1..16)");
			return false;
		}
		for (uint32_t k = 0; k < np; k++) {
			napi_value pv, fv;
			size_t len;
			napi_get_element(env, paths, k, &pv);
			napi_get_element(env, formats, k, &fv);
			char *p, *f;
			if (napi_get_value_string_utf8(env, pv, NULL, 0, &len) != napi_ok) {
				napi_throw_type_error(env, NULL, "config.disks[i].paths must be strings");
				return false;
			}
			p = keep(s, malloc(len + 1));
			napi_get_value_string_utf8(env, pv, p, len + 1, &len);
			if (napi_get_value_string_utf8(env, fv, NULL, 0, &len) != napi_ok) {
				napi_throw_type_error(env, NULL, "config.disks[i].formats must be strings");
				return false;
			}
			f = keep(s, malloc(len + 1));
			napi_get_value_string_utf8(env, fv, f, len + 1, &len);
			dc->paths[k] = p;
			dc->formats[k] = f;
		}
		dc->n = (int)np;
		bool b = false;
		if (napi_get_named_property(env, d, "readOnly", &ro) == napi_ok)
			napi_get_value_bool(env, ro, &b);
		dc->read_only = b;
	}
	cfg->ndisks = (int)n;
	return true;
}

/* ---- handle */

static void unref_jvm(struct jvm *j)
{
	if (--j->refs > 0)
		return;
	pthread_mutex_destroy(&j->lock);
	free(j->out[0].data);
	free(j->out[1].data);
	free(j);
}

static void finalize_tsfn(napi_env env, void *data, void *hint)
{
	(void)env; (void)hint;
	unref_jvm(data);
}

static void destroy_vm(struct jvm *j)
{
	if (j->destroyed)
		return;
	j->destroyed = true;
	if (j->vm)
		ovm_vm_destroy(j->vm);
	j->vm = NULL;
	napi_release_threadsafe_function(j->tsfn, napi_tsfn_release);
}

static void finalize_handle(napi_env env, void *data, void *hint)
{
	(void)env; (void)hint;
	destroy_vm(data);
	unref_jvm(data);
}

static struct jvm *handle_of(napi_env env, napi_value v)
{
	struct jvm *j = NULL;
	if (napi_get_value_external(env, v, (void **)&j) != napi_ok || !j) {
		napi_throw_type_error(env, NULL, "not a VM handle");
		return NULL;
	}
	if (j->destroyed || !j->vm) {
		napi_throw_error(env, "OVM_EDESTROYED", "the VM was destroyed");
		return NULL;
	}
	return j;
}

/* A call whose first argument is a VM handle and which takes exactly n
 * arguments (into argv): the handle, or NULL with a JS exception thrown
 * (a TypeError naming `usage` when the count is wrong). */
static struct jvm *handle_call(napi_env env, napi_callback_info info, size_t n, napi_value *argv, const char *usage)
{
	size_t argc = n;
	if (napi_get_cb_info(env, info, &argc, argv, NULL, NULL) != napi_ok) {
		napi_throw_error(env, NULL, "cannot read the call's arguments");
		return NULL;
	}
	if (argc != n) {
		napi_throw_type_error(env, NULL, usage);
		return NULL;
	}
	return handle_of(env, argv[0]);
}

static napi_value js_create(napi_env env, napi_callback_info info)
{
	size_t argc = 2;
	napi_value argv[2];
	CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	napi_valuetype t0, t1;
	napi_typeof(env, argv[0], &t0);
	napi_typeof(env, argv[1], &t1);
	if (argc < 2 || t0 != napi_object || t1 != napi_function)
		return napi_throw_type_error(env, NULL, "create(config, onEvent)"), NULL;
	struct ovm_vm_config cfg;
	memset(&cfg, 0, sizeof cfg);
	struct strs s = {.n = 0};
	char *kernel, *initrd, *cmdline, *restore;
	double mem = 256, cpus = 1;
	bool ok = get_str(env, argv[0], "kernel", &kernel) && keep(&s, kernel) == kernel &&
		  get_str(env, argv[0], "initrd", &initrd) && keep(&s, initrd) == initrd &&
		  get_str(env, argv[0], "cmdline", &cmdline) && keep(&s, cmdline) == cmdline &&
		  get_str(env, argv[0], "restoreDir", &restore) && keep(&s, restore) == restore &&
		  get_num(env, argv[0], "memMiB", &mem) && get_num(env, argv[0], "cpus", &cpus) &&
		  get_disks(env, argv[0], &cfg, &s);
	if (!ok) {
		free_strs(&s);
		return NULL;
	}
	struct jvm *j = calloc(1, sizeof *j);
	pthread_mutex_init(&j->lock, NULL);
	j->refs = 1; /* the threadsafe function's; the handle's is added when it exists */
	cfg.kernel = kernel;
	cfg.initrd = initrd;
	cfg.cmdline = cmdline;
	cfg.mem_bytes = (uint64_t)mem << 20;
	cfg.ncpus = (int)cpus;
	cfg.on_serial = on_serial;
	cfg.on_exit = on_exit_cb;
	cfg.opaque = j;

	napi_value name;
	napi_create_string_utf8(env, "ovm-vm-events", NAPI_AUTO_LENGTH, &name);
	if (napi_create_threadsafe_function(env, argv[1], NULL, name, 0, 1, j, finalize_tsfn, j, call_js, &j->tsfn) !=
	    napi_ok) {
		free_strs(&s);
		free(j);
		return throw_err(env, ENOMEM, "cannot create the event channel");
	}
	struct ovm_err err = {0};
	int rc = restore ? ovm_vm_restore(&j->vm, &cfg, restore, &err) : ovm_vm_create(&j->vm, &cfg, &err);
	free_strs(&s);
	if (rc) {
		j->destroyed = true;
		napi_release_threadsafe_function(j->tsfn, napi_tsfn_abort);
		return throw_err(env, rc, err.msg);
	}
	napi_value ext;
	if (napi_create_external(env, j, finalize_handle, NULL, &ext) != napi_ok) {
		destroy_vm(j);
		return throw_err(env, ENOMEM, "cannot create the VM handle");
	}
	j->refs++;
	return ext;
}

typedef int (*vm_op)(struct ovm_vm *, struct ovm_err *);
static napi_value simple(napi_env env, napi_callback_info info, vm_op op)
{
	size_t argc = 1;
	napi_value argv[1];
	CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	struct jvm *j = argc ? handle_of(env, argv[0]) : NULL;
	if (!j)
		return argc ? NULL : (napi_throw_type_error(env, NULL, "missing VM handle"), NULL);
	struct ovm_err err = {0};
	int rc = op(j->vm, &err);
	if (rc)
		return throw_err(env, rc, err.msg);
	napi_value u;
	napi_get_undefined(env, &u);
	return u;
}
static napi_value js_start(napi_env env, napi_callback_info info) { return simple(env, info, ovm_vm_start); }
static napi_value js_pause(napi_env env, napi_callback_info info) { return simple(env, info, ovm_vm_pause); }
static napi_value js_resume(napi_env env, napi_callback_info info) { return simple(env, info, ovm_vm_resume); }
static int do_stop(struct ovm_vm *vm, struct ovm_err *err)
{
	(void)err;
	ovm_vm_stop(vm, OVM_EXIT_STOPPED);
	return 0;
}
static napi_value js_stop(napi_env env, napi_callback_info info) { return simple(env, info, do_stop); }

static napi_value js_destroy(napi_env env, napi_callback_info info)
{
	size_t argc = 1;
	napi_value argv[1];
	CALL(env, napi_get_cb_info(env, info, &argc, argv, NULL, NULL));
	struct jvm *j = NULL;
	if (argc && napi_get_value_external(env, argv[0], (void **)&j) == napi_ok && j)
		destroy_vm(j);
	napi_value u;
	napi_get_undefined(env, &u);
	return u;
}

static napi_value js_input(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	struct jvm *j = handle_call(env, info, 3, argv, "input(handle, port, buffer)");
	if (!j)
		return NULL;
	int32_t port;
	void *data;
	size_t len;
	if (napi_get_value_int32(env, argv[1], &port) != napi_ok || (port != 0 && port != 1) ||
	    napi_get_buffer_info(env, argv[2], &data, &len) != napi_ok)
		return napi_throw_type_error(env, NULL, "input(handle, port 0|1, Buffer)"), NULL;
	int n = ovm_vm_serial_input(j->vm, port, data, len);
	if (n < 0)
		return throw_err(env, n, "serial input failed");
	napi_value r;
	napi_create_int32(env, n, &r);
	return r;
}

/* snapshot: on a libuv worker (bounded work), resolving a Promise. */
struct snap_work {
	struct jvm *j;
	char *dir;
	napi_deferred deferred;
	napi_async_work work;
	napi_ref handle_ref;
	int rc;
	struct ovm_err err;
	struct ovm_snap_stats st;
};

static void snap_execute(napi_env env, void *data)
{
	(void)env;
	struct snap_work *w = data;
	w->rc = ovm_vm_snapshot(w->j->vm, w->dir, &w->st, &w->err);
}

static void snap_complete(napi_env env, napi_status status, void *data)
{
	struct snap_work *w = data;
	if (status != napi_ok && !w->rc) {
		w->rc = -ECANCELED;
		snprintf(w->err.msg, sizeof w->err.msg, "snapshot was cancelled");
	}
	if (w->rc) {
		napi_value msg, code, e;
		char c[32];
		snprintf(c, sizeof c, "OVM_E%d", -w->rc);
		napi_create_string_utf8(env, w->err.msg, NAPI_AUTO_LENGTH, &msg);
		napi_create_string_utf8(env, c, NAPI_AUTO_LENGTH, &code);
		napi_create_error(env, code, msg, &e);
		napi_reject_deferred(env, w->deferred, e);
	} else {
		napi_value o, v;
		napi_create_object(env, &o);
		napi_create_double(env, (double)w->st.mem_bytes_written, &v);
		napi_set_named_property(env, o, "memBytes", v);
		napi_create_double(env, (double)w->st.state_bytes, &v);
		napi_set_named_property(env, o, "stateBytes", v);
		napi_create_double(env, w->st.paused_ms, &v);
		napi_set_named_property(env, o, "pausedMs", v);
		napi_create_double(env, w->st.total_ms, &v);
		napi_set_named_property(env, o, "totalMs", v);
		napi_resolve_deferred(env, w->deferred, o);
	}
	napi_delete_reference(env, w->handle_ref);
	napi_delete_async_work(env, w->work);
	free(w->dir);
	free(w);
}

static napi_value js_snapshot(napi_env env, napi_callback_info info)
{
	napi_value argv[2];
	struct jvm *j = handle_call(env, info, 2, argv, "snapshot(handle, dir)");
	if (!j)
		return NULL;
	size_t len;
	if (napi_get_value_string_utf8(env, argv[1], NULL, 0, &len) != napi_ok)
		return napi_throw_type_error(env, NULL, "snapshot(handle, dir): dir must be a string"), NULL;
	struct snap_work *w = calloc(1, sizeof *w);
	w->j = j;
	w->dir = malloc(len + 1);
	napi_get_value_string_utf8(env, argv[1], w->dir, len + 1, &len);
	napi_value promise, name;
	CALL(env, napi_create_promise(env, &w->deferred, &promise));
	napi_create_reference(env, argv[0], 1, &w->handle_ref); /* keep the VM alive meanwhile */
	napi_create_string_utf8(env, "ovm-snapshot", NAPI_AUTO_LENGTH, &name);
	CALL(env, napi_create_async_work(env, NULL, name, snap_execute, snap_complete, w, &w->work));
	CALL(env, napi_queue_async_work(env, w->work));
	return promise;
}

static napi_value js_push_disk_top(napi_env env, napi_callback_info info)
{
	napi_value argv[3];
	struct jvm *j = handle_call(env, info, 3, argv, "pushDiskTop(handle, disk, path)");
	if (!j)
		return NULL;
	int32_t disk;
	char path[4096];
	size_t len;
	if (napi_get_value_int32(env, argv[1], &disk) != napi_ok ||
	    napi_get_value_string_utf8(env, argv[2], path, sizeof path, &len) != napi_ok || len >= sizeof path - 1)
		return napi_throw_type_error(env, NULL, "pushDiskTop(handle, disk number, path string)"), NULL;
	struct ovm_err err = {0};
	int rc = ovm_vm_push_disk_top(j->vm, disk, path, &err);
	if (rc)
		return throw_err(env, rc, err.msg);
	napi_value u;
	napi_get_undefined(env, &u);
	return u;
}

static napi_value js_unavailable(napi_env env, napi_callback_info info)
{
	(void)info;
	char buf[256];
	const char *why = ovm_kvm_unavailable(buf, sizeof buf);
	napi_value r;
	if (why)
		napi_create_string_utf8(env, why, NAPI_AUTO_LENGTH, &r);
	else
		napi_get_null(env, &r);
	return r;
}

static napi_value init(napi_env env, napi_value exports)
{
	struct { const char *name; napi_callback fn; } fns[] = {
		{"unavailable", js_unavailable}, {"create", js_create}, {"start", js_start},
		{"pause", js_pause}, {"resume", js_resume}, {"stop", js_stop},
		{"destroy", js_destroy}, {"input", js_input}, {"snapshot", js_snapshot},
		{"pushDiskTop", js_push_disk_top},
	};
	for (size_t i = 0; i < sizeof fns / sizeof fns[0]; i++) {
		napi_value f;
		napi_create_function(env, fns[i].name, NAPI_AUTO_LENGTH, fns[i].fn, NULL, &f);
		napi_set_named_property(env, exports, fns[i].name, f);
	}
	return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
