#!/usr/bin/env bash
# Installs the Debian packages netboot needs. Idempotent: installs only what is missing.
# Usage: scripts/setup-host.sh [runtime|test|all]   (default: all)
# Services that packages would start (tftpd-hpa, docker, nginx, nbd-server) are kept from
# starting: netboot never wants a daemon listening on the host's real interfaces.
set -euo pipefail
profile=${1:-all}

# gcc/g++/make/python3/libc6-dev: the native parts (the initramfs NBD client, the sendfile addon built by npm ci)
runtime=(squashfs-tools-ng busybox-static ipxe iproute2 zstd xz-utils openssh-client gcc g++ make python3 libc6-dev)
test=(qemu-system-x86 ipxe-qemu ovmf docker.io docker-compose debootstrap atftp tftp-hpa curl
      dnsmasq-base tshark libarchive-tools iptables nbd-client libnbd-bin qemu-utils
      tftpd-hpa nbd-server nginx-light wrk cpio)
case "$profile" in
  runtime) want=("${runtime[@]}") ;;
  test|all) want=("${runtime[@]}" "${test[@]}") ;;
  *) echo "usage: $0 [runtime|test|all]" >&2; exit 2 ;;
esac

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup-host: all ${#want[@]} packages present"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "setup-host: missing packages: ${missing[*]}" >&2
  echo "run as root:  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
  exit 1
fi
echo "setup-host: installing ${missing[*]}"
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
fi
trap '[ $made_policy = 1 ] && rm -f "$policy"' EXIT
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}"
# Belt and braces: stop anything a package started anyway (no systemd here, so init scripts).
for svc in tftpd-hpa nginx nbd-server docker; do
  [ -x /etc/init.d/$svc ] && /etc/init.d/$svc stop >/dev/null 2>&1 || true
done
echo "setup-host: done"
