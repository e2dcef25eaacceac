/* The nesting depth of a JSON text, its number of arrays and objects, and whether it holds an
 * integer too long for orjson, for epp/requests/jsontext.py's checks of a body (`scan`).
 *
 * Why the depth: orjson writes no deeper than 254 levels, so a body deeper than that is refused
 * before the EPP re-serialises any of it. In Python the check counted the body's `[` and `{` first
 * (two `bytes.count`, a byte-at-a-time loop in CPython 3.11: ~18 us for a 20 KB prompt, twice
 * orjson's whole parse) and wrote the body with orjson when the count passed the limit. Here one
 * pass finds the deepest level outside strings, skipping 16 bytes at a time to the next byte that
 * matters (`"`, `\` and the four brackets) and taking every such byte of a block in order, so a
 * body dense with them (escaped quotes and newlines of code or of JSON inside a prompt) costs a
 * few nanoseconds each, not a reload of the block each. The Python check stays as the fallback
 * (same verdict on every body orjson reads; tests/unit/requests/test_jsondepth.py checks both
 * against the parsed body's own depth).
 *
 * Why the count of arrays and objects: orjson spends about 0.8 us on each array it makes (4 s for a
 * 16 MiB body of `[],`, on the event loop, every other request waiting), so a body with more than
 * the EPP takes is refused before it is parsed.
 *
 * Why the integers: orjson reads an integer beyond 64 bits as a float (100000000000000000000 as
 * 1e20), which the EPP would then forward rewritten. The same pass notes a run of LONG_RUN
 * digits and minus signs outside strings (every integer orjson cannot keep has one; a run that
 * is a long fraction or exponent only costs the caller a check of the values): in a block with
 * bytes outside strings, the digits among them are one more mask, and the run is carried from
 * block to block.
 *
 * The text need not be JSON (the caller scans before it parses): on other input the answer is the
 * deepest run of unclosed brackets outside what reads as strings, never below zero, and the
 * opening brackets counted there, and the scan never reads past the buffer. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif

/* Digits (and a minus sign) in a row outside strings from which an integer may be past orjson's
 * 64 bits (-2**63 .. 2**64 - 1): 20 digits, or a minus and 19 digits. Every integer of 19 digits
 * fits, so a random 63-bit seed does not count. */
#define LONG_RUN 20

/* The scan's state, carried from byte to byte and from block to block. */
struct scan {
    Py_ssize_t depth, deepest;
    Py_ssize_t containers; /* opening brackets outside strings */
    Py_ssize_t digits; /* digits and minus signs in a row outside strings, up to the last byte taken */
    int in_string;
    int long_number; /* a run of LONG_RUN digits was seen */
};

/* One byte of the scan's state machine, for the bytes after the last whole 16-byte block (and for
 * every byte without SSE2; the block loop takes the same steps on its masks): how far to step
 * (2 over a backslash inside a string and the byte it escapes, else 1). */
static inline Py_ssize_t
step(unsigned char c, struct scan *s)
{
    if (!s->in_string && ((c >= '0' && c <= '9') || c == '-')) {
        if (++s->digits >= LONG_RUN)
            s->long_number = 1;
        return 1;
    }
    s->digits = 0;
    if (c == '"') {
        s->in_string = !s->in_string;
    } else if (s->in_string) {
        if (c == '\\')
            return 2; /* the byte after it is escaped, whatever it is */
    } else if (c == '[' || c == '{') {
        s->containers++;
        if (++s->depth > s->deepest)
            s->deepest = s->depth;
    } else if ((c == ']' || c == '}') && s->depth > 0) {
        s->depth--;
    }
    return 1;
}

#ifdef __SSE2__
/* Bits first..last-1 of a block's 16-bit mask. */
static inline unsigned
span(unsigned first, unsigned last)
{
    return first >= last ? 0 : ((1u << last) - 1) & ~((1u << first) - 1);
}

/* The digit run through a block whose bytes outside strings are `outside` (a mask) and whose
 * digits (and minus signs) are `digits`: a run carried in joins the block's first digits, and the
 * block's last digits are carried out. No run inside one block reaches LONG_RUN. */
static inline void
carry_digits(struct scan *s, unsigned digits, unsigned outside)
{
    digits &= outside;
    unsigned lead = (unsigned)__builtin_ctz(~digits);         /* 16 when the whole block is digits */
    unsigned trail = (unsigned)__builtin_clz(~(digits << 16)); /* likewise */
    s->long_number |= s->digits + lead >= LONG_RUN;            /* without branches: token ids */
    s->digits = digits == 0xFFFF ? s->digits + 16 : trail;     /* are all runs and ends of runs */
}
#endif

