/* The simulator tokenizer's words path in C (epp/sim/tokens.py, tokenize).
 *
 * Text of short lowercase words between single spaces (what the benchmarks generate) tokenizes to
 * one id per word: the CRC-32 of the word with its leading space, modulo the vocabulary. In Python
 * that is a regex check, a split and a zlib call per word (~20 us for a 100-word question, about a
 * twentieth of a 1,000-endpoint virtual run); here one pass over the text checks and hashes it.
 * Optional: tokens.py keeps the Python path as the fallback and the reference
 * (tests/unit/sim/test_tokens_compiled.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define MAX_WORD 5 /* tokens.py's WORD_CHUNK: a longer letter run is more than one piece */

static uint32_t crc_table[256];

static void crc_table_init(void) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        crc_table[n] = c;
    }
}

/* zlib's crc32 of `len` bytes (the standard reflected CRC-32, starting from 0). */
static inline uint32_t crc32_of(const unsigned char *p, Py_ssize_t len) {
    uint32_t c = 0xFFFFFFFFu;
    for (Py_ssize_t i = 0; i < len; i++) c = crc_table[(c ^ p[i]) & 0xFF] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

static inline int is_lower(unsigned char c) {
    return c >= 'a' && c <= 'z';
}

/* The number of words if `text` is ` ?[a-z]{1,5}(?: [a-z]{1,5})*` in full, else -1. */
static Py_ssize_t count_words(const unsigned char *text, Py_ssize_t len) {
    Py_ssize_t i = (len > 0 && text[0] == ' ') ? 1 : 0, words = 0;
    for (;;) {
        Py_ssize_t start = i;
        while (i < len && is_lower(text[i])) i++;
        if (i == start || i - start > MAX_WORD) return -1;
        words++;
        if (i == len) return words;
        if (text[i] != ' ') return -1;
        i++;
    }
}

static PyObject *word_ids(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *text_object;
    Py_ssize_t vocab;
    if (!PyArg_ParseTuple(args, "Un", &text_object, &vocab)) return NULL;
    if (vocab <= 0) {
        PyErr_SetString(PyExc_ValueError, "the vocabulary size must be positive");
        return NULL;
    }
    if (!PyUnicode_IS_ASCII(text_object)) Py_RETURN_NONE;
    const unsigned char *text = PyUnicode_1BYTE_DATA(text_object);
    Py_ssize_t len = PyUnicode_GET_LENGTH(text_object);
    Py_ssize_t count = count_words(text, len);
    if (count < 0) Py_RETURN_NONE;
    PyObject *ids = PyList_New(count);
    if (ids == NULL) return NULL;
    Py_ssize_t i = 0;
    for (Py_ssize_t n = 0; n < count; n++) {
        /* a word's piece starts at its leading space, if any */
        Py_ssize_t start = i, end = (text[i] == ' ') ? i + 1 : i;
        while (end < len && text[end] != ' ') end++;
        PyObject *id = PyLong_FromUnsignedLong(crc32_of(text + start, end - start) % (size_t)vocab);
        if (id == NULL) {
            Py_DECREF(ids);
            return NULL;
        }
        PyList_SET_ITEM(ids, n, id);
        i = end;
    }
    return ids;
}

static PyMethodDef module_methods[] = {
    {"word_ids", word_ids, METH_VARARGS,
     "word_ids(text, vocab): for text of 1-5 letter lowercase words between single spaces (an "
     "optional leading space), the CRC-32 of each word with its leading space modulo vocab; None "
     "for any other text"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_wordtokens", "The simulator tokenizer's words path in C.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__wordtokens(void) {
    crc_table_init();
    return PyModule_Create(&module);
}
