#!/usr/bin/env bash
# The whole test suite, from a brand-new Debian 12 machine: installs what it needs, builds, then
# lint, typecheck, guest assets, unit, integration, real-VM end-to-end tests, and the Node 24 run.
#   BANGER_SKIP_E2E=1     skip the real-VM tests (the guest assets are still built: the kernel-pull
#                         and vmlinux tests read them)
#   BANGER_SKIP_NODE24=1  skip the Node 24 run
#   BANGER_TEST_TIMEOUT_MS=300000  node --test-timeout of unit and integration tests
#   BANGER_E2E_TIMEOUT_MS=900000   the same for the end-to-end tests
#     (Node 20 applies --test-timeout to each test FILE; Node 22 and later to each test)
# A boot gate (test/e2e/boot-gate.ts: one VM through the real CLI) runs before the e2e files: if it
# fails, the run stops there with the console tail. The run ends with a summary: time per stage,
# per test file (slowest first) and every skipped test with its reason, on failure too.
# Nothing skips silently: every prerequisite this script provides (host tools, guest assets) is
# required (BANGER_TEST_STRICT=1: a test missing one fails, see test/helpers/prereq.ts).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export BANGER_TEST_STRICT=1
unit_timeout=${BANGER_TEST_TIMEOUT_MS:-300000}
e2e_timeout=${BANGER_E2E_TIMEOUT_MS:-900000}

# Stage times (stages.tsv) and the timing reporter's output (<n>-<stage>.jsonl) for the summary.
report=$(mktemp -d "${TMPDIR:-/tmp}/banger-test-report-XXXXXX")
stage="" stage_start=0
now_ms() { echo $(($(date +%s%N) / 1000000)); }
end_stage() {
  [[ -n "$stage" ]] && printf '%s\t%s\t%s\n' "$stage" "$(($(now_ms) - stage_start))" "$1" >>"$report/stages.tsv"
  stage=""
}
step() {
  end_stage ok
  stage="$*" stage_start=$(now_ms)
  printf '\n=== %s ===\n' "$*"
}
finish() {
  local rc=$?
  end_stage "$([[ $rc -eq 0 ]] && echo ok || echo "FAILED (exit $rc)")"
  node "$root/scripts/test-summary.mjs" "$report" || true
  exit "$rc"
}
trap finish EXIT

# node --test with its usual output (spec on a terminal, TAP otherwise) and the timing reporter.
#   node_test <report name> <concurrency> <timeout ms> files…
node_test() {
  local name=$1 concurrency=$2 timeout=$3 format=tap
  shift 3
  [[ -t 1 ]] && format=spec
  node --test --test-concurrency="$concurrency" --test-timeout="$timeout" \
    --test-reporter="$format" --test-reporter-destination=stdout \
    --test-reporter="$root/scripts/timing-reporter.mjs" --test-reporter-destination="$report/$name.jsonl" "$@"
}

step "host packages and node_modules"
bash scripts/install-deps.sh --test

step "build"
npm run -s build

step "lint"
npx biome check src test bench scripts
node scripts/check-imports.mjs
clang-format --dry-run --Werror agent/*.c agent/*.h native/*.c
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
node_test 1-unit+integration 2 "$unit_timeout" "${files[@]}"

if [[ -z "${BANGER_SKIP_E2E:-}" ]]; then
  # One VM first: when none can boot, every e2e file would only wait out its timeouts.
  step "boot gate: one real VM"
  if ! node dist/test/e2e/boot-gate.js; then
    echo "boot gate failed: no end-to-end test runs (the output above says why)" >&2
    exit 1
  fi
  # The agents image (debian-bookworm-agents) from the real registries, cached outside the clone
  # keyed by its pinned npm lock and files: minutes when cold, nothing when cached.
  step "agents image (cached in ${BANGER_ASSET_CACHE:-$HOME/.cache/banger-test-assets})"
  node dist/test/e2e/agents-image-prepare.js
  step "end-to-end tests on real VMs"
  mapfile -t files < <(tests dist/test/e2e)
  node_test 2-e2e 1 "$e2e_timeout" "${files[@]}"
fi

if [[ -z "${BANGER_SKIP_NODE24:-}" ]]; then
  step "unit + integration tests on Node 24"
  BANGER_TEST_REPORT="$report/3-node24.jsonl" BANGER_TEST_TIMEOUT_MS="$unit_timeout" bash scripts/test-node24.sh
fi
