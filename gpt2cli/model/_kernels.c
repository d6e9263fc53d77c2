/* Matrix products for decoding on x86-64 CPUs with AVX2, FMA and F16C: y = x W^T + b for a few
 * rows of x (float32) against W stored (out, in) as int8 with a scale per output row (`--dtype
 * int8`), as int4 in groups of 32 with a float16 scale each (`--dtype int4`, see i4_task), or as
 * float32, float16 or bfloat16 (one sequence decoded on the CPU).
 *
 * Why this exists (measured on 2-core AMD EPYCs, Zen 3 and Zen 5, GPT-2 small's shape, see
 * benchmarks/README.md and gpt2cli/model/native.py): one-token decoding streams every weight
 * once per token, so it runs at the rate the weights are read, and torch's kernels read them
 * slower than the machine can: fbgemm's int8 product at 7.2 GB/s on one Zen 3 core (its 8-bit
 * arithmetic is the limit), oneDNN's float32 product at 25 GB/s on one Zen 5 core, and llama.cpp
 * decoded faster at every precision. Here each thread streams a contiguous block of output rows,
 * 4 rows at a time, prefetching the next block (without the prefetch, int8 rows of 768 values
 * streamed at 4.2 GB/s on one Zen 3 core, with it 10.5; a non-temporal prefetch, which does not
 * evict the activations, read float32 weights at 37-38 GB/s on one Zen 5 core where a prefetch
 * into every cache level read 33-34). int8 activations are quantized per row to [-127, 127] and
 * multiplied with vpsignb / vpmaddubsw / vpmaddwd (no saturation: 127 * 127 * 2 < 32767) into
 * int32 sums, exact over any row length GPT-2 has (6,400 * 127 * 127 < 2^31); 16-bit weights are
 * widened to float32 (vcvtph2ps, or a shift for bfloat16) and summed in float32. The work runs
 * on torch's OpenMP threads where the caller hands their runtime over (`use_openmp`), else on a
 * small pool of our own.
 *
 * With the products this fast, the rest of a decoding step weighed: attending over float32 keys
 * and values with torch's SDPA took 2.16 ms a token late in GPT-2 small's window, and the
 * LayerNorms, GELUs, additions and Python calls between the products ~1 ms (a quarter of an int8
 * step). So the attention of one new token per row is here too (over a float32 or float16
 * cache), and `decode_layers` runs a whole step through every block in one call. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stddef.h>
#include <stdint.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define GPT2_NATIVE 1
#include <immintrin.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <time.h>
#else
#define GPT2_NATIVE 0
#endif

#if GPT2_NATIVE

/* ---------------------------------------------------------------------------------------------
 * The thread pool. The caller takes part 0 of each task; workers 1..n-1 spin for `spin_ns`
 * after a task (the next product of a decode step follows within tens of microseconds), then
 * sleep on a condition variable, so an idle or busy machine is not held by spinning threads.
 * ------------------------------------------------------------------------------------------- */

#define MAX_THREADS 64

#ifndef AHEAD_HINT /* how the next block of weight rows is prefetched (see the top) */
#define AHEAD_HINT _MM_HINT_NTA
#endif

typedef void (*task_fn)(const void *args, int part, int parts);

static pthread_mutex_t run_mu = PTHREAD_MUTEX_INITIALIZER; /* one task at a time */
static pthread_mutex_t wake_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wake_cv = PTHREAD_COND_INITIALIZER;
static int n_workers;
static atomic_uint generation;
static atomic_int pending;
static task_fn task;
static const void *task_args;
static int task_parts;
static long spin_ns = 2000000;
static unsigned first_generation[MAX_THREADS];

static long elapsed_ns(const struct timespec *t0) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000000000L + (t.tv_nsec - t0->tv_nsec);
}

static void *worker_main(void *arg) {
    int me = (int)(intptr_t)arg;
    unsigned seen = first_generation[me];
    for (;;) {
        unsigned g;
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        unsigned spins = 0;
        while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen) {
            _mm_pause();
            if ((++spins & 255) || elapsed_ns(&t0) < spin_ns) continue;
            pthread_mutex_lock(&wake_mu);
            while ((g = atomic_load_explicit(&generation, memory_order_acquire)) == seen)
                pthread_cond_wait(&wake_cv, &wake_mu);
            pthread_mutex_unlock(&wake_mu);
            break;
        }
        seen = g;
        if (me < task_parts) task(task_args, me, task_parts);
        atomic_fetch_sub_explicit(&pending, 1, memory_order_acq_rel);
    }
    return NULL;
}

static void after_fork_in_child(void) {
    /* the workers do not exist in a forked child: start afresh */
    pthread_mutex_init(&run_mu, NULL);
    pthread_mutex_init(&wake_mu, NULL);
    pthread_cond_init(&wake_cv, NULL);
    n_workers = 0;
}

static int ensure_workers(int wanted) {
    static int registered;
    if (!registered) {
        pthread_atfork(NULL, NULL, after_fork_in_child);
        registered = 1;
    }
    if (wanted > MAX_THREADS - 1) wanted = MAX_THREADS - 1;
    while (n_workers < wanted) {
        int me = n_workers + 1;
        first_generation[me] = atomic_load(&generation);
        pthread_t id;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&id, &attr, worker_main, (void *)(intptr_t)me);
        pthread_attr_destroy(&attr);
        if (failed) break;
        n_workers++;
    }
    return n_workers + 1;
}

/* torch's own OpenMP runtime, when the caller hands it over (gpt2_use_openmp): the products
 * then run on the same threads as torch's kernels, which spin and sleep by one policy. */
typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_fn)(void);
static gomp_parallel_fn gomp_parallel;
static omp_int_fn omp_thread_num, omp_num_threads;

typedef struct {
    task_fn fn;
    const void *args;
} omp_job;

static void omp_body(void *data) {
    const omp_job *job = data;
    job->fn(job->args, omp_thread_num(), omp_num_threads());
}

static void run_parallel(task_fn fn, const void *args, int parts) {
    if (parts <= 1) {
        fn(args, 0, 1);
        return;
    }
    if (gomp_parallel) {
        omp_job job = {fn, args};
        gomp_parallel(omp_body, &job, (unsigned)parts, 0);
        return;
    }
    pthread_mutex_lock(&run_mu);
    int available = ensure_workers(parts - 1);
    if (parts > available) parts = available;
    task = fn;
    task_args = args;
    task_parts = parts;
    atomic_store(&pending, n_workers);
    pthread_mutex_lock(&wake_mu);
    atomic_fetch_add_explicit(&generation, 1, memory_order_release);
    pthread_cond_broadcast(&wake_cv);
    pthread_mutex_unlock(&wake_mu);
    fn(args, 0, parts);
    unsigned spins = 0;
    while (atomic_load_explicit(&pending, memory_order_acquire) > 0) {
        _mm_pause();
        if (++spins > 20000) sched_yield(); /* a worker was descheduled: let it run */
    }
    pthread_mutex_unlock(&run_mu);
}

/* ---------------------------------------------------------------------------------------------
 * Kernels. Each part of a task owns the output rows [lo, hi) of every row of x.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    const void *w;       /* (n_out, n_in): int8, float32, float16 or bfloat16 */
    const float *wscale; /* int8: (n_out,) */
    const float *x;      /* the dense kinds: x, (rows, n_in) */
    const int8_t *xq;    /* int8: x quantized, (rows, n_in) */
    const uint8_t *xabs; /* |xq| */
    const float *xscale; /* (rows,): x ~ xq * xscale */
    const float *bias;   /* (n_out,) or NULL */
    float *y;            /* (rows, y_stride) */
    long y_stride;
    int rows, n_out, n_in;
    int accumulate; /* y += x W^T + b (a residual connection) rather than y = */
    const int32_t *wsum; /* int8 with AVX-VNNI: (n_out,) each W row's sum over its first
                          * n_in & ~31 weights (x arrives as xq + 128, see dot_vnni) */
    /* int4 (see i4_task): w is (n_out, n_pad / 2) bytes, two weights each */
    const uint16_t *gscale; /* (n_out, ng_pad) float16: each group of 32 weights' scale */
    const int32_t *xgs;     /* (rows, ng_pad): -8 times the sum of xq over each group */
    int n_pad, ng_pad;      /* n_in rounded up to 256; its n_pad / 32 groups */
} product;

static void part_range(const product *p, int part, int parts, int *lo, int *hi) {
    /* blocks of 16 rows, so that parts never share a cache line of y */
    int blocks = (p->n_out + 15) / 16;
    *lo = (int)((long)blocks * part / parts) * 16;
    *hi = (int)((long)blocks * (part + 1) / parts) * 16;
    if (*hi > p->n_out) *hi = p->n_out;
}

__attribute__((target("avx2"))) static inline int hsum_i32(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return _mm_cvtsi128_si32(s);
}

static inline void store(const product *p, int r, int o, float v) {
    float *y = p->y + r * p->y_stride + o;
    if (p->bias) v += p->bias[o];
    *y = p->accumulate ? *y + v : v;
}

/* float32, float16 or bfloat16 weights, float32 activations and sums. One loop for the three,
 * specialised by the compiler for each (`kind` is a constant in each caller). */

enum { W_F32, W_F16, W_BF16, W_I8 }; /* W_I8: the key/value cache only */

__attribute__((target("avx2,fma"))) static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

__attribute__((target("avx2"))) static inline float hmax(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* 8 weights from w (an array of `kind`) at element i, as float32 */
__attribute__((target("avx2,fma,f16c"))) static inline __m256 load8(const void *w, size_t i,
                                                                    int kind) {
    if (kind == W_F32) return _mm256_loadu_ps((const float *)w + i);
    if (kind == W_I8)
        return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64((const __m128i *)((const int8_t *)w + i))));
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)w + i));
    if (kind == W_F16) return _mm256_cvtph_ps(h);
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); /* bfloat16 */
}

__attribute__((target("avx2,fma,f16c"))) static inline float load1(const void *w, size_t i,
                                                                   int kind) {
    if (kind == W_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    if (kind == W_F16) return _cvtsh_ss(h);
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)h << 16};
    return v.f;
}

__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
dense_task(const void *args, int part, int parts, int kind) {
    const product *p = args;
    const size_t size = kind == W_F32 ? 4 : 2; /* bytes per weight */
    const char *W = p->w;
    int n = p->n_in, n8 = n & ~7, lo, hi;
    part_range(p, part, parts, &lo, &hi);
    int o = lo;
    for (; o + 4 <= hi; o += 4) {
        const char *w0 = W + (size_t)o * n * size, *w1 = w0 + n * size, *w2 = w1 + n * size,
                   *w3 = w2 + n * size;
        /* the next block of 4 rows (as in i8_task): 4 * size bytes of it per weight of a row,
         * so 32 * size bytes per 8 weights, one or two cache lines */
        const char *ahead = w0 + 4 * (size_t)n * size;
        int r = 0;
        for (; r + 2 <= p->rows && n8 == n; r += 2) { /* two rows of x against 4 of W */
            const float *x = p->x + (size_t)r * n, *x1 = x + n;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            __m256 b0 = a0, b1 = a0, b2 = a0, b3 = a0;
            for (int i = 0; i < n; i += 8) {
                __m256 xv = _mm256_loadu_ps(x + i), xv1 = _mm256_loadu_ps(x1 + i), w;
                if (r == 0) {
                    _mm_prefetch(ahead + 4 * size * i, AHEAD_HINT);
                    if (size == 4) _mm_prefetch(ahead + 16 * i + 64, AHEAD_HINT);
                }
                w = load8(w0, i, kind);
                a0 = _mm256_fmadd_ps(w, xv, a0);
                b0 = _mm256_fmadd_ps(w, xv1, b0);
                w = load8(w1, i, kind);
                a1 = _mm256_fmadd_ps(w, xv, a1);
                b1 = _mm256_fmadd_ps(w, xv1, b1);
                w = load8(w2, i, kind);
                a2 = _mm256_fmadd_ps(w, xv, a2);
                b2 = _mm256_fmadd_ps(w, xv1, b2);
                w = load8(w3, i, kind);
                a3 = _mm256_fmadd_ps(w, xv, a3);
                b3 = _mm256_fmadd_ps(w, xv1, b3);
            }
            store(p, r, o, hsum(a0));
            store(p, r, o + 1, hsum(a1));
            store(p, r, o + 2, hsum(a2));
            store(p, r, o + 3, hsum(a3));
            store(p, r + 1, o, hsum(b0));
            store(p, r + 1, o + 1, hsum(b1));
            store(p, r + 1, o + 2, hsum(b2));
            store(p, r + 1, o + 3, hsum(b3));
        }
        for (; r < p->rows; r++) {
            const float *x = p->x + (size_t)r * n;
            __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
            for (int i = 0; i < n8; i += 8) {
                __m256 xv = _mm256_loadu_ps(x + i);
                if (r == 0) {
                    _mm_prefetch(ahead + 4 * size * i, AHEAD_HINT);
                    if (size == 4) _mm_prefetch(ahead + 16 * i + 64, AHEAD_HINT);
                }
                a0 = _mm256_fmadd_ps(load8(w0, i, kind), xv, a0);
                a1 = _mm256_fmadd_ps(load8(w1, i, kind), xv, a1);
                a2 = _mm256_fmadd_ps(load8(w2, i, kind), xv, a2);
                a3 = _mm256_fmadd_ps(load8(w3, i, kind), xv, a3);
            }
            float s[4] = {hsum(a0), hsum(a1), hsum(a2), hsum(a3)};
            for (int k = 0; k < 4; k++) {
                const char *wk = w0 + k * (size_t)n * size;
                for (int i = n8; i < n; i++) s[k] += load1(wk, i, kind) * x[i];
                store(p, r, o + k, s[k]);
            }
        }
    }
    for (; o < hi; o++) {
        const char *w0 = W + (size_t)o * n * size;
        for (int r = 0; r < p->rows; r++) {
            const float *x = p->x + (size_t)r * n;
            __m256 a0 = _mm256_setzero_ps();
            for (int i = 0; i < n8; i += 8)
                a0 = _mm256_fmadd_ps(load8(w0, i, kind), _mm256_loadu_ps(x + i), a0);
            float s0 = hsum(a0);
            for (int i = n8; i < n; i++) s0 += load1(w0, i, kind) * x[i];
            store(p, r, o, s0);
        }
    }
}

