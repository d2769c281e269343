/*
 * shmarray._lease: the lease objects of the channel core, as a small CPython
 * extension (the core itself is reached through cffi; see
 * shmarray/_os/native.py, which hands this module the core's entry points).
 *
 * Why C.  A received frame's slot must go back to the producer when the
 * frame is released and no array derived from it is alive any more (pyzmq's
 * rule: the buffer keeps its message), and it must go back even when a
 * signal handler raises between any two Python bytecodes.  So:
 *
 *  - Lease: what a handle holds (a received frame, a run of them, or a
 *    producer's claim), with the position(s) and the registration
 *    generation.  It is the `base` of the frame's ndarray, so every view,
 *    slice, memoryview or DLPack export of the frame keeps it alive; when the
 *    last one dies, tp_dealloc gives the slot back (or aborts the claim) in C:
 *    no Python code runs, so no exception can stop it.  Giving back twice, or
 *    after the handle re-registered, is a no-op (the core answers STALE).
 *  - recv / recv_many / claim: one C call acquires (or claims) AND wraps the
 *    result in its Lease, so no bytecode ever sees a slot that no object owns.
 *  - Frame: the lease object users see (seq, timestamp_ns, tag, array,
 *    release(), with).  release() and leaving a `with` give the slot back at
 *    once when nothing but the frame (and the `with` target) refers to the
 *    array; otherwise the slot goes back when the last reference dies.
 *
 * Arrays are built with the numpy C API (a view of the slot whose base is the
 * Lease); a consumer's views lie in a read-only mapping of the payload, so
 * numpy refuses `writeable = True` and a write through a raw pointer faults.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#define NPY_TARGET_VERSION NPY_1_22_API_VERSION
#include <numpy/arrayobject.h>

#include "chan.h"

#define LEASE_READ 0  /* received frame(s): release on give-back */
#define LEASE_VIEW 1  /* broadcast DROP view: holds nothing (check valid()) */
#define LEASE_CLAIM 2 /* a producer's claim: abort on give-back unless committed */
#define MAX_DTYPES 64

/* ---- the core's entry points, handed over by setup() (cffi owns the core) */
static int64_t (*core_recv)(shm_chan_t *, shm_chan_frame *, void *, uint64_t, uint64_t);
static int64_t (*core_latest)(shm_chan_t *, shm_chan_frame *, void *, uint64_t, uint64_t);
static int64_t (*core_recv_many)(shm_chan_t *, shm_chan_frame *, uint64_t, uint64_t);
static int (*core_release_many)(shm_chan_t *, const uint64_t *, uint64_t, uint64_t);
static int64_t (*core_claim)(shm_chan_t *, uint64_t);
static int (*core_commit)(shm_chan_t *, uint64_t, uint64_t, uint64_t);
static int (*core_abort)(shm_chan_t *, uint64_t, uint64_t);
static int (*core_valid)(const shm_chan_t *, uint64_t);
static int (*core_self)(shm_chan_t *, shm_chan_self_info *);

static PyArray_Descr *dtypes[MAX_DTYPES]; /* by dtype code */
static PyObject *ClosedError;
static PyObject *CorruptError;

/* ====================================================================== Lease */

typedef struct {
    PyObject_VAR_HEAD
    PyObject *owner; /* keeps the handle's memory and mappings alive */
    shm_chan_t *h;
    uint64_t gen;
    int kind;
    int released;
    uint64_t pos[]; /* ob_size positions (one for a frame or a claim) */
} Lease;

static PyTypeObject LeaseType;

static Lease *lease_new(PyObject *owner, shm_chan_t *h, uint64_t gen, int kind, Py_ssize_t n)
{
    Lease *l = PyObject_NewVar(Lease, &LeaseType, n);
    if (l == NULL)
        return NULL;
    Py_INCREF(owner);
    l->owner = owner;
    l->h = h;
    l->gen = gen;
    l->kind = kind;
    l->released = 0;
    return l;
}

