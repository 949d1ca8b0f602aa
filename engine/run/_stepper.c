/* engine.run._stepper: the interpreter's whole-run loop and the timeline's
 * bookkeeping for the common nodes, in C.
 *
 * engine/run/machine.py (Machine.run and the _run_* handlers) and
 * engine/run/timeline.py (Timeline._keep) are the reference: this file does what
 * they do, for the cases that make up most steps of a real model, and hands
 * everything else to them.  It is optional (setup.py builds it when a C
 * compiler is there; see engine/run/stepper.py), and it changes no result: the
 * tests run models with and without it and compare the timelines.
 *
 * Why: with summaries only, a conv net spends most of its overhead in the
 * Python bytecode run for each step (dispatch, the step record, the memory
 * accounting of each value), and it runs slowly there, with its caches
 * emptied by the convolution before it.  What stays in Python is what costs
 * the same either way or is rare: the op itself, a tensor's first accounting
 * and its summary (Timeline._keep_tensor), lists holding tensors
 * (Timeline._keep_container), the copies an in-place op's record keeps,
 * loops, forks, a callee's first resolution and every error path.
 *
 * Handled here:
 *   - the loop of Machine.run: cancel and error checks, dispatch on the
 *     node's kind;
 *   - prim::Constant (Machine._run_constant);
 *   - prim::ListConstruct / prim::TupleConstruct (Machine._run_construct);
 *   - prim::GetAttr of a module's parameter, buffer or submodule
 *     (the first branch of Machine._run_getattr);
 *   - prim::CallMethod whose callee the program has cached for the node
 *     (Machine._run_call_method), and the return from a call or an If branch
 *     (Machine._exit_block; loop iterations, forks and the run's end stay there);
 *   - leaf ops that change no list or dict, outside autocast (Machine._run_leaf;
 *     an op that writes its inputs has them kept by Machine._inputs_before_write);
 *   - Timeline.add and Timeline._keep for values that are not containers of
 *     tensors.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <time.h>

/* ------------------------------------------------------------ configuration */

/* Set once by configure(): the classes and constants the Python side uses. */
static PyObject *StepRecordType;   /* engine.run.timeline.StepRecord */
static PyObject *TensorType;       /* torch.Tensor */
static PyObject *ScriptModuleType; /* torch._C.ScriptModule */
static PyObject *NotTensors;       /* timeline._NOT_TENSORS: types that never hold a tensor */
static PyObject *ModuleMembers;    /* machine._MODULE_MEMBERS: what a module's GetAttr fast path yields */
static PyObject *Handlers;         /* machine._HANDLERS: node kind -> handler */
static PyObject *FrameType;        /* machine.Frame */
static PyObject *ActivationType;   /* machine.Activation */
static PyObject *LeafHandler;      /* Machine._run_leaf */
static PyObject *GetAttrHandler;   /* Machine._run_getattr */
static Py_ssize_t CopyLimit;       /* timeline.COPY_LIMIT */
static PyObject *Zero;

enum { K_LEAF, K_CONSTANT, K_GETATTR, K_LIST, K_TUPLE, K_CALL_METHOD, K_OTHER };
static PyObject *KindCodes; /* kind -> code, for the kinds handled here and those with a Python handler */

static PyObject *s_stack, *s_error, *s_cancel, *s_value, *s_timeline, *s_leaf_ops, *s_autocast, *s_records,
    *s_refs, *s_dropped_cache, *s_version, *s_untyped_storage, *s_data_ptr, *s_keep_tensor, *s_keep_container,
    *s_exit_block, *s_getattr, *s_name, *s_attr_overlay, *s_module_storages, *s_fail, *s_writes_now,
    *s_keep_py, *s_free, *s_inputs_before_write, *s_program, *s_callees, *s_inputs_attr, *s_body, *s_loop,
    *s_then, *s_else, *s_fork_kind, *s_body_kind, *s_entered, *s_done, *s_first, *s_grew;

static int intern_names(void)
{
#define NAME(var, text)                                  \
    if ((var = PyUnicode_InternFromString(text)) == NULL) \
        return -1;
    NAME(s_stack, "stack") NAME(s_error, "error") NAME(s_cancel, "_cancel") NAME(s_value, "value")
    NAME(s_timeline, "timeline") NAME(s_leaf_ops, "_leaf_ops") NAME(s_autocast, "_autocast")
    NAME(s_records, "records") NAME(s_refs, "_refs") NAME(s_dropped_cache, "_dropped_cache")
    NAME(s_version, "_version") NAME(s_untyped_storage, "untyped_storage") NAME(s_data_ptr, "data_ptr")
    NAME(s_keep_tensor, "_keep_tensor") NAME(s_keep_container, "_keep_container")
    NAME(s_exit_block, "_exit_block") NAME(s_getattr, "getattr") NAME(s_name, "name")
    NAME(s_attr_overlay, "_attr_overlay") NAME(s_module_storages, "_module_storages") NAME(s_fail, "_fail")
    NAME(s_writes_now, "writes_now") NAME(s_keep_py, "_keep") NAME(s_free, "_free")
    NAME(s_inputs_before_write, "_inputs_before_write") NAME(s_program, "program") NAME(s_callees, "_callees")
    NAME(s_inputs_attr, "inputs") NAME(s_body, "body") NAME(s_loop, "loop") NAME(s_then, "then")
    NAME(s_else, "else") NAME(s_fork_kind, "prim::fork")
    NAME(s_body_kind, "body") NAME(s_entered, "entered") NAME(s_done, "done")
    NAME(s_first, "_first") NAME(s_grew, "_grew")
#undef NAME
    return 0;
}

static int configured(void)
{
    if (StepRecordType == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engine.run._stepper: configure() was not called");
        return 0;
    }
    return 1;
}

