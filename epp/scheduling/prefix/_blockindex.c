/* The prefix index's tables in C: which endpoints hold which prompt blocks, and each endpoint's
 * blocks in least-recently-used order; and the prompt's chained block hashes (at the end).
 *
 * The pure-Python index (`index.py`) spends most of a 64-endpoint decision on cache misses on
 * per-block Python objects (dict entries, boxed int keys, OrderedDict nodes). Here a block is a
 * 32-byte record found through an open-addressing table of unboxed 64-bit keys, and each
 * (block, endpoint) pair is one 24-byte node that is at once in the endpoint's LRU list and in
 * the block's list of holders, found through a second table keyed by (block, endpoint). Endpoints
 * are small integer ids the Python wrapper hands out; the semantics are `index.py`'s, operation for
 * operation (see its docstrings), including the order of `match`'s result. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint64_t key;
    uint32_t value; /* 0 = empty slot */
    uint32_t unused;
} Slot;

typedef struct {
    Slot *slots;
    size_t mask; /* capacity - 1, capacity a power of two */
    size_t used;
} Table;

typedef struct {
    uint64_t key;
    uint64_t low;     /* holders with ids below 64, as a bitmask: match counts them per run of blocks */
    uint32_t holders; /* first node of its holder list, or next free block */
    uint32_t count;   /* endpoints holding it */
    uint32_t high;    /* holders with ids from 64 on (match walks the list for those) */
    uint32_t unused;
} Block;

typedef struct {
    uint32_t block, endpoint;
    uint32_t older, newer;     /* the endpoint's LRU list (0 = none); newer = next free node */
    uint32_t prev_holder, next_holder;
} Node;

typedef struct {
    uint32_t oldest, newest;
    uint32_t held;
    uint32_t seen_at; /* match's scratch: walk position + 1 where first seen, 0 = not seen */
} Owner;

typedef struct {
    PyObject_HEAD
    Table blocks_by_key, nodes_by_pair;
    Block *blocks;
    size_t blocks_cap, blocks_next, free_block;
    Node *nodes;
    size_t nodes_cap, nodes_next, free_node;
    Owner *owners;
    size_t owners_cap;
    size_t live_blocks;
    uint32_t *counts; /* match's scratch, one per owner (at least as many as owners) */
    size_t counts_cap;
} BlockIndex;

#if defined(__GNUC__) || defined(__clang__)
#define PREFETCH(address) __builtin_prefetch(address)
#define LOWEST_BIT(mask) ((uint32_t)__builtin_ctzll(mask))
#else
#define PREFETCH(address) ((void)(address))
static inline uint32_t LOWEST_BIT(uint64_t mask) {
    uint32_t bit = 0;
    while (!(mask & 1)) mask >>= 1, bit++;
    return bit;
}
#endif

/* Keys the mixer per process (from Python's randomised hash of bytes, so PYTHONHASHSEED fixes it as
 * it fixes dicts' string hashes): block contents cannot be ground towards one home slot, whose
 * linear-probing cluster every later insert and lookup near it would walk. */
static uint64_t mix_key;

