/* The nesting depth of a JSON text, for epp/requests/parser.py's depth check (`nested_too_deep`).
 *
 * Why: orjson writes no deeper than 254 levels, so a body deeper than that is refused before the
 * EPP re-serialises any of it. In Python the check counted the body's `[` and `{` first (two
 * `bytes.count`, a byte-at-a-time loop in CPython 3.11: ~18 us for a 20 KB prompt, twice orjson's
 * whole parse) and wrote the body with orjson when the count passed the limit. Here one pass
 * finds the deepest level outside strings, skipping 16 bytes at a time to the next byte that
 * matters (`"`, `\` and the four brackets) and taking every such byte of a block in order, so a
 * body dense with them (escaped quotes and newlines of code or of JSON inside a prompt) costs a
 * few nanoseconds each, not a reload of the block each. The Python check stays as the fallback
 * (same verdict on every body orjson reads; tests/unit/requests/test_jsondepth.py checks both
 * against the parsed body's own depth).
 *
 * The text is expected to be JSON orjson has already read (the caller parses first): on other
 * input the answer is the deepest run of unclosed brackets outside what reads as strings, never
 * below zero, and the scan never reads past the buffer. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* One byte of the scan's state machine, for the bytes after the last whole 16-byte block (and for
 * every byte without SSE2; the block loop takes the same steps on its masks): how far to step
 * (2 over a backslash inside a string and the byte it escapes, else 1). */
static inline Py_ssize_t
step(unsigned char c, int *in_string, Py_ssize_t *depth, Py_ssize_t *deepest)
{
    if (c == '"') {
        *in_string = !*in_string;
    } else if (*in_string) {
        if (c == '\\')
            return 2; /* the byte after it is escaped, whatever it is */
    } else if (c == '[' || c == '{') {
        if (++*depth > *deepest)
            *deepest = *depth;
    } else if ((c == ']' || c == '}') && *depth > 0) {
        (*depth)--;
    }
    return 1;
}

static Py_ssize_t
max_depth(const unsigned char *p, Py_ssize_t n)
{
    Py_ssize_t depth = 0, deepest = 0, i = 0;
    int in_string = 0;
#ifdef __SSE2__
    /* Each block is loaded once, with two masks of the bytes that may matter: inside a string `"`
     * and `\\`, outside one `"` and the four brackets. The next byte taken is the first one past
     * `pos` of the mask of the state it meets, so brackets in a string cost nothing and a block
     * dense with escapes or brackets costs one load, not one a byte that matters. */
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i open_array = _mm_set1_epi8('['), close_array = _mm_set1_epi8(']');
    const __m128i open_object = _mm_set1_epi8('{'), close_object = _mm_set1_epi8('}');
    while (i + 16 <= n) {
        __m128i block = _mm_loadu_si128((const __m128i *)(p + i));
        __m128i quotes = _mm_cmpeq_epi8(block, quote);
        unsigned inside = (unsigned)_mm_movemask_epi8(_mm_or_si128(quotes, _mm_cmpeq_epi8(block, backslash)));
        if (in_string && !inside) { /* the common block: a prompt's plain text */
            i += 16;
            continue;
        }
        __m128i brackets = _mm_or_si128(_mm_cmpeq_epi8(block, open_array), _mm_cmpeq_epi8(block, close_array));
        brackets = _mm_or_si128(brackets, _mm_cmpeq_epi8(block, open_object));
        brackets = _mm_or_si128(brackets, _mm_cmpeq_epi8(block, close_object));
        unsigned outside = (unsigned)_mm_movemask_epi8(_mm_or_si128(quotes, brackets));
        unsigned pos = 0; /* bytes of the block already taken (17: the next block's first too) */
        unsigned mask;
        while ((mask = (in_string ? inside : outside) >> pos << pos) != 0) {
            unsigned k = (unsigned)__builtin_ctz(mask);
            unsigned char c = p[i + k];
            pos = k + 1;
            if (c == '"') {
                in_string = !in_string;
            } else if (in_string) { /* a backslash: the byte after it is escaped, whatever it is */
                pos = k + 2;
            } else if (c == '[' || c == '{') {
                if (++depth > deepest)
                    deepest = depth;
            } else if (depth > 0) {
                depth--;
            }
        }
        i += pos > 16 ? pos : 16;
    }
#endif
    while (i < n)
        i += step(p[i], &in_string, &depth, &deepest);
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
