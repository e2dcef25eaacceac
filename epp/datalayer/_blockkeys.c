/* The precise index's `cbor-fnv` block keys in C (epp/datalayer/kvblocks.py, TokenProcessor.keys).
 *
 * A key is FNV-1a-64 over the canonical CBOR of [parent, [tokens...], null]: every request hashes
 * its prompt's ~70 blocks and every BlockStored event its blocks, and in Python each block cost a
 * memo probe (and, uncached, a CBOR join and a cffi call). The tokens are read from the caller's
 * list in place: copying them into an array('I') first cost twice the hashing. Optional:
 * kvblocks.py keeps the Python chain, with its memo, as the fallback and the reference
 * (tests/unit/datalayer/test_blockkeys.py).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>

#define FNV_OFFSET 0xcbf29ce484222325ULL
#define FNV_PRIME 0x100000001b3ULL

static inline uint64_t fnv_byte(uint64_t h, unsigned char byte) {
    return (h ^ byte) * FNV_PRIME;
}

/* FNV-1a over the shortest CBOR head of `value` with major type `major`. */
static inline uint64_t fnv_cbor_uint(uint64_t h, uint64_t value, unsigned char major) {
    unsigned char top = (unsigned char)(major << 5);
    int bytes;
    if (value < 24) return fnv_byte(h, (unsigned char)(top | value));
    if (value < 0x100) {
        h = fnv_byte(h, top | 24);
        bytes = 1;
    } else if (value < 0x10000) {
        h = fnv_byte(h, top | 25);
        bytes = 2;
    } else if (value < 0x100000000ULL) {
        h = fnv_byte(h, top | 26);
        bytes = 4;
    } else {
        h = fnv_byte(h, top | 27);
        bytes = 8;
    }
    for (int shift = 8 * (bytes - 1); shift >= 0; shift -= 8) h = fnv_byte(h, (unsigned char)(value >> shift));
    return h;
}

/* A token as the unsigned 32-bit value array('I') would store, with its errors: TypeError for
 * what is not an integer, OverflowError outside 0..2**32-1. */
static int token_value(PyObject *item, uint32_t *out) {
    PyObject *number = PyLong_Check(item) ? Py_NewRef(item) : PyNumber_Index(item);
    if (number == NULL) return -1;
    unsigned long value = PyLong_AsUnsignedLong(number);
    Py_DECREF(number);
    if (value == (unsigned long)-1 && PyErr_Occurred()) return -1;
    if (value > 0xffffffffUL) {
        PyErr_SetString(PyExc_OverflowError, "token id greater than 2**32 - 1");
        return -1;
    }
    *out = (uint32_t)value;
    return 0;
}

static PyObject *cbor_fnv_keys(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *tokens_object, *parent_object;
    Py_ssize_t block_size;
    if (!PyArg_ParseTuple(args, "OnO", &tokens_object, &block_size, &parent_object)) return NULL;
    uint64_t parent = PyLong_AsUnsignedLongLong(parent_object);
    if (parent == (uint64_t)-1 && PyErr_Occurred()) return NULL;
    if (block_size <= 0) {
        PyErr_SetString(PyExc_ValueError, "block_size must be positive");
        return NULL;
    }
    /* a list or tuple is read in place (the token ids as the caller holds them: no array copy) */
    PyObject *tokens = PySequence_Fast(tokens_object, "tokens must be a sequence of integers");
    if (tokens == NULL) return NULL;
    PyObject **items = PySequence_Fast_ITEMS(tokens);
    Py_ssize_t count = PySequence_Fast_GET_SIZE(tokens) / block_size;
    PyObject *keys = PyList_New(count);
    for (Py_ssize_t i = 0; keys != NULL && i < count; i++) {
        uint64_t h = fnv_byte(FNV_OFFSET, 0x83);
        h = fnv_cbor_uint(h, parent, 0);
        h = fnv_cbor_uint(h, (uint64_t)block_size, 4);
        for (Py_ssize_t t = 0; t < block_size; t++) {
            uint32_t token;
            if (token_value(items[i * block_size + t], &token) < 0) {
                Py_CLEAR(keys);
                break;
            }
            h = fnv_cbor_uint(h, token, 0);
        }
        if (keys == NULL) break;
        parent = fnv_byte(h, 0xf6);
        PyObject *key = PyLong_FromUnsignedLongLong(parent);
        if (key == NULL) Py_CLEAR(keys);
        else PyList_SET_ITEM(keys, i, key);
    }
    Py_DECREF(tokens);
    return keys;
}

static PyMethodDef module_methods[] = {
    {"cbor_fnv_keys", cbor_fnv_keys, METH_VARARGS,
     "cbor_fnv_keys(tokens, block_size, parent): the chained key of each full block of tokens (a "
     "sequence of integers 0..2**32-1): FNV-1a-64 of CBOR [parent, [tokens], null]"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_blockkeys", "The precise index's cbor-fnv block keys in C.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__blockkeys(void) {
    return PyModule_Create(&module);
}
