// One fused pass of activation statistics over a float32 tensor, merged into a layer's state.
//
// Built on first use by native.py (g++ -O3 -march=native -fopenmp -ffp-contract=off) and called
// through ctypes. The pure-torch path in update.py computes the same numbers; the tests hold
// the two equal. The layouts of `counts` and `moments` are LayerState's (state.py).
//
// The tensor is read as [N, C, S] (units along C) in runs of at most CHUNK elements (whole
// short rows, or pieces of a long one), each in three passes while it sits in L1: (A) NaN / inf counts, float64 sums of (y - pivot)
// and (y - pivot)^2 (merged into the state by Chan's formula), finite min / max; (B) the flat
// test (an interval of the activation's input or output, or a precomputed mask), the per-unit
// "left the flat region" flags, and the bin of every finite non-zero value, packed into a list;
// (C) a scalar loop counting that list into four interleaved sub-histograms (independent store
// chains). Zeros are added to the bin of 0 at the end: ReLU outputs are half zeros. Passes A
// and B have AVX2 forms and scalar forms (the tails, and machines without AVX2/FMA) that agree
// exactly; -ffp-contract=off keeps every float op of the bin formula rounded as torch rounds it.

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include <omp.h>
#if defined(__AVX2__) && defined(__FMA__)
#define SB_AVX2 1
#include <immintrin.h>
#endif

namespace {

enum Counts { COUNT, NAN_COUNT, INF_COUNT, ZERO_COUNT, FLAT_COUNT, GRAD_PASSES, ROWS, HISTOGRAM };
enum Moments { MEAN, M2, MIN, MAX };
enum Flat { FLAT_NONE, FLAT_BELOW, FLAT_ABOVE, FLAT_INSIDE, FLAT_OUTSIDE, FLAT_MASK };

constexpr int64_t CHUNK = 1024;
constexpr int LANES = 4;
constexpr float INV_C = 1000.0f;          // 1 / SYMLOG_C of binning.py
constexpr int32_t ONE_BITS = 0x3F800000;  // bit pattern of 1.0f

struct Config {
    int32_t flat;          // Flat: x <= hi, x >= lo, lo <= x <= hi, or x outside [lo, hi] (never NaN)
    int32_t flat_on_y;     // the interval tests the output y, not the input x
    float flat_lo, flat_hi;  // closed bounds
    int32_t log_bins;      // bins uniform in s(y) (symlog), else in y
    int32_t bins;
    float origin, scale;   // bin = trunc(clamp((s(y) - origin) * scale, 0, bins - 1))
    int64_t* counts;
    double* moments;
    uint8_t* alive;
};

// What one thread has seen in this call.
struct Partial {
    int64_t nan = 0, finite = 0, zero = 0, flat = 0;
    double s1 = 0, s2 = 0;
    float min = INFINITY, max = -INFINITY;
    std::vector<int64_t> hist;   // LANES x (bins + 1)
    std::vector<uint8_t> alive;  // per unit
};

// One chunk's sums (counts fit int32: a chunk has at most CHUNK elements).
struct Sums {
    int32_t nan = 0, finite = 0, zero = 0, flat = 0, left = 0;
    double s1 = 0, s2 = 0;
    float min = INFINITY, max = -INFINITY;
};

// Add the counts, moments and extremes of `from` (a chunk's Sums, or another thread's Partial) to `into`.
template <typename From>
inline void add_sums(Partial& into, const From& from) {
    into.nan += from.nan;
    into.finite += from.finite;
    into.zero += from.zero;
    into.flat += from.flat;
    into.s1 += from.s1;
    into.s2 += from.s2;
    into.min = std::min(into.min, from.min);
    into.max = std::max(into.max, from.max);
}

template <bool LOG>
inline int32_t bin_of(float v, float origin, float scale, float top) {
    float t = v;
    if (LOG) t = std::copysign((float)(__builtin_bit_cast(int32_t, std::fabs(v) * INV_C + 1.0f) - ONE_BITS), v);
    const float w = (t - origin) * scale;
    return (int32_t)(w >= 0.0f ? (w <= top ? w : top) : 0.0f);
}

inline void moments_one(float v, float pivot, Sums& r) {
    const bool fin = std::fabs(v) <= FLT_MAX;
    r.nan += v != v;
    r.finite += fin;
    if (fin) {
        const double d = (double)v - (double)pivot;
        r.s1 += d;
        r.s2 += d * d;
        r.min = std::min(r.min, v);
        r.max = std::max(r.max, v);
    }
}

template <int FLAT>
inline bool flat_one(const Config& c, const void* src, int64_t i) {
    if (FLAT == FLAT_MASK) return static_cast<const uint8_t*>(src)[i] != 0;
    const float x = static_cast<const float*>(src)[i];
    if (FLAT == FLAT_BELOW) return x <= c.flat_hi;
    if (FLAT == FLAT_ABOVE) return x >= c.flat_lo;
    const bool in = x >= c.flat_lo && x <= c.flat_hi;
    return FLAT == FLAT_INSIDE ? in : !in && x == x;
}

// Pass B for elements [i, n), one at a time; returns the new length of the bin list.
template <bool LOG, int FLAT, bool PER_ELEMENT>
int64_t bins_scalar(const Config& c, const float* y, const void* src, int64_t i, int64_t n, int32_t* list,
                    int64_t listed, uint8_t* left, Sums& r) {
    const float top = (float)(c.bins - 1);
    for (; i < n; ++i) {
        const float v = y[i];
        if (v != 0.0f && std::fabs(v) <= FLT_MAX) list[listed++] = bin_of<LOG>(v, c.origin, c.scale, top);
        if (FLAT != FLAT_NONE) {
            const bool f = flat_one<FLAT>(c, src, i);
            r.flat += f;
            if (PER_ELEMENT) left[i] |= (uint8_t)!f;
            else r.left |= !f;
        }
    }
    return listed;
}

#ifdef SB_AVX2
inline int32_t hsum(__m256i v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4E));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xB1));
    return _mm_cvtsi128_si32(s);
}

