/* The virtual-time run's event queue in C (epp/bench/events.py, EventHeap).
 *
 * A 1,000-endpoint run pops about 1.3 million events from a heap of ~1,000 (one per engine with
 * work). With heapq each pop compares ~10 tuples whose floats are separate objects, all cold again
 * by the next pop (~1.3 us, 5 % of a run); here the keys (time, then the order of pushing) sit in
 * one array of structs. Events come out in the same order as from heapq: by time, ties in push
 * order. Optional: events.py keeps the heapq version as the fallback and the reference
 * (tests/unit/bench/test_bench_events.py).
 *
 * It also steps engines' decode cohorts itself (DecodeRun, `push_run`, `pop_before`): a cohort
 * step that only advances counters is an event here like any other, with its own push number and
 * its gaps delivered in event order into the heap's gap buffer, but no Python code runs for it.
 * The arithmetic is the engine's (`Engine.decode_ahead`), in the same order, so the durations,
 * sums and histogram counts are the same doubles.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stddef.h>
#include <structmember.h>

/* A cohort's steps taken here: see DecodeRun_doc. */
typedef struct {
    PyObject_HEAD
    long long left;     /* steps it may still take */
    long long n;        /* the batch: every running request decodes one token a step */
    long long context;  /* the batch's decode context before the next step */
    double base, kv;    /* a step lasts base + kv * context */
    double gap;         /* the step taken last, not yet delivered: its gap, n times */
    long long taken;
    double last_end, busy, itl_total;
    Py_ssize_t nbounds;
    double *bounds;     /* the ITL histogram's bucket bounds */
    long long *adds;    /* counts added per bucket (nbounds + 1) */
    long long *blocks;  /* blocks each step takes (left of them) */
    long long blocks_taken;
    int halted;
} DecodeRun;

typedef struct {
    double at;
    uint64_t seq;
    PyObject *handler;
    PyObject *payload;
    DecodeRun *run; /* NULL: an ordinary event */
} Event;

typedef struct {
    PyObject_HEAD
    Event *events;
    Py_ssize_t size, capacity;
    uint64_t pushed;
    double *gaps; /* inter-token gaps delivered, in event order */
    Py_ssize_t ngaps, gaps_capacity;
} EventHeap;

static PyTypeObject DecodeRunType;


/* ----- DecodeRun ----------------------------------------------------------------------------- */

static int DecodeRun_init(DecodeRun *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"left", "n", "context", "base", "kv", "gap", "last_end", "busy",
                             "itl_total", "bounds", "blocks", NULL};
    long long left, n, context;
    double base, kv, gap, last_end, busy, itl_total;
    PyObject *bounds, *blocks;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "LLLddddddOO", kwlist, &left, &n, &context, &base,
                                     &kv, &gap, &last_end, &busy, &itl_total, &bounds, &blocks))
        return -1;
    if (left < 0 || n <= 0) {
        PyErr_SetString(PyExc_ValueError, "a DecodeRun needs left >= 0 and n > 0");
        return -1;
    }
    PyObject *needs = PySequence_Fast(blocks, "blocks must be a sequence of ints");
    if (needs == NULL) return -1;
    if (PySequence_Fast_GET_SIZE(needs) != left) {
        Py_DECREF(needs);
        PyErr_SetString(PyExc_ValueError, "a DecodeRun needs the blocks of each of its left steps");
        return -1;
    }
    long long *taking = PyMem_Calloc((size_t)left + 1, sizeof(long long));
    if (taking == NULL) {
        Py_DECREF(needs);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < left; i++) {
        taking[i] = PyLong_AsLongLong(PySequence_Fast_GET_ITEM(needs, i));
        if (taking[i] == -1 && PyErr_Occurred()) {
            Py_DECREF(needs);
            PyMem_Free(taking);
            return -1;
        }
    }
    Py_DECREF(needs);
    PyMem_Free(self->blocks);
    self->blocks = taking;
    self->blocks_taken = 0;
    PyObject *seq = PySequence_Fast(bounds, "bounds must be a sequence of floats");
    if (seq == NULL) return -1;
    Py_ssize_t nbounds = PySequence_Fast_GET_SIZE(seq);
    double *values = PyMem_Calloc((size_t)nbounds + 1, sizeof(double));
    long long *adds = PyMem_Calloc((size_t)nbounds + 1, sizeof(long long));
    if (values == NULL || adds == NULL) {
        PyMem_Free(values);
        PyMem_Free(adds);
        Py_DECREF(seq);
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < nbounds; i++) {
        values[i] = PyFloat_AsDouble(PySequence_Fast_GET_ITEM(seq, i));
        if (values[i] == -1.0 && PyErr_Occurred()) {
            PyMem_Free(values);
            PyMem_Free(adds);
            Py_DECREF(seq);
            return -1;
        }
    }
    Py_DECREF(seq);
    PyMem_Free(self->bounds);
    PyMem_Free(self->adds);
    self->bounds = values;
    self->adds = adds;
    self->nbounds = nbounds;
    self->left = left;
    self->n = n;
    self->context = context;
    self->base = base;
    self->kv = kv;
    self->gap = gap;
    self->taken = 0;
    self->last_end = last_end;
    self->busy = busy;
    self->itl_total = itl_total;
    self->halted = 0;
    return 0;
}

