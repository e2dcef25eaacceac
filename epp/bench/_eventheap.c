/* The virtual-time run's event queue in C (epp/bench/events.py, EventHeap).
 *
 * A 1,000-endpoint run pops about 1.3 million events from a heap of ~1,000 (one per engine with
 * work). With heapq each pop compares ~10 tuples whose floats are separate objects, all cold again
 * by the next pop (~1.3 us, 5 % of a run); here the keys (time, then the order of pushing) sit in
 * one array of structs. Events come out in the same order as from heapq: by time, ties in push
 * order. Optional: events.py keeps the heapq version as the fallback and the reference
 * (tests/unit/bench/test_bench_events.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

typedef struct {
    double at;
    uint64_t seq;
    PyObject *handler;
    PyObject *payload;
} Event;

typedef struct {
    PyObject_HEAD
    Event *events;
    Py_ssize_t size, capacity;
    uint64_t pushed;
} EventHeap;

static inline int earlier(const Event *a, const Event *b) {
    return a->at < b->at || (a->at == b->at && a->seq < b->seq);
}

static PyObject *EventHeap_push(EventHeap *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "push(at, handler, payload) takes 3 arguments");
        return NULL;
    }
    double at = PyFloat_AsDouble(args[0]);
    if (at == -1.0 && PyErr_Occurred()) return NULL;
    if (at != at) {
        PyErr_SetString(PyExc_ValueError, "an event's time cannot be NaN");
        return NULL;
    }
    if (self->size == self->capacity) {
        Py_ssize_t capacity = self->capacity ? self->capacity * 2 : 64;
        Event *grown = PyMem_Realloc(self->events, (size_t)capacity * sizeof(Event));
        if (grown == NULL) return PyErr_NoMemory();
        self->events = grown;
        self->capacity = capacity;
    }
    Event event = {at, self->pushed++, Py_NewRef(args[1]), Py_NewRef(args[2])};
    Event *events = self->events;
    Py_ssize_t i = self->size++;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!earlier(&event, &events[parent])) break;
        events[i] = events[parent];
        i = parent;
    }
    events[i] = event;
    Py_RETURN_NONE;
}

static PyObject *EventHeap_pop(EventHeap *self, PyObject *Py_UNUSED(ignored)) {
    if (self->size == 0) {
        PyErr_SetString(PyExc_IndexError, "pop from an empty event heap");
        return NULL;
    }
    Event *events = self->events;
    Event top = events[0];
    PyObject *at = PyFloat_FromDouble(top.at);
    PyObject *result = at ? PyTuple_New(3) : NULL;
    if (result == NULL) {
        Py_XDECREF(at);
        return NULL;
    }
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
    PyTuple_SET_ITEM(result, 0, at);
    PyTuple_SET_ITEM(result, 1, top.handler); /* the heap's references pass to the tuple */
    PyTuple_SET_ITEM(result, 2, top.payload);
    return result;
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
    }
    PyMem_Free(events);
    return 0;
}

static void EventHeap_dealloc(EventHeap *self) {
    PyObject_GC_UnTrack(self);
    EventHeap_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef EventHeap_methods[] = {
    {"push", (PyCFunction)(void (*)(void))EventHeap_push, METH_FASTCALL,
     "push(at, handler, payload): an event at time `at`; ties come out in push order"},
    {"pop", (PyCFunction)EventHeap_pop, METH_NOARGS, "pop() -> (at, handler, payload): the earliest event"},
    {"next_time", (PyCFunction)EventHeap_next_time, METH_NOARGS,
     "next_time() -> the earliest event's time, inf when there is none"},
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
    if (PyType_Ready(&EventHeapType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "EventHeap", (PyObject *)&EventHeapType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
