/* The page read of epp/datalayer/promtext.py in C: where a wanted name's sample line is
 * (`locate`: `_Wanted.locate` and its searches) and one wanted name's read (`read`:
 * `_Wanted.read`, the replay of what did not change, the samples of the family's group, what
 * the read leaves in its `Seen` for the next page). The same
 * results as the Python path, which stays as the reference and the fallback (a Hypothesis
 * differential test checks both give the same on generated and hostile pages).
 *
 * Why: CPython's multi-byte bytes.find steps through the page at ~0.2 ns a byte (a series a
 * page lacks costs a pass over 42 KB, ~9 us), and each line read costs a few Python calls (a
 * startswith, a regex match, float, the label cache, the Sample). Here the search compares 16
 * or 32 bytes at a time (the needle's first and last bytes, then memcmp) and a line is read with
 * memchr and byte tests. Label blocks are still parsed by the Python function given (once per
 * distinct block: the cache is the extractor's dict). */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h> /* T_OBJECT_EX, READONLY: Seen's slots */
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#endif

#define HINT_SLACK 1024            /* promtext.HINT_SLACK */
#define LABEL_CACHE_SIZE 16384     /* promtext._LABEL_CACHE_SIZE */
#define HELP_OR_TYPE_LENGTH 7      /* "# HELP " and "# TYPE " */
/* Lines read between two offers of the GIL (about 2 ms of reading): a large page read in the
 * scraper's worker thread then lets the event loop run meanwhile instead of holding it for its
 * whole family (70,000 lines of a hostile 3 MiB page held it ~120 ms). */
#define LINES_PER_GIL_OFFER 1024

/* Whether page[i:] starts with s (i >= 0). */
static inline int
starts(const char *p, Py_ssize_t n, Py_ssize_t i, const char *s, Py_ssize_t length)
{
    return i <= n - length && memcmp(p + i, s, (size_t)length) == 0;
}

/* What follows a sample's name on its line: `{`, a space or a tab (promtext._AFTER_NAME). */
static inline int
after_name(const char *p, Py_ssize_t n, Py_ssize_t i)
{
    return i < n && (p[i] == '{' || p[i] == ' ' || p[i] == '\t');
}

/* The regex engine's \s for bytes: [ \t\n\r\f\v]. */
static inline int
is_space(char c)
{
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* A blank within a line: [ \t\r\f\v] (promtext._BLANK). */
static inline int
is_blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\f' || c == '\v';
}

/* The end of the line at i: its newline, or `end`. */
static inline Py_ssize_t
line_end(const char *p, Py_ssize_t i, Py_ssize_t end)
{
    if (i >= end)
        return end;
    const char *newline = memchr(p + i, '\n', (size_t)(end - i));
    return newline ? newline - p : end;
}

/* Of the positions at + bit for each bit set in `mask` (where the needle's first and last bytes
 * are), the first where the whole needle (nlen >= 2) is, or -1. */
static inline Py_ssize_t
first_whole(const char *p, Py_ssize_t at, unsigned mask, const char *needle, Py_ssize_t nlen)
{
    while (mask) {
        int bit = __builtin_ctz(mask);
        if (memcmp(p + at + bit + 1, needle + 1, (size_t)(nlen - 2)) == 0)
            return at + bit;
        mask &= mask - 1;
    }
    return -1;
}

/* The first occurrence of needle (nlen >= 1) in p[begin:end], or -1: candidates are where both
 * its first and its last byte are, 16 positions at a time, then compared whole. */
