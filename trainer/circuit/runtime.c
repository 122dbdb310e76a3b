/* The fixed part of every network.c, not compiled on its own: trainer/circuit/c_backend.py
   appends it to the generated prelude and tables (W, IN_DIM, CLASSES, OUTPUTS, GATES,
   PLANES, the PF_* quotas, GATE_A, RUN_OP, RUN_END and the output tables), with @UNPACK@
   replaced by the UNPACK_LO/HI shuffle macros. This comment is not part of network.c. */
/* Prefetching: the input is read once from memory, so while a block is packed, its gates
   evaluated and its outputs counted, each of those loops also prefetches its quota
   (PF_PACK, PF_GATES, PF_OUTPUTS cache lines a call) of the next block's rows, at a
   steady rate, overlapping that read with the work. */
typedef struct {
  const uint8_t *next, *end;
} pump_t;

static inline void pump(pump_t *pu, int lines) {
  if (pu->next < pu->end) {
    for (int p = 0; p < lines; p++) __builtin_prefetch(pu->next + 64 * p, 0, 2);
    pu->next += 64 * lines;
  }
}

/* Every gate, run by run: one branch-free loop per run of gates with the same id, four
   gates a step (GATE_A holds each gate's a and b as byte offsets into v: one load, no
   index arithmetic). */
#define LOAD(off) (*(const vec *)(base + (off)))
#define GATE(k, expr) { uint64_t ab_; memcpy(&ab_, pa + 2 * (k), 8); \
                        const vec A = LOAD((uint32_t)ab_), B = LOAD(ab_ >> 32); \
                        (void)A; (void)B; o[k] = (expr); }
#define GATES_OF(expr) { \
  const uint32_t *pa = gab + 2 * (size_t)g; \
  vec *o = out + g, *const o_end = out + end; \
  for (; o_end - o >= 4; o += 4, pa += 8) { \
    pump(pu, PF_GATES); \
    GATE(0, expr) GATE(1, expr) GATE(2, expr) GATE(3, expr) } \
  for (; o < o_end; o++, pa += 2) GATE(0, expr) \
  g = end; }

static void eval_gates(vec *v, pump_t *pu) { /* v, out alias */
  vec *out = v + 1 + IN_DIM;
  const char *base = (const char *)v;
  const uint32_t *restrict gab = GATE_A; /* a, b of gate g at 2 g, 2 g + 1 */
  uint32_t g = 0;
  for (int r = 0; r < RUNS && GATES; r++) {
    const uint32_t end = RUN_END[r];
    switch (RUN_OP[r]) {
      case 0: GATES_OF(v[0]); break;
      case 1: GATES_OF(A & B); break;
      case 2: GATES_OF(A & ~B); break;
      case 3: GATES_OF(A); break;
      case 4: GATES_OF(~A & B); break;
      case 5: GATES_OF(B); break;
      case 6: GATES_OF(A ^ B); break;
      default: GATES_OF(A | B); break;
    }
  }
}

typedef uint8_t bytes32 __attribute__((vector_size(32)));
typedef uint8_t bytes16 __attribute__((vector_size(16)));
#define IN_PAD ((IN_DIM + 31) / 32 * 32)
static const uint8_t ZERO_ROW[IN_DIM];

static inline uint64_t load64(const uint8_t *p) {
  uint64_t x;
  memcpy(&x, p, 8);
  return x;
}

/* t[i] bit s = (row s)[i] is not 0, for eight rows: 32 inputs per vector step, Horner
   from row 7 down: acc = 2 acc | bit, three instructions a row, and an add, not a shift
   (shifts queue for one pipe on Zen). The bit is min(byte, 1) with GCC on AVX2, elsewhere -(byte
   == 0) on the inverted planes (t = ~acc), which measured 15% slower there. */
