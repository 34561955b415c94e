/**
 * Makes sure the agents image the end-to-end tests boot is built and cached (test/helpers/
 * agents-image.ts): scripts/test.sh runs it before the e2e files, so a cold build (a few minutes,
 * from Debian's mirror and the npm registry) is a stage of its own and not part of one test file's
 * timeout. Not a *.test.ts file: node --test never picks it up by itself.
 *
 *   node dist/test/e2e/agents-image-prepare.js     exit 0: cached or built; 1: the build failed
 */
import { ensureAgentsImageHome } from '../helpers/agents-image.js';
import { guestAssets } from '../helpers/banger.js';

const assets = guestAssets();
if (!assets) {
  process.stderr.write('agents image: guest assets missing: run scripts/guest-assets.sh\n');
  process.exit(1);
}
const started = Date.now();
try {
  const r = await ensureAgentsImageHome(assets, (s) => process.stderr.write(`agents image: ${s}\n`));
  process.stderr.write(`agents image: ${r.built ? 'built' : 'cached'} (key ${r.key}, ${Math.round((Date.now() - started) / 1000)} s), home ${r.home}\n`);
} catch (e) {
  process.stderr.write(`agents image: build failed: ${(e as Error).message}\n`);
  process.exit(1);
}
