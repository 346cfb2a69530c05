// The dispatcher embeds a copy of the browser bundle for its chat page
// (go:embed cannot reach proto/ts/dist). A stale copy fails here; refresh
// it with `make chat-bundle`.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url)); // build-test/test
const pkg = join(here, '..', '..');
const fresh = join(pkg, 'dist', 'imgate.browser.js');
const embedded = join(pkg, '..', '..', 'dispatcher', 'internal', 'webchat', 'static', 'imgate.browser.js');

it('the dispatcher embeds the bundle a fresh build makes', () => {
  let a: Buffer;
  try {
    a = readFileSync(fresh);
  } catch {
    assert.fail(`${fresh} is missing: run \`npm run build\` first (make ts-test does)`);
  }
  const b = readFileSync(embedded);
  assert.ok(a.equals(b), `${embedded} differs from a fresh build (${b.length} vs ${a.length} bytes): run \`make chat-bundle\` and commit it`);
});