#if defined(__AVX2__) && defined(__GNUC__) && !defined(__clang__)
#define PLANE_BIT(row) ((bytes32)__builtin_ia32_pminub256((v32qi)(row), (v32qi)one))
#define PLANE_ADD(acc, row) (((acc) + (acc)) | PLANE_BIT(row))
#define PLANE_DONE(acc) (acc)
#else
#define PLANE_ADD(acc, row) ((acc) + (acc) - (bytes32)((row) == 0))
#define PLANE_DONE(acc) (~(acc))
#endif
typedef char v32qi __attribute__((vector_size(32)));
static void planes8(const uint8_t *const r[8], uint8_t *restrict t) {
  int i = 0;
  const bytes32 one = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
                       1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1};
  (void)one;
  for (; i + 32 <= IN_DIM; i += 32) {
    bytes32 row, acc = {0};
    for (int s = 7; s >= 0; s--) {
      memcpy(&row, r[s] + i, 32);
      acc = PLANE_ADD(acc, row);
    }
    acc = PLANE_DONE(acc);
    memcpy(t + i, &acc, 32);
  }
  for (; i < IN_DIM; i++) {
    unsigned acc = 0;
    for (int s = 0; s < 8; s++) acc |= (unsigned)(r[s][i] != 0) << s;
    t[i] = (uint8_t)acc;
  }
}

#if W == 4
#if defined(__clang__) || __GNUC__ >= 12
#define SHUFFLE32(a, b, ...) __builtin_shufflevector(a, b, __VA_ARGS__)
#else
#define SHUFFLE32(a, b, ...) __builtin_shuffle(a, b, (bytes32){__VA_ARGS__})
#endif
/* x86's unpack low/high in each 16-byte lane, of 1-, 2-, 4- and 8-byte units, as byte
   shuffles (the compiler emits one vpunpck* each with AVX2). */
@UNPACK@
/* 16 inputs x 32 planes of tmp into nodes: a[k] lane L holds plane 16 L + rev4(k)'s bytes
   of inputs i .. i + 15; four rounds of unpacks (1-, 2-, 4-, 8-byte units) transpose each
   lane's 16 x 16 bytes, so register c ends up as input i + c's node: byte p = plane p.
   Writes nodes i + c for c < count. */
typedef long long v4di __attribute__((vector_size(32)));
typedef long long v2di __attribute__((vector_size(16)));
typedef int v4si __attribute__((vector_size(16)));
static inline void transpose16(const uint8_t *restrict tmp, int i, vec *restrict node,
                               int count) {
  static const int rev4[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  bytes32 a[16], b[16];
  for (int k = 0; k < 16; k++) {
    const uint8_t *lo = tmp + (size_t)rev4[k] * IN_PAD + i, *hi = lo + 16 * IN_PAD;
#if defined(__AVX2__) && defined(__GNUC__) && !defined(__clang__) /* a load, an insert */
    bytes16 l, h;
    memcpy(&l, lo, 16);
    memcpy(&h, hi, 16);
    a[k] = (bytes32)__builtin_ia32_insert128i256((v4di)__builtin_ia32_si256_si((v4si)l),
                                                 (v2di)h, 1);
#else
    memcpy(&a[k], lo, 16);
    memcpy((uint8_t *)&a[k] + 16, hi, 16);
#endif
  }
  for (int k = 0; k < 8; k++) {
    b[2 * k] = UNPACK_LO1(a[k], a[k + 8]);
    b[2 * k + 1] = UNPACK_HI1(a[k], a[k + 8]);
  }
  for (int k = 0; k < 8; k++) {
    a[2 * k] = UNPACK_LO2(b[k], b[k + 8]);
    a[2 * k + 1] = UNPACK_HI2(b[k], b[k + 8]);
  }
  for (int k = 0; k < 8; k++) {
    b[2 * k] = UNPACK_LO4(a[k], a[k + 8]);
    b[2 * k + 1] = UNPACK_HI4(a[k], a[k + 8]);
  }
  for (int k = 0; k < 8; k++) {
    a[2 * k] = UNPACK_LO8(b[k], b[k + 8]);
    a[2 * k + 1] = UNPACK_HI8(b[k], b[k + 8]);
  }
  if (count >= 16) {
    for (int c = 0; c < 16; c++) memcpy(node + c, &a[c], sizeof(vec));
  } else {
    for (int c = 0; c < count; c++) memcpy(node + c, &a[c], sizeof(vec));
  }
}
#endif

/* Swap bytes at distance d between rows a and b (one round of an 8x8 byte transpose in
   every 64-bit lane). */
#define SWAP_BYTES(a, b, d, mask) do { vec t_ = (((a) >> (8 * (d))) ^ (b)) & (mask); \
                                       (b) ^= t_; (a) ^= t_ << (8 * (d)); } while (0)

