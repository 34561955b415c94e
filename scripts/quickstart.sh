#!/usr/bin/env bash
# The main job on a brand-new machine: install what banger needs, build it, make the default
# image (debian-bookworm, built from Debian's mirror and cached), and boot a sandbox on it.
#   BANGER_VM_NAME   name of the VM to create (default: dev)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
name="${BANGER_VM_NAME:-dev}"
banger() { node "$root/bin/banger.js" "$@"; }

bash scripts/install-deps.sh --test
npm run -s build
banger doctor || true

# Until `image pull` lands, the default image comes from the same recipe the tests use:
# Debian's cloud kernel and an mmdebstrap'd bookworm rootfs, cached outside the clone.
bash scripts/guest-assets.sh
manifest="${BANGER_ASSET_CACHE:-$HOME/.cache/banger-test-assets}/assets.json"
kernel_dir=$(node -p "require('$manifest').kernelDir")
rootfs=$(node -p "require('$manifest').rootfs")

if ! banger kernel show debian-cloud >/dev/null 2>&1; then
  banger kernel import debian-cloud --from "$kernel_dir"
fi
if ! banger image show debian-bookworm >/dev/null 2>&1; then
  banger image register --name debian-bookworm --rootfs "$rootfs" --kernel-ref debian-cloud
fi
if banger vm show "$name" >/dev/null 2>&1; then
  banger vm start "$name"
else
  banger vm create --name "$name"
fi
banger vm health "$name"
banger vm ssh "$name" -- uname -a
banger vm ports "$name"
echo
echo "The sandbox \"$name\" is running. Try: banger vm ssh $name | banger vm stats $name | banger vm stop $name"