static Py_ssize_t
search(const char *p, Py_ssize_t begin, Py_ssize_t end, const char *needle, Py_ssize_t nlen)
{
    Py_ssize_t i = begin, last = end - nlen; /* the last start that fits */
#ifdef __SSE2__
    const __m128i first_byte = _mm_set1_epi8(needle[0]);
    const __m128i last_byte = _mm_set1_epi8(needle[nlen - 1]);
    for (; nlen >= 2 && i + 15 <= last; i += 16) {
        __m128i head = _mm_loadu_si128((const __m128i *)(p + i));
        __m128i tail = _mm_loadu_si128((const __m128i *)(p + i + nlen - 1));
        unsigned mask = (unsigned)_mm_movemask_epi8(
            _mm_and_si128(_mm_cmpeq_epi8(head, first_byte), _mm_cmpeq_epi8(tail, last_byte)));
        Py_ssize_t hit = first_whole(p, i, mask, needle, nlen);
        if (hit >= 0)
            return hit;
    }
#endif
    for (; i <= last; i++) {
        const char *hit = memchr(p + i, needle[0], (size_t)(last - i + 1));
        if (hit == NULL)
            return -1;
        i = hit - p;
        if (memcmp(p + i + 1, needle + 1, (size_t)(nlen - 1)) == 0)
            return i;
    }
    return -1;
}

#ifdef HAVE_AVX2_PATH
static int avx2; /* whether this CPU has AVX2, set at import */

/* `search`, 32 positions at a time where the CPU can. */
__attribute__((target("avx2"))) static Py_ssize_t
search_avx2(const char *p, Py_ssize_t begin, Py_ssize_t end, const char *needle, Py_ssize_t nlen)
{
    Py_ssize_t i = begin, last = end - nlen;
    const __m256i first_byte = _mm256_set1_epi8(needle[0]);
    const __m256i last_byte = _mm256_set1_epi8(needle[nlen - 1]);
    for (; nlen >= 2 && i + 31 <= last; i += 32) {
        __m256i head = _mm256_loadu_si256((const __m256i *)(p + i));
        __m256i tail = _mm256_loadu_si256((const __m256i *)(p + i + nlen - 1));
        unsigned mask = (unsigned)_mm256_movemask_epi8(
            _mm256_and_si256(_mm256_cmpeq_epi8(head, first_byte), _mm256_cmpeq_epi8(tail, last_byte)));
        Py_ssize_t hit = first_whole(p, i, mask, needle, nlen);
        if (hit >= 0)
            return hit;
    }
    return search(p, i, end, needle, nlen);
}
#endif

/* The start of the first of the name's sample lines whose newline is in page[begin:end]
 * (`_Wanted._find`): needle is the newline and the name. */
static Py_ssize_t
find_line(const char *p, Py_ssize_t n, const char *needle, Py_ssize_t nlen, Py_ssize_t begin,
          Py_ssize_t end)
{
    if (end > n)
        end = n;
    while (begin <= end - nlen) {
#ifdef HAVE_AVX2_PATH
        Py_ssize_t at = avx2 ? search_avx2(p, begin, end, needle, nlen) : search(p, begin, end, needle, nlen);
#else
        Py_ssize_t at = search(p, begin, end, needle, nlen);
#endif
        if (at < 0)
            return -1;
        if (after_name(p, n, at + nlen))
            return at + 1;
        begin = at + 1; /* a longer name that starts with this one */
    }
    return -1;
}

/* `_Wanted.locate`: (start of a sample line of the name or -1, whether lines of its group may
 * come before it). */
static Py_ssize_t
locate_line(const char *p, Py_ssize_t n, const char *needle, Py_ssize_t nlen, Py_ssize_t hint,
            int *walk)
{
    const char *head = needle + 1;
    Py_ssize_t hlen = nlen - 1;
    *walk = 0;
    if (hint > 0 && starts(p, n, hint - 1, needle, nlen) && after_name(p, n, hint + hlen)) {
        *walk = 1;
        return hint;
    }
    int at_start = starts(p, n, 0, head, hlen) && after_name(p, n, hlen);
    Py_ssize_t begin = hint > HINT_SLACK ? hint - HINT_SLACK : 0;
    if (at_start && !begin)
        return 0;
    Py_ssize_t at = find_line(p, n, needle, nlen, begin, n);
    if (at >= 0) {
        *walk = begin > 0;
        return at;
    }
    if (!begin)
        return -1;
    /* From a hint past the page (or near the largest index) the search ends at the page's end:
     * begin + nlen there could pass the largest index and wrap below 0. */
    return at_start ? 0 : find_line(p, n, needle, nlen, 0, begin < n ? begin + nlen : n);
}

