#!/usr/bin/env bash
# Builds the real guest assets the end-to-end tests boot: a Debian cloud kernel (extracted package
# plus an uncompressed vmlinux) and a tuned Debian bookworm rootfs.ext4. They live OUTSIDE the clone,
# in ${BANGER_ASSET_CACHE:-$HOME/.cache/banger-test-assets}, each in a directory named after a hash of
# its inputs (the function that builds it + the package versions it is built from), so a change to
# either rebuilds it and nothing else. Each asset is built in a staging directory and published with
# one rename; a killed run leaves no half-built asset behind.
#
# Output: KEY=path lines on stdout and the same as JSON in <cache>/assets.json (what the tests read).
#   BANGER_ASSET_REBUILD=1   rebuild even when cached
set -euo pipefail

cache="${BANGER_ASSET_CACHE:-$HOME/.cache/banger-test-assets}"
suite=bookworm
kernel_meta=linux-image-cloud-amd64
rootfs_packages=systemd-sysv,openssh-server,iproute2,ca-certificates,procps,udev,kmod,git

log() { printf 'guest-assets: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

ensure_host_packages() {
  local pkgs=(qemu-system-x86 qemu-utils mmdebstrap e2fsprogs kmod zstd lz4 xz-utils cpio dpkg binutils apt-utils) missing=() p
  for p in "${pkgs[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing host packages: ${missing[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

# The versioned kernel package the meta package points at. apt-cache answers from the local package
# lists; a fresh machine (or a container image) may have none: update them once then.
resolve_kernel_package() {
  kernel_pkg=$(apt-cache depends "$kernel_meta" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
  if [[ -z "$kernel_pkg" ]]; then
    log "apt package lists missing or stale: apt-get update"
    as_root apt-get update -qq
    kernel_pkg=$(apt-cache depends "$kernel_meta" | awk '/Depends: linux-image-/ { print $2; exit }')
  fi
  [[ -n "$kernel_pkg" ]] || die "cannot resolve the kernel package $kernel_meta depends on"
}

# Candidate versions of all packages in one apt-cache call (each call costs ~0.5 s).
declare -A candidate=()
load_candidates() {
  local pkg="" line
  while IFS= read -r line; do
    if [[ "$line" =~ ^([^[:space:]]+):$ ]]; then pkg=${BASH_REMATCH[1]}
    elif [[ -n "$pkg" && "$line" =~ ^[[:space:]]+Candidate:[[:space:]]+(.+)$ ]]; then candidate[$pkg]=${BASH_REMATCH[1]}
    fi
  done < <(apt-cache policy "$@")
}

candidate_version() { printf '%s' "${candidate[$1]:-}"; }

short_hash() { sha256sum | cut -c1-16; }

# Removes other builds of the same asset once no run has used them for a day: not at once, since
# a concurrent test run (another checkout) may still boot VMs over them.
prune_old() {
  local prefix=$1 keep=$2 d
  touch "$keep"
  while IFS= read -r d; do
    [[ "$d" != "$keep" ]] || continue
    log "removing stale $(basename "$d")"
    rm -rf "$d"
  done < <(find "$cache" -mindepth 1 -maxdepth 1 -name "$prefix-*" -mmin +1440)
}

# --- kernel -------------------------------------------------------------------------------------

# The bzImage's payload is LZ4 (legacy frame) compressed; the uncompressed ELF boots ~0.35 s sooner
# under QEMU (PVH entry) and is what Firecracker needs. extract-vmlinux is not packaged without the
# headers, so do what it does: try each LZ4 magic, keep the first output that is a valid ELF.
extract_vmlinux() {
  local bz=$1 out=$2 off
  while read -r off; do
    # lz4 complains about the 4-byte size the kernel appends after the frame; the output is whole.
    tail -c "+$((off + 1))" "$bz" | lz4 -dc >"$out.tmp" 2>/dev/null || true
    if [[ -s "$out.tmp" ]] && readelf -h "$out.tmp" >/dev/null 2>&1; then
      mv "$out.tmp" "$out"
      return 0
    fi
  done < <(LC_ALL=C grep -obUaP '\x02\x21\x4c\x18' "$bz" | cut -d: -f1)
  rm -f "$out.tmp"
  return 1
}

build_kernel() {
  local pkg=$1 ver=$2 stage=$3
  mkdir -p "$stage/deb" "$stage/tree"
  (cd "$stage/deb" && apt-get download -q "$pkg=$ver" >/dev/null)
  dpkg-deb -x "$stage"/deb/*.deb "$stage/tree"
  # The package itself stays: the kernel-pull tests serve it from a loopback Debian index.
  local kver vmlinuz
  vmlinuz=$(find "$stage/tree/boot" -maxdepth 1 -name 'vmlinuz-*' | head -n1)
  [[ -n "$vmlinuz" ]] || die "$pkg has no boot/vmlinuz-*"
  kver=${vmlinuz##*/vmlinuz-}
  [[ -d "$stage/tree/lib/modules/$kver" ]] || die "$pkg has no lib/modules/$kver"
  # Docs are noise; the tree otherwise stays exactly as the package ships it.
  rm -rf "$stage/tree/usr/share"
  rmdir "$stage/tree/usr" 2>/dev/null || true
  if extract_vmlinux "$vmlinuz" "$stage/tree/vmlinux"; then
    log "extracted vmlinux ($(stat -c %s "$stage/tree/vmlinux") bytes)"
  else
    log "warning: could not extract vmlinux from $vmlinuz; the bzImage will be used"
  fi
  printf '%s\n' "$kver" >"$stage/tree/kernel-version"
}

kernel_asset() {
  local pkg=$kernel_pkg ver key dir stage
  ver=$(candidate_version "$pkg")
  [[ -n "$ver" && "$ver" != "(none)" ]] || die "no installable version of $pkg"
  key=$( { declare -f build_kernel extract_vmlinux; echo "$pkg=$ver"; } | short_hash)
  dir="$cache/kernel-$key"
  if [[ -n "${BANGER_ASSET_REBUILD:-}" || ! -e "$dir/tree/kernel-version" ]]; then
    log "building kernel $pkg=$ver → $dir"
    stage=$(mktemp -d "$cache/.stage-kernel-XXXXXX")
    build_kernel "$pkg" "$ver" "$stage"
    printf '%s=%s\n' "$pkg" "$ver" >"$stage/package"
    chmod 755 "$stage"
    rm -rf "$dir"
    mv -T "$stage" "$dir"
  fi
  prune_old kernel "$dir"
  kernel_dir="$dir/tree"
  kernel_version=$(cat "$dir/tree/kernel-version")
}

# --- root filesystem ----------------------------------------------------------------------------

# Units a throwaway dev VM does not need; each costs boot time under TCG (guest-boot.md).
masked_units=(
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer e2scrub_reap.service
  fstrim.timer systemd-tmpfiles-clean.timer man-db.timer systemd-pstore.service getty-static.service
  getty@tty1.service systemd-update-utmp.service systemd-update-utmp-runlevel.service
  systemd-random-seed.service systemd-journal-flush.service
  # The rootfs has no kernel modules, so these can only fail; the pseudo-filesystems are for
  # debugging and are mounted by hand when needed. Together −1 s to ssh.service under TCG.
  modprobe@configfs.service modprobe@dm_mod.service modprobe@drm.service modprobe@efi_pstore.service
  modprobe@fuse.service modprobe@loop.service sys-kernel-config.mount sys-kernel-debug.mount
  sys-kernel-tracing.mount sys-fs-fuse-connections.mount proc-sys-fs-binfmt_misc.automount
  systemd-binfmt.service
)

tune_rootfs() {
  local root=$1 u
  for u in "${masked_units[@]}"; do ln -sfn /dev/null "$root/etc/systemd/system/$u"; done
  # A transient machine id per boot: clones of one image must not share it.
  : >"$root/etc/machine-id"
  rm -f "$root/var/lib/dbus/machine-id"
  # Each VM gets its own host key through the boot payload; never ship the build's keys.
  rm -f "$root"/etc/ssh/ssh_host_*
  mkdir -p "$root/etc/ssh/sshd_config.d"
  # Debian's sshd_config includes sshd_config.d first, and the first value wins. PAM costs ~1 s
  # per login under TCG and is not needed for key-only root logins.
  printf 'UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n' \
    >"$root/etc/ssh/sshd_config.d/10-banger.conf"
  # Locked root password ('*' never matches): access is by SSH key or the agent only.
  sed -i -E 's/^root:[^:]*:/root:*:/' "$root/etc/shadow"
  # udev coldplug would load every module it can find (kvm, crypto, input…): −3 s of boot.
  rm -rf "$root/lib/modules" "$root/usr/lib/modules"
  printf 'banger\n' >"$root/etc/hostname"
  rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/cache/debconf/*-old \
    "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/tmp/*
}

build_rootfs() {
  local stage=$1
  mmdebstrap --quiet --variant=minbase --include="$rootfs_packages" \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    "$suite" "$stage/tree" >&2
  tune_rootfs "$stage/tree"
  mkfs.ext4 -q -F -d "$stage/tree" -L banger-root "$stage/rootfs.ext4" 2G >&2
  # The same tree as a tarball: the OCI tests push it to a loopback registry as an image.
  tar --numeric-owner --xattrs -C "$stage/tree" -cf "$stage/rootfs.tar" .
  rm -rf "$stage/tree"
}

rootfs_asset() {
  local versions key dir stage p
  # The image changes when the packages it is built from change: key on their candidate versions.
  versions=$(for p in "${rootfs_version_packages[@]}"; do printf '%s=%s\n' "$p" "$(candidate_version "$p")"; done)
  key=$( { declare -f build_rootfs tune_rootfs; declare -p masked_units; echo "$suite $rootfs_packages"; echo "$versions"; } | short_hash)
  dir="$cache/rootfs-$key"
  if [[ -n "${BANGER_ASSET_REBUILD:-}" || ! -e "$dir/rootfs.tar" ]]; then
    # Unprivileged, mmdebstrap would pick its unshare mode and mkfs.ext4 -d would record the
    # files as owned by the calling user: an image where nothing belongs to root.
    [[ $(id -u) -eq 0 ]] || die "building the rootfs needs root (run: sudo $0)"
    log "building rootfs ($suite, minbase + $rootfs_packages) → $dir"
    stage=$(mktemp -d "$cache/.stage-rootfs-XXXXXX")
    build_rootfs "$stage"
    printf '%s\n' "$versions" >"$stage/packages"
    chmod 755 "$stage"
    rm -rf "$dir"
    mv -T "$stage" "$dir"
  fi
  prune_old rootfs "$dir"
  rootfs="$dir/rootfs.ext4"
}

# --- an image without sshd, and a local apt repository that has one -----------------------------

# The first-boot test (test/e2e/oci-boot.test.ts) boots an image without sshd whose real apt-get
# installs openssh-server at first boot from a repository the test serves on the VM bridge, inside
# its network namespace. The image: the rootfs above with openssh-server purged and no apt sources
# (the test writes the one it serves). The repository: openssh-server and its whole dependency
# closure as .debs with a flat index (apt-ftparchive), so whatever the image lacks or has older is
# there; nothing in the guest ever reaches Debian's mirror.

build_rootfs_nosshd() {
  local src=$1 stage=$2
  mkdir "$stage/tree"
  tar --numeric-owner --xattrs -xf "$src" -C "$stage/tree"
  # No services run in the chroot: policy-rc.d keeps the maintainer scripts from trying to stop any.
  printf '#!/bin/sh\nexit 101\n' >"$stage/tree/usr/sbin/policy-rc.d"
  chmod 755 "$stage/tree/usr/sbin/policy-rc.d"
  chroot "$stage/tree" dpkg --purge openssh-server openssh-sftp-server >&2
  rm -f "$stage/tree/usr/sbin/policy-rc.d"
  [[ ! -e "$stage/tree/usr/sbin/sshd" ]] || die "sshd is still in the purged tree"
  rm -f "$stage/tree/etc/apt/sources.list"
  rm -rf "$stage/tree/etc/apt/sources.list.d"/* "$stage/tree"/var/lib/apt/lists/* "$stage/tree"/var/cache/apt/* \
    "$stage/tree"/var/log/apt/* "$stage/tree"/var/log/*.log
  mkfs.ext4 -q -F -d "$stage/tree" -L banger-root "$stage/rootfs.ext4" 2G >&2
  rm -rf "$stage/tree"
}

rootfs_nosshd_asset() {
  local key dir stage
  key=$( { declare -f build_rootfs_nosshd; echo "$rootfs"; } | short_hash)
  dir="$cache/nosshd-rootfs-$key"
  if [[ -n "${BANGER_ASSET_REBUILD:-}" || ! -e "$dir/rootfs.ext4" ]]; then
    [[ $(id -u) -eq 0 ]] || die "building the rootfs needs root (run: sudo $0)"
    log "building rootfs without sshd (from $rootfs) → $dir"
    stage=$(mktemp -d "$cache/.stage-nosshd-rootfs-XXXXXX")
    build_rootfs_nosshd "${rootfs%.ext4}.tar" "$stage"
    chmod 755 "$stage"
    rm -rf "$dir"
    mv -T "$stage" "$dir"
  fi
  prune_old nosshd-rootfs "$dir"
  rootfs_nosshd="$dir/rootfs.ext4"
}

# openssh-server and everything it needs, recursively (Depends and Pre-Depends; virtual packages
# and alternatives without a candidate drop out below).
sshd_closure() {
  apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances openssh-server |
    grep -E '^[a-z0-9]' | sort -u
}

build_sshd_repo() {
  local stage=$1
  shift
  mkdir -p "$stage/repo"
  (cd "$stage/repo" && apt-get download -q "$@" >/dev/null)
  # Release is written beside the repository first: it must not list itself.
  (cd "$stage/repo" && apt-ftparchive packages . >Packages && apt-ftparchive release . >../Release)
  mv "$stage/Release" "$stage/repo/Release"
}

sshd_repo_asset() {
  local names pins=() p v key dir stage
  mapfile -t names < <(sshd_closure)
  ((${#names[@]})) || die "apt-cache knows no dependencies of openssh-server"
  load_candidates "${names[@]}"
  for p in "${names[@]}"; do
    v=$(candidate_version "$p")
    [[ -n "$v" && "$v" != "(none)" ]] && pins+=("$p=$v")
  done
  key=$( { declare -f build_sshd_repo sshd_closure; printf '%s\n' "${pins[@]}"; } | short_hash)
  dir="$cache/sshd-repo-$key"
  if [[ -n "${BANGER_ASSET_REBUILD:-}" || ! -e "$dir/repo/Release" ]]; then
    log "downloading openssh-server and ${#pins[@]} packages it needs → $dir"
    stage=$(mktemp -d "$cache/.stage-sshd-repo-XXXXXX")
    build_sshd_repo "$stage" "${pins[@]}"
    printf '%s\n' "${pins[@]}" >"$stage/packages"
    chmod -R a+rX "$stage"
    rm -rf "$dir"
    mv -T "$stage" "$dir"
  fi
  prune_old sshd-repo "$dir"
  sshd_repo="$dir/repo"
}

# --- main ---------------------------------------------------------------------------------------

mkdir -p "$cache"
# One builder at a time per cache; concurrent test runs wait instead of racing on the same key.
exec 9>"$cache/.lock"
flock 9
# Staging directories of runs that were killed.
rm -rf "$cache"/.stage-*

ensure_host_packages
resolve_kernel_package
rootfs_version_packages=(${rootfs_packages//,/ } systemd libc6)
load_candidates "$kernel_pkg" "${rootfs_version_packages[@]}"

start=$SECONDS
kernel_asset
rootfs_asset
rootfs_nosshd_asset
sshd_repo_asset

kernel_file="$kernel_dir/vmlinux"
[[ -e "$kernel_file" ]] || kernel_file="$kernel_dir/boot/vmlinuz-$kernel_version"
manifest=$(cat <<EOF
{
  "kernelDir": "$kernel_dir",
  "kernelVersion": "$kernel_version",
  "kernel": "$kernel_file",
  "vmlinuz": "$kernel_dir/boot/vmlinuz-$kernel_version",
  "modulesDir": "$kernel_dir/lib/modules/$kernel_version",
  "rootfs": "$rootfs",
  "rootfsTar": "${rootfs%.ext4}.tar",
  "rootfsNoSshd": "$rootfs_nosshd",
  "sshdRepo": "$sshd_repo",
  "kernelDeb": "$(ls "$kernel_dir"/../deb/*.deb | head -n1)"
}
EOF
)
printf '%s\n' "$manifest" >"$cache/assets.json.tmp"
mv -f "$cache/assets.json.tmp" "$cache/assets.json"
log "ready in $((SECONDS - start)) s; manifest $cache/assets.json"

cat <<EOF
KERNEL_DIR=$kernel_dir
KERNEL_VERSION=$kernel_version
KERNEL=$kernel_file
VMLINUZ=$kernel_dir/boot/vmlinuz-$kernel_version
ROOTFS=$rootfs
ROOTFS_NOSSHD=$rootfs_nosshd
SSHD_REPO=$sshd_repo
MANIFEST=$cache/assets.json
EOF