static inline uint64_t mix(uint64_t x) {
    x ^= mix_key;
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

static int table_init(Table *t, size_t capacity) {
    t->slots = PyMem_Calloc(capacity, sizeof(Slot));
    if (t->slots == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    t->mask = capacity - 1;
    t->used = 0;
    return 0;
}

static inline uint32_t table_get(const Table *t, uint64_t key) {
    size_t i = mix(key) & t->mask;
    for (;;) {
        const Slot *s = &t->slots[i];
        if (s->value == 0) return 0;
        if (s->key == key) return s->value;
        i = (i + 1) & t->mask;
    }
}

static void table_place(Table *t, uint64_t key, uint32_t value) {
    size_t i = mix(key) & t->mask;
    while (t->slots[i].value != 0) i = (i + 1) & t->mask;
    t->slots[i].key = key;
    t->slots[i].value = value;
}

/* Room for one more key, so the `table_put` after it cannot fail. Kept at most half full. */
static int table_reserve(Table *t) {
    if ((t->used + 1) * 2 > t->mask + 1) {
        size_t old_cap = t->mask + 1;
        Slot *old = t->slots;
        if (table_init(t, old_cap * 2) < 0) {
            t->slots = old;
            t->mask = old_cap - 1;
            return -1;
        }
        for (size_t i = 0; i < old_cap; i++) {
            if (old[i].value != 0) {
                table_place(t, old[i].key, old[i].value);
                t->used++;
            }
        }
        PyMem_Free(old);
    }
    return 0;
}

/* `key` must be absent, and room reserved. */
static void table_put(Table *t, uint64_t key, uint32_t value) {
    table_place(t, key, value);
    t->used++;
}

/* Linear probing's backward-shift deletion: no tombstones. `key` must be present. */
static void table_del(Table *t, uint64_t key) {
    size_t i = mix(key) & t->mask;
    while (t->slots[i].key != key || t->slots[i].value == 0) i = (i + 1) & t->mask;
    size_t hole = i;
    for (;;) {
        i = (i + 1) & t->mask;
        Slot *s = &t->slots[i];
        if (s->value == 0) break;
        size_t home = mix(s->key) & t->mask;
        /* move s into the hole unless its home lies cyclically in (hole, i] */
        if (((i - home) & t->mask) >= ((i - hole) & t->mask)) {
            t->slots[hole] = *s;
            hole = i;
        }
    }
    t->slots[hole].value = 0;
    t->used--;
}

static inline uint64_t pair_key(uint32_t block, uint32_t endpoint) {
    return ((uint64_t)block << 32) | endpoint;
}

static int grow(void **items, size_t *cap, size_t size, size_t needed) {
    if (needed < *cap) return 0;
    size_t new_cap = *cap ? *cap : 1024;
    while (new_cap <= needed) new_cap *= 2;
    void *grown = PyMem_Realloc(*items, new_cap * size);
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memset((char *)grown + *cap * size, 0, (new_cap - *cap) * size);
    *items = grown;
    *cap = new_cap;
    return 0;
}

static int ensure_owner(BlockIndex *self, Py_ssize_t endpoint) {
    if (endpoint < 0 || endpoint >= UINT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "endpoint id out of range");
        return -1;
    }
    if (grow((void **)&self->counts, &self->counts_cap, sizeof(uint32_t), (size_t)endpoint) < 0) return -1;
    return grow((void **)&self->owners, &self->owners_cap, sizeof(Owner), (size_t)endpoint);
}

/* Hashes as unboxed keys; NULL with an exception set on a non-int or a value outside 64 bits. An
 * array('Q') (what `chain_keys` gives) is copied as it is, without an int per block. */
static uint64_t *unbox(PyObject *hashes, Py_ssize_t *n) {
    if (PyObject_CheckBuffer(hashes)) {
        Py_buffer view;
        if (PyObject_GetBuffer(hashes, &view, PyBUF_FORMAT | PyBUF_C_CONTIGUOUS) < 0) return NULL;
        if (view.itemsize != 8 || view.format == NULL || strcmp(view.format, "Q") != 0) {
            PyBuffer_Release(&view);
            PyErr_SetString(PyExc_TypeError, "hashes as a buffer must be unsigned 64-bit ('Q')");
            return NULL;
        }
        *n = view.len / 8;
        uint64_t *keys = PyMem_Malloc(view.len ? view.len : 1);
        if (keys == NULL) {
            PyBuffer_Release(&view);
            PyErr_NoMemory();
            return NULL;
        }
        memcpy(keys, view.buf, view.len);
        PyBuffer_Release(&view);
        return keys;
    }
    PyObject *seq = PySequence_Fast(hashes, "hashes must be a sequence");
    if (seq == NULL) return NULL;
    *n = PySequence_Fast_GET_SIZE(seq);
    uint64_t *keys = PyMem_Malloc((*n ? *n : 1) * sizeof(uint64_t));
    if (keys == NULL) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < *n; i++) {
        keys[i] = PyLong_AsUnsignedLongLong(items[i]);
        if (keys[i] == (uint64_t)-1 && PyErr_Occurred()) {
            PyMem_Free(keys);
            Py_DECREF(seq);
            return NULL;
        }
    }
    Py_DECREF(seq);
    return keys;
}