static void DecodeRun_dealloc(DecodeRun *self) {
    PyMem_Free(self->blocks);
    PyMem_Free(self->bounds);
    PyMem_Free(self->adds);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *DecodeRun_halt(DecodeRun *self, PyObject *Py_UNUSED(ignored)) {
    self->halted = 1;
    Py_RETURN_NONE;
}

static PyObject *DecodeRun_get_adds(DecodeRun *self, void *Py_UNUSED(closure)) {
    PyObject *out = PyList_New(self->nbounds + 1);
    if (out == NULL) return NULL;
    for (Py_ssize_t i = 0; i <= self->nbounds; i++) {
        PyObject *value = PyLong_FromLongLong(self->adds ? self->adds[i] : 0);
        if (value == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, value);
    }
    return out;
}

static PyMemberDef DecodeRun_members[] = {
    {"left", T_LONGLONG, offsetof(DecodeRun, left), READONLY, "steps it may still take"},
    {"n", T_LONGLONG, offsetof(DecodeRun, n), READONLY, "requests decoding a token a step"},
    {"taken", T_LONGLONG, offsetof(DecodeRun, taken), READONLY, "steps taken"},
    {"blocks_taken", T_LONGLONG, offsetof(DecodeRun, blocks_taken), READONLY, "their blocks"},
    {"context", T_LONGLONG, offsetof(DecodeRun, context), READONLY, "decode context after them"},
    {"last_end", T_DOUBLE, offsetof(DecodeRun, last_end), READONLY, "end of the last step taken"},
    {"busy", T_DOUBLE, offsetof(DecodeRun, busy), READONLY, "busy seconds, the steps added"},
    {"itl_total", T_DOUBLE, offsetof(DecodeRun, itl_total), READONLY, "ITL histogram's sum"},
    {"halted", T_INT, offsetof(DecodeRun, halted), READONLY, "halt() was called"},
    {NULL},
};

static PyGetSetDef DecodeRun_getset[] = {
    {"adds", (getter)DecodeRun_get_adds, NULL, "counts added to each ITL histogram bucket", NULL},
    {NULL},
};

static PyMethodDef DecodeRun_methods[] = {
    {"halt", (PyCFunction)DecodeRun_halt, METH_NOARGS,
     "halt(): take no more steps; the step taken last is still delivered at its event"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject DecodeRunType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "epp.bench._eventheap.DecodeRun",
    .tp_doc = "A decode cohort's plain steps, taken by the event heap (see events.DecodeRun).",
    .tp_basicsize = sizeof(DecodeRun),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)DecodeRun_init,
    .tp_dealloc = (destructor)DecodeRun_dealloc,
    .tp_members = DecodeRun_members,
    .tp_getset = DecodeRun_getset,
    .tp_methods = DecodeRun_methods,
};

/* ----- EventHeap methods --------------------------------------------------------------------- */

static inline int earlier(const Event *a, const Event *b) {
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

/* Room for one more event; -1 with MemoryError set when there is none. */
static int reserve(EventHeap *self) {
    if (self->size < self->capacity) return 0;
    Py_ssize_t capacity = self->capacity ? self->capacity * 2 : 64;
    Event *grown = PyMem_Realloc(self->events, (size_t)capacity * sizeof(Event));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    self->events = grown;
    self->capacity = capacity;
    return 0;
}

/* Sift `event` (its references owned by the heap) into place; room was reserved. */
static void insert(EventHeap *self, Event event) {
    Event *events = self->events;
    Py_ssize_t i = self->size++;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!earlier(&event, &events[parent])) break;
        events[i] = events[parent];
        i = parent;
    }
    events[i] = event;
}