/* The 512-bit kernels' loop over a part's rows [lo, hi) of W and the `rows` rows of x: calls
 * BLOCK(o, kn, r0, nr, first) for each block of kn = 4 rows of W from o (kn = 1 for the rows left
 * over) and each group of nr (1-4) rows of x from r0, kn and nr constants in each call, so that
 * the kn * nr accumulators stay in registers; `first`: the block's first group (the one that
 * prefetches what follows). */
#define BLOCK_NR(BLOCK, o, kn, r0, nr, first)                                                     \
    switch (nr) {                                                                                 \
    case 1: BLOCK(o, kn, r0, 1, first); break;                                                    \
    case 2: BLOCK(o, kn, r0, 2, first); break;                                                    \
    case 3: BLOCK(o, kn, r0, 3, first); break;                                                    \
    default: BLOCK(o, kn, r0, 4, first); break;                                                   \
    }
#define EACH_BLOCK(lo, hi, rows, BLOCK)                                                           \
    for (int o_ = (lo); o_ < (hi); o_ += 4)                                                       \
        for (int r0_ = 0; r0_ < (rows); r0_ += 4) {                                               \
            const int nr_ = (rows) - r0_ < 4 ? (rows) - r0_ : 4;                                  \
            if ((hi) - o_ >= 4) {                                                                 \
                BLOCK_NR(BLOCK, o_, 4, r0_, nr_, r0_ == 0)                                        \
            } else {                                                                              \
                for (int k_ = o_; k_ < (hi); k_++) BLOCK_NR(BLOCK, k_, 1, r0_, nr_, 0)            \
            }                                                                                     \
        }

/* 16 weights of `kind` (float16 or bfloat16) at element i of w as float32, the lanes of mask m
 * only (the others 0) */
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,f16c"), always_inline)) static inline __m512
load16(const void *w, size_t i, int kind, __mmask16 m) {
    __m256i h = _mm256_maskz_loadu_epi16(m, (const uint16_t *)w + i);
    if (kind == W_F16) return _mm512_cvtph_ps(h);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
}

/* Several rows of x against 16-bit weights on 512-bit vectors: a block of kn (1 or 4) rows of W
 * against nr (1-4) rows of x in kn * nr accumulators, each weight loaded and converted once for
 * every 4 rows of x (dense_task converts it once per two). */
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"), always_inline)) static inline void
dense_block512(const product *p, int o, const int kn, int r0, const int nr, int kind) {
    const size_t size = 2; /* bytes per weight */
    const int n = p->n_in;
    const char *w = (const char *)p->w + (size_t)o * n * size;
    __m512 acc[4][4];
#pragma GCC unroll 4
    for (int k = 0; k < kn; k++)
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) acc[k][r] = _mm512_setzero_ps();
    /* the next block of 4 rows of W, swept while the first rows of x pass (as in dense_task:
     * the hardware prefetcher loses four interleaved streams) */
    const char *ahead = r0 == 0 && kn == 4 ? w + 4 * (size_t)n * size : NULL;
    for (int i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? 0xffff : (__mmask16)((1u << (n - i)) - 1);
        if (ahead)
            for (size_t b = 0; b < 64 * size; b += 64)
                _mm_prefetch(ahead + 4 * size * (size_t)i + b, AHEAD_HINT);
        __m512 xv[4];
#pragma GCC unroll 4
        for (int r = 0; r < nr; r++) xv[r] = _mm512_maskz_loadu_ps(m, p->x + (size_t)(r0 + r) * n + i);
#pragma GCC unroll 4
        for (int k = 0; k < kn; k++) {
            const __m512 wv = load16(w + (size_t)k * n * size, i, kind, m);
#pragma GCC unroll 4
            for (int r = 0; r < nr; r++) acc[k][r] = _mm512_fmadd_ps(wv, xv[r], acc[k][r]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int k = 0; k < kn; k++) store(p, r0 + r, o + k, _mm512_reduce_add_ps(acc[k][r]));
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"), always_inline)) static inline void
dense_task512(const void *args, int part, int parts, int kind) {
    const product *p = args;
    int lo, hi;
    part_range(p, part, parts, &lo, &hi);
#define DENSE_BLOCK(o, kn, r0, nr, first) dense_block512(p, o, kn, r0, nr, kind)
    EACH_BLOCK(lo, hi, p->rows, DENSE_BLOCK)
#undef DENSE_BLOCK
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))) static void
f16_task512(const void *a, int part, int n) {
    dense_task512(a, part, n, W_F16);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))) static void
bf16_task512(const void *a, int part, int n) {
    dense_task512(a, part, n, W_BF16);
}

/* float32 weights and one row of x (decoding one sequence): W's rows one after another, each
 * into four accumulators (32 weights at a time), so that a part reads its rows as one
 * sequential stream, which the hardware prefetcher follows without help; four rows at a time
 * (dense_task) are four interleaved streams. Measured on a 2-core Zen 5 (GPT-2 small's 48 block
 * matrices and its head, streamed, ms): one core 12.7-13.0 against 13.3-15.2 (38.6 GB/s against
 * 36-37; medium's 37.1 against 38.5); decoding on one core 71.5 against 67.4 tok/s (llama.cpp
 * 68.2-69.0 in the same run), medium 25.7 against 24.8 (25.7-26.0), on two cores 130.9 against
 * 95.0 and 47.6 against 44.2. Sixteen-bit weights decoded slower this way (bfloat16, small, one
 * core: 117.6 against 133.1 tok/s: converting them bounds four chains), and several rows of x
 * (4 rows 21 against 16.4 ms: each row of W loads every row of x), so they keep dense_task. */
__attribute__((target("avx2,fma"))) static void f32_row_task(const product *p, int part,
                                                            int parts) {
    const float *x = p->x;
    int n = p->n_in, lo, hi;
    part_range(p, part, parts, &lo, &hi);
    for (int o = lo; o < hi; o++) {
        const float *w = (const float *)p->w + (size_t)o * n;
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        int i = 0;
        for (; i + 32 <= n; i += 32) {
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
        }
        for (; i + 8 <= n; i += 8)
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        float s0 = hsum(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
        for (; i < n; i++) s0 += w[i] * x[i];
        store(p, 0, o, s0);
    }
}

__attribute__((target("avx2,fma,f16c"))) static void f32_task(const void *a, int part, int n) {
    if (((const product *)a)->rows == 1)
        f32_row_task(a, part, n);
    else
        dense_task(a, part, n, W_F32);
}

__attribute__((target("avx2,fma,f16c"))) static void f16_task(const void *a, int part, int n) {
    dense_task(a, part, n, W_F16);
}

__attribute__((target("avx2,fma,f16c"))) static void bf16_task(const void *a, int part, int n) {
    dense_task(a, part, n, W_BF16);
}

/* int8 weights with a scale per output row, int8 activations with a scale per row of x */

/* acc + the products of w and x summed 4 at a time, as int32. AVX2: |x| * (w * sign x) as u8 x
 * s8 pairs through vpmaddubsw / vpmaddwd (no int16 step saturates: 127 * 127 * 2 < 32767).
 * AVX-VNNI: one vpdpbusd of (xq + 128) as u8 (the `xabs` argument then holds that) times w,
 * which does not saturate at all (255 * 127 * 6,400 < 2^31); the caller subtracts 128 times the
 * row's sum of weights (`wsum`). Both are exact. The offset saves the sign instruction per
 * product: with 4 sequences decoding together (int8 is bound by arithmetic there, not memory)
 * the blocks of a step took 2.4-2.6 ms against 2.9 with vpsignb + vpdpbusd (2-core Zen 5, GPT-2
 * small), and `--samples 4` went from 2.2x to 3.2x the rate of one sample. */
typedef __m256i (*i8_dot)(__m256i acc, __m256i w, __m256i xq, __m256i xabs);

__attribute__((target("avx2"))) static inline __m256i dot_avx2(__m256i acc, __m256i w,
                                                               __m256i xq, __m256i xabs) {
    __m256i prod = _mm256_maddubs_epi16(xabs, _mm256_sign_epi8(w, xq));
    return _mm256_add_epi32(acc, _mm256_madd_epi16(prod, _mm256_set1_epi16(1)));
}

__attribute__((target("avx2,avxvnni"))) static inline __m256i dot_vnni(__m256i acc, __m256i w,
                                                                       __m256i xq, __m256i xu) {
    (void)xq;
    return _mm256_dpbusd_avx_epi32(acc, xu, w);
}

__attribute__((target("avx2"), always_inline)) static inline void i8_rows(const void *args, int part,
                                                                      int parts, i8_dot dot,
                                                                      int biased) {
    const product *p = args;
/* the exact sum of row o's products from the vector accumulator a */
#define SUM(a, o) (hsum_i32(a) - (biased ? 128 * p->wsum[o] : 0))
    const int8_t *W = p->w;
    int n = p->n_in, n32 = n & ~31, lo, hi;
    part_range(p, part, parts, &lo, &hi);
    /* x rows in groups that stay in the L2 cache while the weights stream past them */
    int group = p->rows;
    if ((long)group * n * 2 > 256 * 1024) group = (int)(256 * 1024 / (2L * n)) & ~3;
    if (group < 4) group = 4;
    for (int r0 = 0; r0 < p->rows; r0 += group) {
        int r1 = r0 + group < p->rows ? r0 + group : p->rows;
        int o = lo;
        for (; o + 4 <= hi; o += 4) {
            const int8_t *w0 = W + (size_t)o * n, *w1 = w0 + n, *w2 = w1 + n, *w3 = w2 + n;
            /* the next block of 4 rows, prefetched while the first rows of x pass over this
             * one: without it, rows of 768 bytes streamed at 4.2 GB/s on one core, with it
             * 10.5 (the hardware prefetcher loses 4 short interleaved streams) */
            const char *ahead = (const char *)(w0 + 4 * (size_t)n);
            int r = r0;
            for (; r + 2 <= r1 && n32 == n; r += 2) { /* two rows of x against 4 of W */
                const int8_t *xq = p->xq + (size_t)r * n, *xq1 = xq + n;
                const uint8_t *xa = p->xabs + (size_t)r * n, *xa1 = xa + n;
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                __m256i b0 = a0, b1 = a0, b2 = a0, b3 = a0;
                for (int i = 0; i < n; i += 32) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i));
                    __m256i av = _mm256_loadu_si256((const __m256i *)(xa + i));
                    __m256i xv1 = _mm256_loadu_si256((const __m256i *)(xq1 + i));
                    __m256i av1 = _mm256_loadu_si256((const __m256i *)(xa1 + i));
                    if (r == r0) {
                        _mm_prefetch(ahead + 4 * i, AHEAD_HINT);
                        _mm_prefetch(ahead + 4 * i + 64, AHEAD_HINT);
                    }
                    __m256i w;
#define W8(ptr) _mm256_loadu_si256((const __m256i *)((ptr) + i))
                    w = W8(w0);
                    a0 = dot(a0, w, xv, av);
                    b0 = dot(b0, w, xv1, av1);
                    w = W8(w1);
                    a1 = dot(a1, w, xv, av);
                    b1 = dot(b1, w, xv1, av1);
                    w = W8(w2);
                    a2 = dot(a2, w, xv, av);
                    b2 = dot(b2, w, xv1, av1);
                    w = W8(w3);
                    a3 = dot(a3, w, xv, av);
                    b3 = dot(b3, w, xv1, av1);
#undef W8
                }
                float sx = p->xscale[r], sx1 = p->xscale[r + 1];
                const float *ws = p->wscale + o;
                store(p, r, o, (float)SUM(a0, o) * ws[0] * sx);
                store(p, r, o + 1, (float)SUM(a1, o + 1) * ws[1] * sx);
                store(p, r, o + 2, (float)SUM(a2, o + 2) * ws[2] * sx);
                store(p, r, o + 3, (float)SUM(a3, o + 3) * ws[3] * sx);
                store(p, r + 1, o, (float)SUM(b0, o) * ws[0] * sx1);
                store(p, r + 1, o + 1, (float)SUM(b1, o + 1) * ws[1] * sx1);
                store(p, r + 1, o + 2, (float)SUM(b2, o + 2) * ws[2] * sx1);
                store(p, r + 1, o + 3, (float)SUM(b3, o + 3) * ws[3] * sx1);
            }
            for (; r < r1; r++) {
                const int8_t *xq = p->xq + (size_t)r * n;
                const uint8_t *xa = p->xabs + (size_t)r * n;
                __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
                for (int i = 0; i < n32; i += 32) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i));
                    __m256i av = _mm256_loadu_si256((const __m256i *)(xa + i));
                    if (r == r0) {
                        _mm_prefetch(ahead + 4 * i, AHEAD_HINT);
                        _mm_prefetch(ahead + 4 * i + 64, AHEAD_HINT);
                    }