static long long now_ns(void)
{
    /* the clock of time.perf_counter_ns on Linux and macOS */
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* ------------------------------------------------------------ slots */

/* A field of one of the interpreter's own __slots__ classes (Activation, Frame, Node, Block,
 * Value, LeafOp, StepRecord), read and written at its offset in the object: a step reads
 * some twenty of them, and PyObject_GetAttr's lookups were a good part of the loop's time.
 * configure() learns each offset from the class's member descriptor; an object of any
 * other type, a field that is not a plain slot, or an unset slot goes through
 * PyObject_GetAttr/SetAttr (which raise what Python would). */
struct slot {
    const char *name;
    PyObject *attr;     /* the name, interned */
    PyTypeObject *type; /* NULL: not learned, always by name */
    Py_ssize_t offset;
};

#define SLOT(var, text) static struct slot var = {text, NULL, NULL, 0};
SLOT(A_FRAME, "frame") SLOT(A_BLOCK, "block") SLOT(A_PC, "pc") SLOT(A_KIND, "kind") SLOT(A_OWNER, "owner")
SLOT(A_RECORD, "record") SLOT(A_PATH, "path") SLOT(A_T0, "t0")
SLOT(F_ENV, "env") SLOT(F_MODULE_PATH, "module_path") SLOT(F_PATHS, "paths") SLOT(F_START, "start")
SLOT(N_KIND, "kind") SLOT(N_IN_IDX, "in_idx") SLOT(N_OUT_IDX, "out_idx") SLOT(N_ATTRS, "attrs")
SLOT(N_MODULE_PATH, "module_path") SLOT(N_CALLEE, "callee")
SLOT(B_NODES, "nodes") SLOT(B_FREES, "frees") SLOT(B_RETURNS, "returns")
SLOT(V_INDEX, "index")
SLOT(L_RUN, "run") SLOT(L_WRITES, "writes") SLOT(L_MUTATES, "mutates") SLOT(L_TRAINING_WRITES, "training_writes")
SLOT(R_INDEX, "index") SLOT(R_NODE, "node") SLOT(R_PATH, "path") SLOT(R_MODULE_PATH, "module_path")
SLOT(R_DEPTH, "depth") SLOT(R_INPUTS, "_inputs") SLOT(R_OUTPUTS, "_outputs") SLOT(R_TIME_NS, "time_ns")
SLOT(R_STATUS, "status") SLOT(R_ERROR, "error") SLOT(R_FRAME, "frame") SLOT(R_LAZY, "lazy")
#undef SLOT

/* obj.<field>, a new reference */
static PyObject *get_slot(PyObject *obj, struct slot *f)
{
    if (f->type != NULL && Py_IS_TYPE(obj, f->type)) {
        PyObject *value = *(PyObject **)((char *)obj + f->offset);
        if (value != NULL) {
            Py_INCREF(value);
            return value;
        }
    }
    return PyObject_GetAttr(obj, f->attr);
}

/* obj.<field> = value */
static int set_slot(PyObject *obj, struct slot *f, PyObject *value)
{
    if (f->type != NULL && Py_IS_TYPE(obj, f->type)) {
        PyObject **at = (PyObject **)((char *)obj + f->offset);
        Py_INCREF(value);
        Py_XSETREF(*at, value);
        return 0;
    }
    return PyObject_SetAttr(obj, f->attr, value);
}

/* Where ``type`` keeps the field: a plain object slot, or by name from then on. */
static int learn_slot(struct slot *f, PyObject *type)
{
    if (f->attr == NULL && (f->attr = PyUnicode_InternFromString(f->name)) == NULL)
        return -1;
    f->type = NULL;
    PyObject *descr = PyObject_GetAttr(type, f->attr);
    if (descr == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (Py_IS_TYPE(descr, &PyMemberDescr_Type) && ((PyMemberDescrObject *)descr)->d_member->type == T_OBJECT_EX
        && ((PyMemberDescrObject *)descr)->d_member->flags == 0 && ((PyDescrObject *)descr)->d_type == (PyTypeObject *)type) {
        Py_INCREF(type);
        f->type = (PyTypeObject *)type;
        f->offset = ((PyMemberDescrObject *)descr)->d_member->offset;
    }
    Py_DECREF(descr);
    return 0;
}

static int learn_slots(PyObject *classes)
{
    struct { const char *cls; struct slot *slots[13]; } plan[] = {
        {"Activation", {&A_FRAME, &A_BLOCK, &A_PC, &A_KIND, &A_OWNER, &A_RECORD, &A_PATH, &A_T0, NULL}},
        {"Frame", {&F_ENV, &F_MODULE_PATH, &F_PATHS, &F_START, NULL}},
        {"Node", {&N_KIND, &N_IN_IDX, &N_OUT_IDX, &N_ATTRS, &N_MODULE_PATH, &N_CALLEE, NULL}},
        {"Block", {&B_NODES, &B_FREES, &B_RETURNS, NULL}},
        {"Value", {&V_INDEX, NULL}},
        {"LeafOp", {&L_RUN, &L_WRITES, &L_MUTATES, &L_TRAINING_WRITES, NULL}},
        /* StepRecord: learned by learn_record_layout(), which needs every one of its fields */
    };
    for (size_t c = 0; c < sizeof plan / sizeof plan[0]; c++) {
        PyObject *type = PyDict_GetItemString(classes, plan[c].cls); /* borrowed */
        if (type == NULL || !PyType_Check(type)) {
            PyErr_Format(PyExc_TypeError, "configure: classes has no class %s", plan[c].cls);
            return -1;
        }
        for (struct slot **f = plan[c].slots; *f != NULL; f++)
            if (learn_slot(*f, type) < 0)
                return -1;
    }
    return 0;
}

/* ------------------------------------------------------------ Timeline._keep */

/* The key Timeline._refs uses for a tensor: t.untyped_storage().data_ptr(). */
static PyObject *storage_key(PyObject *t)
{
    PyObject *storage = PyObject_CallMethodNoArgs(t, s_untyped_storage);
    if (storage == NULL)
        return NULL;
    PyObject *ptr = PyObject_CallMethodNoArgs(storage, s_data_ptr);
    Py_DECREF(storage);
    return ptr;
}

/* The Dropped summary ``t`` was dropped as, if it was and has not been written since
 * (Timeline._dropped_before); a new reference, or NULL without an error when there is none. */
static PyObject *dropped_before(PyObject *cache, PyObject *t)
{
    PyObject *key = PyLong_FromVoidPtr(t);
    if (key == NULL)
        return NULL;
    PyObject *entry = PyDict_GetItemWithError(cache, key); /* borrowed */
    Py_DECREF(key);
    if (entry == NULL || !PyTuple_Check(entry) || PyTuple_GET_SIZE(entry) != 3)
        return NULL;
    PyObject *ref = PyTuple_GET_ITEM(entry, 0);
    if (!PyWeakref_Check(ref))
        return NULL;
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *target = NULL;
    if (PyWeakref_GetRef(ref, &target) < 0)
        return NULL;
    Py_XDECREF(target); /* only its identity is compared */
#else
    PyObject *target = PyWeakref_GetObject(ref); /* borrowed */
#endif
    if (target != t)
        return NULL;
    PyObject *version = PyObject_GetAttr(t, s_version);
    if (version == NULL)
        return NULL;
    int same = PyObject_RichCompareBool(version, PyTuple_GET_ITEM(entry, 2), Py_EQ);
    Py_DECREF(version);
    if (same <= 0)
        return NULL;
    PyObject *dropped = PyTuple_GET_ITEM(entry, 1);
    Py_INCREF(dropped);
    return dropped;
}

/* Whether every item of a list or tuple is of a type that holds no tensor. */
static int only_plain_items(PyObject *seq)
{
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject **items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t i = 0; i < n; i++) {
        int plain = PySet_Contains(NotTensors, (PyObject *)Py_TYPE(items[i]));
        if (plain <= 0)
            return plain; /* 0: not plain; -1: error */
    }
    return 1;
}

/* values[slot] = value, where values is the record's own list */
static int put(PyObject *values, Py_ssize_t slot, PyObject *value)
{
    Py_INCREF(value);
    return PyList_SetItem(values, slot, value);
}

/* ``record`` holds a storage whose holders are ``holders`` (once, however many of its values do). */
static int hold_once(PyObject *holders, PyObject *record)
{
    Py_ssize_t n = PyList_GET_SIZE(holders);
    return n && PyList_GET_ITEM(holders, n - 1) == record ? 0 : PyList_Append(holders, record);
}

/* Timeline._keep(record, values): count the memory the record pins, drop what is over
 * budget, remember who holds what.  ``values`` is a list the record owns. */
static int keep(PyObject *timeline, PyObject *record, PyObject *values)
{
    if (!PyList_Check(values)) { /* not a list of the interpreter's own: the Python version */
        PyObject *r = PyObject_CallMethodObjArgs(timeline, s_keep_py, record, values, NULL);
        Py_XDECREF(r);
        return r == NULL ? -1 : 0;
    }
    PyObject *refs = NULL, *cache = NULL;
    int status = -1;
    for (Py_ssize_t slot = 0; slot < PyList_GET_SIZE(values); slot++) {
        PyObject *value = PyList_GET_ITEM(values, slot); /* borrowed; the list keeps it */
        PyTypeObject *tp = Py_TYPE(value);
        int plain = PySet_Contains(NotTensors, (PyObject *)tp);
        if (plain < 0)
            goto done;
        if (plain)
            continue;
        if (tp == &PyList_Type || tp == &PyTuple_Type) {
            /* As it is now: the program may change its own list later. */
            int simple = only_plain_items(value);
            if (simple < 0)
                goto done;
            if (simple) {
                if (tp == &PyList_Type && PyList_GET_SIZE(value) <= CopyLimit) {
                    PyObject *copy = PyList_GetSlice(value, 0, PyList_GET_SIZE(value));
                    if (copy == NULL || PyList_SetItem(values, slot, copy) < 0)
                        goto done;
                }
                continue;
            }
        }
        if (tp == &PyList_Type || tp == &PyTuple_Type || tp == &PyDict_Type) {
            PyObject *kept = PyObject_CallMethodObjArgs(timeline, s_keep_container, record, value, NULL);
            if (kept == NULL)
                goto done;
            if (PyList_SetItem(values, slot, kept) < 0)
                goto done;
            continue;
        }
        if (!PyObject_TypeCheck(value, (PyTypeObject *)TensorType))
            continue;
        Py_INCREF(value); /* the slot may be replaced below */
        if (cache == NULL && (cache = PyObject_GetAttr(timeline, s_dropped_cache)) == NULL)
            goto tensor_failed;
        if (PyDict_GET_SIZE(cache)) { /* over budget: most tensors read again were dropped when made */
            PyObject *dropped = dropped_before(cache, value);
            if (dropped != NULL) {
                Py_DECREF(value);
                if (PyList_SetItem(values, slot, dropped) < 0)
                    goto done;
                continue;
            }
            if (PyErr_Occurred())
                goto tensor_failed;
        }
        PyObject *key = storage_key(value);
        if (key == NULL)
            goto tensor_failed;
        if (refs == NULL && (refs = PyObject_GetAttr(timeline, s_refs)) == NULL) {
            Py_DECREF(key);
            goto tensor_failed;
        }
        PyObject *holders = PyDict_GetItemWithError(refs, key); /* borrowed */
        Py_DECREF(key);
        if (holders != NULL && PyList_Check(holders)) { /* seen before: hold it, once per record */
            if (hold_once(holders, record) < 0)
                goto tensor_failed;
            Py_DECREF(value);
            continue;
        }
        if (PyErr_Occurred())
            goto tensor_failed;
        PyObject *kept = PyObject_CallMethodObjArgs(timeline, s_keep_tensor, record, value, NULL);
        if (kept == NULL)
            goto tensor_failed;
        if (kept != value) {
            if (PyList_SetItem(values, slot, kept) < 0) {
                Py_DECREF(value);
                goto done;
            }
        } else {
            Py_DECREF(kept);
        }
        Py_DECREF(value);
        continue;
    tensor_failed:
        Py_DECREF(value);
        goto done;
    }
    status = 0;
done:
    Py_XDECREF(refs);
    Py_XDECREF(cache);
    return status;
}

/* Timeline.RECORD_CHUNK: the timeline counts its records (and thins them) this many at a time. */
#define RECORD_CHUNK 1024

/* record.index = timeline._first + len(records); records.append(record).  Sets *held to
 * len(records) after it. */
static int append_record(PyObject *timeline, PyObject *record, Py_ssize_t *held)
{
    PyObject *records = PyObject_GetAttr(timeline, s_records);
    if (records == NULL)
        return -1;
    PyObject *first = PyObject_GetAttr(timeline, s_first);
    Py_ssize_t offset = first == NULL ? -1 : PyLong_AsSsize_t(first);
    Py_XDECREF(first);
    if (offset == -1 && PyErr_Occurred()) {
        Py_DECREF(records);
        return -1;
    }
    PyObject *index = PyLong_FromSsize_t(offset + PyList_GET_SIZE(records));
    int status = index == NULL || set_slot(record, &R_INDEX, index) < 0 ? -1 : PyList_Append(records, record);
    *held = PyList_GET_SIZE(records);
    Py_XDECREF(index);
    Py_DECREF(records);
    return status;
}

/* Timeline.add's end: a chunk of records complete, timeline._grew() counts it. */
static int chunk_done(PyObject *timeline, Py_ssize_t held)
{
    if (held % RECORD_CHUNK)
        return 0;
    PyObject *r = PyObject_CallMethodNoArgs(timeline, s_grew);
    Py_XDECREF(r);
    return r == NULL ? -1 : 0;
}

/* Timeline.add(record) */
static int timeline_add(PyObject *timeline, PyObject *record)
{
    Py_ssize_t held;
    if (append_record(timeline, record, &held) < 0)
        return -1;
    PyObject *values = get_slot(record, &R_INPUTS);
    if (values == NULL)
        return -1;
    int kept = keep(timeline, record, values);
    Py_DECREF(values);
    if (kept < 0 || (values = get_slot(record, &R_OUTPUTS)) == NULL)
        return -1;
    int any = PyObject_IsTrue(values);
    kept = any > 0 ? keep(timeline, record, values) : any;
    Py_DECREF(values);
    return kept < 0 ? -1 : chunk_done(timeline, held);
}

/* Timeline.add_module_tensor(record, t): the record of a GetAttr whose output is a
 * parameter or buffer (free memory, held by the record).  Returns the storage's key. */
static PyObject *add_module_tensor(PyObject *timeline, PyObject *record, PyObject *t)
{
    PyObject *key = storage_key(t);
    if (key == NULL)
        return NULL;
    PyObject *free = NULL, *refs = NULL;
    int ok = 0;
    if ((free = PyObject_GetAttr(timeline, s_free)) == NULL || PySet_Add(free, key) < 0)
        goto done;
    Py_ssize_t held;
    if (append_record(timeline, record, &held) < 0)
        goto done;
    if ((refs = PyObject_GetAttr(timeline, s_refs)) == NULL)
        goto done;
    PyObject *holders = PyDict_GetItemWithError(refs, key); /* borrowed; Timeline._hold */
    if (holders == NULL) {
        if (PyErr_Occurred())
            goto done;
        PyObject *fresh = PyList_New(1);
        if (fresh == NULL)
            goto done;
        Py_INCREF(record);
        PyList_SET_ITEM(fresh, 0, record);
        int stored = PyDict_SetItem(refs, key, fresh);
        Py_DECREF(fresh);
        if (stored < 0)
            goto done;
    } else if (hold_once(holders, record) < 0) {
        goto done;
    }
    ok = chunk_done(timeline, held) == 0;
done:
    Py_XDECREF(free);
    Py_XDECREF(refs);
    if (!ok)
        Py_CLEAR(key);
    return key;
}

/* ------------------------------------------------------------ the loop */

/* What a step needs of its activation, fetched once. */
struct step {
    PyObject *machine, *act, *node, *frame, *env; /* env: the frame's list of values */
    Py_ssize_t pc;
};

static void step_clear(struct step *s)
{
    Py_CLEAR(s->frame);
    Py_CLEAR(s->env);
}

static int set_env(PyObject *env, PyObject *idx, PyObject *value)
{
    Py_ssize_t i = PyLong_AsSsize_t(idx);
    if (i == -1 && PyErr_Occurred())
        return -1;
    return put(env, i, value);
}

/* Past the current node: drop the values it was the last to use (Machine._advance). */
static int advance(struct step *s, PyObject *block)
{
    PyObject *frees = get_slot(block, &B_FREES);
    if (frees == NULL)
        return -1;
    int status = -1;
    PyObject *mine = PySequence_GetItem(frees, s->pc);
    if (mine == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(mine); k++)
        if (set_env(s->env, PyTuple_GET_ITEM(mine, k), Py_None) < 0)
            goto done_mine;
    PyObject *pc = PyLong_FromSsize_t(s->pc + 1);
    if (pc == NULL)
        goto done_mine;
    status = set_slot(s->act, &A_PC, pc);
    Py_DECREF(pc);
done_mine:
    Py_DECREF(mine);
done:
    Py_DECREF(frees);
    return status;
}

/* [env[i] for i in node.in_idx] */
static PyObject *gather(struct step *s)
{
    PyObject *in_idx = get_slot(s->node, &N_IN_IDX);
    if (in_idx == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(in_idx);
    PyObject *args = PyList_New(n);
    if (args == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        Py_ssize_t i = PyLong_AsSsize_t(PyTuple_GET_ITEM(in_idx, k));
        if (i == -1 && PyErr_Occurred()) {
            Py_CLEAR(args);
            goto done;
        }
        PyObject *v = PyList_GetItem(s->env, i);
        if (v == NULL) {
            Py_CLEAR(args);
            goto done;
        }
        Py_INCREF(v);
        PyList_SET_ITEM(args, k, v);
    }
done:
    Py_DECREF(in_idx);
    return args;
}

/* StepRecord(index, node, path, module_path, depth, inputs, frame): the object made as
 * StepRecord.__init__ makes it, without running it (a Python frame per step).
 * learn_record_layout() found its fields as slots and read the defaults __init__ gives
 * the others from a record it made; it refuses a StepRecord whose slots are not these. */
static struct slot *const RecordFields[] = {&R_INDEX, &R_NODE, &R_PATH, &R_MODULE_PATH, &R_DEPTH, &R_INPUTS,
                                            &R_OUTPUTS, &R_TIME_NS, &R_STATUS, &R_ERROR, &R_FRAME, &R_LAZY};
#define RECORD_FIELDS ((int)(sizeof RecordFields / sizeof RecordFields[0]))
static PyObject *RecordDefaults[RECORD_FIELDS]; /* what __init__ sets each field to, when not given */

/* a field of a record being made: a plain store at its offset */
static void store(PyObject *record, const struct slot *f, PyObject *value)
{
    PyObject **at = (PyObject **)((char *)record + f->offset);
    Py_INCREF(value);
    Py_XSETREF(*at, value);
}

static PyObject *make_record(PyObject *node, PyObject *path, PyObject *module_path, PyObject *depth,
                             PyObject *inputs, PyObject *frame)
{
    PyTypeObject *type = (PyTypeObject *)StepRecordType;
    PyObject *record = type->tp_alloc(type, 0);
    if (record == NULL)
        return NULL;
    for (int f = 0; f < RECORD_FIELDS; f++)
        if (RecordDefaults[f] != NULL)
            store(record, RecordFields[f], RecordDefaults[f]);
    store(record, &R_INDEX, Zero);
    store(record, &R_NODE, node);
    store(record, &R_PATH, path);
    store(record, &R_MODULE_PATH, module_path);
    store(record, &R_DEPTH, depth);
    store(record, &R_INPUTS, inputs);
    store(record, &R_FRAME, frame);
    return record;
}

/* Where configure() finds StepRecord's fields, and what __init__ gives those it is not passed. */
static int learn_record_layout(PyObject *type)
{
    PyObject *slots = PyObject_GetAttrString(type, "__slots__");
    if (slots == NULL)
        return -1;
    Py_ssize_t n = PyObject_Length(slots);
    Py_DECREF(slots);
    /* the fields above, "autocast" (set on some records only) and "__weakref__": nothing else */
    if (n != RECORD_FIELDS + 2) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "configure: StepRecord's slots are not those engine.run._stepper knows");
        return -1;
    }
    for (int f = 0; f < RECORD_FIELDS; f++) {
        if (learn_slot(RecordFields[f], type) < 0)
            return -1;
        if (RecordFields[f]->type == NULL) {
            PyErr_Format(PyExc_TypeError, "configure: StepRecord.%s is not a plain slot", RecordFields[f]->name);
            return -1;
        }
    }
    PyObject *inputs = PyList_New(0);
    PyObject *sample = inputs ? PyObject_CallFunction(type, "nOOOnOn", (Py_ssize_t)0, Py_None, Py_None, Py_None,
                                                      (Py_ssize_t)0, inputs, (Py_ssize_t)-1) : NULL;
    Py_XDECREF(inputs);
    if (sample == NULL)
        return -1;
    for (int f = 0; f < RECORD_FIELDS; f++) {
        PyObject *value = *(PyObject **)((char *)sample + RecordFields[f]->offset);
        Py_XINCREF(value);
        Py_XSETREF(RecordDefaults[f], value);
    }
    Py_DECREF(sample);
    return 0;
}