/* Remove the earliest event into *top (its references pass to the caller). */
static void remove_top(EventHeap *self, Event *top) {
    Event *events = self->events;
    *top = events[0];
    Event last = events[--self->size];
    Py_ssize_t size = self->size, i = 0;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= size) break;
        if (child + 1 < size && earlier(&events[child + 1], &events[child])) child++;
        if (!earlier(&events[child], &last)) break;
        events[i] = events[child];
        i = child;
    }
    if (size > 0) events[i] = last;
}

static double event_time(PyObject *value) {
    double at = PyFloat_AsDouble(value);
    if (at == -1.0 && PyErr_Occurred()) return at;
    if (at != at) PyErr_SetString(PyExc_ValueError, "an event's time cannot be NaN");
    return at;
}

static PyObject *EventHeap_push(EventHeap *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "push(at, handler, payload) takes 3 arguments");
        return NULL;
    }
    double at = event_time(args[0]);
    if (PyErr_Occurred() || reserve(self) < 0) return NULL;
    Event event = {at, self->pushed++, Py_NewRef(args[1]), Py_NewRef(args[2]), NULL};
    insert(self, event);
    Py_RETURN_NONE;
}

static PyObject *EventHeap_push_run(EventHeap *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "push_run(at, handler, payload, run) takes 4 arguments");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[3], &DecodeRunType)) {
        PyErr_SetString(PyExc_TypeError, "push_run: run must be a DecodeRun");
        return NULL;
    }
    double at = event_time(args[0]);
    if (PyErr_Occurred() || reserve(self) < 0) return NULL;
    Event event = {at, self->pushed++, Py_NewRef(args[1]), Py_NewRef(args[2]),
                   (DecodeRun *)Py_NewRef(args[3])};
    insert(self, event);
    Py_RETURN_NONE;
}

