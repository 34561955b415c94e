#!/usr/bin/env bash
# The whole test suite, from a brand-new Debian 12 machine: installs what it needs, builds, then
# lint, typecheck, guest assets, unit, integration, real-VM end-to-end tests, and the Node 24 run.
#   BANGER_SKIP_E2E=1     skip the real-VM tests (the guest assets are still built: the kernel-pull
#                         and vmlinux tests read them)
#   BANGER_SKIP_NODE24=1  skip the Node 24 run
# Nothing skips silently: every prerequisite this script provides (host tools, guest assets) is
# required (BANGER_TEST_STRICT=1: a test missing one fails, see test/helpers/prereq.ts).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export BANGER_TEST_STRICT=1

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

# Before any test: unit and integration tests use them too (the kernel .deb, the real bzImage).
# Building the rootfs needs root; the cache is named explicitly so sudo's HOME does not move it.
step "guest assets (cached in ${BANGER_ASSET_CACHE:-$HOME/.cache/banger-test-assets})"
if [[ $(id -u) -eq 0 ]]; then
  bash scripts/guest-assets.sh
else
  sudo env BANGER_ASSET_CACHE="${BANGER_ASSET_CACHE:-$HOME/.cache/banger-test-assets}" bash scripts/guest-assets.sh
fi

step "unit + integration tests"
mapfile -t files < <(tests dist/test/unit dist/test/integration)
node --test --test-concurrency=2 "${files[@]}"

if [[ -z "${BANGER_SKIP_E2E:-}" ]]; then
  step "end-to-end tests on real VMs"
  mapfile -t files < <(tests dist/test/e2e)
  node --test --test-concurrency=1 "${files[@]}"
fi

if [[ -z "${BANGER_SKIP_NODE24:-}" ]]; then
  step "unit + integration tests on Node 24"
  bash scripts/test-node24.sh
fi
