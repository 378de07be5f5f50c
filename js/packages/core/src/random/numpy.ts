/**
 * A bit-exact port of `numpy.random.default_rng(seed)` (numpy 2.x): SeedSequence, the PCG64 bit
 * generator and the parts of `Generator` the node needs (`random`, `permutation`). The Python node
 * shuffles its batches with `np.random.default_rng(seed).permutation(n)`; a JavaScript node must
 * draw the very same orders, so every step below follows numpy's C/Cython source:
 * `bit_generator.pyx` (SeedSequence), `pcg64.h` (PCG64, XSL-RR output, 32-bit buffering),
 * `distributions.c` (`random_interval`) and `_generator.pyx` (`shuffle`, `_shuffle_raw`).
 */

// ---------------------------------------------------------------------------------------------
// SeedSequence (numpy/random/bit_generator.pyx)

const INIT_A = 0x43b0d7e5;
const MULT_A = 0x931e8875;
const INIT_B = 0x8b51f9dd;
const MULT_B = 0x58f38ded;
const MIX_MULT_L = 0xca01f9dd;
const MIX_MULT_R = 0x4973f715;
const XSHIFT = 16;
const POOL_SIZE = 4;
const MASK32 = 0xffffffffn;
const MASK128 = (1n << 128n) - 1n;

/** uint32 multiplication modulo 2^32, as C's `uint32_t * uint32_t`. */
function mul32(a: number, b: number): number {
  return Math.imul(a, b) >>> 0;
}

/** The seed split into 32-bit words, least significant first (`_int_to_uint32_array`). */
function seedWords(seed: number | bigint): number[] {
  let value: bigint;
  if (typeof seed === "number") {
    if (!Number.isSafeInteger(seed)) {
      throw new RangeError(`a seed must be a safe integer or a bigint, got ${seed}`);
    }
    value = BigInt(seed);
  } else {
    value = seed;
  }
  if (value < 0n) throw new RangeError(`a seed must be non-negative, got ${value}`);
  const words: number[] = [];
  while (value > 0n) {
    words.push(Number(value & MASK32));
    value >>= 32n;
  }
  return words.length === 0 ? [0] : words;
}

/**
 * numpy's `SeedSequence(entropy)` with no spawn key: mixes the seed's 32-bit words into a pool of
 * four words, from which `generateState` draws the state of a bit generator.
 */
export class SeedSequence {
  /** The mixed entropy pool (four uint32 words), as numpy's `SeedSequence.pool`. */
  readonly pool: Uint32Array;

  /** Mix `entropy` into the pool exactly as `SeedSequence.mix_entropy` does. */
  constructor(entropy: number | bigint) {
    const words = seedWords(entropy);
    let hashConst = INIT_A;
    const hashmix = (input: number): number => {
      let value = (input ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_A);
      value = mul32(value, hashConst);
      return (value ^ (value >>> XSHIFT)) >>> 0;
    };
    const mix = (x: number, y: number): number => {
      const result = (mul32(MIX_MULT_L, x) - mul32(MIX_MULT_R, y)) >>> 0;
      return (result ^ (result >>> XSHIFT)) >>> 0;
    };
    const pool = new Uint32Array(POOL_SIZE);
    for (let i = 0; i < POOL_SIZE; i++) pool[i] = hashmix(i < words.length ? words[i]! : 0);
    for (let src = 0; src < POOL_SIZE; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) {
        if (src !== dst) pool[dst] = mix(pool[dst]!, hashmix(pool[src]!));
      }
    }
    for (let src = POOL_SIZE; src < words.length; src++) {
      for (let dst = 0; dst < POOL_SIZE; dst++) pool[dst] = mix(pool[dst]!, hashmix(words[src]!));
    }
    this.pool = pool;
  }

  /** `generate_state(nWords, np.uint32)`: nWords uint32 words drawn from the pool. */
  generateState32(nWords: number): Uint32Array {
    const state = new Uint32Array(nWords);
    let hashConst = INIT_B;
    for (let i = 0; i < nWords; i++) {
      let value = (this.pool[i % POOL_SIZE]! ^ hashConst) >>> 0;
      hashConst = mul32(hashConst, MULT_B);
      value = mul32(value, hashConst);
      state[i] = (value ^ (value >>> XSHIFT)) >>> 0;
    }
    return state;
  }

  /** `generate_state(nWords, np.uint64)`: pairs of uint32 words, the first the low half. */
  generateState64(nWords: number): bigint[] {
    const words = this.generateState32(2 * nWords);
    const out: bigint[] = [];
    for (let i = 0; i < nWords; i++) {
      out.push((BigInt(words[2 * i + 1]!) << 32n) | BigInt(words[2 * i]!));
    }
    return out;
  }
}