#define W8(ptr) _mm256_loadu_si256((const __m256i *)((ptr) + i))
                    a0 = dot(a0, W8(w0), xv, av);
                    a1 = dot(a1, W8(w1), xv, av);
                    a2 = dot(a2, W8(w2), xv, av);
                    a3 = dot(a3, W8(w3), xv, av);
#undef W8
                }
                int s[4] = {SUM(a0, o), SUM(a1, o + 1), SUM(a2, o + 2), SUM(a3, o + 3)};
                for (int k = 0; k < 4; k++) {
                    const int8_t *wk = W + (size_t)(o + k) * n;
                    for (int i = n32; i < n; i++) s[k] += wk[i] * xq[i];
                    store(p, r, o + k, (float)s[k] * p->wscale[o + k] * p->xscale[r]);
                }
            }
        }
        for (; o < hi; o++) {
            const int8_t *w0 = W + (size_t)o * n;
            for (int r = r0; r < r1; r++) {
                const int8_t *xq = p->xq + (size_t)r * n;
                const uint8_t *xa = p->xabs + (size_t)r * n;
                __m256i a0 = _mm256_setzero_si256();
                for (int i = 0; i < n32; i += 32) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(xq + i));
                    __m256i av = _mm256_loadu_si256((const __m256i *)(xa + i));
                    __m256i wv = _mm256_loadu_si256((const __m256i *)(w0 + i));
                    a0 = dot(a0, wv, xv, av);
                }
                int s0 = SUM(a0, o);
                for (int i = n32; i < n; i++) s0 += w0[i] * xq[i];
                store(p, r, o, (float)s0 * p->wscale[o] * p->xscale[r]);
            }
        }
    }
}

#undef SUM

__attribute__((target("avx2"))) static void i8_task(const void *args, int part, int parts) {
    i8_rows(args, part, parts, dot_avx2, 0);
}

__attribute__((target("avx2,avxvnni"))) static void i8_task_vnni(const void *args, int part,
                                                                  int parts) {
    i8_rows(args, part, parts, dot_vnni, 1);
}


/* AVX-512 with VNNI, for several rows of x (the biased form of dot_vnni, x as xq + 128): 64
 * bytes a load, a block of 4 rows of W against up to 4 rows of x in 16 accumulators, each load
 * of W used by every row of x. The same integer sums, scaled as i8_rows scales them: the same
 * results. kn (1 or 4) and nr (1-4) are constants in each call. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2"), always_inline)) static inline void
i8_block512(const product *p, int o, const int kn, int r0, const int nr, const char *ahead) {
    const int n = p->n_in, n32 = n & ~31, n64 = n & ~63;
    const int8_t *w = (const int8_t *)p->w + (size_t)o * n;
    const uint8_t *x[4];
    __m512i acc[4][4];
    #pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        x[r] = p->xabs + (size_t)(r0 + r) * n;
        #pragma GCC unroll 4
        for (int k = 0; k < kn; k++) acc[k][r] = _mm512_setzero_si512();
    }
    for (int i = 0; i < n32; i += 64) {
        /* the last 32 bytes of the rows' first n32, where n32 is not a multiple of 64 */
        const __mmask64 m = i < n64 ? ~0ULL : 0xffffffffULL;
        if (ahead)
            for (int b = 0; b < 256; b += 64) _mm_prefetch(ahead + 4 * (size_t)i + b, AHEAD_HINT);
        __m512i xv[4];
        #pragma GCC unroll 4
        for (int r = 0; r < nr; r++) xv[r] = _mm512_maskz_loadu_epi8(m, x[r] + i);
        #pragma GCC unroll 4
        for (int k = 0; k < kn; k++) {
            const __m512i wv = _mm512_maskz_loadu_epi8(m, w + (size_t)k * n + i);
            #pragma GCC unroll 4
            for (int r = 0; r < nr; r++) acc[k][r] = _mm512_dpbusd_epi32(acc[k][r], xv[r], wv);
        }
    }
    #pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        const int8_t *xq = p->xq + (size_t)(r0 + r) * n;
        #pragma GCC unroll 4
        for (int k = 0; k < kn; k++) {
            const int8_t *wk = w + (size_t)k * n;
            int sum = _mm512_reduce_add_epi32(acc[k][r]) - 128 * p->wsum[o + k];
            for (int i = n32; i < n; i++) sum += wk[i] * xq[i];
            store(p, r0 + r, o + k, (float)sum * p->wscale[o + k] * p->xscale[r0 + r]);
        }
    }
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2"))) static void
i8_task512(const void *args, int part, int parts) {
    const product *p = args;
    int lo, hi;
    part_range(p, part, parts, &lo, &hi);
    /* the next block of 4 rows, swept while the first rows of x pass (as in i8_rows) */
#define I8_BLOCK(o, kn, r0, nr, first)                                                            \
    i8_block512(p, o, kn, r0, nr, first ? (const char *)p->w + ((size_t)(o) + 4) * p->n_in : NULL)
    EACH_BLOCK(lo, hi, p->rows, I8_BLOCK)
#undef I8_BLOCK
}

/* int4 weights in groups of 32 with a float16 scale each (the quantization of llama.cpp's Q4_0:
 * 4.5 bits a weight), int8 activations with a scale per row of x.
 *
 * Layout: each row of W is n_in weights padded to n_pad (a multiple of 256) and stored as
 * n_pad / 2 bytes, in units of 8 groups (256 weights, 128 bytes) laid out so that a unit's sums
 * land one group per lane: byte 32L + 4g + t of unit u (load L = 0..3, group g = 0..7, t =
 * 0..3) holds weight 256u + 32g + 4L + t in its low nibble and weight 256u + 32g + 16 + 4L + t
 * in its high one; x is laid out to match (quantize_rows_int4: within each unit, word j of
 * group g of x goes to word g of row j). q in [0, 15], w = (q - 8) * scale. Per unit and row of
 * W: 4 loads, 8 vpmaddubsw (q as u8 times xq as s8) summed in int16 (8 * 15 * 127 * 2 < 32767:
 * exact), one vpmaddwd to int32 (lane g: group g's sum), one conversion and one FMA with the 8
 * groups' scales; the -8 of every q is one term per group, -8 * sum(xq) (xgs, once per row of x)
 * added to the group's integer sum before it is scaled (exact: one rounding a group).
 *
 * Why this layout: with each 32-byte load holding whole groups (two a chunk of 64 weights),
 * every group's int32 sum needed its own conversion, scale broadcast and FMA: GPT-2 small's 48
 * block matrices took 1.45 ms of arithmetic on one Zen 5 core (weights in cache) and 1.62-1.69
 * streamed, bound by it from 2 rows of x on (`--samples 4` 1.56x one sample); with one group
 * per lane 0.91 in cache, 1.28-1.29 streamed (two cores 1.07 -> 0.86), `--samples 4` 1.87x. */

/* int4 rows are short (384 bytes for GPT-2 small's 768 inputs), so the next block of 4 rows is
 * too near to prefetch in time: the prefetches read I4_AHEAD bytes on at least. GPT-2 small's 48
 * block matrices on one Zen 5 core: 1.94-1.97 ms the next block, 1.51-1.55 8 KiB on, 1.55-1.56
 * 16 KiB (medium's 5.6-6.0, 5.2-5.4, 5.3-5.7; two cores 1.16-1.28, 0.99-1.05, 1.01-1.20); int8,
 * bfloat16 and float32 rows (3 KiB a block and more) gained nothing from it. */
#ifndef I4_AHEAD
#define I4_AHEAD 8192
#endif


/* one unit's 8 group sums of W row w (128 bytes) with x (256 values, laid out as above), exact;
 * AVX-VNNI: vpdpbusd in two int32 chains (4 sequences: the blocks of a step 3.5-3.6 -> 3.1-3.2 ms
 * on one Zen 5 core; one sequence, bound by memory, the same) */
__attribute__((target("avx2"), always_inline)) static inline __m256i i4_unit(const uint8_t *w,
                                                                            const __m256i *xv) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i s = _mm256_setzero_si256();
    for (int L = 0; L < 4; L++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(w + 32 * L));
        s = _mm256_add_epi16(s, _mm256_maddubs_epi16(_mm256_and_si256(v, low), xv[L]));
        s = _mm256_add_epi16(
            s, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(v, 4), low), xv[L + 4]));
    }
    return _mm256_madd_epi16(s, _mm256_set1_epi16(1));
}

__attribute__((target("avx2,avxvnni"), always_inline)) static inline __m256i
i4_unit_vnni(const uint8_t *w, const __m256i *xv) {
    const __m256i low = _mm256_set1_epi8(0x0f);
    __m256i a = _mm256_setzero_si256(), b = a;
    for (int L = 0; L < 4; L++) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(w + 32 * L));
        a = _mm256_dpbusd_avx_epi32(a, _mm256_and_si256(v, low), xv[L]);
        b = _mm256_dpbusd_avx_epi32(b, _mm256_and_si256(_mm256_srli_epi16(v, 4), low), xv[L + 4]);
    }
    return _mm256_add_epi32(a, b);
}

typedef __m256i (*i4_sums)(const uint8_t *w, const __m256i *xv);

__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
i4_rows(const void *args, int part, int parts, i4_sums sums_of) {
    const product *p = args;
    const uint8_t *W = p->w;
    const size_t row = (size_t)p->n_pad / 2; /* bytes of a row of W */
    const int units = p->n_pad / 256, gp = p->ng_pad;
    int lo, hi;
    part_range(p, part, parts, &lo, &hi);
    for (int o = lo; o < hi; o += 4) {
        const int k_n = hi - o < 4 ? hi - o : 4; /* rows of W in this block */
        const uint8_t *w0 = W + (size_t)o * row;
        const uint16_t *s0 = p->gscale + (size_t)o * gp;
        /* a later block of 4 rows and its scales, swept while x's first row passes over this
         * one (as in i8_rows), I4_AHEAD bytes on at least */
        const size_t skip = (I4_AHEAD + 4 * row - 1) / (4 * row);
        const char *ahead = (const char *)(w0 + 4 * row * skip);
        const char *ahead_s = (const char *)(s0 + 4 * (size_t)gp * skip);
        for (int r = 0; r < p->rows; r++) {
            const int8_t *xr = p->xq + (size_t)r * p->n_pad;
            const int32_t *gs = p->xgs + (size_t)r * gp;
            __m256 acc[4];
            for (int k = 0; k < 4; k++) acc[k] = _mm256_setzero_ps();
            for (int u = 0; u < units; u++) {
                __m256i xv[8];
                for (int j = 0; j < 8; j++)
                    xv[j] = _mm256_loadu_si256((const __m256i *)(xr + 256 * (size_t)u + 32 * j));
                const __m256i corr = _mm256_loadu_si256((const __m256i *)(gs + 8 * u));
                if (r == 0) {
                    _mm_prefetch(ahead_s + 4 * 16 * (size_t)u, AHEAD_HINT);
                    for (int b = 0; b < 512; b += 64)
                        _mm_prefetch(ahead + 4 * 128 * (size_t)u + b, AHEAD_HINT);
                }
                for (int k = 0; k < k_n; k++) {
                    __m256 sc = _mm256_cvtph_ps(
                        _mm_loadu_si128((const __m128i *)(s0 + (size_t)k * gp + 8 * u)));
                    __m256i sums = sums_of(w0 + k * row + 128 * (size_t)u, xv);
                    sums = _mm256_add_epi32(sums, corr);
                    acc[k] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), sc, acc[k]);
                }
            }
            for (int k = 0; k < k_n; k++) store(p, r, o + k, hsum(acc[k]) * p->xscale[r]);
        }
    }
}

__attribute__((target("avx2,fma,f16c"))) static void i4_task(const void *args, int part,
                                                             int parts) {
    i4_rows(args, part, parts, i4_unit);
}

__attribute__((target("avx2,fma,f16c,avxvnni"))) static void i4_task_vnni(const void *args,
                                                                          int part, int parts) {
    i4_rows(args, part, parts, i4_unit_vnni);
}

/* 16 float32 lanes as two halves of 8 (AVX512F only: no DQ) */
__attribute__((target("avx512f"), always_inline)) static inline __m512 join8(__m256 lo, __m256 hi) {
    return _mm512_castpd_ps(
        _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(lo)), _mm256_castps_pd(hi), 1));
}
__attribute__((target("avx512f"), always_inline)) static inline __m256 high8(__m512 v) {
    return _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1));
}

/* one unit's int32 sums of a row of W (unpacked: w[0..1] its low nibbles, w[2..3] its high
 * ones) with a row of x (its unit at xu, its -8 terms at gsu): lanes 0-7 and 8-15 hold the two
 * halves of the unit's 8 group sums (x's words for loads 0-1, 2-3, then 4-5 and 6-7), the -8
 * terms in the first */
__attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline __m512i
i4_sums512(const __m512i *w, const int8_t *xu, const int32_t *gsu) {
    __m512i a = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i *)gsu));
    a = _mm512_dpbusd_epi32(a, w[0], _mm512_loadu_si512(xu));
    a = _mm512_dpbusd_epi32(a, w[1], _mm512_loadu_si512(xu + 64));
    a = _mm512_dpbusd_epi32(a, w[2], _mm512_loadu_si512(xu + 128));
    return _mm512_dpbusd_epi32(a, w[3], _mm512_loadu_si512(xu + 192));
}