static int add_gap(EventHeap *self, double gap, long long times) {
    if (self->ngaps + times > self->gaps_capacity) {
        Py_ssize_t capacity = self->gaps_capacity ? self->gaps_capacity : 1024;
        while (capacity < self->ngaps + times) capacity *= 2;
        double *grown = PyMem_Realloc(self->gaps, (size_t)capacity * sizeof(double));
        if (grown == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        self->gaps = grown;
        self->gaps_capacity = capacity;
    }
    double *out = self->gaps + self->ngaps;
    for (long long k = 0; k < times; k++) out[k] = gap;
    self->ngaps += times;
    return 0;
}

static PyObject *event_tuple(Event *event) {
    PyObject *at = PyFloat_FromDouble(event->at);
    PyObject *result = at ? PyTuple_New(3) : NULL;
    if (result == NULL) {
        Py_XDECREF(at);
        Py_DECREF(event->handler);
        Py_DECREF(event->payload);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 0, at);
    PyTuple_SET_ITEM(result, 1, event->handler); /* the heap's references pass to the tuple */
    PyTuple_SET_ITEM(result, 2, event->payload);
    return result;
}

/* A run's event at `top->at`: deliver the step taken last, then take the next one and push its
 * event (1), or hand the event back to Python (0: the run is over or halted; -1: error). */
static int run_step(EventHeap *self, Event *top) {
    DecodeRun *run = top->run;
    if (add_gap(self, run->gap, run->n) < 0) return -1;
    if (run->halted || run->left <= 0) {
        run->left = 0;
        return 0;
    }
    if (reserve(self) < 0) return -1;
    double now = top->at;
    run->left--;
    run->context += run->n;
    /* Engine._decode_step: duration = base + kv * context, the histogram's bucket by bisect_left */
    double duration = run->base + run->kv * (double)run->context;
    double end = now + duration;
    run->last_end = end;
    run->blocks_taken += run->blocks[run->taken];
    run->taken++;
    run->busy += duration;
    Py_ssize_t bucket = 0;
    while (bucket < run->nbounds && run->bounds[bucket] < duration) bucket++;
    run->adds[bucket] += run->n;
    run->itl_total += duration * (double)run->n;
    run->gap = end - now;
    Event next = {end, self->pushed++, top->handler, top->payload, run}; /* references move on */
    insert(self, next);
    return 1;
}

static PyObject *EventHeap_pop(EventHeap *self, PyObject *Py_UNUSED(ignored)) {
    if (self->size == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty event heap");
        return NULL;
    }
    Event top;
    remove_top(self, &top);
    if (top.run != NULL) { /* a run's event popped here ends the run: its last step delivered */
        int added = add_gap(self, top.run->gap, top.run->n);
        top.run->left = 0;
        Py_DECREF(top.run);
        if (added < 0) {
            Py_DECREF(top.handler);
            Py_DECREF(top.payload);
            return NULL;
        }
    }
    return event_tuple(&top);
}

static PyObject *EventHeap_pop_before(EventHeap *self, PyObject *arg) {
    double limit = PyFloat_AsDouble(arg);
    if (limit == -1.0 && PyErr_Occurred()) return NULL;
    while (self->size && self->events[0].at < limit) {
        Event top;
        remove_top(self, &top);
        if (top.run == NULL) return event_tuple(&top);
        int stepped = run_step(self, &top);
        if (stepped == 1) continue; /* its references moved to the next event */
        Py_DECREF(top.run);
        if (stepped < 0) {
            Py_DECREF(top.handler);
            Py_DECREF(top.payload);
            return NULL;
        }
        return event_tuple(&top);
    }
    Py_RETURN_NONE;
}

static PyObject *EventHeap_add_gaps(EventHeap *self, PyObject *gaps) {
    if (!PyList_Check(gaps)) {
        PyErr_SetString(PyExc_TypeError, "add_gaps takes a list of floats");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(gaps);
    for (Py_ssize_t i = 0; i < n; i++) {
        double gap = PyFloat_AsDouble(PyList_GET_ITEM(gaps, i));
        if (gap == -1.0 && PyErr_Occurred()) return NULL;
        if (add_gap(self, gap, 1) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyObject *EventHeap_take_gaps(EventHeap *self, PyObject *Py_UNUSED(ignored)) {
    PyObject *module = PyImport_ImportModule("array");
    if (module == NULL) return NULL;
    PyObject *out = PyObject_CallMethod(module, "array", "s", "d");
    Py_DECREF(module);
    if (out == NULL) return NULL;
    if (self->ngaps) {
        PyObject *view = PyMemoryView_FromMemory((char *)self->gaps, self->ngaps * (Py_ssize_t)sizeof(double), PyBUF_READ);
        PyObject *done = view ? PyObject_CallMethod(out, "frombytes", "O", view) : NULL;
        Py_XDECREF(view);
        if (done == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(done);
    }
    PyMem_Free(self->gaps);
    self->gaps = NULL;
    self->ngaps = self->gaps_capacity = 0;
    return out;
}

static PyObject *EventHeap_next_time(EventHeap *self, PyObject *Py_UNUSED(ignored)) {
    return PyFloat_FromDouble(self->size ? self->events[0].at : Py_HUGE_VAL);
}

static Py_ssize_t EventHeap_len(EventHeap *self) {
    return self->size;
}

static int EventHeap_traverse(EventHeap *self, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < self->size; i++) {
        Py_VISIT(self->events[i].handler);
        Py_VISIT(self->events[i].payload);
        Py_VISIT(self->events[i].run);
    }
    return 0;
}

static int EventHeap_clear(EventHeap *self) {
    /* drop the references after emptying the heap: a finalizer they run sees it empty */
    Event *events = self->events;
    Py_ssize_t size = self->size;
    self->events = NULL;
    self->size = self->capacity = 0;
    for (Py_ssize_t i = 0; i < size; i++) {
        Py_DECREF(events[i].handler);
        Py_DECREF(events[i].payload);
        Py_XDECREF(events[i].run);
    }
    PyMem_Free(events);
    return 0;
}

static void EventHeap_dealloc(EventHeap *self) {
    PyObject_GC_UnTrack(self);
    EventHeap_clear(self);
    PyMem_Free(self->gaps);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef EventHeap_methods[] = {
    {"push", (PyCFunction)(void (*)(void))EventHeap_push, METH_FASTCALL,
     "push(at, handler, payload): an event at time `at`; ties come out in push order"},
    {"pop", (PyCFunction)EventHeap_pop, METH_NOARGS, "pop() -> (at, handler, payload): the earliest event"},
    {"next_time", (PyCFunction)EventHeap_next_time, METH_NOARGS,
     "next_time() -> the earliest event's time, inf when there is none"},
    {"push_run", (PyCFunction)(void (*)(void))EventHeap_push_run, METH_FASTCALL,
     "push_run(at, handler, payload, run): an event pop_before handles itself while `run` lasts"},
    {"pop_before", (PyCFunction)EventHeap_pop_before, METH_O,
     "pop_before(limit) -> (at, handler, payload) of the earliest event before `limit` that is not "
     "a run's step taken here, or None"},
    {"add_gaps", (PyCFunction)EventHeap_add_gaps, METH_O, "add_gaps(gaps): append inter-token gaps"},
    {"take_gaps", (PyCFunction)EventHeap_take_gaps, METH_NOARGS,
     "take_gaps() -> array('d') of every gap delivered, in event order; the buffer empties"},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods EventHeap_as_sequence = {
    .sq_length = (lenfunc)EventHeap_len,
};

static PyTypeObject EventHeapType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "epp.bench._eventheap.EventHeap",
    .tp_doc = "Events by (time, push order), as heapq orders (time, sequence number, ...) tuples.",
    .tp_basicsize = sizeof(EventHeap),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_new = PyType_GenericNew,
    .tp_dealloc = (destructor)EventHeap_dealloc,
    .tp_traverse = (traverseproc)EventHeap_traverse,
    .tp_clear = (inquiry)EventHeap_clear,
    .tp_methods = EventHeap_methods,
    .tp_as_sequence = &EventHeap_as_sequence,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_eventheap", "The virtual-time run's event queue in C.", -1, NULL,
};

PyMODINIT_FUNC PyInit__eventheap(void) {
    if (PyType_Ready(&EventHeapType) < 0 || PyType_Ready(&DecodeRunType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "EventHeap", (PyObject *)&EventHeapType) < 0 ||
        PyModule_AddObjectRef(m, "DecodeRun", (PyObject *)&DecodeRunType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