// ---------------------------------------------------------------------------------------------
// PCG64 (numpy/random/src/pcg64/pcg64.h): 128-bit LCG, XSL-RR output

const PCG_MULT = (2549297995355413924n << 64n) | 4865540595714422341n;

/** A 128-bit value as eight 16-bit limbs, least significant first. */
function toLimbs(value: bigint): number[] {
  const limbs: number[] = [];
  for (let i = 0; i < 8; i++) limbs.push(Number((value >> BigInt(16 * i)) & 0xffffn));
  return limbs;
}

function fromLimbs(limbs: readonly number[]): bigint {
  let value = 0n;
  for (let i = 7; i >= 0; i--) value = (value << 16n) | BigInt(limbs[i]!);
  return value;
}

const M = toLimbs(PCG_MULT);
const [M0, M1, M2, M3, M4, M5, M6, M7] = M as [number, number, number, number, number, number, number, number];

/**
 * numpy's PCG64 bit generator. The 128-bit state lives in eight 16-bit limbs so that one step
 * is plain float64 arithmetic (every partial sum stays below 2^53), far faster than BigInt.
 */
export class PCG64 {
  private s: number[];
  private readonly inc: number[];
  private hasUint32 = false;
  private uinteger = 0;

  /** Seed from 128-bit `state` and `increment` seeds, as `pcg64_set_seed`/`pcg64_srandom_r`. */
  constructor(initState: bigint, initSeq: bigint) {
    this.s = [0, 0, 0, 0, 0, 0, 0, 0];
    this.inc = toLimbs(((initSeq << 1n) | 1n) & MASK128);
    this.step();
    this.s = toLimbs((fromLimbs(this.s) + (initState & MASK128)) & MASK128);
    this.step();
  }

  /** `PCG64(SeedSequence(seed))`: the bit generator `default_rng(seed)` uses. */
  static fromSeedSequence(seq: SeedSequence): PCG64 {
    const [s0, s1, i0, i1] = seq.generateState64(4) as [bigint, bigint, bigint, bigint];
    return new PCG64((s0 << 64n) | s1, (i0 << 64n) | i1);
  }

  /** The state as numpy's `bit_generator.state` reports it (for tests and debugging). */
  get state(): { state: bigint; inc: bigint; hasUint32: boolean; uinteger: number } {
    return { state: fromLimbs(this.s), inc: fromLimbs(this.inc), hasUint32: this.hasUint32, uinteger: this.uinteger };
  }

  /** state = state * MULT + inc (mod 2^128). */
  private step(): void {
    const [s0, s1, s2, s3, s4, s5, s6, s7] = this.s as [number, number, number, number, number, number, number, number];
    const inc = this.inc;
    let t = s0 * M0 + inc[0]!;
    let c = Math.floor(t / 65536);
    const r0 = t - c * 65536;
    t = c + s0 * M1 + s1 * M0 + inc[1]!;
    c = Math.floor(t / 65536);
    const r1 = t - c * 65536;
    t = c + s0 * M2 + s1 * M1 + s2 * M0 + inc[2]!;
    c = Math.floor(t / 65536);
    const r2 = t - c * 65536;
    t = c + s0 * M3 + s1 * M2 + s2 * M1 + s3 * M0 + inc[3]!;
    c = Math.floor(t / 65536);
    const r3 = t - c * 65536;
    t = c + s0 * M4 + s1 * M3 + s2 * M2 + s3 * M1 + s4 * M0 + inc[4]!;
    c = Math.floor(t / 65536);
    const r4 = t - c * 65536;
    t = c + s0 * M5 + s1 * M4 + s2 * M3 + s3 * M2 + s4 * M1 + s5 * M0 + inc[5]!;
    c = Math.floor(t / 65536);
    const r5 = t - c * 65536;
    t = c + s0 * M6 + s1 * M5 + s2 * M4 + s3 * M3 + s4 * M2 + s5 * M1 + s6 * M0 + inc[6]!;
    c = Math.floor(t / 65536);
    const r6 = t - c * 65536;
    t = c + s0 * M7 + s1 * M6 + s2 * M5 + s3 * M4 + s4 * M3 + s5 * M2 + s6 * M1 + s7 * M0 + inc[7]!;
    const r7 = t % 65536;
    this.s = [r0, r1, r2, r3, r4, r5, r6, r7];
  }