static void
scan_text(const unsigned char *p, Py_ssize_t n, struct scan *s)
{
    Py_ssize_t i = 0;
#ifdef __SSE2__
    /* Each block is loaded once, with two masks of the bytes that may matter: inside a string `"`
     * and `\\`, outside one `"` and the four brackets. The next byte taken is the first one past
     * `pos` of the mask of the state it meets, so brackets in a string cost nothing and a block
     * dense with escapes or brackets costs one load, not one a byte that matters. A block with
     * bytes outside strings also gets the mask of its digits, for the runs of `carry_digits`. */
    const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
    const __m128i open_array = _mm_set1_epi8('['), close_array = _mm_set1_epi8(']');
    const __m128i open_object = _mm_set1_epi8('{'), close_object = _mm_set1_epi8('}');
    const __m128i zero = _mm_set1_epi8('0'), nine = _mm_set1_epi8(9), minus = _mm_set1_epi8('-');
    while (i + 16 <= n) {
        __m128i block = _mm_loadu_si128((const __m128i *)(p + i));
        __m128i quotes = _mm_cmpeq_epi8(block, quote);
        unsigned inside = (unsigned)_mm_movemask_epi8(_mm_or_si128(quotes, _mm_cmpeq_epi8(block, backslash)));
        if (s->in_string && !inside) { /* the common block: a prompt's plain text */
            i += 16;
            continue;
        }
        __m128i brackets = _mm_or_si128(_mm_cmpeq_epi8(block, open_array), _mm_cmpeq_epi8(block, close_array));
        brackets = _mm_or_si128(brackets, _mm_cmpeq_epi8(block, open_object));
        brackets = _mm_or_si128(brackets, _mm_cmpeq_epi8(block, close_object));
        unsigned outside = (unsigned)_mm_movemask_epi8(_mm_or_si128(quotes, brackets));
        unsigned pos = 0; /* bytes of the block already taken (17: the next block's first too) */
        unsigned out_from = 0; /* where the block's current stretch outside strings began */
        unsigned out_mask = 0; /* the block's bytes outside strings */
        unsigned mask;
        while ((mask = (s->in_string ? inside : outside) >> pos << pos) != 0) {
            unsigned k = (unsigned)__builtin_ctz(mask);
            unsigned char c = p[i + k];
            pos = k + 1;
            if (c == '"') {
                if (s->in_string)
                    out_from = pos;
                else
                    out_mask |= span(out_from, k);
                s->in_string = !s->in_string;
            } else if (s->in_string) { /* a backslash: the byte after it is escaped, whatever it is */
                pos = k + 2;
            } else if (c == '[' || c == '{') {
                s->containers++;
                if (++s->depth > s->deepest)
                    s->deepest = s->depth;
            } else if (s->depth > 0) {
                s->depth--;
            }
        }
        if (!s->in_string)
            out_mask |= span(out_from, 16);
        __m128i offset = _mm_sub_epi8(block, zero); /* a digit: 0..9 unsigned */
        __m128i digits = _mm_cmpeq_epi8(_mm_min_epu8(offset, nine), offset);
        digits = _mm_or_si128(digits, _mm_cmpeq_epi8(block, minus));
        carry_digits(s, (unsigned)_mm_movemask_epi8(digits), out_mask);
        i += pos > 16 ? pos : 16;
    }
#endif
    while (i < n)
        i += step(p[i], s);
}

PyDoc_STRVAR(scan_doc,
             "scan(data, /)\n--\n\n"
             "(depth, containers, long_number) of the JSON text `data` (a bytes-like object): the\n"
             "deepest nesting of arrays and objects (0 for a scalar, 1 for `{}` or `[]`; brackets\n"
             "inside strings do not count), how many arrays and objects it opens, and whether 20\n"
             "digits and minus signs or more stand in a row outside strings (an integer orjson\n"
             "may not read exactly).");

static PyObject *
scan(PyObject *Py_UNUSED(module), PyObject *data)
{
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0)
        return NULL;
    struct scan s = {0, 0, 0, 0, 0, 0};
    scan_text((const unsigned char *)view.buf, view.len, &s);
    PyBuffer_Release(&view);
    return Py_BuildValue("(nnO)", s.deepest, s.containers, s.long_number ? Py_True : Py_False);
}

static PyMethodDef methods[] = {
    {"scan", scan, METH_O, scan_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_jsondepth",
    "A JSON text's nesting depth, arrays and objects, and long integers in C (optional: epp.requests.jsontext's checks are the fallback).",
    0, methods,
};

PyMODINIT_FUNC
PyInit__jsondepth(void)
{
    return PyModule_Create(&module);
}