static void unlink_lru(BlockIndex *self, uint32_t id) {
    Node *node = &self->nodes[id];
    Owner *owner = &self->owners[node->endpoint];
    if (node->older) self->nodes[node->older].newer = node->newer;
    else owner->oldest = node->newer;
    if (node->newer) self->nodes[node->newer].older = node->older;
    else owner->newest = node->older;
}

static void append_lru(BlockIndex *self, uint32_t id) {
    Node *node = &self->nodes[id];
    Owner *owner = &self->owners[node->endpoint];
    node->older = owner->newest;
    node->newer = 0;
    if (owner->newest) self->nodes[owner->newest].newer = id;
    else owner->oldest = id;
    owner->newest = id;
}

/* The (block, endpoint) node, adding the block and the node if new; 0 with an exception set. */
/* Room for record `next + 1` (records are numbered from 1, 0 meaning none). */
static int reserve_record(void **items, size_t *cap, size_t size, size_t next) {
    if (next >= UINT32_MAX - 1) {
        PyErr_NoMemory();
        return -1;
    }
    return grow(items, cap, size, next + 1);
}

static uint32_t insert(BlockIndex *self, uint64_t key, uint32_t endpoint) {
    uint32_t b = table_get(&self->blocks_by_key, key);
    /* What can fail comes first: a MemoryError leaves no block without holders, nor a lost record. */
    if ((b == 0 && (table_reserve(&self->blocks_by_key) < 0 ||
                    (!self->free_block &&
                     reserve_record((void **)&self->blocks, &self->blocks_cap, sizeof(Block), self->blocks_next) < 0))) ||
        table_reserve(&self->nodes_by_pair) < 0 ||
        (!self->free_node &&
         reserve_record((void **)&self->nodes, &self->nodes_cap, sizeof(Node), self->nodes_next) < 0))
        return 0;
    if (b == 0) {
        if (self->free_block) {
            b = (uint32_t)self->free_block;
            self->free_block = self->blocks[b].holders;
        } else {
            b = (uint32_t)++self->blocks_next;
        }
        self->blocks[b] = (Block){.key = key};
        table_put(&self->blocks_by_key, key, b);
        self->live_blocks++;
    }
    uint32_t id;
    if (self->free_node) {
        id = (uint32_t)self->free_node;
        self->free_node = self->nodes[id].newer;
    } else {
        id = (uint32_t)++self->nodes_next;
    }
    table_put(&self->nodes_by_pair, pair_key(b, endpoint), id);
    Block *block = &self->blocks[b];
    self->nodes[id] = (Node){b, endpoint, 0, 0, 0, block->holders};
    if (block->holders) self->nodes[block->holders].prev_holder = id;
    block->holders = id;
    block->count++;
    if (endpoint < 64) block->low |= 1ULL << endpoint;
    else block->high++;
    append_lru(self, id);
    self->owners[endpoint].held++;
    return id;
}

static void evict_oldest(BlockIndex *self, uint32_t endpoint) {
    uint32_t id = self->owners[endpoint].oldest;
    Node *node = &self->nodes[id];
    uint32_t b = node->block;
    Block *block = &self->blocks[b];
    unlink_lru(self, id);
    if (node->prev_holder) self->nodes[node->prev_holder].next_holder = node->next_holder;
    else block->holders = node->next_holder;
    if (node->next_holder) self->nodes[node->next_holder].prev_holder = node->prev_holder;
    table_del(&self->nodes_by_pair, pair_key(b, endpoint));
    node->newer = (uint32_t)self->free_node;
    self->free_node = id;
    self->owners[endpoint].held--;
    if (endpoint < 64) block->low &= ~(1ULL << endpoint);
    else block->high--;
    if (--block->count == 0) {
        table_del(&self->blocks_by_key, block->key);
        block->holders = (uint32_t)self->free_block;
        self->free_block = b;
        self->live_blocks--;
    }
}