/* Whether a line starting at q may belong to the family's group (the `more` of
 * `_Wanted.__init__`): it starts with the family's name, is the family's HELP or TYPE, is blank,
 * or is a comment other than a HELP or TYPE. */
static int
may_belong(const char *p, Py_ssize_t n, Py_ssize_t q, const char *family, Py_ssize_t flen)
{
    if (starts(p, n, q, family, flen))
        return 1;
    if (q >= n)
        return 0;
    if (p[q] == '\n')
        return 1;
    if (p[q] != '#')
        return 0;
    if (starts(p, n, q, "# HELP ", HELP_OR_TYPE_LENGTH) || starts(p, n, q, "# TYPE ", HELP_OR_TYPE_LENGTH))
        return starts(p, n, q + HELP_OR_TYPE_LENGTH, family, flen);
    return 1;
}

typedef struct {
    Py_ssize_t block, block_end; /* block < 0: no label block */
    Py_ssize_t value, value_end;
} Line;

/* A sample line of the name at i, within p[:end] (the `line` pattern of `_Wanted.__init__`):
 * the name, then `{labels}` to the line's last `}` and blanks, or a space or tab and blanks;
 * then the value, the non-whitespace bytes that follow. */
static int
read_line(const char *p, Py_ssize_t end, Py_ssize_t i, const char *name, Py_ssize_t nlen, Line *line)
{
    if (!starts(p, end, i, name, nlen))
        return 0;
    Py_ssize_t j = i + nlen;
    if (j < end && p[j] == '{') {
        Py_ssize_t eol = line_end(p, j, end), k = eol - 1;
        while (k > j && p[k] != '}')
            k--;
        if (k <= j)
            return 0;
        line->block = j + 1;
        line->block_end = k;
        j = k + 1;
    }
    else if (j < end && (p[j] == ' ' || p[j] == '\t')) {
        line->block = line->block_end = -1;
        j++;
    }
    else
        return 0;
    while (j < end && is_blank(p[j]))
        j++;
    line->value = j;
    while (j < end && !is_space(p[j]))
        j++;
    line->value_end = j;
    return j > line->value;
}

/* float(value), or NULL with no error set if it does not parse. */
static PyObject *
parse_value(const char *p, const Line *line)
{
    const char *value = p + line->value;
    char *stop = NULL;
    /* The page is a bytes object (NUL at its end) and a value ends at whitespace or there. */
    double number = PyOS_string_to_double(value, &stop, NULL);
    if (number == -1.0 && PyErr_Occurred())
        PyErr_Clear();
    else if (stop == p + line->value_end)
        return PyFloat_FromDouble(number);
    /* Underscores, NUL bytes, garbage: exactly what float() says. */
    PyObject *text = PyBytes_FromStringAndSize(value, line->value_end - line->value);
    if (text == NULL)
        return NULL;
    PyObject *parsed = PyFloat_FromString(text);
    Py_DECREF(text);
    if (parsed == NULL && PyErr_ExceptionMatches(PyExc_ValueError))
        PyErr_Clear();
    return parsed;
}

typedef struct {
    const char *page;
    PyObject *cache, *parse_labels, *sample_type, *found;
} Reader;

/* Appends the line's Sample to r->found (nothing if its value does not parse); -1 on error. */
static int
add_sample(Reader *r, const Line *line)
{
    PyObject *number = parse_value(r->page, line);
    if (number == NULL)
        return PyErr_Occurred() ? -1 : 0;
    Py_ssize_t start = line->block < 0 ? 0 : line->block;
    Py_ssize_t length = line->block < 0 ? 0 : line->block_end - line->block;
    PyObject *block = PyBytes_FromStringAndSize(r->page + start, length);
    if (block == NULL)
        goto fail_number;
    PyObject *labels = PyDict_GetItemWithError(r->cache, block); /* borrowed */
    if (labels != NULL)
        Py_INCREF(labels);
    else {
        if (PyErr_Occurred())
            goto fail_block;
        if (PyDict_GET_SIZE(r->cache) >= LABEL_CACHE_SIZE)
            PyDict_Clear(r->cache);
        labels = PyObject_CallOneArg(r->parse_labels, block);
        if (labels == NULL)
            goto fail_block;
        if (PyDict_SetItem(r->cache, block, labels) < 0)
            goto fail_labels;
    }
    Py_DECREF(block);
    /* A Sample is a tuple subclass with no fields of its own: made as tuple.__new__ makes it. */
    PyTypeObject *type = (PyTypeObject *)r->sample_type;
    PyObject *sample = type->tp_alloc(type, 2);
    if (sample == NULL) {
        Py_DECREF(labels);
        Py_DECREF(number);
        return -1;
    }
    PyTuple_SET_ITEM(sample, 0, labels);
    PyTuple_SET_ITEM(sample, 1, number);
    int failed = PyList_Append(r->found, sample);
    Py_DECREF(sample);
    return failed;
fail_labels:
    Py_DECREF(labels);
fail_block:
    Py_DECREF(block);
fail_number:
    Py_DECREF(number);
    return -1;
}