/* StepRecord(0, node, act.path, node.module_path or frame.module_path, len(stack), inputs, frame.start) */
static PyObject *new_record(struct step *s, Py_ssize_t depth, PyObject *inputs)
{
    PyObject *path = NULL, *module_path = NULL, *start = NULL, *depth_obj = NULL, *record = NULL;
    if ((path = get_slot(s->act, &A_PATH)) == NULL)
        goto done;
    if ((module_path = get_slot(s->node, &N_MODULE_PATH)) == NULL)
        goto done;
    int truthy = PyObject_IsTrue(module_path);
    if (truthy < 0)
        goto done;
    if (!truthy) {
        Py_DECREF(module_path);
        if ((module_path = get_slot(s->frame, &F_MODULE_PATH)) == NULL)
            goto done;
    }
    if ((start = get_slot(s->frame, &F_START)) == NULL)
        goto done;
    if ((depth_obj = PyLong_FromSsize_t(depth)) == NULL)
        goto done;
    record = make_record(s->node, path, module_path, depth_obj, inputs, start);
done:
    Py_XDECREF(path);
    Py_XDECREF(module_path);
    Py_XDECREF(start);
    Py_XDECREF(depth_obj);
    return record;
}

static int set_time(PyObject *record, long long t0)
{
    PyObject *dt = PyLong_FromLongLong(now_ns() - t0);
    if (dt == NULL)
        return -1;
    int status = set_slot(record, &R_TIME_NS, dt);
    Py_DECREF(dt);
    return status;
}