inline double hsum(__m256d v) {
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

// For each 8-bit mask, the positions of its set bits, packed to the front (one byte each).
struct PackTable {
    uint64_t entry[256];
    PackTable() {
        for (int m = 0; m < 256; ++m) {
            uint64_t e = 0;
            for (int b = 0, k = 0; b < 8; ++b)
                if (m >> b & 1) e |= (uint64_t)b << (8 * k++);
            entry[m] = e;
        }
    }
};
const PackTable PACK;

// Pass A, sixteen at a time (two sets of accumulators hide the add latency). It checks no
// value: a NaN or inf makes the float64 sum non-finite, and then the caller redoes the chunk
// one element at a time (rare; finite floats cannot overflow a double sum).
int64_t moments_avx2(const float* y, int64_t n, float pivot, Sums& r) {
    const __m256d pd = _mm256_set1_pd((double)pivot);
    __m256d s1[4], s2[4];
    for (int k = 0; k < 4; ++k) s1[k] = s2[k] = _mm256_setzero_pd();
    __m256 mn = _mm256_set1_ps(INFINITY), mx = _mm256_set1_ps(-INFINITY);
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m256 v0 = _mm256_loadu_ps(y + i), v1 = _mm256_loadu_ps(y + i + 8);
        const __m256d d[4] = {
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v0)), pd),
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v0, 1)), pd),
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(v1)), pd),
            _mm256_sub_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(v1, 1)), pd),
        };
        for (int k = 0; k < 4; ++k) {
            s1[k] = _mm256_add_pd(s1[k], d[k]);
            s2[k] = _mm256_fmadd_pd(d[k], d[k], s2[k]);
        }
        mn = _mm256_min_ps(mn, _mm256_min_ps(v0, v1));
        mx = _mm256_max_ps(mx, _mm256_max_ps(v0, v1));
    }
    const double sum = hsum(_mm256_add_pd(_mm256_add_pd(s1[0], s1[1]), _mm256_add_pd(s1[2], s1[3])));
    if (!std::isfinite(sum)) return 0;
    r.finite += (int32_t)i;
    r.s1 += sum;
    r.s2 += hsum(_mm256_add_pd(_mm256_add_pd(s2[0], s2[1]), _mm256_add_pd(s2[2], s2[3])));
    alignas(32) float lanes[8];
    _mm256_store_ps(lanes, mn);
    for (float m : lanes) r.min = std::min(r.min, m);
    _mm256_store_ps(lanes, mx);
    for (float m : lanes) r.max = std::max(r.max, m);
    return i;
}