/* Inputs of samples s0 .. s0 + BLOCK - 1 into nodes 1 .. IN_DIM: sample s0 + 64 w + j is
   bit j of word w. First planes8 for each 8 samples (plane q: samples 8q .. 8q + 7); then,
   for 8 inputs at a time, lane w of row g gathers the 8 bytes of plane 8 w + g, and an
   8x8 byte transpose per lane leaves row j = node of input i + j. */
static void pack(const uint8_t *restrict x, int64_t s0, int64_t n, vec *restrict v,
                 uint8_t *restrict tmp, pump_t *pu) {
  for (int q = 0; q < 8 * W; q++) {
    pump(pu, PF_PACK);
    const uint8_t *r[8];
    for (int s = 0; s < 8; s++) {
      int64_t sample = s0 + 8 * q + s;
      r[s] = sample < n ? x + (size_t)sample * IN_DIM : ZERO_ROW;
    }
    planes8(r, tmp + (size_t)q * IN_PAD);
  }
#if W == 4
  for (int i = 0; i < IN_DIM; i += 16)
    transpose16(tmp, i, v + 1 + i, IN_DIM - i < 16 ? IN_DIM - i : 16);
#else
  const uint64_t m1 = 0x00FF00FF00FF00FFull, m2 = 0x0000FFFF0000FFFFull,
                 m4 = 0x00000000FFFFFFFFull;
  for (int i = 0; i < IN_DIM; i += 8) {
    vec r[8];
    for (int g = 0; g < 8; g++)
      for (int w = 0; w < W; w++) r[g][w] = load64(tmp + (size_t)(8 * w + g) * IN_PAD + i);
    SWAP_BYTES(r[0], r[1], 1, m1); SWAP_BYTES(r[2], r[3], 1, m1);
    SWAP_BYTES(r[4], r[5], 1, m1); SWAP_BYTES(r[6], r[7], 1, m1);
    SWAP_BYTES(r[0], r[2], 2, m2); SWAP_BYTES(r[1], r[3], 2, m2);
    SWAP_BYTES(r[4], r[6], 2, m2); SWAP_BYTES(r[5], r[7], 2, m2);
    SWAP_BYTES(r[0], r[4], 4, m4); SWAP_BYTES(r[1], r[5], 4, m4);
    SWAP_BYTES(r[2], r[6], 4, m4); SWAP_BYTES(r[3], r[7], 4, m4);
    int left = IN_DIM - i < 8 ? IN_DIM - i : 8;
    for (int j = 0; j < left; j++) v[1 + i + j] = r[j];
  }
#endif
}

#define CSA(h, l, a, b, c) do { vec u_ = (a) ^ (b); h = ((a) & (b)) | (u_ & (c)); \
                                l = u_ ^ (c); } while (0)

typedef struct {
  vec ones, twos, fours, eights, cnt[PLANES];
} counter_t;

/* Add 16 words to the counter, v at byte offsets off[0..15], each XOR flip (0 or ~0):
   Harley-Seal carry-save adders, then a ripple of the sixteens into the counter's planes
   4 and up. The words are loaded where used, not all first (16 of them would spill). */