/* prim::Constant: its value is in the IR (Machine._run_constant). */
static int run_constant(struct step *s, PyObject *block)
{
    PyObject *attrs = get_slot(s->node, &N_ATTRS);
    if (attrs == NULL)
        return -1;
    PyObject *value = PyDict_GetItemWithError(attrs, s_value); /* borrowed */
    Py_DECREF(attrs);
    if (value == NULL && PyErr_Occurred())
        return -1;
    PyObject *out_idx = get_slot(s->node, &N_OUT_IDX);
    if (out_idx == NULL)
        return -1;
    int status = set_env(s->env, PyTuple_GET_ITEM(out_idx, 0), value ? value : Py_None);
    Py_DECREF(out_idx);
    return status < 0 ? -1 : advance(s, block);
}

/* prim::ListConstruct / prim::TupleConstruct (Machine._run_construct). */
static int run_construct(struct step *s, PyObject *block, Py_ssize_t depth, int is_list, PyObject *timeline)
{
    int status = -1;
    PyObject *record = NULL, *value = NULL, *outs = NULL, *out_idx = NULL;
    PyObject *args = gather(s);
    if (args == NULL)
        return -1;
    if ((record = new_record(s, depth, args)) == NULL)
        goto done;
    long long t0 = now_ns();
    value = is_list ? PyList_GetSlice(args, 0, PyList_GET_SIZE(args)) : PyList_AsTuple(args);
    if (value == NULL || set_time(record, t0) < 0)
        goto done;
    if ((out_idx = get_slot(s->node, &N_OUT_IDX)) == NULL)
        goto done;
    if (set_env(s->env, PyTuple_GET_ITEM(out_idx, 0), value) < 0)
        goto done;
    if ((outs = PyList_New(1)) == NULL)
        goto done;
    Py_INCREF(value);
    PyList_SET_ITEM(outs, 0, value);
    if (set_slot(record, &R_OUTPUTS, outs) < 0 || timeline_add(timeline, record) < 0)
        goto done;
    status = advance(s, block);
done:
    Py_DECREF(args);
    Py_XDECREF(record);
    Py_XDECREF(value);
    Py_XDECREF(outs);
    Py_XDECREF(out_idx);
    return status;
}

/* prim::GetAttr of a module's parameter, buffer or submodule: the first branch of
 * Machine._run_getattr.  Returns 1 when done here, 0 to leave the node to Python. */
