#!/usr/bin/env bash
# The whole test suite, from a brand-new Debian 12 machine: installs what it needs, builds, then
# lint, typecheck, unit, integration, real-VM end-to-end tests, and the Node 24 run.
#   BANGER_SKIP_E2E=1     skip the real-VM tests
#   BANGER_SKIP_NODE24=1  skip the Node 24 run
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"

step() { printf '\n=== %s ===\n' "$*"; }

step "host packages and node_modules"
bash scripts/install-deps.sh --test

step "build"
npm run -s build

step "lint"
npx biome check src test bench scripts
step "typecheck"
npx tsc -p tsconfig.json --noEmit

tests() { find "$@" -name '*.test.js' 2>/dev/null | sort; }

step "unit + integration tests"
mapfile -t files < <(tests dist/test/unit dist/test/integration)
node --test --test-concurrency=2 "${files[@]}"

if [[ -z "${BANGER_SKIP_E2E:-}" ]]; then
  step "guest assets (cached in ${BANGER_ASSET_CACHE:-$HOME/.cache/banger-test-assets})"
  bash scripts/guest-assets.sh
  step "end-to-end tests on real VMs"
  mapfile -t files < <(tests dist/test/e2e)
  node --test --test-concurrency=1 "${files[@]}"
fi

if [[ -z "${BANGER_SKIP_NODE24:-}" ]]; then
  step "unit + integration tests on Node 24"
  bash scripts/test-node24.sh
fi