// Pass B, eight at a time (the same bins as bin_of, bit for bit).
template <bool LOG, int FLAT, bool PER_ELEMENT>
int64_t bins_avx2(const Config& c, const float* y, const void* src, int64_t n, int32_t* list, int64_t& listed,
                  uint8_t* left, Sums& r) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF)), big = _mm256_set1_ps(FLT_MAX);
    const __m256 zero = _mm256_setzero_ps(), sign = _mm256_set1_ps(-0.0f);
    const __m256 inv_c = _mm256_set1_ps(INV_C), one = _mm256_set1_ps(1.0f);
    const __m256 origin = _mm256_set1_ps(c.origin), scale = _mm256_set1_ps(c.scale), top = _mm256_set1_ps((float)(c.bins - 1));
    const __m256 lo = _mm256_set1_ps(c.flat_lo), hi = _mm256_set1_ps(c.flat_hi);
    const __m256i one_bits = _mm256_set1_epi32(ONE_BITS), ones = _mm256_set1_epi32(-1), unit = _mm256_set1_epi32(1);
    __m256i flat = _mm256_setzero_si256(), all_flat = ones;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 v = _mm256_loadu_ps(y + i);
        const __m256 a = _mm256_and_ps(v, abs_mask);
        __m256 t = v;
        if (LOG) {
            const __m256 u = _mm256_add_ps(_mm256_mul_ps(a, inv_c), one);
            const __m256 s = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_castps_si256(u), one_bits));
            t = _mm256_or_ps(s, _mm256_and_ps(v, sign));
        }
        const __m256 w = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(_mm256_sub_ps(t, origin), scale), zero), top);
        // finite and non-zero: the float just below |v| is finite and below FLT_MAX (0 turns into NaN)
        const __m256 below = _mm256_castsi256_ps(_mm256_sub_epi32(_mm256_castps_si256(a), unit));
        const int mask = _mm256_movemask_ps(_mm256_cmp_ps(below, big, _CMP_LT_OQ));
        const __m256i order = _mm256_cvtepu8_epi32(_mm_cvtsi64_si128((long long)PACK.entry[mask]));
        _mm256_storeu_si256((__m256i*)(list + listed), _mm256_permutevar8x32_epi32(_mm256_cvttps_epi32(w), order));
        listed += __builtin_popcount(mask);
        if (FLAT != FLAT_NONE) {
            __m256i f;
            if (FLAT == FLAT_MASK) {
                const __m128i m = _mm_loadl_epi64((const __m128i*)(static_cast<const uint8_t*>(src) + i));
                f = _mm256_xor_si256(_mm256_cmpeq_epi32(_mm256_cvtepu8_epi32(m), _mm256_setzero_si256()), ones);
            } else {
                const __m256 x = src == y ? v : _mm256_loadu_ps(static_cast<const float*>(src) + i);
                __m256 g;
                if (FLAT == FLAT_BELOW) g = _mm256_cmp_ps(x, hi, _CMP_LE_OQ);
                else if (FLAT == FLAT_ABOVE) g = _mm256_cmp_ps(x, lo, _CMP_GE_OQ);
                else {
                    const __m256 in = _mm256_and_ps(_mm256_cmp_ps(x, lo, _CMP_GE_OQ), _mm256_cmp_ps(x, hi, _CMP_LE_OQ));
                    g = FLAT == FLAT_INSIDE ? in : _mm256_andnot_ps(in, _mm256_cmp_ps(x, x, _CMP_ORD_Q));
                }
                f = _mm256_castps_si256(g);
            }
            flat = _mm256_sub_epi32(flat, f);
            if (PER_ELEMENT) {
                const __m256i bit = _mm256_srli_epi32(_mm256_xor_si256(f, ones), 31);
                const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(bit), _mm256_extracti128_si256(bit, 1));
                uint64_t bytes, old;
                _mm_storel_epi64((__m128i*)&bytes, _mm_packus_epi16(words, words));
                std::memcpy(&old, left + i, 8);
                old |= bytes;
                std::memcpy(left + i, &old, 8);
            } else {
                all_flat = _mm256_and_si256(all_flat, f);
            }
        }
    }
    r.flat += hsum(flat);
    r.left |= !_mm256_testc_si256(all_flat, ones);
    return i;
}
#endif

