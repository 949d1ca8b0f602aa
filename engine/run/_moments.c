/* engine.run._moments: min, max, sum and sum of squares of a contiguous float32 or
 * float64 buffer in one pass.
 *
 * Every tensor a run records is summarized (values.summarize_tensor), and with
 * summaries only the statistics are computed right after the op that made the
 * tensor, while it is still in cache.  torch needs three reductions for them
 * (aminmax, sum, dot), three passes and three dispatches; this reads the data
 * once.  It is optional: setup.py builds it when a C compiler is there, and
 * engine/run/values.py uses torch's reductions without it (or without torch's
 * OpenMP team, below).
 *
 * NaN: the comparisons below skip it (a NaN compares false), but it makes the
 * sum NaN, and an infinity makes min or max infinite; the caller recounts
 * with torch whenever any of the four is not finite, so those cases keep
 * torch's exact semantics.
 *
 * Each lane accumulates in the input's precision over a block, then the block
 * is added in double: the accuracy of a pairwise sum at a plain loop's speed.
 *
 * Threads: torch's ops split a tensor into one contiguous chunk per OpenMP
 * thread, so each half of an op's output sits in the cache of the core that
 * wrote it.  A single-threaded pass over it moves it all to one core, and the
 * next op (a ReLU in place, a residual add) then runs several times slower:
 * measured, it cost more than the two reductions it saved.  So the pass runs
 * in torch's own OpenMP team, split the same way: use_openmp() is handed
 * GOMP_parallel and omp_get_thread_num/omp_get_num_threads from the OpenMP
 * library torch loaded (engine/run/moments.py finds it); a second runtime would
 * start a second team competing for the same cores.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>

#define LANES 16
#define BLOCK 4096 /* elements per lane block; a multiple of LANES */

/* One build runs the widest vector unit the CPU has (chosen at load time). */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define DEFINE_MOMENTS(NAME, T, HUGE_T)                                              \
    VECTOR_CLONES static void NAME(const T *x, Py_ssize_t n, double out[4])           \
    {                                                                                 \
        T lo[LANES], hi[LANES], s[LANES], q[LANES];                                   \
        double sum = 0.0, squares = 0.0;                                              \
        Py_ssize_t i = 0;                                                             \
        for (int j = 0; j < LANES; j++) {                                             \
            lo[j] = HUGE_T;                                                           \
            hi[j] = -HUGE_T;                                                          \
            s[j] = 0;                                                                 \
            q[j] = 0;                                                                 \
        }                                                                             \
        while (n - i >= LANES) {                                                      \
            Py_ssize_t end = i + BLOCK;                                               \
            if (end > n)                                                              \
                end = n - (n - i) % LANES;                                            \
            for (; i < end; i += LANES) {                                             \
                for (int j = 0; j < LANES; j++) {                                     \
                    T v = x[i + j];                                                   \
                    lo[j] = v < lo[j] ? v : lo[j];                                    \
                    hi[j] = v > hi[j] ? v : hi[j];                                    \
                    s[j] += v;                                                        \
                    q[j] += v * v;                                                    \
                }                                                                     \
            }                                                                         \
            for (int j = 0; j < LANES; j++) {                                         \
                sum += s[j];                                                          \
                squares += q[j];                                                      \
                s[j] = 0;                                                             \
                q[j] = 0;                                                             \
            }                                                                         \
        }                                                                             \
        T low = HUGE_T, high = -HUGE_T;                                               \
        for (int j = 0; j < LANES; j++) {                                             \
            low = lo[j] < low ? lo[j] : low;                                          \
            high = hi[j] > high ? hi[j] : high;                                       \
        }                                                                             \
        for (; i < n; i++) {                                                          \
            T v = x[i];                                                               \
            low = v < low ? v : low;                                                  \
            high = v > high ? v : high;                                               \
            sum += v;                                                                 \
            squares += (double)v * v;                                                 \
        }                                                                             \
        out[0] = low;                                                                 \
        out[1] = high;                                                                \
        out[2] = sum;                                                                 \
        out[3] = squares;                                                             \
    }

DEFINE_MOMENTS(moments_float, float, HUGE_VALF)
DEFINE_MOMENTS(moments_double, double, HUGE_VAL)

/* ------------------------------------------------------------ torch's OpenMP team */

typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_fn)(void);

static gomp_parallel_fn gomp_parallel;
static omp_int_fn omp_thread_num, omp_num_threads;

#define MAX_THREADS 256
#define GRAIN 32768 /* torch's own grain for elementwise work (at::internal::GRAIN_SIZE) */

struct job {
    const void *x;
    Py_ssize_t n;
    int is_double;
    int chunks;                /* threads that took a chunk */
    double part[MAX_THREADS][4];
};

