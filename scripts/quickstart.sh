#!/usr/bin/env bash
# The main job on a brand-new machine: install what banger needs, build it, and run a sandbox on
# the default image. The first run pulls Debian's cloud kernel (through Debian's package index,
# checksum-verified) and builds the debian-bookworm development image from Debian's mirror with
# mmdebstrap (about 1.5 minutes here); later runs boot in seconds.
#   BANGER_VM_NAME   name of the VM to keep running afterwards (default: dev)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
name="${BANGER_VM_NAME:-dev}"
banger() { node "$root/bin/banger.js" "$@"; }

bash scripts/install-deps.sh
npm run -s build
banger doctor || true

# A throwaway sandbox: runs a command in a fresh VM, exits with its status, deletes the VM.
banger vm run --rm -- sh -c 'uname -r; . /etc/os-release; echo "$PRETTY_NAME"; git --version; python3 --version; gcc --version | head -n1'

# A sandbox that stays: reachable as $name.vm, with a shell via `banger vm ssh $name`.
if banger vm show "$name" >/dev/null 2>&1; then
  banger vm start "$name" >/dev/null 2>&1 || true
else
  banger vm run -d --name "$name"
fi
banger vm ports "$name"