// One contiguous run of at most CHUNK elements. PER_ELEMENT: element i is unit i (its flag is
// left[i]); otherwise the run is part of one unit and r.left says whether it left.
template <bool LOG, int FLAT, bool PER_ELEMENT>
void run(const Config& c, const float* y, const void* src, int64_t n, float pivot, Partial& p,
         int32_t* list, uint8_t* left, int& any_left) {
    Sums r;
    int64_t i = 0, listed = 0;
#ifdef SB_AVX2
    i = moments_avx2(y, n, pivot, r);
#endif
    for (; i < n; ++i) moments_one(y[i], pivot, r);
    i = 0;
#ifdef SB_AVX2
    i = bins_avx2<LOG, FLAT, PER_ELEMENT>(c, y, src, n, list, listed, left, r);
#endif
    listed = bins_scalar<LOG, FLAT, PER_ELEMENT>(c, y, src, i, n, list, listed, left, r);
    r.zero = r.finite - (int32_t)listed;  // the list holds the finite values that are not zero
    int64_t* h0 = p.hist.data();
    int64_t *h1 = h0 + c.bins + 1, *h2 = h1 + c.bins + 1, *h3 = h2 + c.bins + 1;
    for (i = 0; i + LANES <= listed; i += LANES) {
        ++h0[list[i]];
        ++h1[list[i + 1]];
        ++h2[list[i + 2]];
        ++h3[list[i + 3]];
    }
    for (; i < listed; ++i) ++h0[list[i]];
    add_sums(p, r);
    any_left |= r.left;
}

template <bool LOG, int FLAT>
void scan(const Config& c, const float* y, const void* src, int64_t N, int64_t C, int64_t S, float pivot,
          std::vector<Partial>& parts, int threads) {
    const bool per_element = S == 1;  // then a row is one sample and its elements are the units
    const int64_t rows = per_element ? N : N * C, len = per_element ? C : S;
    const int64_t width = FLAT == FLAT_MASK ? 1 : 4;
    const int64_t per_run = len <= CHUNK / 2 ? CHUNK / len : 0;  // short rows per run; 0: one row per run or more
#pragma omp parallel num_threads(threads)
    {
        // Accumulate in a thread's own memory (its stack and its allocations), published once
        // at the end: Partials side by side in `parts` would share cache lines between threads.
        Partial p;
        p.hist.assign(LANES * (c.bins + 1), 0);
        p.alive.assign(C, 0);
        int32_t list[CHUNK + 8];  // + 8: the vector pass stores eight at a time
        if (per_run > 0) {  // short rows: several per run, their flags per element, folded per row
            uint8_t left[CHUNK];
            const int64_t runs = (rows + per_run - 1) / per_run;
#pragma omp for schedule(static)
            for (int64_t g = 0; g < runs; ++g) {
                const int64_t r0 = g * per_run, k = std::min(per_run, rows - r0), n = k * len;
                const void* s = src ? static_cast<const char*>(src) + r0 * len * width : nullptr;
                int unused = 0;
                if (FLAT != FLAT_NONE) std::memset(left, 0, n);
                run<LOG, FLAT, true>(c, y + r0 * len, s, n, pivot, p, list, left, unused);
                if (FLAT == FLAT_NONE) continue;
                for (int64_t q = 0; q < k; ++q) {
                    const uint8_t* f = left + q * len;
                    if (per_element) {
                        for (int64_t j = 0; j < len; ++j) p.alive[j] |= f[j];
                    } else {
                        uint8_t any = 0;
                        for (int64_t j = 0; j < len; ++j) any |= f[j];
                        p.alive[(r0 + q) % C] |= any;
                    }
                }
            }
        } else {  // long rows: each in runs of at most CHUNK
#pragma omp for schedule(static)
            for (int64_t r = 0; r < rows; ++r) {
                int any_left = 0;
                for (int64_t j = 0; j < len; j += CHUNK) {
                    const int64_t n = std::min(CHUNK, len - j);
                    const void* s = src ? static_cast<const char*>(src) + (r * len + j) * width : nullptr;
                    if (per_element) run<LOG, FLAT, true>(c, y + r * len + j, s, n, pivot, p, list, p.alive.data() + j, any_left);
                    else run<LOG, FLAT, false>(c, y + r * len + j, s, n, pivot, p, list, nullptr, any_left);
                }
                if (!per_element && any_left) p.alive[r % C] = 1;
            }
        }
        parts[omp_get_thread_num()] = std::move(p);
    }
}