/* AVX-512 with VNNI, for several rows of x: one 64-byte load holds two of a unit's four loads,
 * so a unit of a row of W takes 2 loads and 6 ops to unpack, once for up to 4 rows of x, then 4
 * vpdpbusd a row of x (i4_sums512; the two halves' int32 sums added before the scales: the same
 * sums, the same float operations in the same order as i4_rows, so the same results). Rows of
 * x in pairs: two shuffles and one add take both rows' halves into one vector of 16 sums, one
 * conversion and one FMA scale them (a row alone: an extract, an add, a conversion, an FMA;
 * that epilogue was a third of the kernel's time: 4 rows of x by a 768 x 3072 matrix on two
 * Zen 5 cores, caches warm, 24.7 -> 20.9 us, streamed 27.4 -> 24.0). kn rows of W (1 or 4)
 * against nr rows of x (1-4): constants in each call, so that the accumulators stay in
 * registers. */
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"),
               always_inline)) static inline void
i4_block512(const product *p, int o, const int kn, int r0, const int nr, const char *ahead,
            const char *ahead_s) {
    const __m512i low = _mm512_set1_epi8(0x0f);
    const size_t row = (size_t)p->n_pad / 2;
    const int units = p->n_pad / 256, gp = p->ng_pad;
    const uint8_t *w = (const uint8_t *)p->w + (size_t)o * row;
    const uint16_t *sc = p->gscale + (size_t)o * gp;
    const int8_t *x[4];
    const int32_t *gs[4];
    __m256 acc[4][4];
    __m512 acc2[4][2]; /* rows 2i and 2i + 1 of x in the halves */
    #pragma GCC unroll 4
    for (int k = 0; k < kn; k++)
        #pragma GCC unroll 2
        for (int i = 0; i < nr / 2; i++) acc2[k][i] = _mm512_setzero_ps();
    #pragma GCC unroll 4
    for (int r = 0; r < nr; r++) {
        x[r] = p->xq + (size_t)(r0 + r) * p->n_pad;
        gs[r] = p->xgs + (size_t)(r0 + r) * gp;
        #pragma GCC unroll 4
        for (int k = 0; k < kn; k++) acc[k][r] = _mm256_setzero_ps();
    }
    for (int u = 0; u < units; u++) {
        if (ahead) { /* as in i4_rows */
            _mm_prefetch(ahead_s + 4 * 16 * (size_t)u, AHEAD_HINT);
            for (int b = 0; b < 512; b += 64)
                _mm_prefetch(ahead + 4 * 128 * (size_t)u + b, AHEAD_HINT);
        }
        #pragma GCC unroll 4
        for (int k = 0; k < kn; k++) {
            const uint8_t *wu = w + k * row + 128 * (size_t)u;
            const __m512i v0 = _mm512_loadu_si512(wu), v1 = _mm512_loadu_si512(wu + 64);
            const __m512i wl[4] = {
                _mm512_and_si512(v0, low), _mm512_and_si512(v1, low),
                _mm512_and_si512(_mm512_srli_epi16(v0, 4), low),
                _mm512_and_si512(_mm512_srli_epi16(v1, 4), low)};
            const __m256 s =
                _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(sc + k * (size_t)gp + 8 * u)));
            const __m512 s2 = join8(s, s);
            #pragma GCC unroll 2
            for (int i = 0; i < nr / 2; i++) {
                const int r = 2 * i;
                const __m512i a0 = i4_sums512(wl, x[r] + 256 * (size_t)u, gs[r] + 8 * u);
                const __m512i a1 = i4_sums512(wl, x[r + 1] + 256 * (size_t)u, gs[r + 1] + 8 * u);
                /* the halves added for both rows at once: [row r's 8 sums, row r + 1's] */
                const __m512i sums = _mm512_add_epi32(_mm512_shuffle_i64x2(a0, a1, 0x44),
                                                      _mm512_shuffle_i64x2(a0, a1, 0xee));
                acc2[k][i] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sums), s2, acc2[k][i]);
            }
            if (nr % 2) { /* the row of x left over */
                const int r = nr - 1;
                const __m512i a = i4_sums512(wl, x[r] + 256 * (size_t)u, gs[r] + 8 * u);
                const __m256i sums =
                    _mm256_add_epi32(_mm512_castsi512_si256(a), _mm512_extracti64x4_epi64(a, 1));
                acc[k][r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(sums), s, acc[k][r]);
            }
        }
    }
    #pragma GCC unroll 4
    for (int k = 0; k < kn; k++)
        #pragma GCC unroll 2
        for (int i = 0; i < nr / 2; i++) {
            acc[k][2 * i] = _mm512_castps512_ps256(acc2[k][i]);
            acc[k][2 * i + 1] = high8(acc2[k][i]);
        }
    #pragma GCC unroll 4
    for (int r = 0; r < nr; r++)
        #pragma GCC unroll 4
        for (int k = 0; k < kn; k++) store(p, r0 + r, o + k, hsum(acc[k][r]) * p->xscale[r0 + r]);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c"))) static void
i4_task512(const void *args, int part, int parts) {
    const product *p = args;
    const size_t row = (size_t)p->n_pad / 2, gp = (size_t)p->ng_pad;
    const size_t skip = (I4_AHEAD + 4 * row - 1) / (4 * row); /* as in i4_rows */
    int lo, hi;
    part_range(p, part, parts, &lo, &hi);
    /* a later block of 4 rows and its scales, I4_AHEAD bytes on at least (as in i4_rows) */
#define I4_BLOCK(o, kn, r0, nr, first)                                                            \
    i4_block512(p, o, kn, r0, nr,                                                                 \
                first ? (const char *)p->w + ((size_t)(o) + 4 * skip) * row : NULL,               \
                (const char *)(p->gscale + ((size_t)(o) + 4 * skip) * gp))
    EACH_BLOCK(lo, hi, p->rows, I4_BLOCK)
#undef I4_BLOCK
}

/* W's rows [lo, hi) of the part as float32 (rows of n_in, the padding dropped) into y */
__attribute__((target("avx2,fma,f16c"))) static void i4_dequantize_task(const void *args,
                                                                        int part, int parts) {
    const product *p = args;
    const size_t row = (size_t)p->n_pad / 2;
    int lo, hi;
    part_range(p, part, parts, &lo, &hi);
    for (int o = lo; o < hi; o++) {
        const uint8_t *w = (const uint8_t *)p->w + (size_t)o * row;
        const uint16_t *sc = p->gscale + (size_t)o * p->ng_pad;
        float *y = p->y + (size_t)o * p->n_in;
        for (int u = 0; u < p->n_pad / 256; u++) {
            float unit[256];
            for (int g = 0; g < 8; g++) {
                /* group g's 16 bytes: word L of the group is word g of load L; low nibbles are
                 * its weights 0-15 in order, high nibbles 16-31 */
                uint32_t words[4];
                for (int L = 0; L < 4; L++) memcpy(&words[L], w + 128 * u + 32 * L + 4 * g, 4);
                const __m128i b = _mm_loadu_si128((const __m128i *)words);
                const __m128i low = _mm_set1_epi8(0x0f);
                const __m128i halves[2] = {_mm_and_si128(b, low),
                                           _mm_and_si128(_mm_srli_epi16(b, 4), low)};
                const __m256 d = _mm256_set1_ps(_cvtsh_ss(sc[8 * u + g]));
                const __m256i eight = _mm256_set1_epi32(8);
                for (int h = 0; h < 2; h++) {
                    __m256i v0 = _mm256_sub_epi32(_mm256_cvtepu8_epi32(halves[h]), eight);
                    __m256i v1 = _mm256_sub_epi32(
                        _mm256_cvtepu8_epi32(_mm_srli_si128(halves[h], 8)), eight);
                    float *out = unit + 32 * g + 16 * h;
                    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(v0), d));
                    _mm256_storeu_ps(out + 8, _mm256_mul_ps(_mm256_cvtepi32_ps(v1), d));
                }
            }
            const int n = p->n_in - 256 * u < 256 ? p->n_in - 256 * u : 256;
            memcpy(y + 256 * (size_t)u, unit, sizeof(float) * (size_t)n);
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * Attention of one new token per row over its cached keys and values (decoding). Each part of a
 * task owns some (row, head) pairs: it writes the pair's new key and value into the cache at the
 * row's position, scores the query against keys [0, position], takes the softmax and sums the
 * values it weights. The cache holds float32, float16 or int8 (kind W_F32 / W_F16 / W_I8); int8
 * keys and values with a float32 scale each (a head's vector at a position): its largest
 * magnitude / 127, the values rounded to nearest (ties to even) after dividing by it, as
 * `KVCache` rounds them in torch, so both write the same bytes.
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    const float *qkv; /* (batch, qkv_stride): q, k, v of each row's new token, each heads * hd */
    long qkv_stride;
    char *k, *v; /* the layer's cache: row b, head h, position t, element i at
                  * b * bstride + h * hstride + t * hd + i elements */
    long bstride, hstride;
    float *ks, *vs; /* int8: the scales, row b, head h, position t at (b * bstride + h * hstride)
                     * / hd + t */
    const int64_t *positions; /* (batch,), or NULL: every row at `position` */
    long position;
    float *y; /* (batch, heads * hd): each row's heads side by side */
    float *scores; /* scratch: part p's scores at scores + p * scores_stride */
    long scores_stride;
    int batch, heads, hd;
    float scale;
} attention;

/* e^x, 8 at a time, for x <= 0 (scores less their maximum): Cephes' expf (a degree-5 polynomial
 * on [-ln2/2, ln2/2] times 2^n), relative error ~1e-7; flushed to 0 below e^-87 */
static const float EXP_POLY[6] = {1.9875691500e-4f, 1.3981999507e-3f, 8.3334519073e-3f,
                                   4.1665795894e-2f, 1.6666665459e-1f, 5.0000001201e-1f};
__attribute__((target("avx2,fma"))) static inline __m256 exp8(__m256 x) {
    __m256 tiny = _mm256_cmp_ps(x, _mm256_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
    __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                               _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    x = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), x);
    __m256 y = _mm256_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(EXP_POLY[i]));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(
        _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
    return _mm256_andnot_ps(tiny, _mm256_mul_ps(y, _mm256_castsi256_ps(e)));
}

/* the 8 horizontal sums of a0..a7, in order, as one vector */
__attribute__((target("avx2"))) static inline __m256 hsum8(__m256 a0, __m256 a1, __m256 a2,
                                                           __m256 a3, __m256 a4, __m256 a5,
                                                           __m256 a6, __m256 a7) {
    __m256 t0 = _mm256_hadd_ps(_mm256_hadd_ps(a0, a1), _mm256_hadd_ps(a2, a3));
    __m256 t1 = _mm256_hadd_ps(_mm256_hadd_ps(a4, a5), _mm256_hadd_ps(a6, a7));
    return _mm256_add_ps(_mm256_permute2f128_ps(t0, t1, 0x20),
                         _mm256_permute2f128_ps(t0, t1, 0x31));
}

/* 8 float32 values into w (an array of `kind`, float32 or float16) at element i */
__attribute__((target("avx2,fma,f16c"))) static inline void put8(void *w, size_t i, __m256 v,
                                                                 int kind) {
    if (kind == W_F32)
        _mm256_storeu_ps((float *)w + i, v);
    else
        _mm_storeu_si128((__m128i *)((uint16_t *)w + i),
                         _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

/* hd float32 values as int8 at dst (hd a multiple of 8); returns their scale (see attention) */
__attribute__((target("avx2,fma,f16c"))) static inline float put_i8(int8_t *dst, const float *x,
                                                                    int hd) {
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    __m256 m = _mm256_setzero_ps();
    for (int j = 0; j < hd; j += 8) m = _mm256_max_ps(m, _mm256_and_ps(_mm256_loadu_ps(x + j), magnitude));
    const float scale = hmax(m) / 127.0f;
    if (!(scale > 0)) { /* all zero (or tiny): zeros */
        memset(dst, 0, (size_t)hd);
        return 0.0f;
    }
    const __m256 s = _mm256_set1_ps(scale);
    for (int j = 0; j < hd; j += 8) {
        __m256 v = _mm256_round_ps(_mm256_div_ps(_mm256_loadu_ps(x + j), s),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
        __m256i i = _mm256_cvtps_epi32(v);
        __m128i w = _mm_packs_epi32(_mm256_castsi256_si128(i), _mm256_extracti128_si256(i, 1));
        _mm_storel_epi64((__m128i *)(dst + j), _mm_packs_epi16(w, w));
    }
    return scale;
}

#define MAX_HD 256 /* head sizes up to this, multiples of 8 (GPT-2's are 64) */
/* cached keys and values are prefetched KV_AHEAD positions ahead of the loops that read them:
 * 12 layers over 925 float16 positions (GPT-2 small, 2 threads, Zen 5, caches cold) took
 * 0.78-0.81 ms with 16 ahead (8: 0.84, 32: 0.80, non-temporal: 0.80) against 0.91 without;
 * over float32, level (1.66-1.77 against 1.66) */
#ifndef KV_AHEAD
#define KV_AHEAD 16
#endif
#ifndef KV_HINT
#define KV_HINT _MM_HINT_T0
#endif
#ifndef KV_AHEAD_I8 /* positions of an int8 cache (as many bytes on as KV_AHEAD float32 ones) */
#define KV_AHEAD_I8 64
#endif

/* the scores s[0, L) as softmax weights, unnormalised (e^(s - m), m their maximum); their sum */
__attribute__((target("avx2,fma"), always_inline)) static inline float softmax_weights(float *s,
                                                                                     int L,
                                                                                     float m) {
    const __m256 vm = _mm256_set1_ps(m);
    __m256 vsum = _mm256_setzero_ps();
    int t = 0;
    for (; t + 8 <= L; t += 8) {
        __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + t), vm));
        _mm256_storeu_ps(s + t, e);
        vsum = _mm256_add_ps(vsum, e);
    }
    float sum = hsum(vsum);
    for (; t < L; t++) {
        s[t] = expf(s[t] - m);
        sum += s[t];
    }
    return sum;
}

