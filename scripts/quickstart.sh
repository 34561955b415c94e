#!/usr/bin/env bash
# The main job on a brand-new machine: install what banger needs, build it, and run a sandbox on
# the default image. The first run pulls Debian's cloud kernel (through Debian's package index,
# checksum-verified) and builds the debian-bookworm development image from Debian's mirror with
# mmdebstrap (about 1.5 minutes here); later runs boot in seconds.
#
#   bash scripts/quickstart.sh                 all-root development mode: the CLI starts bangerd
#                                              as the calling user (root, or passwordless sudo)
#   sudo bash scripts/quickstart.sh --owner U  the split layout: bangerd-root as root, bangerd and
#                                              QEMU as user U (systemd units where systemd runs,
#                                              banger's supervisor elsewhere); the sandbox
#                                              commands then run as U (docs/privileges.md)
#   BANGER_VM_NAME   name of the VM to keep running afterwards (default: dev)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
name="${BANGER_VM_NAME:-dev}"
owner=""
if [[ "${1:-}" == "--owner" ]]; then
  owner="${2:?--owner needs a user name}"
elif [[ -n "${1:-}" ]]; then
  echo "usage: $0 [--owner USER]" >&2
  exit 2
fi

bash scripts/install-deps.sh
npm run -s build

if [[ -z "$owner" ]]; then
  banger() { node "$root/bin/banger.js" "$@"; }
else
  [[ $(id -u) -eq 0 ]] || { echo "--owner sets up system services: run it with sudo" >&2; exit 1; }
  # The owner runs this tree's CLI and the service runs its daemon: the owner must be able to read it.
  # Root runs the helper from it: only root may be able to change it (system start/install check).
  if ! setpriv --reuid="$owner" --regid="$(id -g "$owner")" --init-groups test -r "$root/dist/src/cli/main.js"; then
    echo "$owner cannot read $root: clone banger as root where $owner can read it (e.g. sudo git clone … /opt/banger) and rerun" >&2
    exit 1
  fi
  if [[ -d /run/systemd/system ]]; then
    node "$root/bin/banger.js" system install --owner "$owner"
  elif ! node "$root/bin/banger.js" system status --json 2>/dev/null | grep -q '"supervisorPid": [0-9]'; then
    node "$root/bin/banger.js" system start --owner "$owner"
  fi
  owner_home="$(getent passwd "$owner" | cut -d: -f6)"
  banger() { setpriv --reuid="$owner" --regid="$(id -g "$owner")" --init-groups env -i HOME="$owner_home" PATH="$PATH" LANG=C.UTF-8 node "$root/bin/banger.js" "$@"; }
fi
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