/* How many distinct keys among the `count` not held (a prompt may list a block twice); 0 with an
 * exception set when the scratch set cannot be allocated. */
static size_t distinct_new(const uint64_t *keys, const uint32_t *held, Py_ssize_t n, size_t count) {
    size_t capacity = 16;
    while (capacity < 2 * count) capacity *= 2;
    Table seen;
    if (table_init(&seen, capacity) < 0) return 0;
    size_t distinct = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (held[i] == 0 && table_get(&seen, keys[i]) == 0) {
            table_place(&seen, keys[i], 1);
            distinct++;
        }
    }
    PyMem_Free(seen.slots);
    return distinct;
}

/* Evict the endpoint's oldest blocks beyond `limit`. The victims' records are fetched for all of
 * them before the first is unlinked, so their cache misses overlap instead of following each
 * other. */
static void evict(BlockIndex *self, uint32_t e, size_t limit) {
    Owner *owner = &self->owners[e];
    if (owner->held <= limit) return;
    size_t excess = owner->held - limit;
    uint32_t id = owner->oldest;
    for (size_t k = 0; k < excess; k++, id = self->nodes[id].newer) {
        const Node *node = &self->nodes[id];
        PREFETCH(&self->blocks[node->block]);
        PREFETCH(&self->nodes_by_pair.slots[mix(pair_key(node->block, e)) & self->nodes_by_pair.mask]);
        PREFETCH(&self->nodes[node->prev_holder]);
        PREFETCH(&self->nodes[node->next_holder]);
    }
    id = owner->oldest;
    for (size_t k = 0; k < excess; k++, id = self->nodes[id].newer) {
        uint64_t key = self->blocks[self->nodes[id].block].key;
        PREFETCH(&self->blocks_by_key.slots[mix(key) & self->blocks_by_key.mask]);
    }
    while (owner->held > limit) evict_oldest(self, e);
}

static PyObject *BlockIndex_add(BlockIndex *self, PyObject *args) {
    Py_ssize_t endpoint, capacity;
    PyObject *hashes, *capacity_object;
    if (!PyArg_ParseTuple(args, "nOO", &endpoint, &hashes, &capacity_object)) return NULL;
    /* Clipped, not refused, beyond Py_ssize_t: no endpoint holds that many blocks (index.py's
     * semantics for any int, such as a configured or engine-reported 1e19). */
    capacity = PyNumber_AsSsize_t(capacity_object, NULL);
    if (capacity == -1 && PyErr_Occurred()) return NULL;
    if (ensure_owner(self, endpoint) < 0) return NULL;
    Py_ssize_t n;
    uint64_t *keys = unbox(hashes, &n);
    if (keys == NULL) return NULL;
    uint32_t e = (uint32_t)endpoint;
    uint32_t *held = PyMem_Malloc((n ? n : 1) * sizeof(uint32_t)); /* node id, 0 = not held */
    if (held == NULL) {
        PyMem_Free(keys);
        return PyErr_NoMemory();
    }
    /* Lookups in stages, each prefetching what the next reads, so misses overlap. */
    for (Py_ssize_t i = 0; i < n; i++) PREFETCH(&self->blocks_by_key.slots[mix(keys[i]) & self->blocks_by_key.mask]);
    for (Py_ssize_t i = 0; i < n; i++) {
        held[i] = table_get(&self->blocks_by_key, keys[i]);
        if (held[i]) PREFETCH(&self->nodes_by_pair.slots[mix(pair_key(held[i], e)) & self->nodes_by_pair.mask]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (held[i]) held[i] = table_get(&self->nodes_by_pair, pair_key(held[i], e));
        if (held[i]) PREFETCH(&self->nodes[held[i]]);
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        if (held[i]) {
            PREFETCH(&self->nodes[self->nodes[held[i]].older]);
            PREFETCH(&self->nodes[self->nodes[held[i]].newer]);
        }
    }
    /* Held blocks are refreshed first, in prompt order; the new ones appended after. */
    for (Py_ssize_t i = 0; i < n; i++) {
        if (held[i]) {
            unlink_lru(self, held[i]);
            append_lru(self, held[i]);
        }
    }
    /* Evicting before inserting picks the same victims (the oldest blocks, none of them new) and
     * leaves their freed records warm for the inserts to reuse; what the inserts push over the
     * capacity is evicted after them. */
    size_t limit = capacity > 1 ? (size_t)capacity : 1, inserts = 0;
    for (Py_ssize_t i = 0; i < n; i++) inserts += held[i] == 0;
    if (inserts > 1 && (inserts = distinct_new(keys, held, n, inserts)) == 0) {
        PyMem_Free(held);
        PyMem_Free(keys);
        return PyErr_NoMemory();
    }
    size_t current = self->owners[e].held;
    if (current + inserts > limit) evict(self, e, current + inserts - limit < current ? limit - inserts : 0);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (held[i]) continue;
        uint32_t b = table_get(&self->blocks_by_key, keys[i]);
        if (b && table_get(&self->nodes_by_pair, pair_key(b, e))) continue; /* listed twice */
        if (insert(self, keys[i], e) == 0) {
            PyMem_Free(held);
            PyMem_Free(keys);
            return NULL;
        }
    }
    PyMem_Free(held);
    PyMem_Free(keys);
    evict(self, e, limit);
    Py_RETURN_NONE;
}