static int run_getattr(struct step *s, PyObject *block, Py_ssize_t depth, PyObject *timeline)
{
    PyObject *in_idx = NULL, *obj = NULL, *overlay = NULL, *attrs = NULL, *name, *value = NULL, *record = NULL;
    PyObject *inputs = NULL, *outs = NULL, *out_idx = NULL;
    int status = -1;
    if ((in_idx = get_slot(s->node, &N_IN_IDX)) == NULL)
        goto done;
    obj = PyList_GetItem(s->env, PyLong_AsSsize_t(PyTuple_GET_ITEM(in_idx, 0)));
    if (obj == NULL)
        goto done;
    Py_INCREF(obj);
    if ((PyObject *)Py_TYPE(obj) != ScriptModuleType) {
        status = 0;
        goto done;
    }
    if ((overlay = PyObject_GetAttr(s->machine, s_attr_overlay)) == NULL)
        goto done;
    int busy = PyObject_IsTrue(overlay);
    if (busy) {
        status = busy < 0 ? -1 : 0;
        goto done;
    }
    if ((attrs = get_slot(s->node, &N_ATTRS)) == NULL)
        goto done;
    name = PyDict_GetItemWithError(attrs, s_name); /* borrowed; attrs keeps it */
    if (name == NULL) {
        status = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    if ((inputs = PyList_New(1)) == NULL)
        goto done;
    Py_INCREF(obj);
    PyList_SET_ITEM(inputs, 0, obj);
    if ((record = new_record(s, depth, inputs)) == NULL)
        goto done;
    long long t0 = now_ns();
    value = PyObject_CallMethodOneArg(obj, s_getattr, name);
    if (value == NULL) { /* not there, or not a plain attribute: Python says what it is */
        if (!PyErr_ExceptionMatches(PyExc_RuntimeError))
            goto done;
        PyErr_Clear();
        status = 0;
        goto done;
    }
    int member = PySet_Contains(ModuleMembers, (PyObject *)Py_TYPE(value));
    if (member <= 0) {
        status = member;
        goto done;
    }
    if (set_time(record, t0) < 0)
        goto done;
    if ((out_idx = get_slot(s->node, &N_OUT_IDX)) == NULL)
        goto done;
    PyObject *out = PyTuple_GET_ITEM(out_idx, 0);
    if (set_env(s->env, out, value) < 0)
        goto done;
    if ((outs = PyList_New(1)) == NULL)
        goto done;
    Py_INCREF(value);
    PyList_SET_ITEM(outs, 0, value);
    if (set_slot(record, &R_OUTPUTS, outs) < 0)
        goto done;
    if (PyObject_TypeCheck(value, (PyTypeObject *)TensorType)) {
        /* self._module_storages.add(self.timeline.add_module_tensor(record, value)) */
        PyObject *key = add_module_tensor(timeline, record, value);
        if (key == NULL)
            goto done;
        PyObject *storages = PyObject_GetAttr(s->machine, s_module_storages);
        int added = storages == NULL ? -1 : PySet_Add(storages, key);
        Py_XDECREF(storages);
        Py_DECREF(key);
        if (added < 0)
            goto done;
    } else {
        /* a submodule: its path is the parent's and the name */
        PyObject *paths = get_slot(s->frame, &F_PATHS);
        if (paths == NULL)
            goto done;
        PyObject *parent = PyDict_GetItemWithError(paths, PyTuple_GET_ITEM(in_idx, 0)); /* borrowed */
        PyObject *own = NULL;
        if (parent == NULL && PyErr_Occurred()) {
            Py_DECREF(paths);
            goto done;
        }
        if (parent == NULL)
            own = get_slot(s->frame, &F_MODULE_PATH);
        else
            own = (Py_INCREF(parent), parent);
        PyObject *path = NULL;
        if (own != NULL) {
            int nonempty = PyObject_IsTrue(own);
            if (nonempty > 0)
                path = PyUnicode_FromFormat("%U.%U", own, name);
            else if (nonempty == 0)
                path = (Py_INCREF(name), name);
            Py_DECREF(own);
        }
        int stored = path == NULL ? -1 : PyDict_SetItem(paths, out, path);
        Py_XDECREF(path);
        Py_DECREF(paths);
        if (stored < 0 || timeline_add(timeline, record) < 0)
            goto done;
    }
    status = advance(s, block) < 0 ? -1 : 1;
done:
    Py_XDECREF(in_idx);
    Py_XDECREF(obj);
    Py_XDECREF(overlay);
    Py_XDECREF(attrs);
    Py_XDECREF(value);
    Py_XDECREF(record);
    Py_XDECREF(inputs);
    Py_XDECREF(outs);
    Py_XDECREF(out_idx);
    return status;
}

/* A leaf op (Machine._run_leaf) that changes no list or dict, outside autocast.
 * Returns 1 when done here, 0 to leave the node to Python. */
static int run_leaf(struct step *s, PyObject *block, Py_ssize_t depth, PyObject *timeline, PyObject *leaf_ops)
{
    PyObject *op = PyDict_GetItemWithError(leaf_ops, s->node); /* borrowed */
    if (op == NULL)
        return PyErr_Occurred() ? -1 : 0; /* not made yet: Program.leaf, in Python */
    Py_INCREF(op);
    int status = -1;
    PyObject *writes = NULL, *mutates = NULL, *training = NULL, *autocast = NULL, *args = NULL, *record = NULL;
    PyObject *run = NULL, *outs = NULL, *seq = NULL, *out_idx = NULL, *rec_inputs = NULL;
    if ((mutates = get_slot(op, &L_MUTATES)) == NULL || (autocast = PyObject_GetAttr(s->machine, s_autocast)) == NULL)
        goto done;
    int m = PyObject_IsTrue(mutates), a = PyObject_IsTrue(autocast);
    if (m || a) { /* an op that changes lists or dicts, or autocast: Python's */
        status = m < 0 || a < 0 ? -1 : 0;
        goto done;
    }
    if ((args = gather(s)) == NULL || (training = get_slot(op, &L_TRAINING_WRITES)) == NULL)
        goto done;
    int t = PyObject_IsTrue(training);
    if (t < 0)
        goto done;
    /* the inputs this call overwrites: a norm's running statistics in training mode too */
    writes = t ? PyObject_CallMethodOneArg(op, s_writes_now, args) : get_slot(op, &L_WRITES);
    if (writes == NULL)
        goto done;
    int w = PyObject_IsTrue(writes);
    if (w < 0)
        goto done;
    if (w) { /* its record keeps those inputs as they were (copies or recipes) */
        rec_inputs = PyObject_CallMethodObjArgs(s->machine, s_inputs_before_write, args, writes, NULL);
    } else {
        rec_inputs = args;
        Py_INCREF(rec_inputs);
    }
    if (rec_inputs == NULL || (record = new_record(s, depth, rec_inputs)) == NULL)
        goto done;
    if (w && set_slot(record, &R_LAZY, Py_True) < 0) /* its inputs may be recipes */
        goto done;
    if ((run = get_slot(op, &L_RUN)) == NULL) /* read each time: it may replace itself */
        goto done;
    long long t0 = now_ns();
    outs = PyObject_CallOneArg(run, args);
    if (outs == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_Exception))
            goto done;
        /* the model's own failure, shown on its node */
        PyObject *type, *exc, *tb;
        PyErr_Fetch(&type, &exc, &tb);
        PyErr_NormalizeException(&type, &exc, &tb);
        if (tb != NULL && exc != NULL)
            PyException_SetTraceback(exc, tb);
        Py_XDECREF(type);
        Py_XDECREF(tb);
        if (exc == NULL)
            goto done;
        PyObject *r = NULL;
        if (set_time(record, t0) == 0 && timeline_add(timeline, record) == 0)
            r = PyObject_CallMethodObjArgs(s->machine, s_fail, s->node, exc, record, NULL);
        Py_DECREF(exc);
        if (r == NULL)
            goto done;
        Py_DECREF(r);
        status = 1;
        goto done;
    }
    if (set_time(record, t0) < 0)
        goto done;
    if ((out_idx = get_slot(s->node, &N_OUT_IDX)) == NULL)
        goto done;
    if ((seq = PySequence_Fast(outs, "an op's outputs must be a sequence")) == NULL)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(out_idx);
    if (PySequence_Fast_GET_SIZE(seq) < n)
        n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t k = 0; k < n; k++)
        if (set_env(s->env, PyTuple_GET_ITEM(out_idx, k), PySequence_Fast_GET_ITEM(seq, k)) < 0)
            goto done;
    if (set_slot(record, &R_OUTPUTS, outs) < 0 || timeline_add(timeline, record) < 0)
        goto done;
    status = advance(s, block) < 0 ? -1 : 1;
done:
    Py_DECREF(op);
    Py_XDECREF(writes);
    Py_XDECREF(mutates);
    Py_XDECREF(training);
    Py_XDECREF(autocast);
    Py_XDECREF(args);
    Py_XDECREF(record);
    Py_XDECREF(run);
    Py_XDECREF(outs);
    Py_XDECREF(seq);
    Py_XDECREF(out_idx);
    Py_XDECREF(rec_inputs);
    return status;
}