  /**
   * One 64-bit output as [high 32 bits, low 32 bits]: step, then XSL-RR of the new state
   * (`pcg64_random_r`).
   */
  private next64Halves(): [number, number] {
    this.step();
    const s = this.s;
    // xor of the high and low 64-bit halves, as two 32-bit words
    let hi = (((s[7]! << 16) | s[6]!) ^ ((s[3]! << 16) | s[2]!)) >>> 0;
    let lo = (((s[5]! << 16) | s[4]!) ^ ((s[1]! << 16) | s[0]!)) >>> 0;
    let rot = s[7]! >>> 10; // state >> 122
    if (rot >= 32) {
      const swap = hi;
      hi = lo;
      lo = swap;
      rot -= 32;
    }
    if (rot === 0) return [hi, lo];
    return [((hi >>> rot) | (lo << (32 - rot))) >>> 0, ((lo >>> rot) | (hi << (32 - rot))) >>> 0];
  }

  /** `next_uint64` as a bigint. */
  nextUint64(): bigint {
    const [hi, lo] = this.next64Halves();
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** `next_uint32`: the low half of a 64-bit output, its high half buffered for the next call. */
  nextUint32(): number {
    if (this.hasUint32) {
      this.hasUint32 = false;
      return this.uinteger;
    }
    const [hi, lo] = this.next64Halves();
    this.hasUint32 = true;
    this.uinteger = hi;
    return lo;
  }

  /** `next_double`: (next_uint64 >> 11) * 2^-53, a float64 in [0, 1). */
  nextDouble(): number {
    const [hi, lo] = this.next64Halves();
    return (hi * 2097152 + (lo >>> 11)) * (1 / 9007199254740992);
  }
}

// ---------------------------------------------------------------------------------------------
// Generator

/** The largest `n` `permutation` accepts: its result is an Int32Array. */
const MAX_PERMUTATION = 0x7fffffff;

/**
 * `numpy.random.default_rng(seed)`: a Generator over PCG64, drawing exactly numpy's numbers.
 * Only what the node needs is ported: `random` and `permutation`.
 */
export class NumpyGenerator {
  /** The underlying bit generator (for tests: its state matches numpy's). */
  readonly bitGenerator: PCG64;

  private constructor(bitGenerator: PCG64) {
    this.bitGenerator = bitGenerator;
  }

  /** `np.random.default_rng(seed)` for a non-negative integer seed (any size as a bigint). */
  static fromSeed(seed: number | bigint): NumpyGenerator {
    return new NumpyGenerator(PCG64.fromSeedSequence(new SeedSequence(seed)));
  }

  /** `rng.random()`: one float64 in [0, 1). */
  random(): number {
    return this.bitGenerator.nextDouble();
  }

  /** `rng.random(count)`: `count` float64 values in [0, 1). */
  randomArray(count: number): Float64Array {
    const out = new Float64Array(count);
    for (let i = 0; i < count; i++) out[i] = this.bitGenerator.nextDouble();
    return out;
  }

  /**
   * `rng.integers`-free bounded draw numpy's shuffle uses (`random_interval`): a value in
   * [0, max] by masked rejection, from 32-bit draws when max fits in 32 bits.
   */
  randomInterval(max: number): number {
    if (max === 0) return 0;
    if (!Number.isInteger(max) || max < 0 || max > 0xffffffff) {
      throw new RangeError(`randomInterval: max must be an integer in [0, 2^32), got ${max}`);
    }
    let mask = max;
    mask |= mask >>> 1;
    mask |= mask >>> 2;
    mask |= mask >>> 4;
    mask |= mask >>> 8;
    mask |= mask >>> 16;
    mask >>>= 0;
    let value: number;
    do {
      value = (this.bitGenerator.nextUint32() & mask) >>> 0;
    } while (value > max);
    return value;
  }

  /**
   * `rng.permutation(n)`: `arange(n)` shuffled in place by numpy's Fisher-Yates
   * (for i = n-1 .. 1: swap i with random_interval(i)).
   */
  permutation(n: number): Int32Array {
    if (!Number.isInteger(n) || n < 0 || n > MAX_PERMUTATION) {
      throw new RangeError(`permutation: n must be an integer in [0, ${MAX_PERMUTATION}], got ${n}`);
    }
    const order = new Int32Array(n);
    for (let i = 0; i < n; i++) order[i] = i;
    for (let i = n - 1; i >= 1; i--) {
      const j = this.randomInterval(i);
      const held = order[j]!;
      order[j] = order[i]!;
      order[i] = held;
    }
    return order;
  }
}
