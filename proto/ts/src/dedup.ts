/**
 * Dedup remembers the msg ids of the last `size` Delivers handed to the
 * application, so that a re-sent Deliver (same msg_id, higher attempt) is
 * acknowledged again but not handed over twice (docs/protocol.md §7.2). One
 * Dedup is shared by every connection of a client: a node may re-send on
 * the next connection, and during a GoAway move two connections read at
 * once. Eviction is by age of first delivery (a ring), as in the Go SDK.
 *
 * JavaScript hands a message to the application synchronously (the
 * `message` listeners run before the DeliverAck is written), so unlike the
 * Go SDK no "in flight" state is needed.
 */
export class Dedup {
  private readonly size: number;
  private readonly seen = new Set<string>();
  private readonly ring: string[] = [];
  private next = 0;

  constructor(size: number) {
    this.size = Math.max(1, Math.floor(size));
  }

  /** has tells whether id was handed over already. */
  has(id: string): boolean {
    return this.seen.has(id);
  }

  /** add records id as handed over, forgetting the oldest when full. */
  add(id: string): void {
    if (this.seen.has(id)) return;
    if (this.ring.length < this.size) {
      this.ring.push(id);
    } else {
      this.seen.delete(this.ring[this.next]!);
      this.ring[this.next] = id;
      this.next = (this.next + 1) % this.size;
    }
    this.seen.add(id);
  }

  get length(): number {
    return this.seen.size;
  }
}