#define D(t) (*(const vec *)(base + off[t]) ^ flip)
static inline void add16(counter_t *restrict k, const char *base, const uint32_t *off,
                         vec flip) {
  vec twos_a, twos_b, fours_a, fours_b, eights_a, eights_b, sixteens;
  CSA(twos_a, k->ones, k->ones, D(0), D(1));
  CSA(twos_b, k->ones, k->ones, D(2), D(3));
  CSA(fours_a, k->twos, k->twos, twos_a, twos_b);
  CSA(twos_a, k->ones, k->ones, D(4), D(5));
  CSA(twos_b, k->ones, k->ones, D(6), D(7));
  CSA(fours_b, k->twos, k->twos, twos_a, twos_b);
  CSA(eights_a, k->fours, k->fours, fours_a, fours_b);
  CSA(twos_a, k->ones, k->ones, D(8), D(9));
  CSA(twos_b, k->ones, k->ones, D(10), D(11));
  CSA(fours_a, k->twos, k->twos, twos_a, twos_b);
  CSA(twos_a, k->ones, k->ones, D(12), D(13));
  CSA(twos_b, k->ones, k->ones, D(14), D(15));
  CSA(fours_b, k->twos, k->twos, twos_a, twos_b);
  CSA(eights_b, k->fours, k->fours, fours_a, fours_b);
  CSA(sixteens, k->eights, k->eights, eights_a, eights_b);
  vec carry = sixteens;
  for (int j = 4; j < PLANES; j++) {
    vec t = k->cnt[j] & carry;
    k->cnt[j] ^= carry;
    carry = t;
  }
}

/* cnt[j] = bit j of the number of ones among class c's outputs, for every sample. */
static void count_class(const vec *restrict v, int c, vec cnt[PLANES], pump_t *pu) {
  const char *base = (const char *)v;
  const vec zero = {0}, all = ~zero;
  counter_t k;
  uint32_t start = OUT_CONST[c];
  /* the counter starts at the class's TRUE outputs: ones, twos, fours, eights, cnt[4..] */
  k.ones = start & 1 ? all : zero;
  k.twos = start & 2 ? all : zero;
  k.fours = start & 4 ? all : zero;
  k.eights = start & 8 ? all : zero;
  for (int j = 4; j < PLANES; j++) k.cnt[j] = (start >> j) & 1 ? all : zero;
  for (uint32_t i = PLAIN_START[c]; i < PLAIN_START[c + 1]; i += 16) {
    pump(pu, PF_OUTPUTS);
    add16(&k, base, OUT_PLAIN + i, zero);
  }
  for (uint32_t i = INVERTED_START[c]; i < INVERTED_START[c + 1]; i += 16) {
    pump(pu, PF_OUTPUTS);
    add16(&k, base, OUT_INVERTED + i, all);
  }
  for (int j = 4; j < PLANES; j++) cnt[j] = k.cnt[j];
  cnt[0] = k.ones;
  cnt[1] = k.twos;
  cnt[2] = k.fours;
  cnt[3] = k.eights;
}

static inline uint64_t bit_of(vec x, int s) { return (x[s >> 6] >> (s & 63)) & 1u; }

/* Count every class; write scores and/or the argmax (first class with the highest score)
   of samples s0 .. min(n, s0 + BLOCK) - 1. */
static void classify(const vec *restrict v, int64_t s0, int64_t n, int32_t *pred,
                     int32_t *scores, pump_t *pu) {
  vec cnt[PLANES], best[PLANES], idx[CLASS_BITS];
  const vec zero = {0};
  int live = (int)(n - s0 < BLOCK ? n - s0 : BLOCK);
  for (int c = 0; c < CLASSES; c++) {
    count_class(v, c, cnt, pu);
    if (scores) {
      for (int s = 0; s < live; s++) {
        int32_t total = 0;
        for (int j = 0; j < PLANES; j++) total |= (int32_t)(bit_of(cnt[j], s) << j);
        scores[(s0 + s) * CLASSES + c] = total;
      }
    }
    if (!pred) continue;
    if (c == 0) {
      for (int j = 0; j < PLANES; j++) best[j] = cnt[j];
      for (int j = 0; j < CLASS_BITS; j++) idx[j] = zero;
      continue;
    }
    vec gt = zero, eq = ~zero;
    for (int j = PLANES - 1; j >= 0; j--) {
      gt |= eq & cnt[j] & ~best[j];
      eq &= ~(cnt[j] ^ best[j]);
    }
    for (int j = 0; j < PLANES; j++) best[j] ^= gt & (cnt[j] ^ best[j]);
    for (int j = 0; j < CLASS_BITS; j++) {
      if ((c >> j) & 1) idx[j] |= gt; else idx[j] &= ~gt;
    }
  }
  if (pred) { /* word by word, the planes in scalar registers (not re-read per sample) */
    for (int w = 0; w < W && 64 * w < live; w++) {
      uint64_t b[CLASS_BITS];
      for (int j = 0; j < CLASS_BITS; j++) b[j] = idx[j][w];
      int lim = live - 64 * w < 64 ? live - 64 * w : 64;
      int32_t *out = pred + s0 + 64 * w;
      for (int s = 0; s < lim; s++) {
        int32_t p = 0;
        for (int j = 0; j < CLASS_BITS; j++) p |= (int32_t)((b[j] >> s) & 1u) << j;
        out[s] = p;
      }
    }
  }
}