static int
arity(const char *function, Py_ssize_t nargs, Py_ssize_t expected)
{
    if (nargs == expected)
        return 0;
    PyErr_Format(PyExc_TypeError, "%s expected %zd arguments, got %zd", function, expected, nargs);
    return -1;
}

static int
bytes_arg(PyObject *arg, const char *what, const char **data, Py_ssize_t *length)
{
    if (!PyBytes_Check(arg)) {
        PyErr_Format(PyExc_TypeError, "%s must be bytes, not %.100s", what, Py_TYPE(arg)->tp_name);
        return -1;
    }
    *data = PyBytes_AS_STRING(arg);
    *length = PyBytes_GET_SIZE(arg);
    return 0;
}

PyDoc_STRVAR(locate_doc,
"locate(page, needle, hint, /) -> (at, walk)\n\n"
"Where a sample line of the name (needle: a newline and the name) starts on the page, looked\n"
"for at hint first, then from a little before it, then from the start (-1: nowhere); and\n"
"whether lines of its group may come before it. promtext._Wanted.locate.");

static PyObject *
locate(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const char *page, *needle;
    Py_ssize_t n, nlen;
    if (arity("locate", nargs, 3) < 0)
        return NULL;
    if (bytes_arg(args[0], "page", &page, &n) < 0 || bytes_arg(args[1], "needle", &needle, &nlen) < 0)
        return NULL;
    if (nlen < 1 || needle[0] != '\n') {
        PyErr_SetString(PyExc_ValueError, "needle must be a newline and a name");
        return NULL;
    }
    Py_ssize_t hint = PyLong_AsSsize_t(args[2]);
    if (hint == -1 && PyErr_Occurred())
        return NULL;
    int walk;
    Py_ssize_t at = locate_line(page, n, needle, nlen, hint, &walk);
    PyObject *position = PyLong_FromSsize_t(at);
    if (position == NULL)
        return NULL;
    PyObject *result = PyTuple_Pack(2, position, walk ? Py_True : Py_False);
    Py_DECREF(position);
    return result;
}

/* The Samples of the name's lines in the group of its line at `at`, as a tuple, and the part of
 * the page [*lo, *hi) they depend on (*lo -1: not known). */
