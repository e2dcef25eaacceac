/* A scheduling profile's weighted totals over many candidates, the candidates tied at the
 * highest total, and the min-max normalisation of `queue-scorer` and its kind, for
 * epp/scheduling/scoring.py (`weighted_totals`, `max_ties`, `min_max_score_array`).
 *
 * Why: over 1,000 candidates the profile summed its scorers' rows with five numpy calls
 * (concatenate, fmax, minimum, multiply, add.reduce) and `max-score-picker` found the best with
 * four more (maximum.reduce, ==, nonzero, tolist). Warm, each costs a few microseconds; inside a
 * 1,000-endpoint virtual-time run, where every numpy call meets a cold instruction and data cache
 * between two decisions, they took about 50 and 10 us a decision (thread CPU per call); the
 * min-max normalisation's seven (two reductions, scalar compares, a subtraction and a division)
 * took 17 us. Here each is one call and a pass or two over the rows.
 *
 * The same doubles as numpy's: a score is clamped to [0, 1] (NaN and negatives to 0, above 1 to
 * 1), multiplied by its weight, and added to a total that starts at 0.0, row after row in scorer
 * order: ((0 + w1 s1) + w2 s2) + ... . Built with -ffp-contract=off, so no multiply-add is fused.
 * A clamped -0.0 may stay -0.0 where numpy's fmax gives 0.0, which no total can tell: a sum from
 * +0.0 never becomes -0.0. The maximum propagates NaN as numpy's maximum.reduce does, so a NaN
 * total ties nothing. The Python versions stay as the fallback
 * (tests/unit/scheduling/test_scoresum.py checks both on the same arrays). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* 1: `view` is a C-contiguous one-dimensional buffer of native doubles (writable if asked);
 * 0 (no exception set) when `obj` is not one; -1 with an exception on anything else (no memory). */