#define MAX_THREADS 256

typedef struct {
  const uint8_t *x;
  int64_t n, first, last; /* samples [first, last) of n, first a multiple of BLOCK */
  int32_t *pred, *scores;
  int status;
} job_t;

static void *run_job(void *arg) {
  job_t *job = (job_t *)arg;
  size_t bytes = ((size_t)(NODES + 1) * sizeof(vec) + 63) / 64 * 64;
  vec *v = (vec *)aligned_alloc(64, bytes);
  uint8_t *tmp = (uint8_t *)calloc((size_t)8 * W * IN_PAD + 8, 1); /* pad stays 0 */
  if (!v || !tmp) {
    free(v);
    free(tmp);
    job->status = -1;
    return NULL;
  }
  memset(v, 0, bytes); /* node 0, the constant FALSE, stays zero */
  v[ONES] = ~v[0];
  for (int64_t s0 = job->first; s0 < job->last; s0 += BLOCK) {
    int64_t next = s0 + BLOCK, rows = job->last - next;
    if (rows > BLOCK) rows = BLOCK;
    const uint8_t *first = job->x + (size_t)(rows > 0 ? next : 0) * IN_DIM;
    pump_t pu = {first, first + (rows > 0 ? (size_t)rows * IN_DIM : 0)};
    pack(job->x, s0, job->n, v, tmp, &pu);
    eval_gates(v, &pu);
    classify(v, s0, job->n, job->pred, job->scores, &pu);
  }
  free(v);
  free(tmp);
  job->status = 0;
  return NULL;
}

static int run(const uint8_t *x, int64_t n, int32_t *pred, int32_t *scores, int threads) {
  if (n <= 0) return 0;
  int64_t blocks = (n + BLOCK - 1) / BLOCK;
  if (threads < 1) threads = 1;
  if (threads > MAX_THREADS) threads = MAX_THREADS;
  if (threads > blocks) threads = (int)blocks;
  job_t jobs[threads];
  pthread_t ids[threads];
  int started[threads];
  for (int t = 0; t < threads; t++) {
    int64_t lo = blocks * t / threads, hi = blocks * (t + 1) / threads;
    jobs[t] = (job_t){x, n, lo * BLOCK, hi * BLOCK < n ? hi * BLOCK : n, pred, scores, -1};
    started[t] = 0;
  }
  for (int t = 1; t < threads; t++)
    started[t] = pthread_create(&ids[t], NULL, run_job, &jobs[t]) == 0;
  run_job(&jobs[0]);
  int status = jobs[0].status;
  for (int t = 1; t < threads; t++) {
    if (started[t]) pthread_join(ids[t], NULL);
    else run_job(&jobs[t]); /* no thread to be had: do its share here */
    if (jobs[t].status) status = jobs[t].status;
  }
  return status;
}

int gq_predict(const uint8_t *x, int64_t n, int32_t *pred, int threads) {
  return run(x, n, pred, NULL, threads);
}

int gq_scores(const uint8_t *x, int64_t n, int32_t *scores, int threads) {
  return run(x, n, NULL, scores, threads);
}

void gq_info(int64_t info[8]) {
  info[0] = IN_DIM;
  info[1] = CLASSES;
  info[2] = OUTPUTS;
  info[3] = GATES;
  info[4] = W;
  info[5] = PLANES;
  info[6] = 0;
  info[7] = 0;
}