static PyObject *
read_group(Reader *r, Py_ssize_t n, Py_ssize_t at, int walk, const char *name, Py_ssize_t nlen,
           const char *family, Py_ssize_t flen, Py_ssize_t *lo, Py_ssize_t *hi)
{
    const char *p = r->page;
    Py_ssize_t lookahead = 1 + HELP_OR_TYPE_LENGTH + flen;
    Py_ssize_t start = at, line = at;
    if (walk) {
        /* Walk back over the group's lines before this one, up to its HELP or TYPE or another
         * family; `start` is the first of them that starts with the family's name. */
        while (line > 0) {
            Py_ssize_t previous = line - 2; /* page[line - 1] is the newline that ends it */
            while (previous >= 0 && p[previous] != '\n')
                previous--;
            line = previous + 1;
            if (starts(p, n, line, "# HELP ", HELP_OR_TYPE_LENGTH) ||
                starts(p, n, line, "# TYPE ", HELP_OR_TYPE_LENGTH))
                break;
            int of_family = starts(p, n, line, family, flen);
            if (!of_family && !(line < n && (p[line] == '#' || p[line] == '\n')))
                break;
            if (of_family)
                start = line;
        }
    }
    *lo = (walk || !at) ? (line > 0 ? line - 1 : 0) : -1;
    r->found = PyList_New(0);
    if (r->found == NULL)
        return NULL;
    Line one;
    int alone = 0;
    if (start == at && read_line(p, n, at, name, nlen, &one)) {
        /* A lone line: the line after it ends the group (or the page ends). */
        Py_ssize_t eol = line_end(p, one.value_end, n);
        if (eol == n || !may_belong(p, n, eol + 1, family, flen)) {
            alone = 1;
            *hi = eol + lookahead;
            if (add_sample(r, &one) < 0)
                goto fail;
        }
    }
    if (!alone) {
        Py_ssize_t end = line_end(p, start, n);
        while (end < n && may_belong(p, n, end + 1, family, flen))
            end = line_end(p, end + 1, n);
        *hi = end + lookahead;
        for (Py_ssize_t q = start, lines = 1; q < end; lines++) {
            if (lines % LINES_PER_GIL_OFFER == 0) {
                /* No borrowed reference is held here; the page is the caller's immutable bytes. */
                Py_BEGIN_ALLOW_THREADS
                Py_END_ALLOW_THREADS
            }
            if (read_line(p, end, q, name, nlen, &one) && add_sample(r, &one) < 0)
                goto fail;
            const char *newline = memchr(p + q, '\n', (size_t)(end - q));
            if (newline == NULL)
                break;
            q = newline - p + 1;
        }
    }
    PyObject *found = PyList_AsTuple(r->found);
    Py_CLEAR(r->found);
    return found;
fail:
    Py_CLEAR(r->found);
    return NULL;
}

/* The last sample_type tuple.__new__ made an instance of (a strong reference). */
static PyObject *checked_sample_type;

static int
check_reader_args(PyObject *cache, PyObject *sample_type)
{
    if (!PyDict_Check(cache)) {
        PyErr_SetString(PyExc_TypeError, "cache must be a dict");
        return -1;
    }
    if (sample_type == checked_sample_type)
        return 0;
    if (!PyType_Check(sample_type) || !PyType_IsSubtype((PyTypeObject *)sample_type, &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "sample_type must be a tuple subclass");
        return -1;
    }
    /* Samples are made as tuple.__new__ makes them, which refuses a subclass whose instances are
     * more than a tuple (a struct sequence: its deallocator reads fields past the two items). */
    PyObject *probe = PyObject_CallMethod((PyObject *)&PyTuple_Type, "__new__", "O()", sample_type);
    if (probe == NULL)
        return -1;
    Py_DECREF(probe);
    Py_INCREF(sample_type);
    Py_XSETREF(checked_sample_type, sample_type);
    return 0;
}

/* Seen's fields, and their names (interned at import). */
enum { AT, BACK, CHANGED, FROM_START, SAMPLES, TO_END, WINDOW, FIELDS };
static PyObject *field_names[FIELDS];

/* A Seen is read and written at every wanted name's read, a dozen fields: through
 * PyObject_GetAttr/SetAttr (a type lookup, a descriptor call each) that was a good part of a
 * changed page's read. Where each field of the Seen's type is a plain __slots__ slot (a member
 * descriptor of an object slot, the type's own attribute access), the slot is used directly; the
 * type is checked at every call by its version tag, which any change to the type (or its bases)
 * invalidates. Anything else goes through the attribute protocol, as before. */
static PyTypeObject *slots_type; /* the last type found so (a strong reference) */
static unsigned int slots_version;
static Py_ssize_t slots_offset[FIELDS];