static int
doubles(PyObject *obj, Py_buffer *view, int writable)
{
    int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (writable ? PyBUF_WRITABLE : 0);
    if (PyObject_GetBuffer(obj, view, flags) < 0) {
        /* no buffer (TypeError), or not one that is contiguous or writable (numpy: ValueError) */
        if (!PyErr_ExceptionMatches(PyExc_BufferError) && !PyErr_ExceptionMatches(PyExc_TypeError)
            && !PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    if (view->ndim != 1 || view->itemsize != sizeof(double) || view->format == NULL
        || strcmp(view->format, "d") != 0) {
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* 1: `view` is a C-contiguous one-dimensional buffer of native Py_ssize_t (numpy's intp), every
 * one in [0, limit); 0 (no exception set) when it is not; -1 with an exception on anything else. */
static int
rows_within(PyObject *obj, Py_buffer *view, Py_ssize_t limit)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        if (!PyErr_ExceptionMatches(PyExc_BufferError) && !PyErr_ExceptionMatches(PyExc_TypeError)
            && !PyErr_ExceptionMatches(PyExc_ValueError))
            return -1;
        PyErr_Clear();
        return 0;
    }
    const char *format = view->format;
    int integer = format != NULL && (strcmp(format, "n") == 0 || (strcmp(format, "l") == 0 && sizeof(long) == sizeof(Py_ssize_t))
                                     || (strcmp(format, "q") == 0 && sizeof(long long) == sizeof(Py_ssize_t)));
    if (view->ndim != 1 || view->itemsize != sizeof(Py_ssize_t) || !integer) {
        PyBuffer_Release(view);
        return 0;
    }
    const Py_ssize_t *rows = (const Py_ssize_t *)view->buf;
    Py_ssize_t n = view->len / (Py_ssize_t)sizeof(Py_ssize_t);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (rows[i] < 0 || rows[i] >= limit) {
            PyBuffer_Release(view);
            return 0;
        }
    }
    return 1;
}

/* The call's `(values, out, rows=None)` (parsed with `format`): `values` and `out` as doubles, with
 * rows (None: none) as rows of `values`, one per item of `out` (without rows `values` is as long as
 * `out`): 1 with the buffers held, 0 when one is not usable (nothing held, no exception), -1 with
 * an exception. */
static int
gather_args(PyObject *args, const char *format, Py_buffer *values, Py_buffer *out, Py_buffer *rows,
            int *has_rows)
{
    PyObject *values_obj, *out_obj, *rows_obj = Py_None;
    if (!PyArg_ParseTuple(args, format, &values_obj, &out_obj, &rows_obj))
        return -1;
    int ok = doubles(values_obj, values, 0);
    if (ok <= 0)
        return ok;
    ok = doubles(out_obj, out, 1);
    if (ok <= 0) {
        PyBuffer_Release(values);
        return ok;
    }
    Py_ssize_t count = out->len / (Py_ssize_t)sizeof(double);
    *has_rows = rows_obj != Py_None;
    if (*has_rows) {
        ok = rows_within(rows_obj, rows, values->len / (Py_ssize_t)sizeof(double));
        if (ok > 0 && rows->len / (Py_ssize_t)sizeof(Py_ssize_t) != count) {
            PyBuffer_Release(rows);
            ok = 0;
        }
    } else {
        ok = values->len == out->len;
    }
    if (ok <= 0) {
        PyBuffer_Release(values);
        PyBuffer_Release(out);
    }
    return ok;
}

static void
release_gather(Py_buffer *values, Py_buffer *out, Py_buffer *rows, int has_rows)
{
    PyBuffer_Release(values);
    PyBuffer_Release(out);
    if (has_rows)
        PyBuffer_Release(rows);
}

PyDoc_STRVAR(weighted_sum_doc,
"weighted_sum(rows, weights, out, /) -> bool\n\n"
"out[i] = ((0 + w0 * clamp(rows[0][i])) + w1 * clamp(rows[1][i])) + ... for each i, each score\n"
"clamped to [0, 1] (NaN to 0). False, with `out` untouched, when a row or `out` is not a\n"
"contiguous buffer of doubles of `out`'s length.");

static PyObject *
weighted_sum(PyObject *self, PyObject *args)
{
    PyObject *listed, *weights, *out_obj;
    if (!PyArg_ParseTuple(args, "O!O!O:weighted_sum", &PyList_Type, &listed, &PyTuple_Type, &weights, &out_obj))
        return NULL;
    /* The rows as a tuple of our own: a weight's __float__ (or, from Python 3.12, a row's
     * __buffer__) runs Python code that may empty or shrink the caller's list under the loop. */
    PyObject *rows = PyList_AsTuple(listed);
    if (rows == NULL)
        return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(rows);
    if (PyTuple_GET_SIZE(weights) != count) {
        PyErr_Format(PyExc_ValueError, "%zd weights for %zd rows", PyTuple_GET_SIZE(weights), count);
        Py_DECREF(rows);
        return NULL;
    }
    Py_buffer out;
    int ok = doubles(out_obj, &out, 1);
    if (ok <= 0) {
        Py_DECREF(rows);
        return ok < 0 ? NULL : Py_NewRef(Py_False);
    }
    Py_ssize_t n = out.len / (Py_ssize_t)sizeof(double);
    Py_buffer *views = PyMem_Calloc(count ? (size_t)count : 1, sizeof(Py_buffer));
    double *w = PyMem_Calloc(count ? (size_t)count : 1, sizeof(double));
    PyObject *result = NULL;
    Py_ssize_t held = 0;
    if (views == NULL || w == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t r = 0; r < count; r++) {
        w[r] = PyFloat_AsDouble(PyTuple_GET_ITEM(weights, r));
        if (w[r] == -1.0 && PyErr_Occurred())
            goto done;
    }
    for (; held < count; held++) {
        ok = doubles(PyTuple_GET_ITEM(rows, held), &views[held], 0);
        if (ok < 0)
            goto done;
        if (ok == 0 || views[held].len != out.len) {
            if (ok)
                PyBuffer_Release(&views[held]);
            result = Py_NewRef(Py_False);
            goto done;
        }
    }
    double *total = (double *)out.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        total[i] = 0.0;
    for (Py_ssize_t r = 0; r < count; r++) {
        const double *row = (const double *)views[r].buf;
        const double weight = w[r];
        for (Py_ssize_t i = 0; i < n; i++) {
            double v = row[i];
            if (!(v >= 0.0)) /* NaN and negatives */
                v = 0.0;
            else if (v > 1.0)
                v = 1.0;
            total[i] = total[i] + weight * v;
        }
    }
    result = Py_NewRef(Py_True);
done:
    for (Py_ssize_t r = 0; r < held; r++)
        PyBuffer_Release(&views[r]);
    PyMem_Free(views);
    PyMem_Free(w);
    PyBuffer_Release(&out);
    Py_DECREF(rows);
    return result;
}

PyDoc_STRVAR(max_ties_doc,
"max_ties(scores, /) -> list[int] | None\n\n"
"The positions of the scores equal to their maximum, in order (none when one is NaN, as numpy's\n"
"maximum propagates it). None when `scores` is not a contiguous buffer of doubles.");

static PyObject *
max_ties(PyObject *self, PyObject *obj)
{
    Py_buffer view;
    int ok = doubles(obj, &view, 0);
    if (ok <= 0)
        return ok < 0 ? NULL : Py_NewRef(Py_None);
    const double *s = (const double *)view.buf;
    Py_ssize_t n = view.len / (Py_ssize_t)sizeof(double);
    PyObject *tied = PyList_New(0);
    if (tied == NULL || n == 0)
        goto done;
    double best = s[0];
    int nan = best != best;
    for (Py_ssize_t i = 1; i < n && !nan; i++) {
        if (s[i] != s[i])
            nan = 1;
        else if (s[i] > best)
            best = s[i];
    }
    if (nan)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (s[i] == best) {
            PyObject *index = PyLong_FromSsize_t(i);
            if (index == NULL || PyList_Append(tied, index) < 0) {
                Py_XDECREF(index);
                Py_CLEAR(tied);
                goto done;
            }
            Py_DECREF(index);
        }
    }
done:
    PyBuffer_Release(&view);
    return tied;
}

PyDoc_STRVAR(min_max_doc,
"min_max(values, out, rows=None, /) -> bool\n\n"
"out[i] = (high - v[i]) / (high - low) over the values' lowest and highest (NaN if one is NaN),\n"
"or 1.0 everywhere when they are equal; v[i] is values[rows[i]] with rows (numpy intp), else\n"
"values[i]. False, with `out` untouched, when a buffer is not a contiguous one of doubles (rows:\n"
"of intp within `values`), the lengths differ or there are no values.");

static PyObject *
min_max(PyObject *self, PyObject *args)
{
    Py_buffer values, out, rows;
    int has_rows = 0;
    int ok = gather_args(args, "OO|O:min_max", &values, &out, &rows, &has_rows);
    if (ok <= 0)
        return ok < 0 ? NULL : Py_NewRef(Py_False);
    Py_ssize_t n = out.len / (Py_ssize_t)sizeof(double);
    if (n == 0) {
        release_gather(&values, &out, &rows, has_rows);
        return Py_NewRef(Py_False);
    }
    const double *v = (const double *)values.buf;
    const Py_ssize_t *at = has_rows ? (const Py_ssize_t *)rows.buf : NULL;
    double *o = (double *)out.buf;
#define VALUE(i) (at != NULL ? v[at[i]] : v[i])
    double low = VALUE(0), high = low;
    for (Py_ssize_t i = 1; i < n && low == low; i++) {
        double x = VALUE(i);
        if (x != x)
            low = high = x; /* NaN, as numpy's minimum and maximum propagate it */
        else if (x < low)
            low = x;
        else if (x > high)
            high = x;
    }
    if (high != high)
        low = high; /* a first value that is NaN */
    if (high == low) {
        for (Py_ssize_t i = 0; i < n; i++)
            o[i] = 1.0;
    } else {
        const double span = high - low;
        for (Py_ssize_t i = 0; i < n; i++) /* `out` may be `values`: each read before written */
            o[i] = (high - VALUE(i)) / span;
    }
#undef VALUE
    release_gather(&values, &out, &rows, has_rows);
    return Py_NewRef(Py_True);
}

PyDoc_STRVAR(complement_doc,
"complement(values, out, rows=None, /) -> bool\n\n"
"out[i] = 1.0 - v[i], v[i] being values[rows[i]] with rows (numpy intp), else values[i]. False,\n"
"with `out` untouched, when a buffer is not a contiguous one of doubles (rows: of intp within\n"
"`values`) or the lengths differ.");

static PyObject *
complement(PyObject *self, PyObject *args)
{
    Py_buffer values, out, rows;
    int has_rows = 0;
    int ok = gather_args(args, "OO|O:complement", &values, &out, &rows, &has_rows);
    if (ok <= 0)
        return ok < 0 ? NULL : Py_NewRef(Py_False);
    const double *v = (const double *)values.buf;
    double *o = (double *)out.buf;
    Py_ssize_t n = out.len / (Py_ssize_t)sizeof(double);
    if (has_rows) {
        const Py_ssize_t *at = (const Py_ssize_t *)rows.buf;
        for (Py_ssize_t i = 0; i < n; i++)
            o[i] = 1.0 - v[at[i]];
    } else {
        for (Py_ssize_t i = 0; i < n; i++)
            o[i] = 1.0 - v[i];
    }
    release_gather(&values, &out, &rows, has_rows);
    return Py_NewRef(Py_True);
}

static PyMethodDef methods[] = {
    {"min_max", min_max, METH_VARARGS, min_max_doc},
    {"complement", complement, METH_VARARGS, complement_doc},
    {"weighted_sum", weighted_sum, METH_VARARGS, weighted_sum_doc},
    {"max_ties", max_ties, METH_O, max_ties_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_scoresum", "A scheduling profile's weighted totals and their best, in C.", -1, methods,
};

PyMODINIT_FUNC
PyInit__scoresum(void)
{
    return PyModule_Create(&module);
}
