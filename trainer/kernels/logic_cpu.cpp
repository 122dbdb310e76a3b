// CPU kernels for one relaxed logic layer in feature-major layout.
//
// Every mixture of the 16 relaxed two-input gates is y = c0 + c1*a + c2*b + c3*a*b, so a
// layer needs four coefficients per gate, not sixteen weights. Rows are features and
// columns are samples: a gate's two inputs are two contiguous rows, which the compiler
// vectorises. Plain C ABI, loaded with ctypes: no torch headers, so it builds in a second.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include <omp.h>

namespace {

// Columns are processed in blocks of BLOCK floats: for one block, the rows a layer touches
// (BLOCK * 4 bytes each) fit in the caches, so the random row accesses of the gates hit
// cache instead of memory. 16 floats are one 64-byte line and two AVX2 vectors.
constexpr int64_t BLOCK = 64;

// Runs fn(t, n_team) on an OpenMP team of at most n threads. Linked with -fopenmp, this
// library binds to the libgomp that torch already loaded, so it shares torch's thread pool
// instead of adding threads that would fight torch's spinning workers for the cores.
template <typename F>
void run_threads(int n, F fn) {
    if (n <= 1) {
        fn(0, 1);
        return;
    }
#pragma omp parallel num_threads(n)
    fn(omp_get_thread_num(), omp_get_num_threads());
}

// Columns [begin, end) of thread t when `cols` are split into `n` parts of whole blocks,
// so two threads never write into one cache line of a row.
inline void split(int64_t cols, int n, int t, int64_t& begin, int64_t& end) {
    const int64_t blocks = (cols + BLOCK - 1) / BLOCK;
    begin = std::min(cols, blocks * t / n * BLOCK);
    end = std::min(cols, blocks * (t + 1) / n * BLOCK);
}

#ifndef PREFETCH_GATES
#define PREFETCH_GATES 4
#endif

// Gate rows start at random places, which the hardware prefetcher cannot guess; asking for
// the rows of a gate PREFETCH_GATES ahead keeps several memory reads in flight.
inline void prefetch_span(const float* p, int64_t n, int rw) {
    for (int64_t i = 0; i < n; i += 16) {
        if (rw) __builtin_prefetch(p + i, 1, 3);
        else __builtin_prefetch(p + i, 0, 3);
    }
}

inline void forward_cols(const float* x, int64_t batch, const int32_t* ia, const int32_t* ib,
                         const float* coef, int64_t gates, float* y, int64_t k0, int64_t k1) {
    for (int64_t g = 0; g < gates; ++g) {
        if (g + PREFETCH_GATES < gates) {
            const int64_t h = g + PREFETCH_GATES;
            prefetch_span(x + static_cast<int64_t>(ia[h]) * batch + k0, k1 - k0, 0);
            prefetch_span(x + static_cast<int64_t>(ib[h]) * batch + k0, k1 - k0, 0);
        }
        const float* xa = x + static_cast<int64_t>(ia[g]) * batch;
        const float* xb = x + static_cast<int64_t>(ib[g]) * batch;
        float* yr = y + g * batch;
        const float c0 = coef[4 * g], c1 = coef[4 * g + 1], c2 = coef[4 * g + 2],
                    c3 = coef[4 * g + 3];
#pragma omp simd
        for (int64_t k = k0; k < k1; ++k) {
            const float a = xa[k], b = xb[k];
            yr[k] = c0 + c2 * b + a * (c1 + c3 * b);
        }
    }
}

// Adds this column range's contribution to gcoef (gates, 4) and, if WithGradX, to gx.
template <bool WithGradX>
void backward_cols(const float* x, int64_t batch, const int32_t* ia, const int32_t* ib,
                   const float* coef, int64_t gates, const float* gy, float* gx,
                   float* gcoef, int64_t k0, int64_t k1) {
    for (int64_t g = 0; g < gates; ++g) {
        if (g + PREFETCH_GATES < gates) {
            const int64_t h = g + PREFETCH_GATES;
            prefetch_span(x + static_cast<int64_t>(ia[h]) * batch + k0, k1 - k0, 0);
            prefetch_span(x + static_cast<int64_t>(ib[h]) * batch + k0, k1 - k0, 0);
            if (WithGradX) {
                prefetch_span(gx + static_cast<int64_t>(ia[h]) * batch + k0, k1 - k0, 1);
                prefetch_span(gx + static_cast<int64_t>(ib[h]) * batch + k0, k1 - k0, 1);
            }
        }
        const float* xa = x + static_cast<int64_t>(ia[g]) * batch;
        const float* xb = x + static_cast<int64_t>(ib[g]) * batch;
        const float* gr = gy + g * batch;
        const float c1 = coef[4 * g + 1], c2 = coef[4 * g + 2], c3 = coef[4 * g + 3];
        float s0 = 0.f, s1 = 0.f, s2 = 0.f, s3 = 0.f;
        if (WithGradX && ia[g] == ib[g]) {
            float* gxa = gx + static_cast<int64_t>(ia[g]) * batch;
            const float c12 = c1 + c2, c33 = 2.f * c3;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t k = k0; k < k1; ++k) {
                const float a = xa[k], d = gr[k], da = d * a;
                s0 += d;
                s1 += da;
                s2 += da;
                s3 += da * a;
                gxa[k] += d * (c12 + c33 * a);
            }
        } else if (WithGradX) {
            float* gxa = gx + static_cast<int64_t>(ia[g]) * batch;
            float* gxb = gx + static_cast<int64_t>(ib[g]) * batch;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t k = k0; k < k1; ++k) {
                const float a = xa[k], b = xb[k], d = gr[k], da = d * a;
                s0 += d;
                s1 += da;
                s2 += d * b;
                s3 += da * b;
                gxa[k] += d * (c1 + c3 * b);
                gxb[k] += d * (c2 + c3 * a);
            }
        } else {
#pragma omp simd reduction(+ : s0, s1, s2, s3)
            for (int64_t k = k0; k < k1; ++k) {
                const float a = xa[k], b = xb[k], d = gr[k], da = d * a;
                s0 += d;
                s1 += da;
                s2 += d * b;
                s3 += da * b;
            }
        }
        gcoef[4 * g + 0] += s0;
        gcoef[4 * g + 1] += s1;
        gcoef[4 * g + 2] += s2;
        gcoef[4 * g + 3] += s3;
    }
}

