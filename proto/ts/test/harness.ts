// Test harness: the real fleet (test/fleet, a Go program that starts an
// embedded etcd, the dispatcher and the access nodes) and a Go SDK TCP
// client (test/tcpclient), both driven over pipes. The binaries are built
// by `npm test` into build-test/bin. Every process is stopped by its pid.
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { createInterface, type Interface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { WebSocket } from 'ws';

import { Client, type ClientOptions, type Message } from '../src/index.js';
import type { WebSocketConstructor } from '../src/websocket.js';

const here = dirname(fileURLToPath(import.meta.url));
/** build-test/bin, next to build-test/test where this file runs from */
export const binDir = join(here, '..', 'bin');

const children = new Set<ChildProcess>();
process.on('exit', () => {
  for (const c of children) if (c.exitCode === null && c.pid) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {
      // gone already
    }
  }
});

/** A line-oriented child process speaking JSON lines. */
class LineProc {
  readonly proc: ChildProcess;
  private readonly rl: Interface;
  private readonly lines: unknown[] = [];
  private waiters: (() => void)[] = [];
  readonly exited: Promise<number | null>;
  stderr = '';

  constructor(argv: string[]) {
    this.proc = spawn(argv[0]!, argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'] });
    children.add(this.proc);
    this.exited = new Promise((r) => this.proc.on('exit', (code) => {
      children.delete(this.proc);
      r(code);
      this.wakeAll();
    }));
    this.proc.stderr!.on('data', (b: Buffer) => {
      this.stderr = (this.stderr + b.toString()).slice(-8000);
    });
    this.rl = createInterface({ input: this.proc.stdout! });
    this.rl.on('line', (l) => {
      try {
        this.lines.push(JSON.parse(l));
      } catch {
        this.lines.push({ raw: l });
      }
      this.wakeAll();
    });
  }

  private wakeAll(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** next returns the next line that matches, waiting at most ms. */
  async next<T = Record<string, unknown>>(ms: number, match: (v: T) => boolean = () => true, what = 'a line'): Promise<T> {
    const end = Date.now() + ms;
    for (;;) {
      const i = this.lines.findIndex((v) => match(v as T));
      if (i >= 0) return this.lines.splice(i, 1)[0] as T;
      if (this.proc.exitCode !== null) throw new Error(`${this.proc.spawnargs[0]} exited (${this.proc.exitCode}) waiting for ${what}: ${this.stderr}`);
      const left = end - Date.now();
      if (left <= 0) throw new Error(`timed out after ${ms} ms waiting for ${what}; stderr: ${this.stderr}`);
      await new Promise<void>((r) => {
        const t = setTimeout(r, left);
        this.waiters.push(() => {
          clearTimeout(t);
          r();
        });
      });
    }
  }

  write(line: string): void {
    this.proc.stdin!.write(line + '\n');
  }

  /** stop closes stdin (the program's signal to clean up) and kills it by pid if it has not exited within ms. */
  async stop(ms = 15_000): Promise<void> {
    if (this.proc.exitCode !== null || this.proc.signalCode !== null) return;
    this.proc.stdin!.end();
    const t = setTimeout(() => {
      if (this.proc.pid && this.proc.exitCode === null) process.kill(this.proc.pid, 'SIGKILL');
    }, ms);
    await this.exited;
    clearTimeout(t);
    this.rl.close();
  }
}

export interface FleetInfo {
  dispatcher: string;
  etcd: string;
  pid: number;
  nodes: Record<string, { pid: number; log: string }>;
  /** with wss: the CA's PEM file */
  ca?: string;
}

/** Fleet is etcd + dispatcher + nodes, through test/fleet. */
export class Fleet {
  private readonly p: LineProc;
  info!: FleetInfo;
  readonly dir: string;

  private constructor(p: LineProc, dir: string) {
    this.p = p;
    this.dir = dir;
  }

  /** web: the dispatcher serves the chat page (/chat/) and the nodes allow its origin */
  /** wss: the nodes also serve wss, with a certificate of a CA made for the run (info.ca) */
  static async start(opts: { nodes?: number; ws?: boolean; wss?: boolean; web?: boolean; nodeArgs?: string } = {}): Promise<Fleet> {
    const dir = mkdtempSync(join(tmpdir(), 'imgate-ts-'));
    const argv = [join(binDir, 'fleet'), '--bin', binDir, '--dir', dir, '--nodes', String(opts.nodes ?? 2), `--ws=${opts.ws ?? true}`,
      `--wss=${opts.wss ?? false}`, `--web=${opts.web ?? false}`];
    if (opts.nodeArgs) argv.push('--node-args', opts.nodeArgs);
    const f = new Fleet(new LineProc(argv), dir);
    f.info = await f.p.next<FleetInfo>(90_000, (v) => 'dispatcher' in v, 'the fleet to come up');
    return f;
  }

  get dispatcher(): string {
    return this.info.dispatcher;
  }

  async cmd(line: string, ms = 40_000): Promise<Record<string, unknown>> {
    this.p.write(line);
    const r = await this.p.next(ms, (v) => 'ok' in v, `the answer to "${line}"`);
    if (r['ok'] !== true) throw new Error(`fleet: ${line}: ${String(r['error'])}`);
    return r;
  }

  /** setState puts a node's ops state in etcd and waits until the dispatcher agrees. */
  setState(node: string, state: 'active' | 'drain' | 'down'): Promise<Record<string, unknown>> {
    return this.cmd(`state ${node} ${state}`);
  }

  /**
   * only runs fn while every node but `node` is down at the dispatcher, so
   * that connections made in fn land on `node`.
   */
  async only<T>(node: string, fn: () => Promise<T>): Promise<T> {
    const others = Object.keys(this.info.nodes).filter((n) => n !== node);
    for (const o of others) await this.setState(o, 'down');
    try {
      return await fn();
    } finally {
      for (const o of others) await this.setState(o, 'active');
    }
  }

  log(node: string): string {
    try {
      return readFileSync(this.info.nodes[node]!.log, 'utf8').slice(-6000);
    } catch {
      return '';
    }
  }

  async stop(): Promise<void> {
    await this.p.stop(20_000);
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** GoClient is a Go SDK client over plain TCP (test/tcpclient). */
export class GoClient {
  private readonly p: LineProc;
  node = '';

  private constructor(p: LineProc) {
    this.p = p;
  }

  static async start(dispatcher: string, uid: string): Promise<GoClient> {
    const g = new GoClient(new LineProc([join(binDir, 'tcpclient'), '--dispatcher', dispatcher, '--uid', uid]));
    const c = await g.p.next<{ event: string; node: string }>(30_000, (v) => v.event === 'connected', 'the Go client to connect');
    g.node = c.node;
    return g;
  }

  async send(to: string, payload: string): Promise<{ event: string; outcome: string; msg_id: string; error?: string }> {
    this.p.write(`send ${to} ${payload}`);
    return this.p.next(40_000, (v) => v.event === 'sent', 'the Go client\'s SendAck');
  }

  message(ms = 20_000): Promise<{ event: string; id: string; from: string; payload: string; node: string }> {
    return this.p.next(ms, (v) => v.event === 'message', 'a message at the Go client');
  }

  stop(): Promise<void> {
    return this.p.stop();
  }
}

/** until polls cond every 20 ms until it holds, failing after ms. */
export async function until(what: string, ms: number, cond: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** A client under test, with what it received and the states it went through. */
export interface TestClient {
  c: Client;
  messages: Message[];
  states: string[];
  errors: string[];
  kicks: string[];
  goaways: number;
}

export function newClient(dispatcher: string, uid: string, device: string, extra: Partial<ClientOptions> = {}): TestClient {
  const c = new Client({
    dispatcher, uid, device, WebSocket: WebSocket as unknown as WebSocketConstructor, ...extra,
  });
  const t: TestClient = { c, messages: [], states: [], errors: [], kicks: [], goaways: 0 };
  c.on('message', (m) => t.messages.push(m));
  c.on('state', (s) => t.states.push(s.state));
  c.on('error', (e) => t.errors.push(`${e.kind}/${e.code}: ${e.message}`));
  c.on('kick', (k) => t.kicks.push(k.reason));
  c.on('goaway', () => t.goaways++);
  return t;
}

export const enc = (s: string): Uint8Array => new TextEncoder().encode(s);
export const dec = (b: Uint8Array): string => new TextDecoder().decode(b);