/* 16 int8 values at p as float32 */
__attribute__((target("avx512f,avx512bw,avx512vl"), always_inline)) static inline __m512
int8x16(const int8_t *p) {
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)p)));
}

/* attend_pair over an int8 cache on 512-bit vectors, for head sizes that are multiples of 16:
 * converting int8 to float32 bound the 256-bit loop (12 layers over 925 positions of GPT-2
 * small, caches cold, 2 Zen 5 cores: 0.61-0.64 ms, on 512-bit vectors 0.51-0.54 with the
 * prefetches 64 positions ahead (32: 0.54, 128: 0.58), over float16 0.70; one core 1.03-1.05,
 * 0.83, 1.29-1.39) */
__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"), always_inline)) static inline void
attend_pair_i8_512(const attention *a, int b, int h, float *s, int hd) {
    const long pos = a->positions ? a->positions[b] : a->position;
    const int L = (int)pos + 1, C = a->heads * hd, n16 = hd / 16;
    const float *q = a->qkv + b * a->qkv_stride + (long)h * hd;
    const long base = b * a->bstride + h * a->hstride;
    int8_t *K = (int8_t *)a->k + base, *V = (int8_t *)a->v + base;
    const float *ks = a->ks + base / hd, *vs = a->vs + base / hd;
    a->ks[base / hd + pos] = put_i8(K + pos * hd, q + C, hd);
    a->vs[base / hd + pos] = put_i8(V + pos * hd, q + 2 * C, hd);
    __m512 qv[MAX_HD / 16], acc[MAX_HD / 16];
    /* the first positions of the keys and of the values, which the loops' prefetches (each
     * KV_AHEAD_I8 positions on) never reach: GPT-2 small's 12 blocks of a step on two Zen 5
     * cores, cache cold, 1.073-1.079 -> 1.058 ms 860 positions in, 0.825 -> 0.811 at 64 */
    {
        const long first = (L < KV_AHEAD_I8 ? L : KV_AHEAD_I8) * (long)hd;
        for (long c = 0; c < first; c += 64) {
            _mm_prefetch((const char *)K + c, KV_HINT);
            _mm_prefetch((const char *)V + c, KV_HINT);
        }
    }
    for (int j = 0; j < n16; j++) qv[j] = _mm512_mul_ps(_mm512_loadu_ps(q + 16 * j), _mm512_set1_ps(a->scale));
    int t = 0;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (; t + 8 <= L; t += 8) {
        const int8_t *k0 = K + (long)t * hd;
        for (int c = 0; c < 8 * hd; c += 64) _mm_prefetch((const char *)k0 + KV_AHEAD_I8 * hd + c, KV_HINT);
        __m256 d[8];
        for (int u = 0; u < 8; u++) {
            __m512 x = _mm512_mul_ps(int8x16(k0 + u * hd), qv[0]);
            for (int j = 1; j < n16; j++) x = _mm512_fmadd_ps(int8x16(k0 + u * hd + 16 * j), qv[j], x);
            d[u] = _mm256_add_ps(_mm512_castps512_ps256(x),
                                 _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(x), 1)));
        }
        __m256 sv = _mm256_mul_ps(hsum8(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]),
                                  _mm256_loadu_ps(ks + t));
        _mm256_storeu_ps(s + t, sv);
        vmax = _mm256_max_ps(vmax, sv);
    }
    float m = hmax(vmax);
    for (; t < L; t++) {
        const int8_t *kt = K + (long)t * hd;
        __m512 x = _mm512_mul_ps(int8x16(kt), qv[0]);
        for (int j = 1; j < n16; j++) x = _mm512_fmadd_ps(int8x16(kt + 16 * j), qv[j], x);
        s[t] = _mm512_reduce_add_ps(x) * ks[t];
        if (s[t] > m) m = s[t];
    }
    const float sum = softmax_weights(s, L, m);
    for (int j = 0; j < n16; j++) acc[j] = _mm512_setzero_ps();
    for (t = 0; t < L; t++) {
        const __m512 p = _mm512_set1_ps(s[t] * vs[t]);
        const int8_t *vt = V + (long)t * hd;
        for (int c = 0; c < hd; c += 64) _mm_prefetch((const char *)vt + KV_AHEAD_I8 * hd + c, KV_HINT);
        for (int j = 0; j < n16; j++) acc[j] = _mm512_fmadd_ps(p, int8x16(vt + 16 * j), acc[j]);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / sum);
    float *y = a->y + (long)b * C + (long)h * hd;
    for (int j = 0; j < n16; j++) _mm512_storeu_ps(y + 16 * j, _mm512_mul_ps(acc[j], inv));
}

__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
attend_pair(const attention *a, int b, int h, float *s, int kind, int hd) {
    const size_t size = kind == W_F32 ? 4 : kind == W_I8 ? 1 : 2;
    const long pos = a->positions ? a->positions[b] : a->position;
    const int L = (int)pos + 1, C = a->heads * hd, n8 = hd / 8;
    const float *q = a->qkv + b * a->qkv_stride + (long)h * hd;
    const long base = (b * a->bstride + h * a->hstride) * (long)size;
    char *K = a->k + base, *V = a->v + base;
    __m256 qv[MAX_HD / 8], acc[MAX_HD / 8];
    const __m256 scale = _mm256_set1_ps(a->scale);
    const float *ks = NULL, *vs = NULL; /* int8: this pair's scales, by position */
    if (kind == W_I8) {
        const long sbase = (b * a->bstride + h * a->hstride) / hd;
        a->ks[sbase + pos] = put_i8((int8_t *)K + pos * hd, q + C, hd);
        a->vs[sbase + pos] = put_i8((int8_t *)V + pos * hd, q + 2 * C, hd);
        ks = a->ks + sbase;
        vs = a->vs + sbase;
    }
    for (int j = 0; j < n8; j++) {
        if (kind != W_I8) {
            put8(K, pos * hd + 8 * j, _mm256_loadu_ps(q + C + 8 * j), kind);
            put8(V, pos * hd + 8 * j, _mm256_loadu_ps(q + 2 * C + 8 * j), kind);
        }
        qv[j] = _mm256_mul_ps(_mm256_loadu_ps(q + 8 * j), scale);
    }
    /* scores, 8 keys at a time */
    const size_t row = (size_t)hd * size; /* bytes per position */
    int t = 0;
    __m256 vmax = _mm256_set1_ps(-INFINITY);
    for (; t + 8 <= L; t += 8) {
        const char *k0 = K + t * row;
        for (size_t b = 0; b < 8 * row; b += 64) _mm_prefetch(k0 + KV_AHEAD * row + b, KV_HINT);
        __m256 d[8];
        for (int u = 0; u < 8; u++) {
            __m256 x = _mm256_mul_ps(load8(k0 + u * row, 0, kind), qv[0]);
            for (int j = 1; j < n8; j++) x = _mm256_fmadd_ps(load8(k0 + u * row, 8 * j, kind), qv[j], x);
            d[u] = x;
        }
        __m256 sv = hsum8(d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]);
        if (kind == W_I8) sv = _mm256_mul_ps(sv, _mm256_loadu_ps(ks + t));
        _mm256_storeu_ps(s + t, sv);
        vmax = _mm256_max_ps(vmax, sv);
    }
    float m = hmax(vmax);
    for (; t < L; t++) {
        const char *kt = K + t * row;
        __m256 x = _mm256_mul_ps(load8(kt, 0, kind), qv[0]);
        for (int j = 1; j < n8; j++) x = _mm256_fmadd_ps(load8(kt, 8 * j, kind), qv[j], x);
        s[t] = hsum(x);
        if (kind == W_I8) s[t] *= ks[t];
        if (s[t] > m) m = s[t];
    }
    const float sum = softmax_weights(s, L, m);
    /* the values they weight */
    for (int j = 0; j < n8; j++) acc[j] = _mm256_setzero_ps();
    for (t = 0; t < L; t++) {
        const __m256 p = _mm256_set1_ps(kind == W_I8 ? s[t] * vs[t] : s[t]);
        const char *vt = V + t * row;
        for (size_t b = 0; b < row; b += 64) _mm_prefetch(vt + KV_AHEAD * row + b, KV_HINT);
        for (int j = 0; j < n8; j++) acc[j] = _mm256_fmadd_ps(p, load8(vt, 8 * j, kind), acc[j]);
    }
    const __m256 inv = _mm256_set1_ps(1.0f / sum);
    float *y = a->y + (long)b * C + (long)h * hd;
    for (int j = 0; j < n8; j++) _mm256_storeu_ps(y + 8 * j, _mm256_mul_ps(acc[j], inv));
}

__attribute__((target("avx2,fma,f16c"), always_inline)) static inline void
attention_part(const void *args, int part, int parts, int kind) {
    const attention *a = args;
    float *scores = a->scores + part * a->scores_stride;
    int pairs = a->batch * a->heads;
    int lo = (int)((long)pairs * part / parts), hi = (int)((long)pairs * (part + 1) / parts);
    for (int i = lo; i < hi; i++) {
        int b = i / a->heads, h = i % a->heads;
        if (a->hd == 64)
            attend_pair(a, b, h, scores, kind, 64); /* GPT-2's: a constant, unrolled */
        else
            attend_pair(a, b, h, scores, kind, a->hd);
    }
}

__attribute__((target("avx2,fma,f16c"))) static void attention_f32(const void *a, int part,
                                                                   int n) {
    attention_part(a, part, n, W_F32);
}

__attribute__((target("avx2,fma,f16c"))) static void attention_f16(const void *a, int part,
                                                                   int n) {
    attention_part(a, part, n, W_F16);
}

__attribute__((target("avx2,fma,f16c"))) static void attention_i8(const void *a, int part,
                                                                  int n) {
    attention_part(a, part, n, W_I8);
}

__attribute__((target("avx512f,avx512bw,avx512vl,avx2,fma,f16c"))) static void
attention_i8_512(const void *args, int part, int parts) {
    const attention *a = args;
    if (a->hd % 16) {
        attention_part(a, part, parts, W_I8);
        return;
    }
    float *scores = a->scores + part * a->scores_stride;
    int pairs = a->batch * a->heads;
    int lo = (int)((long)pairs * part / parts), hi = (int)((long)pairs * (part + 1) / parts);
    for (int i = lo; i < hi; i++) {
        if (a->hd == 64)
            attend_pair_i8_512(a, i / a->heads, i % a->heads, scores, 64); /* GPT-2's, unrolled */
        else
            attend_pair_i8_512(a, i / a->heads, i % a->heads, scores, a->hd);
    }
}

static int has_avx512(void);

/* the attention task for a cache kind: 0 float32, 1 float16, 2 int8 (on 512-bit vectors where
 * set_avx512 allows) */
static task_fn attention_task(int kind) {
    if (kind == 2) return has_avx512() ? attention_i8_512 : attention_i8;
    return kind ? attention_f16 : attention_f32;
}

static int cpu_ok(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
           __builtin_cpu_supports("f16c");
}

static int vnni = -1; /* -1: not yet asked */

static int has_vnni(void) {
    if (vnni < 0) vnni = __builtin_cpu_supports("avxvnni");
    return vnni;
}

static int avx512 = -1; /* -1: not yet asked */

static int cpu_avx512(void) {
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
}

/* 512-bit kernels: int8 and int4 products (i8_task512, i4_task512), 16-bit ones of several rows
 * (dense_task512), attention over an int8 cache (attention_i8_512) */
static int has_avx512(void) {
    if (avx512 < 0) avx512 = cpu_avx512();
    return avx512;
}

/* The dense kernel for weights of `kind` (0 float32, 1 float16, 2 bfloat16) and `rows` rows of
 * x: several rows of 16-bit weights on 512-bit vectors where set_avx512 allows. GPT-2 small's
 * bfloat16 block matrices on a Zen 5, ms, 256-bit / 512-bit: one core, 2 rows 5.0 / 4.6, 4 rows
 * 7.5 / 4.9, 8 rows 13.6 / 8.4; two cores 3.9-4.1 / 3.9-4.3, 4.6-4.8 / 4.0-4.3, 7.2 / 5.0.
 * Float32 weights stay on 256 bits: their products were faster there on two cores (2 rows 7.4
 * against 8.9-9.4, 4 rows 8.4-8.6 against 8.9-9.3), where the 512-bit loop reads them slower. */
static task_fn dense_kernel(int kind, int rows) {
    static const task_fn wide[] = {f32_task, f16_task512, bf16_task512};
    static const task_fn narrow[] = {f32_task, f16_task, bf16_task};
    return (rows > 1 && has_avx512() ? wide : narrow)[kind];
}