template <bool LOG>
void dispatch(const Config& c, const float* y, const void* src, int64_t N, int64_t C, int64_t S, float pivot,
              std::vector<Partial>& parts, int threads) {
    switch (c.flat) {
        case FLAT_BELOW: return scan<LOG, FLAT_BELOW>(c, y, src, N, C, S, pivot, parts, threads);
        case FLAT_ABOVE: return scan<LOG, FLAT_ABOVE>(c, y, src, N, C, S, pivot, parts, threads);
        case FLAT_INSIDE: return scan<LOG, FLAT_INSIDE>(c, y, src, N, C, S, pivot, parts, threads);
        case FLAT_OUTSIDE: return scan<LOG, FLAT_OUTSIDE>(c, y, src, N, C, S, pivot, parts, threads);
        case FLAT_MASK: return scan<LOG, FLAT_MASK>(c, y, src, N, C, S, pivot, parts, threads);
        default: return scan<LOG, FLAT_NONE>(c, y, nullptr, N, C, S, pivot, parts, threads);
    }
}

}  // namespace

// Adds the statistics of y (contiguous [N, C, S]; units along C) to the state `c` points at.
// x is the activation's input (same layout, float32) for an interval of x, a bool mask of the
// flat elements for FLAT_MASK, else unused. Returns 0.
extern "C" int sb_update(const Config* c, const float* y, const void* x, int64_t N, int64_t C, int64_t S, int threads) {
    const int64_t total = N * C * S;
    if (total == 0) return 0;
    threads = (int)std::max<int64_t>(1, std::min<int64_t>(threads, total / 65536));
    const void* src = c->flat == FLAT_NONE ? nullptr : c->flat != FLAT_MASK && c->flat_on_y ? y : x;
    int64_t* counts = c->counts;
    double* m = c->moments;
    const int64_t seen = counts[COUNT] - counts[NAN_COUNT] - counts[INF_COUNT];
    float pivot = (float)m[MEAN];  // sums of (y - pivot): a pivot near the mean keeps them from cancelling
    if (seen == 0) {
        pivot = 0.0f;
        for (int64_t i = 0; i < total; ++i)
            if (std::fabs(y[i]) <= FLT_MAX) {
                pivot = y[i];
                break;
            }
    }
    std::vector<Partial> parts(threads);
    if (c->log_bins) dispatch<true>(*c, y, src, N, C, S, pivot, parts, threads);
    else dispatch<false>(*c, y, src, N, C, S, pivot, parts, threads);

    Partial all;
    int64_t* hist = counts + HISTOGRAM;
    for (const Partial& p : parts) {
        if (p.hist.empty()) continue;  // the runtime ran fewer threads than asked for
        add_sums(all, p);
        for (int lane = 0; lane < LANES; ++lane)
            for (int b = 0; b < c->bins; ++b) hist[b] += p.hist[lane * (c->bins + 1) + b];
        for (int64_t u = 0; u < C; ++u) c->alive[u] |= p.alive[u];
    }
    const float top = (float)(c->bins - 1);
    hist[c->log_bins ? bin_of<true>(0.0f, c->origin, c->scale, top) : bin_of<false>(0.0f, c->origin, c->scale, top)] += all.zero;
    counts[COUNT] += total;
    counts[NAN_COUNT] += all.nan;
    counts[INF_COUNT] += total - all.finite - all.nan;
    counts[ZERO_COUNT] += all.zero;
    counts[FLAT_COUNT] += all.flat;
    if (all.finite > 0) {  // Chan et al.: merge (seen, mean, M2) with this batch's
        const double nb = (double)all.finite, na = (double)seen, n = na + nb;
        const double mean_b = (double)pivot + all.s1 / nb;
        const double m2_b = std::max(0.0, all.s2 - all.s1 * all.s1 / nb);
        const double delta = mean_b - m[MEAN];
        m[MEAN] += delta * (nb / n);
        m[M2] += m2_b + delta * delta * (na * nb / n);
        m[MIN] = std::min(m[MIN], (double)all.min);
        m[MAX] = std::max(m[MAX], (double)all.max);
    }
    return 0;
}
