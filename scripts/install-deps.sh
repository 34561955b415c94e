#!/usr/bin/env bash
# Installs the host packages banger needs on Debian/Ubuntu (idempotent; only what is missing).
#   --test   also the packages the test suite needs
set -euo pipefail

# mmdebstrap builds the default image from Debian's mirror; xz-utils and lz4 unpack kernel packages.
# gpgv + debian-archive-keyring verify Debian's signed package index before a kernel is pulled.
# uidmap (newuidmap/newgidmap) lets mmdebstrap's unshare mode build the default image as the
# unprivileged owner of the system service (`banger system install`), from its /etc/subuid range.
# git: workspaces read the host repository and fetch the guest's work back into it.
pkgs=(qemu-system-x86 qemu-utils e2fsprogs kmod cpio zstd xz-utils lz4 iproute2 nftables openssh-client gcc make libc6-dev mmdebstrap gpgv debian-archive-keyring uidmap git)
# docker-registry serves test images on loopback; skopeo and umoci are the image-pull benchmark's baseline.
# python3 crafts spoofed frames, iptables/ebtables run the NAT fallback's tests, file(1) checks the
# agent binary is static and stripped, clang-format checks the C style (lint). scripts/test.sh fails
# a test that misses any of them. apt-utils (apt-ftparchive) indexes the local apt repository the
# first-boot test serves to a guest (scripts/guest-assets.sh builds it). chromium: the web UI's browser
# test drives Debian's headless Chromium with playwright-core (no browser download). tmux runs the agents
# image's session save/restore scripts, and systemd's systemd-analyze verifies its units (docs/tmux.md).
[[ "${1:-}" == "--test" ]] && pkgs+=(busybox-static openssl docker-registry skopeo umoci gnupg dash zsh fish python3 iptables ebtables file clang-format apt-utils chromium tmux systemd)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}" >&2
  SUDO=""
  [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# npm 11 runs no install scripts of dependencies unless allowed; better-sqlite3 must compile here
# (no prebuilt binaries can be downloaded), which package.json's allowScripts permits.
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
stamp="node_modules/.banger-lock-$(sha256sum package-lock.json | cut -c1-16)-$(node -p process.version)"
if [[ ! -e "$stamp" ]]; then
  npm ci --no-audit --no-fund
  touch "$stamp"
fi