static int append_to_stack(PyObject *machine, PyObject *act)
{
    PyObject *stack = PyObject_GetAttr(machine, s_stack);
    int status = stack == NULL ? -1 : PyList_Append(stack, act);
    Py_XDECREF(stack);
    return status;
}

/* prim::CallMethod on a receiver whose graph the program has cached for the node
 * (Machine._run_call_method, _push_frame and _enter).  Returns 1 when done here, 0 to
 * leave the node to Python (which resolves the callee, or reports why it cannot). */
static int run_call_method(struct step *s, Py_ssize_t depth, PyObject *timeline)
{
    PyObject *program = NULL, *callees = NULL, *graph = NULL, *args = NULL, *in_idx = NULL, *paths = NULL;
    PyObject *module_path = NULL, *callee = NULL, *label = NULL, *frame = NULL, *inputs = NULL, *env = NULL;
    PyObject *record = NULL, *path = NULL, *new_path = NULL, *body = NULL, *act = NULL, *t0 = NULL;
    int status = -1;
    if ((program = PyObject_GetAttr(s->machine, s_program)) == NULL
        || (callees = PyObject_GetAttr(program, s_callees)) == NULL)
        goto done;
    graph = PyDict_GetItemWithError(callees, s->node); /* borrowed */
    if (graph == NULL) {
        status = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    Py_INCREF(graph);
    if ((args = gather(s)) == NULL || (in_idx = get_slot(s->node, &N_IN_IDX)) == NULL
        || (paths = get_slot(s->frame, &F_PATHS)) == NULL)
        goto done;
    /* module_path = frame.paths.get(node.in_idx[0], frame.module_path) */
    module_path = PyDict_GetItemWithError(paths, PyTuple_GET_ITEM(in_idx, 0));
    if (module_path != NULL)
        Py_INCREF(module_path);
    else if (PyErr_Occurred() || (module_path = get_slot(s->frame, &F_MODULE_PATH)) == NULL)
        goto done;
    if ((callee = get_slot(s->node, &N_CALLEE)) == NULL)
        goto done;
    int qualified = PyObject_IsTrue(module_path);
    if (qualified < 0)
        goto done;
    label = qualified ? PyUnicode_FromFormat("%U.%U", module_path, callee) : (Py_INCREF(callee), callee);
    if (label == NULL)
        goto done;
    /* the callee's frame, its inputs bound */
    if ((frame = PyObject_CallFunctionObjArgs(FrameType, graph, module_path, label, NULL)) == NULL
        || (inputs = PyObject_GetAttr(graph, s_inputs_attr)) == NULL || (env = get_slot(frame, &F_ENV)) == NULL)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(inputs);
    if (PyList_GET_SIZE(args) < n)
        n = PyList_GET_SIZE(args);
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *index = get_slot(PyTuple_GET_ITEM(inputs, k), &V_INDEX);
        int bound = index == NULL ? -1 : set_env(env, index, PyList_GET_ITEM(args, k));
        Py_XDECREF(index);
        if (bound < 0)
            goto done;
    }
    if (PyTuple_GET_SIZE(inputs) && PyList_GET_SIZE(args)
        && PyObject_TypeCheck(PyList_GET_ITEM(args, 0), (PyTypeObject *)ScriptModuleType)) {
        PyObject *own = get_slot(frame, &F_PATHS);
        PyObject *index = own ? get_slot(PyTuple_GET_ITEM(inputs, 0), &V_INDEX) : NULL;
        int stored = index == NULL ? -1 : PyDict_SetItem(own, index, module_path);
        Py_XDECREF(own);
        Py_XDECREF(index);
        if (stored < 0)
            goto done;
    }
    /* the step that enters it */
    if ((record = new_record(s, depth, args)) == NULL || set_slot(record, &R_STATUS, s_entered) < 0
        || timeline_add(timeline, record) < 0)
        goto done;
    if ((path = get_slot(s->act, &A_PATH)) == NULL || (body = PyObject_GetAttr(graph, s_body)) == NULL)
        goto done;
    PyObject *tail = PyTuple_Pack(1, label);
    new_path = tail == NULL ? NULL : PySequence_Concat(path, tail);
    Py_XDECREF(tail);
    if (new_path == NULL)
        goto done;
    act = PyObject_CallFunctionObjArgs(ActivationType, frame, body, s_body_kind, new_path, s->node, record, NULL);
    if (act == NULL || (t0 = PyLong_FromLongLong(now_ns())) == NULL || set_slot(act, &A_T0, t0) < 0
        || append_to_stack(s->machine, act) < 0)
        goto done;
    PyObject *index = get_slot(record, &R_INDEX);
    int started = index == NULL ? -1 : set_slot(frame, &F_START, index);
    Py_XDECREF(index);
    status = started < 0 ? -1 : 1;
done:
    Py_XDECREF(program);
    Py_XDECREF(callees);
    Py_XDECREF(graph);
    Py_XDECREF(args);
    Py_XDECREF(in_idx);
    Py_XDECREF(paths);
    Py_XDECREF(module_path);
    Py_XDECREF(callee);
    Py_XDECREF(label);
    Py_XDECREF(frame);
    Py_XDECREF(inputs);
    Py_XDECREF(env);
    Py_XDECREF(record);
    Py_XDECREF(path);
    Py_XDECREF(new_path);
    Py_XDECREF(body);
    Py_XDECREF(act);
    Py_XDECREF(t0);
    return status;
}

/* The end of a call's body or of an If branch, back in the caller's block (Machine._exit_block).
 * Returns 1 when done here, 0 to leave it to Python: a loop iteration, the end of the run,
 * the end of a forked graph. */
