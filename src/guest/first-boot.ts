import type { PayloadExtra } from './initramfs.js';

export const FIRST_BOOT_SCRIPT = '/etc/banger/first-boot.sh';
const UNIT_NAME = 'banger-first-boot.service';
const SSHD_CANDIDATES = '/usr/sbin/sshd /sbin/sshd /usr/bin/sshd';

/**
 * Runs at every boot of a VM whose image has no sshd and which has NAT: installs an SSH server
 * through the image's own package manager (once), then makes sure it runs, with banger's key and
 * the VM's host key (both in the boot payload). Output goes to the serial console (`vm logs`).
 */
export function sshdInstallScript(): string {
  return `#!/bin/sh
# banger first boot: an SSH server for an image that has none (the VM has NAT).
set -u
say() { echo "banger-first-boot: $*"; }
find_sshd() { sshd=""; for s in ${SSHD_CANDIDATES}; do if [ -x "$s" ]; then sshd=$s; return 0; fi; done; return 1; }

if ! find_sshd; then
  say "no sshd in the image: installing one with the package manager"
  if command -v apt-get >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q && apt-get install -y -q --no-install-recommends openssh-server
  elif command -v apk >/dev/null 2>&1; then
    apk add --no-cache openssh-server
  elif command -v dnf >/dev/null 2>&1; then
    dnf install -y openssh-server
  elif command -v yum >/dev/null 2>&1; then
    yum install -y openssh-server
  elif command -v zypper >/dev/null 2>&1; then
    zypper --non-interactive install openssh-server
  elif command -v pacman >/dev/null 2>&1; then
    pacman -Sy --noconfirm openssh
  else
    say "no known package manager (apt-get, apk, dnf, yum, zypper, pacman): cannot install sshd"
    exit 1
  fi
  find_sshd || { say "the package manager ran but no sshd appeared"; exit 1; }
fi

if [ -d /run/systemd/system ]; then
  for unit in ssh sshd; do
    if systemctl restart "$unit" >/dev/null 2>&1; then say "sshd running ($unit.service)"; exit 0; fi
  done
fi
mkdir -p /run/sshd /var/run/sshd /var/empty 2>/dev/null
chmod 0755 /run/sshd 2>/dev/null
"$sshd" -h /etc/ssh/ssh_host_ed25519_key -o PermitRootLogin=prohibit-password \\
  -o "AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/banger_authorized_keys" && say "sshd running ($sshd)"
`;
}

const FIRST_BOOT_UNIT = `[Unit]
Description=banger first boot: SSH server for an image without one
After=network.target
Wants=network.target

[Service]
Type=oneshot
ExecStart=/bin/sh ${FIRST_BOOT_SCRIPT}
StandardOutput=journal+console
StandardError=journal+console

[Install]
WantedBy=multi-user.target
`;

/** Payload files that run the script: a systemd unit, and (for banger-init) the `first_boot` config key. */
export function firstBootFiles(): PayloadExtra[] {
  return [
    { path: FIRST_BOOT_SCRIPT, mode: 0o755, content: sshdInstallScript() },
    { path: `/etc/systemd/system/${UNIT_NAME}`, mode: 0o644, content: FIRST_BOOT_UNIT },
    { path: `/etc/systemd/system/multi-user.target.wants/${UNIT_NAME}`, target: `/etc/systemd/system/${UNIT_NAME}` },
  ];
}