static const Owner *sort_owners; /* qsort's context (the GIL is held) */

static int by_first_seen(const void *a, const void *b) {
    uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    if (sort_owners[x].seen_at != sort_owners[y].seen_at) return sort_owners[x].seen_at < sort_owners[y].seen_at ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Add `blocks` to the count of every endpoint in `mask`, noting those first seen at `start`. */
static size_t credit(BlockIndex *self, uint64_t mask, uint32_t blocks, uint32_t start, uint32_t *seen, size_t found) {
    for (; mask; mask &= mask - 1) {
        uint32_t e = LOWEST_BIT(mask);
        if (self->counts[e] == 0) {
            self->owners[e].seen_at = start + 1;
            seen[found++] = e;
        }
        self->counts[e] += blocks;
    }
    return found;
}

static PyObject *BlockIndex_match(BlockIndex *self, PyObject *args) {
    PyObject *hashes, *owners;
    if (!PyArg_ParseTuple(args, "OO!", &hashes, &PyList_Type, &owners)) return NULL;
    Py_ssize_t n;
    uint64_t *keys = unbox(hashes, &n);
    if (keys == NULL) return NULL;
    uint32_t *seen = PyMem_Malloc((self->owners_cap ? self->owners_cap : 1) * sizeof(uint32_t));
    if (seen == NULL) {
        PyMem_Free(keys);
        return PyErr_NoMemory();
    }
    size_t found = 0;
    for (Py_ssize_t i = 0; i < n; i++) PREFETCH(&self->blocks_by_key.slots[mix(keys[i]) & self->blocks_by_key.mask]);
    /* Holders below id 64 are credited once per run of blocks with the same bitmask (a prompt's
     * blocks come in long runs held by the same endpoints); the others one node at a time. */
    uint64_t run_mask = 0;
    uint32_t run_blocks = 0, run_start = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t b = table_get(&self->blocks_by_key, keys[i]);
        if (b == 0) break;
        const Block *block = &self->blocks[b];
        if (block->low != run_mask) {
            found = credit(self, run_mask, run_blocks, run_start, seen, found);
            run_mask = block->low;
            run_blocks = 0;
            run_start = (uint32_t)i;
        }
        run_blocks++;
        if (block->high == 0) continue;
        for (uint32_t id = block->holders; id; id = self->nodes[id].next_holder) {
            uint32_t e = self->nodes[id].endpoint;
            if (e >= 64 && self->counts[e]++ == 0) {
                self->owners[e].seen_at = (uint32_t)i + 1;
                seen[found++] = e;
            }
        }
    }
    found = credit(self, run_mask, run_blocks, run_start, seen, found);
    PyMem_Free(keys);
    /* Result order as index.py's: by the first block holding the endpoint, then by id. */
    sort_owners = self->owners;
    qsort(seen, found, sizeof(uint32_t), by_first_seen);
    PyObject *result = PyDict_New();
    for (size_t j = 0; j < found; j++) {
        uint32_t e = seen[j];
        if (result != NULL) {
            PyObject *count = PyLong_FromUnsignedLong(self->counts[e]);
            PyObject *owner = (Py_ssize_t)e < PyList_GET_SIZE(owners) ? PyList_GET_ITEM(owners, e) : NULL;
            if (owner == NULL) PyErr_SetString(PyExc_IndexError, "an endpoint id without an owner");
            if (count == NULL || owner == NULL || PyDict_SetItem(result, owner, count) < 0) Py_CLEAR(result);
            Py_XDECREF(count);
        }
        self->counts[e] = 0;
        self->owners[e].seen_at = 0;
    }
    PyMem_Free(seen);
    return result;
}