static int exit_block(PyObject *machine, PyObject *stack, PyObject *act, PyObject *timeline)
{
    PyObject *kind = NULL, *owner = NULL, *owner_kind = NULL, *frame = NULL, *env = NULL, *block = NULL;
    PyObject *returned = NULL, *returns = NULL, *record = NULL, *out_idx = NULL;
    PyObject *parent_frame = NULL, *penv = NULL, *parent_block = NULL, *pc_obj = NULL, *t0 = NULL;
    int status = -1;
    if (PyList_GET_SIZE(stack) < 2) {
        status = 0;
        goto done;
    }
    if ((kind = get_slot(act, &A_KIND)) == NULL || (owner = get_slot(act, &A_OWNER)) == NULL)
        goto done;
    /* a call's body or an If branch ends here; a loop iteration, a while_loop's or map's block and a
     * block that set grad mode or autocast end in Python */
    int other = PyUnicode_Check(kind) ? (PyUnicode_Compare(kind, s_body) != 0 && PyUnicode_Compare(kind, s_then) != 0
                                         && PyUnicode_Compare(kind, s_else) != 0) : 1;
    if (other || owner == Py_None || (owner_kind = get_slot(owner, &N_KIND)) == NULL) {
        status = other || owner == Py_None ? 0 : -1;
        goto done;
    }
    if (PyUnicode_Compare(owner_kind, s_fork_kind) == 0) {
        status = 0;
        goto done;
    }
    /* returns = [env[v.index] for v in act.block.returns] */
    if ((frame = get_slot(act, &A_FRAME)) == NULL || (env = get_slot(frame, &F_ENV)) == NULL
        || (block = get_slot(act, &A_BLOCK)) == NULL || (returned = get_slot(block, &B_RETURNS)) == NULL)
        goto done;
    Py_ssize_t n = PyTuple_GET_SIZE(returned);
    if ((returns = PyList_New(n)) == NULL)
        goto done;
    for (Py_ssize_t k = 0; k < n; k++) {
        PyObject *index = get_slot(PyTuple_GET_ITEM(returned, k), &V_INDEX);
        Py_ssize_t i = index == NULL ? -1 : PyLong_AsSsize_t(index);
        Py_XDECREF(index);
        PyObject *v = i < 0 && PyErr_Occurred() ? NULL : PyList_GetItem(env, i);
        if (v == NULL)
            goto done;
        Py_INCREF(v);
        PyList_SET_ITEM(returns, k, v);
    }
    /* self.stack.pop(); the parent takes the values */
    if (PyList_SetSlice(stack, PyList_GET_SIZE(stack) - 1, PyList_GET_SIZE(stack), NULL) < 0)
        goto done;
    PyObject *parent = PyList_GET_ITEM(stack, PyList_GET_SIZE(stack) - 1); /* borrowed; the stack keeps it */
    if ((record = get_slot(act, &A_RECORD)) == NULL || (out_idx = get_slot(owner, &N_OUT_IDX)) == NULL
        || (parent_frame = get_slot(parent, &A_FRAME)) == NULL
        || (penv = get_slot(parent_frame, &F_ENV)) == NULL)
        goto done;
    Py_ssize_t m = PyTuple_GET_SIZE(out_idx) < n ? PyTuple_GET_SIZE(out_idx) : n;
    for (Py_ssize_t k = 0; k < m; k++)
        if (set_env(penv, PyTuple_GET_ITEM(out_idx, k), PyList_GET_ITEM(returns, k)) < 0)
            goto done;
    if (record != Py_None) {
        if ((t0 = get_slot(act, &A_T0)) == NULL)
            goto done;
        long long started = PyLong_AsLongLong(t0);
        if (started == -1 && PyErr_Occurred())
            goto done;
        if (set_time(record, started) < 0 || set_slot(record, &R_STATUS, s_done) < 0
            || set_slot(record, &R_OUTPUTS, returns) < 0 || keep(timeline, record, returns) < 0)
            goto done;
    }
    /* the parent is past the node that entered the block */
    if ((parent_block = get_slot(parent, &A_BLOCK)) == NULL || (pc_obj = get_slot(parent, &A_PC)) == NULL)
        goto done;
    struct step p = {machine, parent, NULL, parent_frame, penv, PyLong_AsSsize_t(pc_obj)};
    if (p.pc == -1 && PyErr_Occurred())
        goto done;
    status = advance(&p, parent_block) < 0 ? -1 : 1;
done:
    Py_XDECREF(kind);
    Py_XDECREF(owner);
    Py_XDECREF(owner_kind);
    Py_XDECREF(frame);
    Py_XDECREF(env);
    Py_XDECREF(block);
    Py_XDECREF(returned);
    Py_XDECREF(returns);
    Py_XDECREF(record);
    Py_XDECREF(out_idx);
    Py_XDECREF(parent_frame);
    Py_XDECREF(penv);
    Py_XDECREF(parent_block);
    Py_XDECREF(pc_obj);
    Py_XDECREF(t0);
    return status;
}

/* handler(machine, act, node): the node's own Python handler */
static int call_handler(PyObject *handler, struct step *s)
{
    PyObject *argv[] = {s->machine, s->act, s->node};
    PyObject *r = PyObject_Vectorcall(handler, argv, 3, NULL);
    if (r == NULL)
        return -1;
    Py_DECREF(r);
    return 0;
}

/* One step of Machine.run's loop.  Returns 1 to go on, 0 when the loop is over, -1 on error. */
static int run_one(PyObject *machine, PyObject *stack, PyObject *timeline, PyObject *leaf_ops)
{
    Py_ssize_t depth = PyList_GET_SIZE(stack);
    if (depth == 0)
        return 0;
    struct step s = {machine, PyList_GET_ITEM(stack, depth - 1), NULL, NULL, NULL, 0};
    Py_INCREF(s.act);
    PyObject *block = NULL, *nodes = NULL, *pc = NULL, *kind = NULL;
    int status = -1;
    if ((block = get_slot(s.act, &A_BLOCK)) == NULL || (nodes = get_slot(block, &B_NODES)) == NULL
        || (pc = get_slot(s.act, &A_PC)) == NULL)
        goto done;
    s.pc = PyLong_AsSsize_t(pc);
    if (s.pc == -1 && PyErr_Occurred())
        goto done;
    if (s.pc >= PyTuple_GET_SIZE(nodes)) {
        int exited = exit_block(machine, stack, s.act, timeline);
        if (exited == 0) {
            PyObject *r = PyObject_CallMethodOneArg(machine, s_exit_block, s.act);
            exited = r == NULL ? -1 : 1;
            Py_XDECREF(r);
        }
        status = exited < 0 ? -1 : 1;
        goto done;
    }
    s.node = PyTuple_GET_ITEM(nodes, s.pc); /* borrowed; nodes keeps it */
    if ((kind = get_slot(s.node, &N_KIND)) == NULL)
        goto done;
    PyObject *code_obj = PyDict_GetItemWithError(KindCodes, kind); /* borrowed */
    if (code_obj == NULL && PyErr_Occurred())
        goto done;
    long code = code_obj ? PyLong_AsLong(code_obj) : K_LEAF;
    if (code == K_OTHER) {
        PyObject *handler = PyDict_GetItemWithError(Handlers, kind); /* borrowed */
        if (handler == NULL) {
            if (!PyErr_Occurred())
                PyErr_Format(PyExc_RuntimeError, "engine.run._stepper: no handler for %U", kind);
            goto done;
        }
        status = call_handler(handler, &s) < 0 ? -1 : 1;
        goto done;
    }
    if ((s.frame = get_slot(s.act, &A_FRAME)) == NULL || (s.env = get_slot(s.frame, &F_ENV)) == NULL)
        goto done;
    if (!PyList_Check(s.env)) {
        PyErr_SetString(PyExc_TypeError, "engine.run._stepper: a frame's env must be a list");
        goto done;
    }
    int done_here;
    switch (code) {
    case K_CONSTANT:
        done_here = run_constant(&s, block) < 0 ? -1 : 1;
        break;
    case K_LIST:
    case K_TUPLE:
        done_here = run_construct(&s, block, depth, code == K_LIST, timeline) < 0 ? -1 : 1;
        break;
    case K_CALL_METHOD:
        done_here = run_call_method(&s, depth, timeline);
        if (done_here == 0) {
            PyObject *handler = PyDict_GetItemWithError(Handlers, kind); /* borrowed; configure() saw it there */
            done_here = handler == NULL || call_handler(handler, &s) < 0 ? -1 : 1;
        }
        break;
    case K_GETATTR:
        done_here = run_getattr(&s, block, depth, timeline);
        if (done_here == 0)
            done_here = call_handler(GetAttrHandler, &s) < 0 ? -1 : 1;
        break;
    default:
        done_here = run_leaf(&s, block, depth, timeline, leaf_ops);
        if (done_here == 0)
            done_here = call_handler(LeafHandler, &s) < 0 ? -1 : 1;
        break;
    }
    status = done_here < 0 ? -1 : 1;
done:
    step_clear(&s);
    Py_DECREF(s.act);
    Py_XDECREF(block);
    Py_XDECREF(nodes);
    Py_XDECREF(pc);
    Py_XDECREF(kind);
    return status;
}

PyDoc_STRVAR(run_doc,
             "run(machine) -> bool\n\n"
             "Machine.run's loop: steps until the stack is empty, an error is set on the\n"
             "machine or machine._cancel is set (then cleared, and True is returned).");