// Coefficients (1, a, b, a*b) of each of the 16 gates; must match trainer/gates.py (the
// tests compare both against the 16-op reference).
constexpr float COEFFS[16][4] = {
    {0, 0, 0, 0},  {0, 0, 0, 1},   {0, 1, 0, -1},  {0, 1, 0, 0},
    {0, 0, 1, -1}, {0, 0, 1, 0},   {0, 1, 1, -2},  {0, 1, 1, -1},
    {1, -1, -1, 1}, {1, -1, -1, 2}, {1, 0, -1, 0}, {1, 0, -1, 1},
    {1, -1, 0, 0}, {1, -1, 0, 1},  {1, 0, 0, -1},  {1, 0, 0, 0},
};

}  // namespace

extern "C" {

// coef (gates, 4) = probs (gates, 16) @ COEFFS: the affine form of each gate's mixture.
void gq_coefficients(const float* probs, int64_t gates, float* coef, int threads) {
    run_threads(threads, [=](int t, int team) {
        const int64_t g0 = gates * t / team, g1 = gates * (t + 1) / team;
        for (int64_t g = g0; g < g1; ++g) {
            const float* p = probs + 16 * g;
            float c[4] = {0.f, 0.f, 0.f, 0.f};
            for (int i = 0; i < 16; ++i)
                for (int j = 0; j < 4; ++j) c[j] += p[i] * COEFFS[i][j];
            for (int j = 0; j < 4; ++j) coef[4 * g + j] = c[j];
        }
    });
}

// y[g, :] = c0 + c1 * x[ia[g], :] + c2 * x[ib[g], :] + c3 * x[ia[g], :] * x[ib[g], :]
void gq_forward(const float* x, int64_t batch, const int32_t* ia, const int32_t* ib,
                const float* coef, int64_t gates, float* y, int threads) {
    const int64_t max_threads = std::max<int64_t>(1, (batch + BLOCK - 1) / BLOCK);
    threads = static_cast<int>(std::min<int64_t>(threads, max_threads));
    run_threads(threads, [=](int t, int team) {
        int64_t k0, k1;
        split(batch, team, t, k0, k1);
        for (int64_t b0 = k0; b0 < k1; b0 += BLOCK)
            forward_cols(x, batch, ia, ib, coef, gates, y, b0, std::min(k1, b0 + BLOCK));
    });
}

// Gradients of the forward above. gcoef (gates, 4) receives sum_k gy * (1, a, b, a*b) and
// gprobs (gates, 16) the same pulled back through COEFFS; gx (in_dim, batch), when not
// null, is overwritten with the input gradient. Threads split the batch columns, so no two
// write one element; scratch holds threads * gates * 4 floats of per-thread partial sums.
void gq_backward(const float* x, int64_t in_dim, int64_t batch, const int32_t* ia,
                 const int32_t* ib, const float* coef, int64_t gates, const float* gy,
                 float* gx, float* gcoef, float* gprobs, float* scratch, int threads) {
    const int64_t max_threads = std::max<int64_t>(1, (batch + BLOCK - 1) / BLOCK);
    threads = static_cast<int>(std::min<int64_t>(threads, max_threads));
    int used = 1;
    run_threads(threads, [=, &used](int t, int team) {
        if (t == 0) used = team;
        int64_t k0, k1;
        split(batch, team, t, k0, k1);
        float* part = team == 1 ? gcoef : scratch + static_cast<int64_t>(t) * gates * 4;
        std::memset(part, 0, sizeof(float) * gates * 4);
        for (int64_t b0 = k0; b0 < k1; b0 += BLOCK) {
            const int64_t b1 = std::min(k1, b0 + BLOCK);
            if (gx != nullptr) {
                for (int64_t r = 0; r < in_dim; ++r)
                    std::memset(gx + r * batch + b0, 0, sizeof(float) * (b1 - b0));
                backward_cols<true>(x, batch, ia, ib, coef, gates, gy, gx, part, b0, b1);
            } else {
                backward_cols<false>(x, batch, ia, ib, coef, gates, gy, gx, part, b0, b1);
            }
        }
    });
    // Sum the threads' partial sums (if several) and pull back to the 16 probabilities.
    run_threads(threads, [=](int t, int team) {
        const int64_t g0 = gates * t / team, g1 = gates * (t + 1) / team;
        for (int64_t g = g0; g < g1; ++g) {
            float c[4];
            for (int j = 0; j < 4; ++j) {
                float s = used == 1 ? gcoef[4 * g + j] : 0.f;
                if (used > 1)
                    for (int u = 0; u < used; ++u)
                        s += scratch[(static_cast<int64_t>(u) * gates + g) * 4 + j];
                gcoef[4 * g + j] = c[j] = s;
            }
            for (int i = 0; i < 16; ++i)
                gprobs[16 * g + i] = c[0] * COEFFS[i][0] + c[1] * COEFFS[i][1] +
                                     c[2] * COEFFS[i][2] + c[3] * COEFFS[i][3];
        }
    });
}

}  // extern "C"