static PyObject *BlockIndex_remove(BlockIndex *self, PyObject *arg) {
    Py_ssize_t endpoint = PyLong_AsSsize_t(arg);
    if (endpoint == -1 && PyErr_Occurred()) return NULL;
    if (endpoint >= 0 && (size_t)endpoint < self->owners_cap) {
        while (self->owners[endpoint].held) evict_oldest(self, (uint32_t)endpoint);
    }
    Py_RETURN_NONE;
}

static PyObject *BlockIndex_held(BlockIndex *self, PyObject *arg) {
    Py_ssize_t endpoint = PyLong_AsSsize_t(arg);
    if (endpoint == -1 && PyErr_Occurred()) return NULL;
    size_t held = endpoint >= 0 && (size_t)endpoint < self->owners_cap ? self->owners[endpoint].held : 0;
    return PyLong_FromSize_t(held);
}

static PyObject *BlockIndex_size(BlockIndex *self, PyObject *Py_UNUSED(ignored)) {
    return PyLong_FromSize_t(self->live_blocks);
}

static PyObject *BlockIndex_lru(BlockIndex *self, PyObject *arg) {
    Py_ssize_t endpoint = PyLong_AsSsize_t(arg);
    if (endpoint == -1 && PyErr_Occurred()) return NULL;
    PyObject *blocks = PyList_New(0);
    if (blocks == NULL || endpoint < 0 || (size_t)endpoint >= self->owners_cap) return blocks;
    for (uint32_t id = self->owners[endpoint].oldest; id; id = self->nodes[id].newer) {
        PyObject *key = PyLong_FromUnsignedLongLong(self->blocks[self->nodes[id].block].key);
        if (key == NULL || PyList_Append(blocks, key) < 0) {
            Py_XDECREF(key);
            Py_DECREF(blocks);
            return NULL;
        }
        Py_DECREF(key);
    }
    return blocks;
}

/* The tables are made with the object, so one made without `__init__` (`BlockIndex.__new__`) has
 * them too. */