/* Whether `type`'s fields are plain slots, recorded as the type above if so. */
static int
find_slots(PyTypeObject *type)
{
    Py_ssize_t offsets[FIELDS];
    if (type->tp_getattro != PyObject_GenericGetAttr || type->tp_setattro != PyObject_GenericSetAttr)
        return 0;
    for (int i = 0; i < FIELDS; i++) {
        PyObject *descr = _PyType_Lookup(type, field_names[i]); /* borrowed; sets the version tag */
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type))
            return 0;
        PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
        if (member->type != T_OBJECT_EX || (member->flags & READONLY) || member->offset <= 0 ||
            member->offset > type->tp_basicsize - (Py_ssize_t)sizeof(PyObject *) ||
            !PyType_IsSubtype(type, PyDescr_TYPE(descr)))
            return 0;
        offsets[i] = member->offset;
    }
    if (!(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG))
        return 0;
    Py_INCREF(type);
    Py_XSETREF(slots_type, type);
    slots_version = type->tp_version_tag;
    memcpy(slots_offset, offsets, sizeof offsets);
    return 1;
}

/* Where `seen`'s field is stored, or NULL if not in a plain slot. */
static inline PyObject **
field_slot(PyObject *seen, int field)
{
    PyTypeObject *type = Py_TYPE(seen);
    if (type != slots_type || type->tp_version_tag != slots_version ||
        !(type->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        if (!find_slots(type))
            return NULL;
    }
    return (PyObject **)((char *)seen + slots_offset[field]);
}

/* seen.<field> (a new reference), or NULL with an exception. */
static PyObject *
get_field(PyObject *seen, int field)
{
    PyObject **slot = field_slot(seen, field);
    if (slot == NULL)
        return PyObject_GetAttr(seen, field_names[field]);
    if (*slot == NULL) {
        PyErr_Format(PyExc_AttributeError, "'%.200s' object has no attribute '%U'", Py_TYPE(seen)->tp_name,
                     field_names[field]);
        return NULL;
    }
    return Py_NewRef(*slot);
}

/* seen.<field> = value; -1 with an exception on failure. */
static int
set_field(PyObject *seen, int field, PyObject *value)
{
    PyObject **slot = field_slot(seen, field);
    if (slot == NULL)
        return PyObject_SetAttr(seen, field_names[field], value);
    Py_XSETREF(*slot, Py_NewRef(value));
    return 0;
}

static int
get_ssize(PyObject *object, int field, Py_ssize_t *value)
{
    PyObject *number = get_field(object, field);
    if (number == NULL)
        return -1;
    *value = PyLong_AsSsize_t(number);
    Py_DECREF(number);
    return (*value == -1 && PyErr_Occurred()) ? -1 : 0;
}

static int
set_ssize(PyObject *object, int field, Py_ssize_t value)
{
    PyObject *number = PyLong_FromSsize_t(value);
    if (number == NULL)
        return -1;
    int failed = set_field(object, field, number);
    Py_DECREF(number);
    return failed;
}

static int
get_bool(PyObject *object, int field)
{
    PyObject *value = get_field(object, field);
    if (value == NULL)
        return -1;
    int truth = PyObject_IsTrue(value);
    Py_DECREF(value);
    return truth;
}

/* Seen.same: whether the page, with the name's line at `at`, has the bytes the last read looked
 * at (1), not (0), or an error (-1). */
static int
seen_same(PyObject *seen, const char *p, Py_ssize_t n, Py_ssize_t at)
{
    PyObject *window = get_field(seen, WINDOW);
    if (window == NULL)
        return -1;
    int same = 0;
    Py_ssize_t back, lo;
    if (window == Py_None)
        goto done;
    if (!PyBytes_Check(window)) {
        PyErr_SetString(PyExc_TypeError, "Seen.window must be bytes or None");
        same = -1;
        goto done;
    }
    if (get_ssize(seen, BACK, &back) < 0) {
        same = -1;
        goto done;
    }
    lo = at - back;
    if (lo < 0)
        goto done;
    if (lo) {
        int from_start = get_bool(seen, FROM_START);
        if (from_start != 0) {
            same = from_start < 0 ? -1 : 0;
            goto done;
        }
    }
    Py_ssize_t length = PyBytes_GET_SIZE(window);
    if (!starts(p, n, lo, PyBytes_AS_STRING(window), length))
        goto done;
    int to_end = get_bool(seen, TO_END);
    same = to_end < 0 ? -1 : (!to_end || n == lo + length);
done:
    Py_DECREF(window);
    return same;
}

PyDoc_STRVAR(read_doc,
"read(needle, family, cache, parse_labels, sample_type, page, seen, /) -> samples\n\n"
"One wanted name's Samples on the page (needle: a newline and the name), found from where\n"
"`seen` (a promtext.Seen) says it was; the samples `seen` holds when the bytes they depend on\n"
"did not change; `seen` updated for the next page. promtext._Wanted.read. The name's own\n"
"arguments first, so that a functools.partial holding them reads a page with no Python frame.");

static PyObject *
read_name(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    const char *p, *needle, *family;
    Py_ssize_t n, nlen, flen, hint;
    if (arity("read", nargs, 7) < 0)
        return NULL;
    PyObject *page = args[5], *seen = args[6];
    if (bytes_arg(page, "page", &p, &n) < 0 || bytes_arg(args[0], "needle", &needle, &nlen) < 0 ||
        bytes_arg(args[1], "family", &family, &flen) < 0 || check_reader_args(args[2], args[4]) < 0)
        return NULL;
    if (nlen < 1 || needle[0] != '\n') {
        PyErr_SetString(PyExc_ValueError, "needle must be a newline and a name");
        return NULL;
    }
    if (get_ssize(seen, AT, &hint) < 0)
        return NULL;
    int walk;
    Py_ssize_t at = locate_line(p, n, needle, nlen, hint, &walk);
    if (at < 0) {
        if (set_field(seen, CHANGED, hint >= 0 ? Py_True : Py_False) < 0 ||
            set_ssize(seen, AT, -1) < 0 || set_field(seen, WINDOW, Py_None) < 0)
            return NULL;
        return PyTuple_New(0);
    }
    int same = seen_same(seen, p, n, at);
    if (same < 0)
        return NULL;
    if (same) {
        if (set_ssize(seen, AT, at) < 0 || set_field(seen, CHANGED, Py_False) < 0)
            return NULL;
        return get_field(seen, SAMPLES);
    }
    Reader r = {p, args[2], args[3], args[4], NULL};
    Py_ssize_t lo, hi;
    PyObject *found = read_group(&r, n, at, walk, needle + 1, nlen - 1, family, flen, &lo, &hi);
    if (found == NULL)
        return NULL;
    if (set_ssize(seen, AT, at) < 0 || set_field(seen, SAMPLES, found) < 0 ||
        set_field(seen, CHANGED, Py_True) < 0)
        goto fail;
    if (lo < 0) {
        if (set_field(seen, WINDOW, Py_None) < 0)
            goto fail;
        return found;
    }
    PyObject *window = PyBytes_FromStringAndSize(p + lo, (hi < n ? hi : n) - lo);
    if (window == NULL)
        goto fail;
    int failed = set_ssize(seen, BACK, at - lo) < 0 || set_field(seen, WINDOW, window) < 0 ||
                 set_field(seen, TO_END, hi >= n ? Py_True : Py_False) < 0 ||
                 set_field(seen, FROM_START, lo == 0 ? Py_True : Py_False) < 0;
    Py_DECREF(window);
    if (failed)
        goto fail;
    return found;
fail:
    Py_DECREF(found);
    return NULL;
}

static PyMethodDef methods[] = {
    {"locate", (PyCFunction)(void (*)(void))locate, METH_FASTCALL, locate_doc},
    {"read", (PyCFunction)(void (*)(void))read_name, METH_FASTCALL, read_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_promscan",
    "The page read of epp.datalayer.promtext in C (optional: the Python path is the reference).",
    0, methods,
};

PyMODINIT_FUNC
PyInit__promscan(void)
{
    static const char *names[FIELDS] = {
        [AT] = "at", [BACK] = "back", [CHANGED] = "changed", [FROM_START] = "from_start",
        [SAMPLES] = "samples", [TO_END] = "to_end", [WINDOW] = "window",
    };
    for (int i = 0; i < FIELDS; i++)
        if (field_names[i] == NULL && (field_names[i] = PyUnicode_InternFromString(names[i])) == NULL)
            return NULL;
#ifdef HAVE_AVX2_PATH
    __builtin_cpu_init();
    avx2 = __builtin_cpu_supports("avx2");
#endif
    return PyModule_Create(&module);
}
