/* The nesting depth of a JSON text, for epp/requests/parser.py's depth check (`nested_too_deep`).
 *
 * Why: orjson writes no deeper than 254 levels, so a body deeper than that is refused before the
 * EPP re-serialises any of it. In Python the check counted the body's `[` and `{` first (two
 * `bytes.count`, a byte-at-a-time loop in CPython 3.11: ~18 us for a 20 KB prompt, twice orjson's
 * whole parse) and wrote the body with orjson when the count passed the limit. Here one pass
 * finds the deepest level outside strings, skipping 16 bytes at a time to the next byte that
 * matters: inside a string `"` or `\`, outside one `"` and the four brackets. The Python check
 * stays as the fallback (same verdict on every body orjson reads; tests/unit/requests/
 * test_jsondepth.py checks both against the parsed body's own depth).
 *
 * The text is expected to be JSON orjson has already read (the caller parses first): on other
 * input the answer is the deepest run of unclosed brackets outside what reads as strings, never
 * below zero, and the scan never reads past the buffer. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* The first index >= i of p[:n] holding one of the bytes that matter in the state: `"` or `\`
 * inside a string, `"`, `[`, `]`, `{` or `}` outside one; n when there is none. */
static Py_ssize_t
next_special(const unsigned char *p, Py_ssize_t i, Py_ssize_t n, int in_string)
{
#ifdef __SSE2__
    const __m128i quote = _mm_set1_epi8('"');
    const __m128i backslash = _mm_set1_epi8('\\');
    const __m128i open_array = _mm_set1_epi8('['), close_array = _mm_set1_epi8(']');
    const __m128i open_object = _mm_set1_epi8('{'), close_object = _mm_set1_epi8('}');
    for (; i + 16 <= n; i += 16) {
        __m128i block = _mm_loadu_si128((const __m128i *)(p + i));
        __m128i hits = _mm_cmpeq_epi8(block, quote);
        if (in_string) {
            hits = _mm_or_si128(hits, _mm_cmpeq_epi8(block, backslash));
        } else {
            hits = _mm_or_si128(hits, _mm_cmpeq_epi8(block, open_array));
            hits = _mm_or_si128(hits, _mm_cmpeq_epi8(block, close_array));
            hits = _mm_or_si128(hits, _mm_cmpeq_epi8(block, open_object));
            hits = _mm_or_si128(hits, _mm_cmpeq_epi8(block, close_object));
        }
        unsigned mask = (unsigned)_mm_movemask_epi8(hits);
        if (mask)
            return i + __builtin_ctz(mask);
    }
#endif
    for (; i < n; i++) {
        unsigned char c = p[i];
        if (c == '"' || (in_string ? c == '\\' : (c == '[' || c == ']' || c == '{' || c == '}')))
            return i;
    }
    return n;
}

static Py_ssize_t
max_depth(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t depth = 0, deepest = 0, i = 0;
    int in_string = 0;
    while ((i = next_special(p, i, n, in_string)) < n) {
        unsigned char c = p[i];
        if (c == '"') {
            in_string = !in_string;
            i += 1;
        } else if (in_string) { /* a backslash: the byte after it is escaped, whatever it is */
            i += 2;
        } else {
            if (c == '[' || c == '{') {
                if (++depth > deepest)
                    deepest = depth;
            } else if (depth > 0) {
                depth--;
            }
            i += 1;
        }
    }
    return deepest;
}

PyDoc_STRVAR(depth_doc,
             "depth(data, /)\n--\n\n"
             "The deepest nesting of arrays and objects in the JSON text `data` (a bytes-like\n"
             "object): 0 for a scalar, 1 for `{}` or `[]`. Brackets inside strings do not count.");

static PyObject *
depth(PyObject *Py_UNUSED(module), PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t deepest = max_depth((const unsigned char *)view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(deepest);
}

static PyMethodDef methods[] = {
    {"depth", depth, METH_O, depth_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsondepth",
    "A JSON text's nesting depth in C (optional: epp.requests.parser's check is the fallback).",
    0, methods,
};

PyMODINIT_FUNC
PyInit__jsondepth(void)
{
    return PyModule_Create(&module);
}