/* Gives the lease back to the core (once): the core's status. */
static int lease_give_back(Lease *l)
{
    if (l->released)
        return SHM_CHAN_STALE;
    l->released = 1;
    switch (l->kind) {
    case LEASE_READ: return core_release_many(l->h, l->pos, (uint64_t)Py_SIZE(l), l->gen);
    case LEASE_CLAIM: return core_abort(l->h, l->pos[0], l->gen);
    default: return SHM_CHAN_OK;
    }
}

static void lease_dealloc(Lease *l)
{
    lease_give_back(l); /* nothing can be raised from here: a corrupt slot stays as it is */
    Py_XDECREF(l->owner);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *raise_corrupt(const char *what)
{
    PyErr_Format(CorruptError,
                 "channel memory is corrupt (%s: the slot under this lease was overwritten by "
                 "another process); 'shmarray clean NAME' removes the channel once its owner is "
                 "dead",
                 what);
    return NULL;
}

static PyObject *lease_release(Lease *l, PyObject *unused)
{
    (void)unused;
    if (l->kind == LEASE_CLAIM) {
        PyErr_SetString(PyExc_TypeError, "a claim is given back with commit() or abort()");
        return NULL;
    }
    int rc = lease_give_back(l);
    if (rc == SHM_CHAN_CORRUPT)
        return raise_corrupt("release");
    return PyLong_FromLong(rc);
}

static PyObject *lease_commit(Lease *l, PyObject *arg)
{
    unsigned long long tag = PyLong_AsUnsignedLongLongMask(arg);
    if (tag == (unsigned long long)-1 && PyErr_Occurred())
        return NULL;
    if (l->kind != LEASE_CLAIM) {
        PyErr_SetString(PyExc_TypeError, "only a claim can be committed");
        return NULL;
    }
    if (l->released)
        return PyLong_FromLong(SHM_CHAN_STALE);
    l->released = 1;
    return PyLong_FromLong(core_commit(l->h, l->pos[0], l->gen, tag));
}

static PyObject *lease_abort(Lease *l, PyObject *unused)
{
    (void)unused;
    if (l->kind != LEASE_CLAIM) {
        PyErr_SetString(PyExc_TypeError, "only a claim can be aborted");
        return NULL;
    }
    return PyLong_FromLong(lease_give_back(l));
}

static PyObject *lease_get_released(Lease *l, void *c)
{
    (void)c;
    return PyBool_FromLong(l->released);
}

static PyObject *lease_get_pos(Lease *l, void *c)
{
    (void)c;
    return PyLong_FromUnsignedLongLong(Py_SIZE(l) > 0 ? l->pos[0] : 0);
}

static PyObject *lease_get_count(Lease *l, void *c)
{
    (void)c;
    return PyLong_FromSsize_t(Py_SIZE(l));
}

static PyObject *lease_repr(Lease *l)
{
    static const char *kinds[] = {"frame", "view", "claim"};
    return PyUnicode_FromFormat("<shmarray lease: %s x%zd at %llu, %s>", kinds[l->kind],
                                Py_SIZE(l), (unsigned long long)(Py_SIZE(l) ? l->pos[0] : 0),
                                l->released ? "given back" : "held");
}

static PyMethodDef lease_methods[] = {
    {"release", (PyCFunction)lease_release, METH_NOARGS,
     "Give the frame(s) back now (idempotent): the core's status (0, or -12 STALE)."},
    {"commit", (PyCFunction)lease_commit, METH_O,
     "Publish a claim with tag: the core's status (0, or -12 STALE)."},
    {"abort", (PyCFunction)lease_abort, METH_NOARGS,
     "Give a claim back unpublished (idempotent): the core's status."},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef lease_getset[] = {
    {"released", (getter)lease_get_released, NULL, "Given back already.", NULL},
    {"pos", (getter)lease_get_pos, NULL, "The (first) position held.", NULL},
    {"count", (getter)lease_get_count, NULL, "How many positions it holds.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LeaseType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmarray._lease.Lease",
    .tp_basicsize = sizeof(Lease),
    .tp_itemsize = sizeof(uint64_t),
    .tp_dealloc = (destructor)lease_dealloc,
    .tp_repr = (reprfunc)lease_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "What a channel handle holds: given back when the last reference dies.",
    .tp_methods = lease_methods,
    .tp_getset = lease_getset,
};

/* ====================================================================== Frame */

typedef struct {
    PyObject_HEAD
    PyObject *array;   /* the frame's ndarray (base: the lease), or a private copy */
    PyObject *entered; /* the view a `with` block was given, or NULL */
    Lease *lease;      /* NULL for a copy */
    unsigned long long seq, timestamp_ns, tag;
    int let_go;        /* release() was called (the slot goes back now or with the views) */
    int counted_invalid;
    PyObject *weakreflist;
} Frame;

static PyTypeObject FrameType;

static int frame_traverse(Frame *f, visitproc visit, void *arg)
{
    Py_VISIT(f->array);
    Py_VISIT(f->entered);
    Py_VISIT(f->lease);
    return 0;
}

static int frame_clear(Frame *f)
{
    Py_CLEAR(f->entered);
    Py_CLEAR(f->array);
    Py_CLEAR(f->lease);
    return 0;
}

static void frame_dealloc(Frame *f)
{
    PyObject_GC_UnTrack(f);
    if (f->weakreflist != NULL)
        PyObject_ClearWeakRefs((PyObject *)f);
    frame_clear(f);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static int slot_gone(const Frame *f)
{
    return f->lease != NULL && f->lease->kind == LEASE_READ && f->lease->released;
}

/* The decision behind release(): give the slot back now unless something
 * besides the frame itself refers to its memory.  The frame owns one
 * reference to the array (and the `with` view one more, through its base);
 * `allow_array` / `allow_entered` admit the loop variable of an iteration or
 * the target of a `with` block, which are about to be rebound.  Otherwise the
 * slot goes back when the last reference dies (Lease.tp_dealloc). */
static PyObject *frame_let_go(Frame *f, Py_ssize_t allow_array, Py_ssize_t allow_entered)
{
    if (f->let_go)
        Py_RETURN_NONE;
    f->let_go = 1;
    Lease *l = f->lease;
    if (l == NULL || l->released || l->kind != LEASE_READ || f->array == NULL)
        Py_RETURN_NONE;
    Py_ssize_t own = 1 + (f->entered != NULL ? 1 : 0);
    if (Py_REFCNT(f->array) > own + allow_array)
        Py_RETURN_NONE; /* a view, slice or export lives: it keeps the lease */
    if (f->entered != NULL && Py_REFCNT(f->entered) > 1 + allow_entered)
        Py_RETURN_NONE;
    if (Py_REFCNT(l) > 2) /* the array's base and ours: anyone else holds the lease itself */
        Py_RETURN_NONE;
    if (lease_give_back(l) == SHM_CHAN_CORRUPT)
        return raise_corrupt("release");
    Py_RETURN_NONE;
}

static PyObject *frame_release(Frame *f, PyObject *unused)
{
    (void)unused;
    return frame_let_go(f, 0, 0);
}

static PyObject *frame_step(Frame *f, PyObject *unused)
{
    (void)unused;
    return frame_let_go(f, 1, 0); /* iteration: the loop variable still names the array */
}

static PyObject *frame_exit(Frame *f, PyObject *args)
{
    (void)args;
    PyObject *r = frame_let_go(f, 0, 1); /* the `with` target still names its view */
    if (r == NULL)
        return NULL;
    Py_DECREF(r);
    Py_RETURN_FALSE;
}

static PyObject *released_error(const Frame *f)
{
    PyErr_Format(ClosedError,
                 "frame %llu was released and its slot may hold another frame now: keep a view "
                 "of it instead (a view keeps its frame), or copy it (recv_copy, np.array(view))",
                 f->seq);
    return NULL;
}

static PyObject *frame_enter(Frame *f, PyObject *unused)
{
    (void)unused;
    if (f->array == NULL || (f->let_go && slot_gone(f)))
        return released_error(f);
    if (f->lease == NULL || !PyArray_Check(f->array)) {
        Py_INCREF(f->array);
        return f->array;
    }
    if (f->entered == NULL) {
        /* A view of its own, so that leaving the block can tell the target
         * variable from any other reference to the frame's array. */
        f->entered = PyArray_View((PyArrayObject *)f->array, NULL, NULL);
        if (f->entered == NULL)
            return NULL;
    }
    Py_INCREF(f->entered);
    return f->entered;
}

static PyObject *frame_get_array(Frame *f, void *c)
{
    (void)c;
    if (f->array == NULL || (f->let_go && slot_gone(f)))
        return released_error(f);
    Py_INCREF(f->array);
    return f->array;
}

static PyObject *frame_get_released(Frame *f, void *c)
{
    (void)c;
    return PyBool_FromLong(f->let_go || f->lease == NULL || f->lease->released);
}

static PyObject *frame_get_copied(Frame *f, void *c)
{
    (void)c;
    return PyBool_FromLong(f->lease == NULL);
}

static PyObject *frame_get_lease(Frame *f, void *c)
{
    (void)c;
    if (f->lease == NULL)
        Py_RETURN_NONE;
    Py_INCREF(f->lease);
    return (PyObject *)f->lease;
}

static PyObject *frame_valid(Frame *f, PyObject *unused)
{
    (void)unused;
    Lease *l = f->lease;
    if (l == NULL)
        Py_RETURN_TRUE; /* a private copy */
    if (core_valid(l->h, l->pos[0]) && !(l->kind == LEASE_READ && l->released))
        Py_RETURN_TRUE;
    if (!f->counted_invalid) { /* once per frame, in the handle's stats */
        f->counted_invalid = 1;
        atomic_fetch_add_explicit(&l->h->invalid, 1, memory_order_relaxed);
    }
    Py_RETURN_FALSE;
}

static PyObject *frame_repr(Frame *f)
{
    const char *state = f->lease == NULL ? "copy"
                        : (f->let_go || f->lease->released) ? "released"
                                                            : "held";
    PyObject *desc;
    if (f->array != NULL && PyArray_Check(f->array) && !(f->let_go && slot_gone(f))) {
        PyArrayObject *a = (PyArrayObject *)f->array;
        PyObject *shape = PyObject_GetAttrString(f->array, "shape");
        if (shape == NULL)
            return NULL;
        desc = PyUnicode_FromFormat("%S%R", (PyObject *)PyArray_DESCR(a), shape);
        Py_DECREF(shape);
    } else {
        desc = PyUnicode_FromString("-");
    }
    if (desc == NULL)
        return NULL;
    PyObject *r = PyUnicode_FromFormat("<%s seq=%llu %U tag=%llu %s>", Py_TYPE(f)->tp_name, f->seq,
                                       desc, f->tag, state);
    Py_DECREF(desc);
    return r;
}

static PyMethodDef frame_methods[] = {
    {"release", (PyCFunction)frame_release, METH_NOARGS,
     "Let the frame go (idempotent; never blocks): its slot goes back to the producer at once, "
     "or, while a view of it is still referenced, when the last such view dies."},
    {"_step", (PyCFunction)frame_step, METH_NOARGS,
     "release() at the next step of an iteration (the loop variable is about to be rebound)."},
    {"__enter__", (PyCFunction)frame_enter, METH_NOARGS,
     "A read-only view of the frame, valid for the block."},
    {"__exit__", (PyCFunction)frame_exit, METH_VARARGS, "release() (the target aside)."},
    {"valid", (PyCFunction)frame_valid, METH_NOARGS,
     "True while the frame is intact in its slot: always for a copy and for a held view; a "
     "broadcast DROP view (recv(copy=False)) must be checked after use. False once released."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef frame_members[] = {
    {"seq", T_ULONGLONG, offsetof(Frame, seq), READONLY,
     "Position of the frame in the channel: 0 for the first frame, +1 per frame (a work queue's "
     "aborted loan leaves a gap)."},
    {"timestamp_ns", T_ULONGLONG, offsetof(Frame, timestamp_ns), READONLY,
     "CLOCK_MONOTONIC at commit, ns (time.monotonic_ns() in any process)."},
    {"tag", T_ULONGLONG, offsetof(Frame, tag), READONLY, "The producer's 64-bit tag."},
    {NULL, 0, 0, 0, NULL},
};

static PyGetSetDef frame_getset[] = {
    {"array", (getter)frame_get_array, NULL,
     "The frame as a read-only ndarray (no copy); ClosedError once the frame was released.",
     NULL},
    {"released", (getter)frame_get_released, NULL, "release() was called (or it is a copy).",
     NULL},
    {"copied", (getter)frame_get_copied, NULL, "array is a private copy (yours to keep).", NULL},
    {"lease", (getter)frame_get_lease, NULL, "The lease (None for a copy).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject FrameType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "shmarray.Frame",
    .tp_basicsize = sizeof(Frame),
    .tp_dealloc = (destructor)frame_dealloc,
    .tp_repr = (reprfunc)frame_repr,
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_BASETYPE | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A received frame: a lease on one ring slot.\n\n"
              "``with frame as view:`` yields a read-only ndarray view of the slot (no copy); "
              "``release()`` and the end of the block let the frame go. Its slot goes back to "
              "the producer then, unless an array derived from the frame (``frame.array``, a "
              "slice, a memoryview, a DLPack or torch export...) is still referenced: then when "
              "the last such reference dies. ``frame.array`` is the frame's own read-only ndarray "
              "(a fresh object per frame, over read-only memory); after ``release()`` it raises "
              "ClosedError unless a view keeps the frame. ``seq`` (0 for a channel's first frame, "
              "+1 per frame), ``timestamp_ns`` (CLOCK_MONOTONIC at commit) and ``tag`` are the "
              "frame's metadata; ``valid()`` is True while the frame is intact in its slot.",
    .tp_traverse = (traverseproc)frame_traverse,
    .tp_clear = (inquiry)frame_clear,
    .tp_weaklistoffset = offsetof(Frame, weakreflist),
    .tp_methods = frame_methods,
    .tp_members = frame_members,
    .tp_getset = frame_getset,
};

/* ================================================================= functions */

static shm_chan_t *as_handle(PyObject *addr)
{
    void *p = PyLong_AsVoidPtr(addr);
    if (p == NULL && !PyErr_Occurred())
        PyErr_SetString(PyExc_ValueError, "a NULL channel handle");
    return p;
}

/* An ndarray over `data` (dtype code, shape; strides: C order, or the given
 * ones), read-only unless writable, whose base is `lease` (stolen). */
static PyObject *frame_array(Lease *lease, uint32_t code, int nd, npy_intp *dims,
                             npy_intp *strides, char *data, int writable)
{
    if (code >= MAX_DTYPES || dtypes[code] == NULL) {
        Py_DECREF(lease);
        return raise_corrupt("a frame's dtype code");
    }
    PyArray_Descr *d = dtypes[code];
    Py_INCREF(d); /* stolen by NewFromDescr */
    int flags = writable ? NPY_ARRAY_WRITEABLE : 0;
    PyObject *a = PyArray_NewFromDescr(&PyArray_Type, d, nd, dims, strides, data, flags, NULL);
    if (a == NULL) {
        Py_DECREF(lease);
        return NULL;
    }
    if (PyArray_SetBaseObject((PyArrayObject *)a, (PyObject *)lease) < 0) {
        Py_DECREF(a);
        return NULL;
    }
    return a;
}

static PyObject *make_frame(PyTypeObject *type, PyObject *array, Lease *lease,
                            const shm_chan_frame *fr)
{
    Frame *f = (Frame *)type->tp_alloc(type, 0);
    if (f == NULL) {
        Py_DECREF(array);
        return NULL;
    }
    f->array = array;
    Py_XINCREF(lease);
    f->lease = lease;
    f->seq = fr->pos;
    f->timestamp_ns = fr->timestamp_ns;
    f->tag = fr->tag;
    return (PyObject *)f;
}

/* recv(handle, owner, frame_type, payload, writable, spin_ns, latest) -> Frame | int
 * (METH_FASTCALL: every receive, and an asyncio waiter's first step after its
 * wake, goes through here; no format string to parse) */
static PyObject *mod_recv(PyObject *m, PyObject *const *args, Py_ssize_t nargs)
{
    (void)m;
    if (nargs != 7) {
        PyErr_SetString(PyExc_TypeError, "recv() takes 7 arguments");
        return NULL;
    }
    PyObject *owner = args[1];
    if (!PyType_Check(args[2]) || !PyType_IsSubtype((PyTypeObject *)args[2], &FrameType)) {
        PyErr_SetString(PyExc_TypeError, "frame_type must be a Frame type");
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)args[2];
    int writable = PyObject_IsTrue(args[4]), latest = PyObject_IsTrue(args[6]);
    unsigned long long spin = PyLong_AsUnsignedLongLong(args[5]);
    if (writable < 0 || latest < 0 || (spin == (unsigned long long)-1 && PyErr_Occurred()))
        return NULL;
    shm_chan_t *h = as_handle(args[0]);
    if (h == NULL)
        return NULL;
    char *payload = PyLong_AsVoidPtr(args[3]);
    if (payload == NULL && PyErr_Occurred())
        return NULL;
    shm_chan_frame fr;
    int64_t rc;
    if (spin) {
        Py_BEGIN_ALLOW_THREADS
        rc = (latest ? core_latest : core_recv)(h, &fr, NULL, 0, spin);
        Py_END_ALLOW_THREADS
    } else {
        rc = (latest ? core_latest : core_recv)(h, &fr, NULL, 0, 0);
    }
    if (rc < 0)
        return PyLong_FromLongLong(rc);
    /* From here on the slot belongs to the lease: every exit path gives it back. */
    Lease *lease = lease_new(owner, h, fr.gen, fr.held ? LEASE_READ : LEASE_VIEW, 1);
    if (lease == NULL) {
        if (fr.held)
            core_release_many(h, &fr.pos, 1, fr.gen);
        return NULL;
    }
    lease->pos[0] = fr.pos;
    npy_intp dims[SHM_CHAN_MAX_NDIM];
    for (uint32_t k = 0; k < fr.ndim && k < SHM_CHAN_MAX_NDIM; k++)
        dims[k] = (npy_intp)fr.shape[k];
    Py_INCREF(lease); /* one for the array's base, one for the frame */
    PyObject *a = frame_array(lease, fr.dtype, (int)fr.ndim, dims, NULL,
                              payload + (uint64_t)fr.slot * h->info.slot_stride, writable);
    if (a == NULL) {
        Py_DECREF(lease);
        return NULL;
    }
    PyObject *f = make_frame(type, a, lease, &fr);
    Py_DECREF(lease);
    return f;
}

/* recv_many(handle, owner, frame_type, payload, frames_addr, max, spin_ns) -> frame | int:
 * one frame object over a run of frames (its array: (n, *shape)) */
static PyObject *mod_recv_many(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *haddr, *owner, *paddr, *faddr;
    PyTypeObject *type;
    unsigned long long max, spin;
    if (!PyArg_ParseTuple(args, "OOO!OOKK", &haddr, &owner, &PyType_Type, &type, &paddr, &faddr,
                          &max, &spin))
        return NULL;
    shm_chan_t *h = as_handle(haddr);
    char *payload = PyLong_AsVoidPtr(paddr);
    shm_chan_frame *out = PyLong_AsVoidPtr(faddr);
    if (h == NULL || payload == NULL || out == NULL || max == 0 ||
        !PyType_IsSubtype(type, &FrameType)) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "recv_many: bad arguments");
        return NULL;
    }
    int64_t n;
    if (spin) {
        Py_BEGIN_ALLOW_THREADS
        n = core_recv_many(h, out, max, spin);
        Py_END_ALLOW_THREADS
    } else {
        n = core_recv_many(h, out, max, 0);
    }
    if (n < 0)
        return PyLong_FromLongLong(n);
    Lease *lease = lease_new(owner, h, out[0].gen, LEASE_READ, (Py_ssize_t)n);
    if (lease == NULL) {
        for (int64_t i = 0; i < n; i++)
            core_release_many(h, &out[i].pos, 1, out[i].gen);
        return NULL;
    }
    for (int64_t i = 0; i < n; i++)
        lease->pos[i] = out[i].pos;
    /* one array (n, *shape): consecutive slots, one slot_stride apart */
    const shm_chan_frame *f0 = &out[0];
    npy_intp dims[SHM_CHAN_MAX_NDIM + 1], strides[SHM_CHAN_MAX_NDIM + 1];
    int nd = (int)f0->ndim;
    npy_intp step = f0->dtype < MAX_DTYPES && dtypes[f0->dtype] != NULL
                        ? (npy_intp)PyDataType_ELSIZE(dtypes[f0->dtype])
                        : 1;
    dims[0] = (npy_intp)n;
    strides[0] = (npy_intp)h->info.slot_stride;
    for (int k = nd - 1; k >= 0; k--) {
        dims[k + 1] = (npy_intp)f0->shape[k];
        strides[k + 1] = step;
        step *= (npy_intp)f0->shape[k];
    }
    Py_INCREF(lease);
    PyObject *a = frame_array(lease, f0->dtype, nd + 1, dims, strides,
                              payload + (uint64_t)f0->slot * h->info.slot_stride, 0);
    if (a == NULL) {
        Py_DECREF(lease);
        return NULL;
    }
    PyObject *f = make_frame(type, a, lease, f0);
    Py_DECREF(lease);
    return f;
}

/* copied_frame(frame_type, array, seq, timestamp_ns, tag) -> frame holding a private copy */
static PyObject *mod_copied_frame(PyObject *m, PyObject *args)
{
    (void)m;
    PyTypeObject *type;
    PyObject *array;
    shm_chan_frame fr;
    memset(&fr, 0, sizeof fr);
    unsigned long long seq, ts, tag;
    if (!PyArg_ParseTuple(args, "O!OKKK", &PyType_Type, &type, &array, &seq, &ts, &tag))
        return NULL;
    if (!PyType_IsSubtype(type, &FrameType)) {
        PyErr_SetString(PyExc_TypeError, "frame_type must be a Frame type");
        return NULL;
    }
    fr.pos = seq;
    fr.timestamp_ns = ts;
    fr.tag = tag;
    Py_INCREF(array);
    return make_frame(type, array, NULL, &fr);
}

/* claim(handle, owner, spin_ns) -> Lease | int */
static PyObject *mod_claim(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *haddr, *owner;
    unsigned long long spin;
    if (!PyArg_ParseTuple(args, "OOK", &haddr, &owner, &spin))
        return NULL;
    shm_chan_t *h = as_handle(haddr);
    if (h == NULL)
        return NULL;
    int64_t rc;
    shm_chan_self_info me;
    if (spin) {
        Py_BEGIN_ALLOW_THREADS
        rc = core_claim(h, spin);
        Py_END_ALLOW_THREADS
    } else {
        rc = core_claim(h, 0);
    }
    if (rc < 0)
        return PyLong_FromLongLong(rc);
    core_self(h, &me);
    Lease *lease = lease_new(owner, h, me.gen, LEASE_CLAIM, 1);
    if (lease == NULL) {
        core_abort(h, me.claim_pos, me.gen);
        return NULL;
    }
    lease->pos[0] = me.claim_pos;
    return (PyObject *)lease;
}

/* release_if_unshared(lease, array, allowance) -> bool: give a lease back now
 * when nothing but its holder (and `allowance` more references) refers to
 * `array`, the array it is the base of. */
static PyObject *mod_release_if_unshared(PyObject *m, PyObject *args)
{
    (void)m;
    Lease *l;
    PyObject *a;
    Py_ssize_t allow;
    if (!PyArg_ParseTuple(args, "O!On", &LeaseType, &l, &a, &allow))
        return NULL;
    /* the caller's argument tuple holds one reference to each */
    if (l->released || Py_REFCNT(a) > 2 + allow || Py_REFCNT(l) > 3)
        Py_RETURN_FALSE;
    if (lease_give_back(l) == SHM_CHAN_CORRUPT)
        return raise_corrupt("release");
    Py_RETURN_TRUE;
}

static int set_fn(PyObject *funcs, Py_ssize_t i, void **slot)
{
    PyObject *o = PyTuple_GetItem(funcs, i);
    if (o == NULL)
        return -1;
    *slot = PyLong_AsVoidPtr(o);
    if (*slot == NULL) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_ValueError, "a NULL core entry point");
        return -1;
    }
    return 0;
}

/* setup(funcs, dtypes, ClosedError, CorruptSegmentError) */
static PyObject *mod_setup(PyObject *m, PyObject *args)
{
    (void)m;
    PyObject *funcs, *dts;
    if (!PyArg_ParseTuple(args, "O!O!OO", &PyTuple_Type, &funcs, &PyTuple_Type, &dts,
                          &ClosedError, &CorruptError))
        return NULL;
    if (PyTuple_GET_SIZE(funcs) != 9 || PyTuple_GET_SIZE(dts) > MAX_DTYPES) {
        PyErr_SetString(PyExc_ValueError, "setup: 9 entry points and at most 64 dtypes");
        return NULL;
    }
    void **slots[] = {(void **)&core_recv,         (void **)&core_latest,
                      (void **)&core_recv_many,    (void **)&core_release_many,
                      (void **)&core_claim,        (void **)&core_commit,
                      (void **)&core_abort,        (void **)&core_valid,
                      (void **)&core_self};
    for (Py_ssize_t i = 0; i < 9; i++)
        if (set_fn(funcs, i, slots[i]) < 0)
            return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(dts); i++) {
        PyObject *d = PyTuple_GET_ITEM(dts, i);
        if (d == Py_None)
            continue;
        PyArray_Descr *descr = NULL;
        if (!PyArray_DescrConverter(d, &descr))
            return NULL;
        Py_XSETREF(dtypes[i], descr);
    }
    Py_INCREF(ClosedError);
    Py_INCREF(CorruptError);
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"setup", mod_setup, METH_VARARGS, "Hand over the core's entry points (once, at import)."},
    {"recv", (PyCFunction)(void (*)(void))mod_recv, METH_FASTCALL,
     "recv(handle, owner, frame_type, payload, writable, spin_ns, latest) -> Frame | status"},
    {"recv_many", mod_recv_many, METH_VARARGS,
     "recv_many(handle, owner, frame_type, payload, frames, max, spin_ns) -> frame | status"},
    {"copied_frame", mod_copied_frame, METH_VARARGS,
     "copied_frame(frame_type, array, seq, timestamp_ns, tag) -> frame over a private copy"},
    {"claim", mod_claim, METH_VARARGS, "claim(handle, owner, spin_ns) -> Lease | status"},
    {"release_if_unshared", mod_release_if_unshared, METH_VARARGS,
     "release_if_unshared(lease, array, allowance) -> bool"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shmarray._lease",
    "Lease objects of the channel core: given back when the last reference dies.", -1,
    module_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__lease(void)
{
    import_array();
    if (PyType_Ready(&LeaseType) < 0 || PyType_Ready(&FrameType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&LeaseType);
    Py_INCREF(&FrameType);
    if (PyModule_AddObject(m, "Lease", (PyObject *)&LeaseType) < 0 ||
        PyModule_AddObject(m, "Frame", (PyObject *)&FrameType) < 0 ||
        PyModule_AddIntConstant(m, "ABI_VERSION", SHM_CHAN_ABI_VERSION) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