static void moments_chunk(const struct job *job, int tid, int nthreads, double out[4])
{
    /* The same split as at::parallel_for: chunks of ceil(n / nthreads), in thread order. */
    Py_ssize_t chunk = (job->n + nthreads - 1) / nthreads;
    Py_ssize_t begin = (Py_ssize_t)tid * chunk;
    Py_ssize_t end = begin + chunk < job->n ? begin + chunk : job->n;
    if (begin >= end) {
        out[0] = HUGE_VAL;
        out[1] = -HUGE_VAL;
        out[2] = out[3] = 0.0;
        return;
    }
    if (job->is_double)
        moments_double((const double *)job->x + begin, end - begin, out);
    else
        moments_float((const float *)job->x + begin, end - begin, out);
}

static void team_body(void *data)
{
    struct job *job = (struct job *)data;
    int nthreads = omp_num_threads();
    int tid = omp_thread_num();
    if (nthreads > MAX_THREADS)
        nthreads = MAX_THREADS;
    if (tid >= nthreads)
        return;
    if (tid == 0)
        job->chunks = nthreads;
    moments_chunk(job, tid, nthreads, job->part[tid]);
}

/* min, max, sum, squares of the whole buffer, in torch's team when there is one */
static void moments_any(const void *x, Py_ssize_t n, int is_double, int threads, double out[4])
{
    struct job job; /* on the stack: two Python threads may be here at once */
    /* as at::parallel_for: at most one thread per GRAIN elements */
    Py_ssize_t grains = (n + GRAIN - 1) / GRAIN;
    if (threads > grains)
        threads = (int)grains;
    if (threads > MAX_THREADS)
        threads = MAX_THREADS;
    if (gomp_parallel == NULL || threads < 2) {
        if (is_double)
            moments_double((const double *)x, n, out);
        else
            moments_float((const float *)x, n, out);
        return;
    }
    job.x = x;
    job.n = n;
    job.is_double = is_double;
    job.chunks = 0;
    /* a count, not 0: the default differs by thread, and torch, too, names it */
    gomp_parallel(team_body, &job, (unsigned)threads, 0);
    out[0] = HUGE_VAL;
    out[1] = -HUGE_VAL;
    out[2] = out[3] = 0.0;
    for (int t = 0; t < job.chunks; t++) {
        out[0] = job.part[t][0] < out[0] ? job.part[t][0] : out[0];
        out[1] = job.part[t][1] > out[1] ? job.part[t][1] : out[1];
        out[2] += job.part[t][2];
        out[3] += job.part[t][3];
    }
}

PyDoc_STRVAR(moments_doc,
             "moments(address, count, is_double, threads) -> (min, max, sum, sum_of_squares)\n\n"
             "Of the count float32 (or float64) elements at address, which must be\n"
             "contiguous and stay alive for the call.  A NaN is skipped by min and max\n"
             "but makes the sum NaN; check that all four are finite before using them.\n"
             "threads: the size of the OpenMP team to share a large buffer (see use_openmp).");

static PyObject *moments(PyObject *self, PyObject *args)
{
    unsigned long long address;
    Py_ssize_t count;
    int is_double, threads;
    double out[4];
    (void)self;
    if (!PyArg_ParseTuple(args, "Knpi", &address, &count, &is_double, &threads))
        return NULL;
    if (count <= 0) {
        PyErr_SetString(PyExc_ValueError, "moments: count must be positive");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS /* a long reduction should not hold up the UI's thread */
    moments_any((const void *)(uintptr_t)address, count, is_double, threads, out);
    Py_END_ALLOW_THREADS
    return Py_BuildValue("(dddd)", out[0], out[1], out[2], out[3]);
}

PyDoc_STRVAR(use_openmp_doc,
             "use_openmp(GOMP_parallel, omp_get_thread_num, omp_get_num_threads)\n\n"
             "Addresses of these three functions in the OpenMP library torch uses: large\n"
             "buffers are then split over torch's own threads.  Zeros: one thread.");

static PyObject *use_openmp(PyObject *self, PyObject *args)
{
    unsigned long long parallel, thread_num, num_threads;
    (void)self;
    if (!PyArg_ParseTuple(args, "KKK", &parallel, &thread_num, &num_threads))
        return NULL;
    if (parallel == 0 || thread_num == 0 || num_threads == 0) {
        gomp_parallel = NULL;
        Py_RETURN_NONE;
    }
    omp_thread_num = (omp_int_fn)(uintptr_t)thread_num;
    omp_num_threads = (omp_int_fn)(uintptr_t)num_threads;
    gomp_parallel = (gomp_parallel_fn)(uintptr_t)parallel;
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"moments", moments, METH_VARARGS, moments_doc},
    {"use_openmp", use_openmp, METH_VARARGS, use_openmp_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "engine.run._moments",
    "One-pass min, max, sum and sum of squares of a contiguous buffer.", -1, methods,
};

PyMODINIT_FUNC PyInit__moments(void)
{
    return PyModule_Create(&module);
}