/* The int8 kernel for `rows` rows of x against W with (wsum) or without its rows' sums, and
 * whether it takes x biased (xq + 128, see dot_vnni). Several rows on AVX-512 VNNI (GPT-2
 * small's int8 output head on a Zen 5, 4 rows: 0.98 against 1.25-1.44 ms on one core, 0.90-0.94
 * against 1.24-1.26 on two; its int8 block matrices 2.49-2.57 against 2.85-3.13); one row on
 * 256-bit VNNI where the CPU has it (bound by memory: level, 0.70-0.77 against 0.70-0.73). */
static task_fn i8_kernel(int rows, int wsum, int *biased) {
    *biased = wsum && (has_vnni() || has_avx512());
    if (!*biased) return i8_task;
    return has_avx512() && (rows > 1 || !has_vnni()) ? i8_task512 : i8_task_vnni;
}

/* Each row of x to int8 by its largest magnitude: xq = round(x * 127 / max|x|) (to nearest,
 * ties to even, as torch.round), xabs = |xq| (biased: xq + 128), xscale = max|x| / 127. */
__attribute__((target("avx2"))) static void quantize_rows(const float *x, int rows, int n,
                                                          int8_t *xq, uint8_t *xabs,
                                                          float *xscale, int biased) {
    const __m256i flip = _mm256_set1_epi8(-128);
    const __m256 magnitude = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    const __m256i lowest = _mm256_set1_epi8(-127);
    int n8 = n & ~7, n32 = n & ~31;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        int8_t *qr = xq + (size_t)r * n;
        uint8_t *ar = xabs + (size_t)r * n;
        __m256 vmax = _mm256_setzero_ps();
        for (int i = 0; i < n8; i += 8)
            vmax = _mm256_max_ps(vmax, _mm256_and_ps(_mm256_loadu_ps(xr + i), magnitude));
        __m128 m = _mm_max_ps(_mm256_castps256_ps128(vmax), _mm256_extractf128_ps(vmax, 1));
        m = _mm_max_ps(m, _mm_movehl_ps(m, m));
        m = _mm_max_ss(m, _mm_movehdup_ps(m));
        float amax = _mm_cvtss_f32(m);
        for (int i = n8; i < n; i++) {
            float a = xr[i] < 0 ? -xr[i] : xr[i];
            if (a > amax) amax = a;
        }
        float inv = amax > 0 ? 127.0f / amax : 0.0f;
        xscale[r] = amax / 127.0f;
        const __m256 vinv = _mm256_set1_ps(inv);
        for (int i = 0; i < n32; i += 32) {
            __m256i q0 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + i), vinv));
            __m256i q1 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + i + 8), vinv));
            __m256i q2 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + i + 16), vinv));
            __m256i q3 = _mm256_cvtps_epi32(_mm256_mul_ps(_mm256_loadu_ps(xr + i + 24), vinv));
            __m256i q = _mm256_packs_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
            q = _mm256_max_epi8(_mm256_permutevar8x32_epi32(q, order), lowest);
            _mm256_storeu_si256((__m256i *)(qr + i), q);
            _mm256_storeu_si256((__m256i *)(ar + i),
                                biased ? _mm256_xor_si256(q, flip) : _mm256_abs_epi8(q));
        }
        for (int i = n32; i < n; i++) {
            int v = _mm_cvtss_si32(_mm_set_ss(xr[i] * inv));
            v = v > 127 ? 127 : v < -127 ? -127 : v;
            qr[i] = (int8_t)v;
            ar[i] = (uint8_t)(biased ? v + 128 : v < 0 ? -v : v);
        }
    }
}

/* x (rows, n) to int8 for int4 products: rows of n_pad laid out as the weights are (within each
 * unit of 256, word j of group g to word g of row j; zero past n), and each group of 32's sum
 * times -8 into xgs (rows of ng_pad). spare: 2 * n_pad bytes. */
__attribute__((target("avx2"))) static void quantize_rows_int4(const float *x, int rows, int n,
                                                               const product *p, int8_t *xq,
                                                               uint8_t *spare, int32_t *xgs,
                                                               float *xscale) {
    int8_t *plain = (int8_t *)spare;
    for (int r = 0; r < rows; r++) {
        quantize_rows(x + (size_t)r * n, 1, n, plain, spare + p->n_pad, xscale + r, 0);
        memset(plain + n, 0, (size_t)(p->n_pad - n));
        int8_t *qr = xq + (size_t)r * p->n_pad;
        int32_t *gr = xgs + (size_t)r * p->ng_pad;
        /* each unit's 8 groups (8 words each) transposed as an 8 x 8 matrix of words; their
         * sums by vpmaddubsw / vpmaddwd (by hand because the scalar loops took a tenth of an
         * int4 step at 4 rows of x) */
        const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
        for (int u = 0; u < p->n_pad / 256; u++) {
            __m256i m[8], t[8];
            for (int g = 0; g < 8; g++) {
                m[g] = _mm256_loadu_si256((const __m256i *)(plain + 256 * u + 32 * g));
                gr[8 * u + g] =
                    -8 * hsum_i32(_mm256_madd_epi16(_mm256_maddubs_epi16(ones8, m[g]), ones16));
            }
            for (int g = 0; g < 8; g += 2) {
                t[g] = _mm256_unpacklo_epi32(m[g], m[g + 1]);
                t[g + 1] = _mm256_unpackhi_epi32(m[g], m[g + 1]);
            }
            for (int g = 0; g < 8; g += 4) {
                m[g] = _mm256_unpacklo_epi64(t[g], t[g + 2]);
                m[g + 1] = _mm256_unpackhi_epi64(t[g], t[g + 2]);
                m[g + 2] = _mm256_unpacklo_epi64(t[g + 1], t[g + 3]);
                m[g + 3] = _mm256_unpackhi_epi64(t[g + 1], t[g + 3]);
            }
            /* m[0..3]: words 0, 1, 2, 3 of groups 0-3 (low lane: words 0-3, high: 4-7) */
            for (int j = 0; j < 4; j++) {
                __m256i lo = _mm256_permute2x128_si256(m[j], m[j + 4], 0x20);
                __m256i hi = _mm256_permute2x128_si256(m[j], m[j + 4], 0x31);
                _mm256_storeu_si256((__m256i *)(qr + 256 * u + 32 * j), lo);
                _mm256_storeu_si256((__m256i *)(qr + 256 * u + 32 * (j + 4)), hi);
            }
        }
    }
}

/* ---------------------------------------------------------------------------------------------
 * A whole decoding step through the blocks: for one new token per row, every layer's LayerNorm,
 * attention (its products, the cache write, the softmax), residual additions, MLP and GELU in
 * one call, from a plan of each layer's weights that the caller builds once.
 * ------------------------------------------------------------------------------------------- */

enum { M_INT8 = 3, M_INT4 }; /* matrix kinds: W_F32, W_F16, W_BF16 (dense), M_INT8, M_INT4 */

typedef struct {
    int64_t kind, w, scale, bias, n_out, n_in; /* addresses as integers; scale: int8's per row,
                                                * int4's per group (gscale) */
    int64_t wsum;                              /* int8 only: see product.wsum */
} matrix_spec;

typedef struct {
    int64_t ln1_w, ln1_b, ln2_w, ln2_b;
    matrix_spec attn, proj, fc, out;
    int64_t eps_bits, scale_bits; /* float32 bit patterns: LayerNorm's eps, attention's scale */
} layer_plan;

#define PLAN_LEN ((int)(sizeof(layer_plan) / sizeof(int64_t)))

static float float_of(int64_t bits) {
    union {
        uint32_t u;
        float f;
    } v = {(uint32_t)bits};
    return v.f;
}

/* y = LayerNorm(x) per row of n: (x - mean) / sqrt(var + eps) * w + b, var biased (torch's) */
__attribute__((target("avx2,fma"))) static void layer_norm(const float *x, float *y, int rows,
                                                           int n, const float *w, const float *b,
                                                           float eps) {
    int n8 = n & ~7;
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float *yr = y + (size_t)r * n;
        __m256 s = _mm256_setzero_ps();
        for (int i = 0; i < n8; i += 8) s = _mm256_add_ps(s, _mm256_loadu_ps(xr + i));
        float sum = hsum(s);
        for (int i = n8; i < n; i++) sum += xr[i];
        float mean = sum / n;
        const __m256 vm = _mm256_set1_ps(mean);
        s = _mm256_setzero_ps();
        for (int i = 0; i < n8; i += 8) {
            __m256 d = _mm256_sub_ps(_mm256_loadu_ps(xr + i), vm);
            s = _mm256_fmadd_ps(d, d, s);
        }
        float var = hsum(s);
        for (int i = n8; i < n; i++) var += (xr[i] - mean) * (xr[i] - mean);
        float rstd = 1.0f / sqrtf(var / n + eps);
        const __m256 vr = _mm256_set1_ps(rstd);
        int i = 0;
        for (; i < n8; i += 8) {
            __m256 d = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + i), vm), vr);
            _mm256_storeu_ps(yr + i, _mm256_fmadd_ps(d, _mm256_loadu_ps(w + i), _mm256_loadu_ps(b + i)));
        }
        for (; i < n; i++) yr[i] = (xr[i] - mean) * rstd * w[i] + b[i];
    }
}

/* exp8's operations on 16 lanes (the same results lane for lane) */
__attribute__((target("avx512f"), always_inline)) static inline __m512 exp16(__m512 x) {
    const __mmask16 tiny = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-87.0f), _CMP_LT_OQ);
    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                    _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    x = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), x);
    __m512 y = _mm512_set1_ps(EXP_POLY[0]);
    for (int i = 1; i < 6; i++) y = _mm512_fmadd_ps(y, x, _mm512_set1_ps(EXP_POLY[i]));
    y = _mm512_add_ps(_mm512_fmadd_ps(y, _mm512_mul_ps(x, x), x), _mm512_set1_ps(1.0f));
    __m512i e = _mm512_slli_epi32(
        _mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
    return _mm512_maskz_mov_ps((__mmask16)~tiny, _mm512_mul_ps(y, _mm512_castsi512_ps(e)));
}

/* gelu_tanh's operations on 16 lanes, over x[0, n & ~15); returns how many it took */
__attribute__((target("avx512f"))) static size_t gelu_tanh16(float *x, size_t n) {
    const __m512 c = _mm512_set1_ps(0.7978845608028654f), k = _mm512_set1_ps(0.044715f);
    const __m512 one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000u);
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 v = _mm512_loadu_ps(x + i);
        __m512 u = _mm512_mul_ps(c, _mm512_fmadd_ps(_mm512_mul_ps(k, v), _mm512_mul_ps(v, v), v));
        const __m512i ub = _mm512_castps_si512(u);
        __m512 e = exp16(_mm512_mul_ps(_mm512_set1_ps(-2.0f),
                                       _mm512_castsi512_ps(_mm512_andnot_si512(sign, ub))));
        __m512 t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
        t = _mm512_castsi512_ps(
            _mm512_or_si512(_mm512_castps_si512(t), _mm512_and_si512(sign, ub)));
        _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, t)));
    }
    return i;
}

/* GPT-2's GELU (tanh form) in place: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), tanh(u)
 * as sign(u) (1 - e) / (1 + e) with e = e^(-2|u|) <= 1; 16 lanes at a time where the CPU has
 * AVX-512 (the same results; GPT-2 small's 12 GELUs of a 4-row step, one Zen 5 core, 0.085 ->
 * 0.042 ms) */
__attribute__((target("avx2,fma"))) static void gelu_tanh(float *x, size_t n) {
    const __m256 c = _mm256_set1_ps(0.7978845608028654f), k = _mm256_set1_ps(0.044715f);
    const __m256 one = _mm256_set1_ps(1.0f), half = _mm256_set1_ps(0.5f);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    size_t i = has_avx512() ? gelu_tanh16(x, n) : 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256 u = _mm256_mul_ps(c, _mm256_fmadd_ps(_mm256_mul_ps(k, v), _mm256_mul_ps(v, v), v));
        __m256 e = exp8(_mm256_mul_ps(_mm256_set1_ps(-2.0f), _mm256_andnot_ps(sign, u)));
        __m256 t = _mm256_div_ps(_mm256_sub_ps(one, e), _mm256_add_ps(one, e));
        t = _mm256_or_ps(t, _mm256_and_ps(sign, u));
        _mm256_storeu_ps(x + i, _mm256_mul_ps(_mm256_mul_ps(half, v), _mm256_add_ps(one, t)));
    }
    for (; i < n; i++) {
        float v = x[i];
        x[i] = 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
    }
}

typedef struct {
    int8_t *xq;
    uint8_t *xabs;
    float *xscale;
    int32_t *xgs; /* int4: see product.xgs */
} int8_scratch;

/* int4's padded sizes of a row of n_in weights (see i4_task) */
static int int4_n_pad(int n_in) { return (n_in + 255) & ~255; }
static int int4_ng_pad(int n_in) { return int4_n_pad(n_in) / 32; }

/* y (rows, n_out) = x W^T + bias (or y += that) for int4 W (see i4_task), x quantized into s */
__attribute__((target("avx2"))) static void matmul_int4(product *p, const float *x,
                                                        int8_scratch s, int threads) {
    p->n_pad = int4_n_pad(p->n_in);
    p->ng_pad = int4_ng_pad(p->n_in);
    quantize_rows_int4(x, p->rows, p->n_in, p, s.xq, s.xabs, s.xgs, s.xscale);
    p->xq = s.xq;
    p->xgs = s.xgs;
    p->xscale = s.xscale;
    /* one row of x on 256-bit VNNI where the CPU has it: bound by memory, i4_task512 was level
     * (GPT-2 small's block matrices 1.43-1.60 against 1.55-1.75 ms on one Zen 5 core, medium's
     * 4.5-4.7 against 4.1-4.4 on two) */
    const int wide = has_avx512() && (p->rows > 1 || !has_vnni());
    run_parallel(wide ? i4_task512 : has_vnni() ? i4_task_vnni : i4_task, p, threads);
}

