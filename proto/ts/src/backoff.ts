/**
 * The reconnect schedule of docs/protocol.md §8.3: the k-th consecutive
 * wait is min(max, base·factor^(k−1)) × (1 + jitter·u), u uniform in [−1, 1).
 */
export interface Backoff {
  baseMs: number;
  factor: number;
  jitter: number;
  maxMs: number;
}

/** Used until the dispatcher sends hints of its own. */
export const defaultBackoff: Readonly<Backoff> = Object.freeze({ baseMs: 500, factor: 2, jitter: 0.2, maxMs: 30_000 });

/** The dispatcher's `reconnect` object. */
export interface BackoffHints {
  base_ms?: number | undefined;
  factor?: number | undefined;
  jitter?: number | undefined;
  max_ms?: number | undefined;
}

function sane(b: Backoff): Backoff {
  const out = { ...b };
  if (!(out.baseMs > 0)) out.baseMs = defaultBackoff.baseMs;
  if (!(out.factor >= 1)) out.factor = defaultBackoff.factor;
  if (!(out.jitter > 0 && out.jitter <= 1)) out.jitter = defaultBackoff.jitter;
  if (!(out.maxMs > 0)) out.maxMs = defaultBackoff.maxMs;
  if (out.maxMs < out.baseMs) out.maxMs = out.baseMs;
  return out;
}

/** mergeHints applies each sane hint field over b and keeps b's otherwise. */
export function mergeHints(b: Backoff, h: BackoffHints | null | undefined): Backoff {
  if (!h || typeof h !== 'object') return b;
  const out = { ...b };
  if (typeof h.base_ms === 'number' && h.base_ms > 0) out.baseMs = h.base_ms;
  if (typeof h.factor === 'number' && h.factor >= 1) out.factor = h.factor;
  if (typeof h.jitter === 'number' && h.jitter > 0 && h.jitter <= 1) out.jitter = h.jitter;
  if (typeof h.max_ms === 'number' && h.max_ms > 0) out.maxMs = h.max_ms;
  return sane(out);
}

/** backoffDelay is the wait before retry number attempt (1 for the first); r in [0, 1). */
export function backoffDelay(b: Backoff, attempt: number, r: number = Math.random()): number {
  const s = sane(b);
  const k = Math.max(1, Math.floor(attempt));
  let d = s.baseMs * Math.pow(s.factor, k - 1);
  if (!Number.isFinite(d) || d > s.maxMs) d = s.maxMs;
  return d * (1 + s.jitter * (2 * r - 1));
}