static PyObject *BlockIndex_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "", kwlist)) return NULL;
    BlockIndex *self = (BlockIndex *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    if (table_init(&self->blocks_by_key, 1024) < 0 || table_init(&self->nodes_by_pair, 1024) < 0) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static void BlockIndex_dealloc(BlockIndex *self) {
    PyMem_Free(self->blocks_by_key.slots);
    PyMem_Free(self->nodes_by_pair.slots);
    PyMem_Free(self->blocks);
    PyMem_Free(self->nodes);
    PyMem_Free(self->owners);
    PyMem_Free(self->counts);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef BlockIndex_methods[] = {
    {"add", (PyCFunction)BlockIndex_add, METH_VARARGS,
     "add(endpoint_id, hashes, capacity): refresh held blocks, append new ones, evict beyond capacity"},
    {"match", (PyCFunction)BlockIndex_match, METH_VARARGS,
     "match(hashes, owners): {owners[id]: matched blocks}, walking until a block nobody holds"},
    {"remove", (PyCFunction)BlockIndex_remove, METH_O, "remove(endpoint_id): forget what it holds"},
    {"held", (PyCFunction)BlockIndex_held, METH_O, "held(endpoint_id): blocks it holds"},
    {"lru", (PyCFunction)BlockIndex_lru, METH_O, "lru(endpoint_id): its blocks, least recently used first"},
    {"size", (PyCFunction)BlockIndex_size, METH_NOARGS, "distinct blocks held by anyone"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BlockIndexType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "epp.scheduling.prefix._blockindex.BlockIndex",
    .tp_basicsize = sizeof(BlockIndex),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Prefix index tables: blocks by 64-bit key, per-endpoint LRU lists, holder lists.",
    .tp_new = BlockIndex_new,
    .tp_dealloc = (destructor)BlockIndex_dealloc,
    .tp_methods = BlockIndex_methods,
};


/* --- chained block hashes: XXH64 as its specification defines it, one block after another, each
 * seeded with the hash before it (hashing.py's `_python_chain`, the same values as the xxhash package) */

#define XXH_P1 0x9E3779B185EBCA87ULL
#define XXH_P2 0xC2B2AE3D27D4EB4FULL
#define XXH_P3 0x165667B19E3779F9ULL
#define XXH_P4 0x85EBCA77C2B2AE63ULL
#define XXH_P5 0x27D4EB2F165667C5ULL

static inline uint64_t rotl64(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

static inline uint64_t read_le64(const unsigned char *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    return v;
}

static inline uint32_t read_le32(const unsigned char *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap32(v);
#endif
    return v;
}

static inline uint64_t xxh_round(uint64_t acc, uint64_t input) {
    return rotl64(acc + input * XXH_P2, 31) * XXH_P1;
}

static inline uint64_t xxh_merge(uint64_t acc, uint64_t lane) {
    return (acc ^ xxh_round(0, lane)) * XXH_P1 + XXH_P4;
}

static uint64_t xxh64(const unsigned char *p, size_t len, uint64_t seed) {
    const unsigned char *end = p + len;
    uint64_t h;
    if (len >= 32) {
        uint64_t v1 = seed + XXH_P1 + XXH_P2, v2 = seed + XXH_P2, v3 = seed, v4 = seed - XXH_P1;
        do {
            v1 = xxh_round(v1, read_le64(p));
            v2 = xxh_round(v2, read_le64(p + 8));
            v3 = xxh_round(v3, read_le64(p + 16));
            v4 = xxh_round(v4, read_le64(p + 24));
            p += 32;
        } while ((size_t)(end - p) >= 32);
        h = rotl64(v1, 1) + rotl64(v2, 7) + rotl64(v3, 12) + rotl64(v4, 18);
        h = xxh_merge(xxh_merge(xxh_merge(xxh_merge(h, v1), v2), v3), v4);
    } else {
        h = seed + XXH_P5;
    }
    h += (uint64_t)len;
    for (; end - p >= 8; p += 8) h = rotl64(h ^ xxh_round(0, read_le64(p)), 27) * XXH_P1 + XXH_P4;
    if (end - p >= 4) {
        h = rotl64(h ^ (uint64_t)read_le32(p) * XXH_P1, 23) * XXH_P2 + XXH_P3;
        p += 4;
    }
    for (; p < end; p++) h = rotl64(h ^ (uint64_t)*p * XXH_P5, 11) * XXH_P1;
    h ^= h >> 33;
    h *= XXH_P2;
    h ^= h >> 29;
    h *= XXH_P3;
    h ^= h >> 32;
    return h;
}

/* The chain over `data`'s blocks into `out` (ceil(len / block_size) entries). */
static void chain(const unsigned char *data, Py_ssize_t len, uint64_t seed, Py_ssize_t block_size, uint64_t *out) {
    for (Py_ssize_t start = 0, i = 0; start < len; start += block_size, i++) {
        Py_ssize_t size = len - start < block_size ? len - start : block_size;
        out[i] = seed = xxh64(data + start, (size_t)size, seed);
    }
}

/* chain_hashes' and chain_keys' arguments; -1 with an exception set. */
static int chain_args(PyObject *args, Py_buffer *data, uint64_t *seed, Py_ssize_t *block_size) {
    PyObject *seed_object;
    if (!PyArg_ParseTuple(args, "y*On", data, &seed_object, block_size)) return -1;
    *seed = PyLong_AsUnsignedLongLong(seed_object);
    if ((*seed == (uint64_t)-1 && PyErr_Occurred()) || *block_size <= 0) {
        if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "block_size must be positive");
        PyBuffer_Release(data);
        return -1;
    }
    return 0;
}

static PyObject *chain_keys(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer data;
    uint64_t seed;
    Py_ssize_t block_size;
    if (chain_args(args, &data, &seed, &block_size) < 0) return NULL;
    Py_ssize_t count = data.len / block_size + (data.len % block_size != 0); /* no overflow */
    PyObject *packed = PyBytes_FromStringAndSize(NULL, count * 8);
    if (packed != NULL) chain(data.buf, data.len, seed, block_size, (uint64_t *)PyBytes_AS_STRING(packed));
    PyBuffer_Release(&data);
    return packed;
}

static PyObject *chain_hashes(PyObject *Py_UNUSED(module), PyObject *args) {
    Py_buffer data;
    uint64_t seed;
    Py_ssize_t block_size;
    if (chain_args(args, &data, &seed, &block_size) < 0) return NULL;
    Py_ssize_t count = data.len / block_size + (data.len % block_size != 0); /* no overflow */
    uint64_t *keys = PyMem_Malloc((count ? count : 1) * sizeof(uint64_t));
    if (keys == NULL) {
        PyBuffer_Release(&data);
        return PyErr_NoMemory();
    }
    chain(data.buf, data.len, seed, block_size, keys);
    PyBuffer_Release(&data);
    PyObject *hashes = PyList_New(count);
    for (Py_ssize_t i = 0; hashes != NULL && i < count; i++) {
        PyObject *hash = PyLong_FromUnsignedLongLong(keys[i]);
        if (hash == NULL) Py_CLEAR(hashes);
        else PyList_SET_ITEM(hashes, i, hash);
    }
    PyMem_Free(keys);
    return hashes;
}

static PyMethodDef module_methods[] = {
    {"chain_hashes", chain_hashes, METH_VARARGS,
     "chain_hashes(data, seed, block_size): XXH64 of each block, seeded with the hash before it "
     "(the first with seed); a trailing partial block is hashed too"},
    {"chain_keys", chain_keys, METH_VARARGS,
     "chain_keys(data, seed, block_size): chain_hashes' values packed as native unsigned 64-bit "
     "ints (array('Q') bytes), with no int object per block"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_blockindex", "The prefix index's tables and block hashing in C.", -1, module_methods,
};

PyMODINIT_FUNC PyInit__blockindex(void) {
    PyObject *salt = PyBytes_FromString("epp.scheduling.prefix._blockindex");
    if (salt == NULL) return NULL;
    Py_hash_t salt_hash = PyObject_Hash(salt);
    Py_DECREF(salt);
    if (salt_hash == -1 && PyErr_Occurred()) return NULL;
    mix_key = mix((uint64_t)salt_hash);
    if (PyType_Ready(&BlockIndexType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    Py_INCREF(&BlockIndexType);
    if (PyModule_AddObject(m, "BlockIndex", (PyObject *)&BlockIndexType) < 0) {
        Py_DECREF(&BlockIndexType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