/* y (rows, n_out) = x (rows, n_in) W^T + b, or y += that with `accumulate` */
__attribute__((target("avx2,fma,f16c"))) static void matmul(const matrix_spec *m, const float *x,
                                                            int rows, float *y, int accumulate,
                                                            int threads, int8_scratch s) {
    product p = {0};
    p.w = (const void *)(intptr_t)m->w;
    p.bias = (const float *)(intptr_t)m->bias;
    p.y = y;
    p.y_stride = m->n_out;
    p.rows = rows;
    p.n_out = (int)m->n_out;
    p.n_in = (int)m->n_in;
    p.accumulate = accumulate;
    if (m->kind == M_INT8) {
        int biased;
        const task_fn task = i8_kernel(rows, m->wsum != 0, &biased);
        quantize_rows(x, rows, p.n_in, s.xq, s.xabs, s.xscale, biased);
        p.wsum = (const int32_t *)(intptr_t)m->wsum;
        p.wscale = (const float *)(intptr_t)m->scale;
        p.xq = s.xq;
        p.xabs = s.xabs;
        p.xscale = s.xscale;
        run_parallel(task, &p, threads);
    } else if (m->kind == M_INT4) {
        p.gscale = (const uint16_t *)(intptr_t)m->scale;
        matmul_int4(&p, x, s, threads);
    } else {
        p.x = x;
        run_parallel(dense_kernel((int)m->kind, rows), &p, threads);
    }
}

/* ---------------------------------------------------------------------------------------------
 * Top-k of rows of logits (sampling's top-k): the k largest of each row, largest first, ties in
 * order of index (lower first).
 * ------------------------------------------------------------------------------------------- */

typedef struct {
    const float *x;
    long stride;
    int rows, n, k;
    float *values;
    int64_t *ids;
    int *nan; /* set (by any part) where a row holds a NaN: the caller falls back to torch */
} topk_task_args;

/* whether (va, ia) ranks below (vb, ib): a smaller value, or an equal one at a higher index */
static inline int ranks_below(float va, int64_t ia, float vb, int64_t ib) {
    return va < vb || (va == vb && ia > ib);
}

/* restores the min-heap (lowest-ranked at the root) of k entries from node i down */
static void sift_down(float *v, int64_t *id, int k, int i) {
    for (;;) {
        int low = i, l = 2 * i + 1, r = l + 1;
        if (l < k && ranks_below(v[l], id[l], v[low], id[low])) low = l;
        if (r < k && ranks_below(v[r], id[r], v[low], id[low])) low = r;
        if (low == i) return;
        float tv = v[i];
        int64_t ti = id[i];
        v[i] = v[low], id[i] = id[low];
        v[low] = tv, id[low] = ti;
        i = low;
    }
}

/* One row: a heap of the k best so far, its lowest the threshold that 8 values at a time are
 * compared against; only those above it (a few hundred of GPT-2's 50257 for k = 40) enter the
 * heap. Returns 0, or 1 where the row holds a NaN. */
__attribute__((target("avx2"))) static int topk_row(const float *x, int n, int k, float *v,
                                                    int64_t *id) {
    for (int i = 0; i < k; i++) {
        if (x[i] != x[i]) return 1;
        v[i] = x[i], id[i] = i;
    }
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(v, id, k, i);
    __m256 unordered = _mm256_setzero_ps();
    int i = k;
    for (; i + 8 <= n; i += 8) {
        const __m256 xv = _mm256_loadu_ps(x + i);
        unordered = _mm256_or_ps(unordered, _mm256_cmp_ps(xv, xv, _CMP_UNORD_Q));
        unsigned above = (unsigned)_mm256_movemask_ps(
            _mm256_cmp_ps(xv, _mm256_set1_ps(v[0]), _CMP_GT_OQ));
        while (above) {
            const int j = i + __builtin_ctz(above);
            above &= above - 1;
            if (x[j] > v[0]) { /* the threshold may have risen within these 8 */
                v[0] = x[j], id[0] = j;
                sift_down(v, id, k, 0);
            }
        }
    }
    if (_mm256_movemask_ps(unordered)) return 1;
    for (; i < n; i++) {
        if (x[i] != x[i]) return 1;
        if (x[i] > v[0]) {
            v[0] = x[i], id[0] = i;
            sift_down(v, id, k, 0);
        }
    }
    /* heap order to largest first: the root (lowest) goes last, then the next lowest */
    for (int end = k - 1; end > 0; end--) {
        float tv = v[0];
        int64_t ti = id[0];
        v[0] = v[end], id[0] = id[end];
        v[end] = tv, id[end] = ti;
        sift_down(v, id, end, 0);
    }
    return 0;
}

__attribute__((target("avx2"))) static void topk_task(const void *args, int part, int parts) {
    const topk_task_args *a = args;
    int lo = (int)((long)a->rows * part / parts), hi = (int)((long)a->rows * (part + 1) / parts);
    for (int r = lo; r < hi; r++)
        if (topk_row(a->x + r * a->stride, a->n, a->k, a->values + (long)r * a->k,
                     a->ids + (long)r * a->k))
            __atomic_store_n(a->nan, 1, __ATOMIC_RELAXED);
}

#endif /* GPT2_NATIVE */

/* ---------------------------------------------------------------------------------------------
 * The Python module. Arguments are addresses and sizes (tensors' data_ptr() and shapes, checked
 * by gpt2cli/model/native.py); calls with METH_FASTCALL cost well under a microsecond, where
 * ctypes took ~9 us, and release the GIL while the product runs.
 * ------------------------------------------------------------------------------------------- */

static int ints(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, long long *out) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "expected %zd arguments, got %zd", want, nargs);
        return -1;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        out[i] = PyLong_AsLongLong(args[i]);
        if (out[i] == -1 && PyErr_Occurred()) return -1;
    }
    return 0;
}

#if !GPT2_NATIVE
static PyObject *not_built(void) {
    PyErr_SetString(PyExc_RuntimeError, "gpt2cli's native kernels are not built for this CPU");
    return NULL;
}
#endif

/* available() -> bool: whether this build and CPU run the kernels (AVX2, FMA, F16C). */
static PyObject *py_available(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
#if GPT2_NATIVE
    return PyBool_FromLong(cpu_ok());
#else
    Py_RETURN_FALSE;
#endif
}

/* use_openmp(parallel, thread_num, num_threads): run the products on the OpenMP runtime torch
 * has loaded (addresses of GOMP_parallel, omp_get_thread_num, omp_get_num_threads; 0: on a
 * pool of our own). */
static PyObject *py_use_openmp(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[3];
    if (ints(args, nargs, 3, a)) return NULL;
#if GPT2_NATIVE
    if (a[0] && a[1] && a[2]) {
        omp_thread_num = (omp_int_fn)(intptr_t)a[1];
        omp_num_threads = (omp_int_fn)(intptr_t)a[2];
        gomp_parallel = (gomp_parallel_fn)(intptr_t)a[0];
    } else {
        gomp_parallel = NULL;
    }
#endif
    Py_RETURN_NONE;
}

/* set_vnni(on) -> bool: whether int8 and int4 products use AVX-VNNI (where the CPU has it; on
 * by default there), else AVX2's vpmaddubsw; the result says which is now used. */
static PyObject *py_set_vnni(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[1];
    if (ints(args, nargs, 1, a)) return NULL;
#if GPT2_NATIVE
    __builtin_cpu_init();
    vnni = a[0] && __builtin_cpu_supports("avxvnni");
    return PyBool_FromLong(vnni);
#else
    Py_RETURN_FALSE;
#endif
}

/* vnni() -> bool: whether int8 and int4 products use AVX-VNNI now. */
static PyObject *py_vnni(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
#if GPT2_NATIVE
    return PyBool_FromLong(has_vnni());
#else
    Py_RETURN_FALSE;
#endif
}

/* set_avx512(on) -> bool: whether int8 and int4 products use AVX-512 with VNNI (where the CPU
 * has it; on by default there) for several rows of x, and for one where the CPU has no AVX-VNNI,
 * as do 16-bit products of several rows and attention over an int8 cache; else the 256-bit
 * kernels (for int8 and int4 those set_vnni picks). The result says which. */
static PyObject *py_set_avx512(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[1];
    if (ints(args, nargs, 1, a)) return NULL;
#if GPT2_NATIVE
    __builtin_cpu_init();
    avx512 = a[0] && cpu_avx512();
    return PyBool_FromLong(avx512);
#else
    Py_RETURN_FALSE;
#endif
}

/* avx512() -> bool: whether the kernels use AVX-512 (see set_avx512) now. */
static PyObject *py_avx512(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
#if GPT2_NATIVE
    return PyBool_FromLong(has_avx512());
#else
    Py_RETURN_FALSE;
#endif
}

/* set_spin_us(us): how long our own pool's idle workers spin before sleeping (0: at once). */
static PyObject *py_set_spin_us(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[1];
    if (ints(args, nargs, 1, a)) return NULL;
#if GPT2_NATIVE
    spin_ns = a[0] < 0 ? 0 : (long)a[0] * 1000L;
#endif
    Py_RETURN_NONE;
}

#if GPT2_NATIVE
static _Thread_local int8_t *scratch;
static _Thread_local size_t scratch_size;

/* this thread's scratch of at least `size` bytes, 64-byte aligned (NULL where out of memory) */
static int8_t *scratch_of(size_t size) {
    if (size > scratch_size) {
        free(scratch);
        void *p = NULL;
        scratch = posix_memalign(&p, 64, size) ? NULL : p;
        scratch_size = scratch ? size : 0;
    }
    return scratch;
}

/* the next `bytes` of a scratch at *at, which moves on to the next 64-byte boundary after them:
 * rows of x that start off a cache line cost the kernels' 64-byte loads two lines each (int4
 * products of 4 rows, one Zen 5 core: 50 us against 37 aligned for a 768 x 3072 matrix) */
static void *carve(char **at, size_t bytes) {
    char *p = *at;
    *at = p + ((bytes + 63) & ~(size_t)63);
    return p;
}
#endif

/* linear_int8(q, wscale, wsum, x, bias, y, rows, n_out, n_in, threads): y (rows, n_out) float32
 * = x (rows, n_in) float32 times W^T + bias for W = q * wscale[:, None] (q int8 (n_out, n_in));
 * wsum: int32 (n_out,), each row of q summed over its first n_in & ~31 values (0: not given, and
 * AVX-VNNI is then not used); bias 0: none. */
