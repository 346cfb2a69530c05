/** A small typed event emitter (no dependency on Node's events module). */
export class Emitter<E extends { [K in keyof E]: (arg: never) => void }> {
  private readonly handlers = new Map<keyof E, Set<(arg: never) => void>>();

  /** on adds a listener and returns a function that removes it. */
  on<K extends keyof E>(event: K, fn: E[K]): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(fn);
    return () => this.off(event, fn);
  }

  /** once adds a listener that is removed after its first call. */
  once<K extends keyof E>(event: K, fn: E[K]): () => void {
    const wrap = ((arg: never) => {
      off();
      (fn as (a: never) => void)(arg);
    }) as E[K];
    const off = this.on(event, wrap);
    return off;
  }

  off<K extends keyof E>(event: K, fn: E[K]): void {
    this.handlers.get(event)?.delete(fn);
  }

  /**
   * emit calls every listener of event in order. A listener that throws
   * does not stop the others; onThrow hears about it.
   */
  protected emitEvent<K extends keyof E>(event: K, arg: Parameters<E[K]>[0], onThrow: (err: unknown) => void): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const fn of [...set]) {
      try {
        (fn as (a: unknown) => void)(arg);
      } catch (err) {
        onThrow(err);
      }
    }
  }
}