static PyObject *run(PyObject *self, PyObject *machine)
{
    (void)self;
    if (!configured())
        return NULL;
    PyObject *stack = PyObject_GetAttr(machine, s_stack);
    PyObject *timeline = stack ? PyObject_GetAttr(machine, s_timeline) : NULL;
    PyObject *leaf_ops = timeline ? PyObject_GetAttr(machine, s_leaf_ops) : NULL;
    PyObject *result = NULL;
    if (leaf_ops == NULL)
        goto done;
    if (!PyList_Check(stack) || !PyDict_Check(leaf_ops)) {
        PyErr_SetString(PyExc_TypeError, "engine.run._stepper.run: not a Machine");
        goto done;
    }
    while (PyList_GET_SIZE(stack)) {
        PyObject *error = PyObject_GetAttr(machine, s_error);
        if (error == NULL)
            goto done;
        Py_DECREF(error);
        if (error != Py_None)
            break;
        PyObject *cancel = PyObject_GetAttr(machine, s_cancel);
        if (cancel == NULL)
            goto done;
        int cancelled = PyObject_IsTrue(cancel);
        Py_DECREF(cancel);
        if (cancelled < 0)
            goto done;
        if (cancelled) {
            if (PyObject_SetAttr(machine, s_cancel, Py_False) < 0)
                goto done;
            result = Py_True;
            Py_INCREF(result);
            goto done;
        }
        int more = run_one(machine, stack, timeline, leaf_ops);
        if (more < 0)
            goto done;
        if (more == 0)
            break;
    }
    result = Py_False;
    Py_INCREF(result);
done:
    Py_XDECREF(stack);
    Py_XDECREF(timeline);
    Py_XDECREF(leaf_ops);
    return result;
}

PyDoc_STRVAR(keep_doc, "keep(timeline, record, values)\n\nTimeline._keep, for a list of values the record owns.");

static PyObject *keep_py(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "keep(timeline, record, values)");
        return NULL;
    }
    if (!configured() || keep(args[0], args[1], args[2]) < 0)
        return NULL;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(add_doc, "add(timeline, record)\n\nTimeline.add: append the record, then keep its inputs and outputs.");

static PyObject *add_py(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(timeline, record)");
        return NULL;
    }
    if (!configured() || timeline_add(args[0], args[1]) < 0)
        return NULL;
    Py_INCREF(args[1]);
    return args[1];
}

PyDoc_STRVAR(configure_doc,
             "configure(StepRecord, Tensor, ScriptModule, not_tensors, module_members, handlers,\n"
             "          run_leaf, run_getattr, copy_limit, classes)\n\n"
             "classes: Frame, Activation, Node, Block, Value, LeafOp and StepRecord by name.\n"
             "The classes and tables of engine.run.timeline and engine.run.machine this module follows.");

static PyObject *configure(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *record, *tensor, *module, *not_tensors, *members, *handlers, *leaf, *getattr_handler, *classes;
    Py_ssize_t copy_limit;
    if (!PyArg_ParseTuple(args, "OOOO!O!O!OOnO!", &record, &tensor, &module, &PyFrozenSet_Type, &not_tensors,
                          &PyFrozenSet_Type, &members, &PyDict_Type, &handlers, &leaf, &getattr_handler,
                          &copy_limit, &PyDict_Type, &classes))
        return NULL;
    PyObject *frame = PyDict_GetItemString(classes, "Frame"), *act = PyDict_GetItemString(classes, "Activation");
    if (frame == NULL || act == NULL || learn_slots(classes) < 0) {
        if (!PyErr_Occurred())
            PyErr_SetString(PyExc_TypeError, "configure: classes must hold Frame and Activation");
        return NULL;
    }
    if (!PyType_Check(record) || !PyType_Check(tensor) || !PyType_Check(module)) {
        PyErr_SetString(PyExc_TypeError, "configure: StepRecord, Tensor and ScriptModule must be classes");
        return NULL;
    }
    Py_INCREF(record);
    Py_XSETREF(StepRecordType, record);
    if (learn_record_layout(record) < 0) {
        Py_CLEAR(StepRecordType); /* not configured: run() refuses */
        return NULL;
    }
    PyObject *codes = PyDict_New();
    if (codes == NULL)
        return NULL;
    PyObject *kind, *handler;
    Py_ssize_t pos = 0;
    while (PyDict_Next(handlers, &pos, &kind, &handler)) {
        long code = K_OTHER;
        if (PyUnicode_CompareWithASCIIString(kind, "prim::Constant") == 0)
            code = K_CONSTANT;
        else if (PyUnicode_CompareWithASCIIString(kind, "prim::GetAttr") == 0)
            code = K_GETATTR;
        else if (PyUnicode_CompareWithASCIIString(kind, "prim::ListConstruct") == 0)
            code = K_LIST;
        else if (PyUnicode_CompareWithASCIIString(kind, "prim::TupleConstruct") == 0)
            code = K_TUPLE;
        else if (PyUnicode_CompareWithASCIIString(kind, "prim::CallMethod") == 0)
            code = K_CALL_METHOD;
        PyObject *value = PyLong_FromLong(code);
        if (value == NULL || PyDict_SetItem(codes, kind, value) < 0) {
            Py_XDECREF(value);
            Py_DECREF(codes);
            return NULL;
        }
        Py_DECREF(value);
    }
#define KEEP(var, value) \
    Py_INCREF(value);    \
    Py_XSETREF(var, value);
    KEEP(TensorType, tensor) KEEP(ScriptModuleType, module)
    KEEP(NotTensors, not_tensors) KEEP(ModuleMembers, members) KEEP(Handlers, handlers) KEEP(LeafHandler, leaf)
    KEEP(GetAttrHandler, getattr_handler) KEEP(FrameType, frame) KEEP(ActivationType, act)
#undef KEEP
    Py_XSETREF(KindCodes, codes);
    CopyLimit = copy_limit;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(slots_doc, "slots() -> {class.field: bool}\n\nWhich fields configure() found as plain slots (read at their offsets).");

static PyObject *slots_py(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    struct { const char *cls; struct slot *f; } all[] = {
        {"Activation", &A_FRAME}, {"Activation", &A_BLOCK}, {"Activation", &A_PC}, {"Activation", &A_KIND},
        {"Activation", &A_OWNER}, {"Activation", &A_RECORD}, {"Activation", &A_PATH}, {"Activation", &A_T0},
        {"Frame", &F_ENV}, {"Frame", &F_MODULE_PATH}, {"Frame", &F_PATHS}, {"Frame", &F_START},
        {"Node", &N_KIND}, {"Node", &N_IN_IDX}, {"Node", &N_OUT_IDX}, {"Node", &N_ATTRS},
        {"Node", &N_MODULE_PATH}, {"Node", &N_CALLEE}, {"Block", &B_NODES}, {"Block", &B_FREES},
        {"Block", &B_RETURNS}, {"Value", &V_INDEX}, {"LeafOp", &L_RUN}, {"LeafOp", &L_WRITES},
        {"LeafOp", &L_MUTATES}, {"LeafOp", &L_TRAINING_WRITES}, {"StepRecord", &R_INDEX},
        {"StepRecord", &R_NODE}, {"StepRecord", &R_PATH}, {"StepRecord", &R_MODULE_PATH}, {"StepRecord", &R_DEPTH},
        {"StepRecord", &R_INPUTS}, {"StepRecord", &R_OUTPUTS}, {"StepRecord", &R_TIME_NS},
        {"StepRecord", &R_STATUS}, {"StepRecord", &R_ERROR}, {"StepRecord", &R_FRAME}, {"StepRecord", &R_LAZY},
    };
    PyObject *found = PyDict_New();
    if (found == NULL)
        return NULL;
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) {
        PyObject *key = PyUnicode_FromFormat("%s.%s", all[i].cls, all[i].f->name);
        if (key == NULL || PyDict_SetItem(found, key, all[i].f->type != NULL ? Py_True : Py_False) < 0) {
            Py_XDECREF(key);
            Py_DECREF(found);
            return NULL;
        }
        Py_DECREF(key);
    }
    return found;
}

static PyMethodDef methods[] = {
    {"slots", slots_py, METH_NOARGS, slots_doc},
    {"run", run, METH_O, run_doc},
    {"keep", (PyCFunction)(void (*)(void))keep_py, METH_FASTCALL, keep_doc},
    {"add", (PyCFunction)(void (*)(void))add_py, METH_FASTCALL, add_doc},
    {"configure", configure, METH_VARARGS, configure_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "engine.run._stepper",
    "The interpreter's whole-run loop and the timeline's bookkeeping for common nodes (see engine/run/stepper.py).",
    -1, methods,
};

PyMODINIT_FUNC PyInit__stepper(void)
{
    if (intern_names() < 0 || (Zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "RECORD_CHUNK", RECORD_CHUNK) < 0)
        Py_CLEAR(m);
    return m;
}