static PyObject *py_linear_int8(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[10];
    if (ints(args, nargs, 10, a)) return NULL;
#if GPT2_NATIVE
    int rows = (int)a[6], n_out = (int)a[7], n_in = (int)a[8], threads = (int)a[9];
    size_t xbytes = (size_t)rows * n_in;
    char *at = (char *)scratch_of(2 * xbytes + sizeof(float) * (size_t)rows + 3 * 64);
    if (!at) return PyErr_NoMemory();
    int8_t *xq = carve(&at, xbytes);
    uint8_t *xabs = carve(&at, xbytes);
    float *xscale = carve(&at, sizeof(float) * (size_t)rows);
    int biased;
    const task_fn task = i8_kernel(rows, a[2] != 0, &biased);
    Py_BEGIN_ALLOW_THREADS
    quantize_rows((const float *)(intptr_t)a[3], rows, n_in, xq, xabs, xscale, biased);
    product p = {(const void *)(intptr_t)a[0], (const float *)(intptr_t)a[1], NULL, xq, xabs, xscale,
                 (const float *)(intptr_t)a[4], (float *)(intptr_t)a[5], n_out, rows, n_out,
                 n_in, 0, (const int32_t *)(intptr_t)a[2], NULL, NULL, 0, 0};
    run_parallel(task, &p, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return not_built();
#endif
}

/* linear_dense(kind, w, x, bias, y, rows, n_out, n_in, threads): y (rows, n_out) float32 = x
 * (rows, n_in) float32 times W^T + bias, W (n_out, n_in) float32 (kind 0), float16 (1) or
 * bfloat16 (2); bias 0: none. */
static PyObject *py_linear_dense(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[9];
    if (ints(args, nargs, 9, a)) return NULL;
#if GPT2_NATIVE
    if (a[0] < 0 || a[0] > 2) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0 (float32), 1 (float16) or 2 (bfloat16)");
        return NULL;
    }
    product p = {(const void *)(intptr_t)a[1], NULL, (const float *)(intptr_t)a[2], NULL, NULL,
                 NULL, (const float *)(intptr_t)a[3], (float *)(intptr_t)a[4], a[6], (int)a[5],
                 (int)a[6], (int)a[7], 0, NULL, NULL, NULL, 0, 0};
    int threads = (int)a[8];
    Py_BEGIN_ALLOW_THREADS
    run_parallel(dense_kernel((int)a[0], (int)a[5]), &p, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return not_built();
#endif
}

/* linear_int4(q, gscale, x, bias, y, rows, n_out, n_in, threads): y (rows, n_out) float32 = x
 * (rows, n_in) float32 times W^T + bias for int4 W: q (n_out, n_pad / 2) bytes, gscale
 * (n_out, ng_pad) float16 (see i4_task and int4_n_pad); bias 0: none. */
static PyObject *py_linear_int4(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[9];
    if (ints(args, nargs, 9, a)) return NULL;
#if GPT2_NATIVE
    int rows = (int)a[5], n_out = (int)a[6], n_in = (int)a[7], threads = (int)a[8];
    const int n_pad = int4_n_pad(n_in), ng_pad = int4_ng_pad(n_in);
    size_t xbytes = (size_t)rows * n_pad;
    char *at = (char *)scratch_of(xbytes + 2 * n_pad + sizeof(float) * (size_t)rows * (ng_pad + 1) +
                                  4 * 64);
    if (!at) return PyErr_NoMemory();
    int8_scratch s;
    s.xq = carve(&at, xbytes);
    s.xabs = carve(&at, 2 * (size_t)n_pad); /* quantize_rows_int4's spare */
    s.xscale = carve(&at, sizeof(float) * (size_t)rows);
    s.xgs = carve(&at, sizeof(int32_t) * (size_t)rows * ng_pad);
    product p = {0};
    p.w = (const void *)(intptr_t)a[0];
    p.gscale = (const uint16_t *)(intptr_t)a[1];
    p.bias = (const float *)(intptr_t)a[3];
    p.y = (float *)(intptr_t)a[4];
    p.y_stride = n_out;
    p.rows = rows;
    p.n_out = n_out;
    p.n_in = n_in;
    const float *x = (const float *)(intptr_t)a[2];
    Py_BEGIN_ALLOW_THREADS
    matmul_int4(&p, x, s, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return not_built();
#endif
}

/* dequantize_int4(q, gscale, y, n_out, n_in, threads): int4 W (as linear_int4's) as float32
 * (n_out, n_in) into y. */
static PyObject *py_dequantize_int4(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[6];
    if (ints(args, nargs, 6, a)) return NULL;
#if GPT2_NATIVE
    product p = {0};
    p.w = (const void *)(intptr_t)a[0];
    p.gscale = (const uint16_t *)(intptr_t)a[1];
    p.y = (float *)(intptr_t)a[2];
    p.n_out = (int)a[3];
    p.n_in = (int)a[4];
    p.n_pad = int4_n_pad(p.n_in);
    p.ng_pad = int4_ng_pad(p.n_in);
    int threads = (int)a[5];
    Py_BEGIN_ALLOW_THREADS
    run_parallel(i4_dequantize_task, &p, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return not_built();
#endif
}

/* topk(x, rows, n, stride, k, values, ids, threads) -> bool: each of the rows of n float32 at
 * x (rows `stride` floats apart, 0 for one row repeated) to its k largest (values float32 and
 * ids int64, (rows, k)), largest first, ties lower index first; False (values and ids
 * undefined) where a row holds a NaN. */
static PyObject *py_topk(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[8];
    if (ints(args, nargs, 8, a)) return NULL;
#if GPT2_NATIVE
    int nan = 0;
    topk_task_args t = {(const float *)(intptr_t)a[0], (long)a[3], (int)a[1], (int)a[2],
                        (int)a[4], (float *)(intptr_t)a[5], (int64_t *)(intptr_t)a[6], &nan};
    if (t.rows < 0 || t.k < 1 || t.k > t.n || (t.stride < t.n && t.stride != 0)) {
        PyErr_SetString(PyExc_ValueError, "topk: bad sizes");
        return NULL;
    }
    int threads = (int)a[7] < t.rows ? (int)a[7] : t.rows;
    Py_BEGIN_ALLOW_THREADS
    run_parallel(topk_task, &t, threads);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(!nan);
#else
    return not_built();
#endif
}

/* floats of scores each part of an attention task needs: the longest row's positions, rounded
 * up to 16 (one position for all rows where `positions` is NULL) */
static long scores_stride(const int64_t *positions, long position, int rows) {
    long longest = position;
    for (int b = 0; positions && b < rows; b++)
        if (positions[b] > longest) longest = (long)positions[b];
    return (longest + 1 + 15) & ~15L;
}

/* attend(qkv, qkv_stride, k, v, kind, bstride, hstride, positions, position, y, batch, heads,
 * hd, threads, ks, vs, scale): one new token per row attends over the layer's cache (see
 * `attention`); kind 0: the cache holds float32, 1: float16, 2: int8 with scales ks, vs (else
 * 0); positions 0: every row at `position`. */
static PyObject *py_attend(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[16];
    if (nargs != 17) {
        PyErr_Format(PyExc_TypeError, "expected 17 arguments, got %zd", nargs);
        return NULL;
    }
    if (ints(args, 16, 16, a)) return NULL;
    double scale = PyFloat_AsDouble(args[16]);
    if (scale == -1.0 && PyErr_Occurred()) return NULL;
#if GPT2_NATIVE
    int batch = (int)a[10], heads = (int)a[11], hd = (int)a[12], threads = (int)a[13];
    if (a[4] < 0 || a[4] > 2 || (a[4] == 2) != (a[14] && a[15]) || hd % 8 || hd <= 0 ||
        hd > MAX_HD || threads < 1) {
        PyErr_SetString(PyExc_ValueError, "attend: a float32, float16 or int8 cache (with its "
                                          "scales) and a head size that is a multiple of 8, at "
                                          "most 256");
        return NULL;
    }
    const int64_t *positions = (const int64_t *)(intptr_t)a[7];
    long stride = scores_stride(positions, (long)a[8], batch);
    float *scores = (float *)scratch_of((size_t)threads * stride * sizeof(float));
    if (!scores) return PyErr_NoMemory();
    attention t = {(const float *)(intptr_t)a[0], (long)a[1], (char *)(intptr_t)a[2],
                   (char *)(intptr_t)a[3], (long)a[5], (long)a[6], (float *)(intptr_t)a[14],
                   (float *)(intptr_t)a[15], positions, (long)a[8], (float *)(intptr_t)a[9],
                   scores, stride, batch, heads, hd, (float)scale};
    Py_BEGIN_ALLOW_THREADS
    run_parallel(attention_task((int)a[4]), &t, threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return not_built();
#endif
}

/* decode_layers(plans, layers, x, rows, positions, position, k, v, layer_stride, bstride,
 * hstride, heads, kv_kind, threads, ks, vs): x (rows, C) float32, each row's new token, goes
 * through `layers` blocks in place (plans: layers * PLAN_LEN int64, see layer_plan); k, v: layer
 * 0 of the cache (see `attention`, kv_kind as attend's), layer l at l * layer_stride elements on;
 * ks, vs: an int8 cache's scales (layer l at l * layer_stride / hd), else 0. */
static PyObject *py_decode_layers(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    long long a[16];
    if (ints(args, nargs, 16, a)) return NULL;
#if GPT2_NATIVE
    const int64_t *plans = (const int64_t *)(intptr_t)a[0];
    int layers = (int)a[1], rows = (int)a[3], heads = (int)a[11], kv_kind = (int)a[12];
    int threads = (int)a[13];
    float *x = (float *)(intptr_t)a[2];
    const int64_t *positions = (const int64_t *)(intptr_t)a[4];
    if (layers < 1 || rows < 1 || heads < 1 || threads < 1 || kv_kind < 0 || kv_kind > 2 ||
        (kv_kind == 2) != (a[14] && a[15])) {
        PyErr_SetString(PyExc_ValueError, "decode_layers: bad sizes");
        return NULL;
    }
    layer_plan first;
    memcpy(&first, plans, sizeof first);
    const int C = (int)first.attn.n_in, inner = (int)first.fc.n_out, hd = C / heads;
    if (hd * heads != C || hd % 8 || hd > MAX_HD) {
        PyErr_SetString(PyExc_ValueError, "decode_layers: a head size that is a multiple of 8");
        return NULL;
    }
    long stride = scores_stride(positions, (long)a[5], rows);
    /* scratch: h, qkv, attention output, MLP hidden (float32), scores, int4's group sums, int8
     * copies of the rows (padded as int4's are) */
    const int widest = int4_n_pad(inner > C ? inner : C);
    size_t floats = (size_t)rows * (C + 3 * C + C + inner) + rows + (size_t)threads * stride;
    floats += (size_t)rows * int4_ng_pad(widest);
    /* int8: rows of xq and of xabs; int4: rows of xq and two rows of spare (rows + 1 >= 2) */
    size_t bytes = floats * sizeof(float) + (2 * (size_t)rows + 1) * widest + 9 * 64;
    char *at = (char *)scratch_of(bytes);
    if (!at) return PyErr_NoMemory();
    float *h = carve(&at, sizeof(float) * (size_t)rows * C);
    float *qkv = carve(&at, sizeof(float) * (size_t)rows * 3 * C);
    float *att = carve(&at, sizeof(float) * (size_t)rows * C);
    float *f = carve(&at, sizeof(float) * (size_t)rows * inner);
    float *scores = carve(&at, sizeof(float) * (size_t)threads * stride);
    int8_scratch s8;
    s8.xscale = carve(&at, sizeof(float) * (size_t)rows);
    s8.xgs = carve(&at, sizeof(int32_t) * (size_t)rows * int4_ng_pad(widest));
    s8.xq = carve(&at, (size_t)rows * widest);
    s8.xabs = carve(&at, ((size_t)rows + 1) * widest);
    const size_t esize = kv_kind == 0 ? 4 : kv_kind == 1 ? 2 : 1;
    float *ks = (float *)(intptr_t)a[14], *vs = (float *)(intptr_t)a[15];
    Py_BEGIN_ALLOW_THREADS
    for (int l = 0; l < layers; l++) {
        layer_plan pl;
        memcpy(&pl, plans + (size_t)l * PLAN_LEN, sizeof pl);
        float eps = float_of(pl.eps_bits);
        layer_norm(x, h, rows, C, (const float *)(intptr_t)pl.ln1_w,
                   (const float *)(intptr_t)pl.ln1_b, eps);
        matmul(&pl.attn, h, rows, qkv, 0, threads, s8);
        const size_t at = (size_t)l * a[8];
        attention t = {qkv, 3L * C, (char *)(intptr_t)a[6] + at * esize,
                       (char *)(intptr_t)a[7] + at * esize, (long)a[9], (long)a[10],
                       ks ? ks + at / hd : NULL, vs ? vs + at / hd : NULL, positions, (long)a[5],
                       att, scores, stride, rows, heads, hd, float_of(pl.scale_bits)};
        run_parallel(attention_task(kv_kind), &t, threads);
        matmul(&pl.proj, att, rows, x, 1, threads, s8);
        layer_norm(x, h, rows, C, (const float *)(intptr_t)pl.ln2_w,
                   (const float *)(intptr_t)pl.ln2_b, eps);
        matmul(&pl.fc, h, rows, f, 0, threads, s8);
        gelu_tanh(f, (size_t)rows * inner);
        matmul(&pl.out, f, rows, x, 1, threads, s8);
    }
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
#else
    return not_built();
#endif
}

/* plan_len() -> int: how many int64 one layer's plan holds. */
static PyObject *py_plan_len(PyObject *self, PyObject *unused) {
    (void)self, (void)unused;
#if GPT2_NATIVE
    return PyLong_FromLong(PLAN_LEN);
#else
    return not_built();
#endif
}

static PyMethodDef methods[] = {
    {"available", py_available, METH_NOARGS, "Whether the kernels run on this CPU."},
    {"use_openmp", (PyCFunction)(void (*)(void))py_use_openmp, METH_FASTCALL,
     "Run on torch's OpenMP runtime."},
    {"vnni", py_vnni, METH_NOARGS, "Whether int8 products use AVX-VNNI."},
    {"avx512", py_avx512, METH_NOARGS, "Whether the kernels use AVX-512 (VNNI) where set_avx512 says."},
    {"set_avx512", (PyCFunction)(void (*)(void))py_set_avx512, METH_FASTCALL,
     "AVX-512 VNNI kernels (where the CPU has it) or not."},
    {"set_vnni", (PyCFunction)(void (*)(void))py_set_vnni, METH_FASTCALL,
     "int8 products with AVX-VNNI (where the CPU has it) or not."},
    {"set_spin_us", (PyCFunction)(void (*)(void))py_set_spin_us, METH_FASTCALL,
     "Idle spin of our own pool's workers."},
    {"linear_int8", (PyCFunction)(void (*)(void))py_linear_int8, METH_FASTCALL,
     "y = x (q * wscale)^T + bias."},
    {"linear_dense", (PyCFunction)(void (*)(void))py_linear_dense, METH_FASTCALL,
     "y = x W^T + bias, W float32, float16 or bfloat16."},
    {"linear_int4", (PyCFunction)(void (*)(void))py_linear_int4, METH_FASTCALL,
     "y = x W^T + bias, W int4 in groups of 32 with float16 scales."},
    {"dequantize_int4", (PyCFunction)(void (*)(void))py_dequantize_int4, METH_FASTCALL,
     "An int4 W as float32."},
    {"decode_layers", (PyCFunction)(void (*)(void))py_decode_layers, METH_FASTCALL,
     "One new token per row through every block, in place."},
    {"plan_len", py_plan_len, METH_NOARGS, "int64 values in one layer's plan."},
    {"topk", (PyCFunction)(void (*)(void))py_topk, METH_FASTCALL,
     "Each row's k largest, largest first, ties lower index first."},
    {"attend", (PyCFunction)(void (*)(void))py_attend, METH_FASTCALL,
     "One new token per row attends over its cached keys and values."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels", "gpt2cli's matrix products for decoding (AVX2).", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
