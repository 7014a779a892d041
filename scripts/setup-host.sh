#!/usr/bin/env bash
# Installs the Debian packages netboot needs. Idempotent: installs only what is missing.
# Usage: scripts/setup-host.sh [runtime|test|all]   (default: all)
# Services that packages would start (tftpd-hpa, docker, nginx, nbd-server) are kept from
# starting: netboot never wants a daemon listening on the host's real interfaces.
set -euo pipefail
profile=${1:-all}

# gcc/g++/make/python3/libc6-dev: the native parts (the initramfs NBD client, the sendfile addon built by npm ci)
runtime=(squashfs-tools-ng busybox-static ipxe iproute2 zstd xz-utils openssh-client gcc g++ make python3 libc6-dev ndisc6)
test=(qemu-system-x86 ipxe-qemu ovmf docker.io docker-compose debootstrap atftp tftp-hpa curl
      dnsmasq-base tshark libarchive-tools iptables nbd-client libnbd-bin qemu-utils
      tftpd-hpa nbd-server nginx-light wrk cpio chromium)
case "$profile" in
  runtime) want=("${runtime[@]}") ;;
  test|all) want=("${runtime[@]}" "${test[@]}") ;;
  *) echo "usage: $0 [runtime|test|all]" >&2; exit 2 ;;
esac

# A current iPXE (issue 17): Debian 13's `ipxe` package, pinned and checksum-checked, unpacked
# (never installed) into a directory netboot owns. The host's own ipxe package stays what it is.
IPXE_VERSION=1.21.1+git20250501.dad20602+dfsg-1
IPXE_SHA256=eeaca79dbde0fb86c102bf1d362c6f6a67ed0ddab38b3dd12e1b332339f5dd99
IPXE_SUITE=trixie
IPXE_MIRROR=${IPXE_MIRROR:-http://deb.debian.org/debian}
IPXE_DEST=${NETBOOT_IPXE_DIR:-/usr/local/share/netboot/ipxe}

ipxe_present() { [ "$(cat "$IPXE_DEST/VERSION" 2>/dev/null)" = "$IPXE_VERSION" ]; }

# apt-get download from a sources list naming only trixie (the host's apt config is not read or
# changed: own lists, cache and sources); if that fails (version gone from the index, no apt
# access), the pool URL by apt-helper. Either way the sha256 decides.
fetch_ipxe() {
  local deb
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"; [ $made_policy = 1 ] && rm -f "$policy"' EXIT
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/unpacked"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $IPXE_MIRROR $IPXE_SUITE main" > "$tmp/sources.list"
  local apt_opts=(-o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$tmp/lists"
                  -o Dir::Cache="$tmp/cache" -o APT::Sandbox::User=root -qq)
  deb="$tmp/ipxe_${IPXE_VERSION}_all.deb"
  if ! (apt-get "${apt_opts[@]}" update && cd "$tmp" && apt-get "${apt_opts[@]}" download "ipxe=$IPXE_VERSION") >/dev/null 2>"$tmp/apt.err"; then
    echo "setup-host: apt-get download ipxe=$IPXE_VERSION failed ($(tail -1 "$tmp/apt.err")); trying the pool URL" >&2
    /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file "$IPXE_MIRROR/pool/main/i/ipxe/ipxe_${IPXE_VERSION//+/%2B}_all.deb" "$deb" "SHA256:$IPXE_SHA256" >/dev/null
  fi
  if [ "$(sha256sum "$deb" | cut -d' ' -f1)" != "$IPXE_SHA256" ]; then
    echo "setup-host: $deb does not have sha256 $IPXE_SHA256; not using it" >&2
    exit 1
  fi
  dpkg-deb -x "$deb" "$tmp/unpacked"
  # Stage beside the destination, then swap: a running server never sees a half-copied directory.
  mkdir -p "$(dirname "$IPXE_DEST")"
  rm -rf "$IPXE_DEST.new" "$IPXE_DEST.old"
  cp -a "$tmp/unpacked/usr/lib/ipxe" "$IPXE_DEST.new"
  cp "$tmp/unpacked/usr/share/doc/ipxe/copyright" "$IPXE_DEST.new/copyright"
  echo "$IPXE_VERSION" > "$IPXE_DEST.new/VERSION"
  [ -e "$IPXE_DEST" ] && mv "$IPXE_DEST" "$IPXE_DEST.old"
  mv "$IPXE_DEST.new" "$IPXE_DEST"
  rm -rf "$IPXE_DEST.old"
  echo "setup-host: iPXE $IPXE_VERSION in $IPXE_DEST ($(cd "$IPXE_DEST" && echo *.efi *.kpxe))"
}

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && ipxe_present; then
  echo "setup-host: all ${#want[@]} packages present, iPXE $IPXE_VERSION in $IPXE_DEST"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  [ ${#missing[@]} -gt 0 ] && echo "setup-host: missing packages: ${missing[*]}" >&2 &&
    echo "run as root:  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
  ipxe_present || echo "setup-host: iPXE $IPXE_VERSION is not in $IPXE_DEST; run this script as root to fetch it" >&2
  exit 1
fi
policy=/usr/sbin/policy-rc.d
made_policy=0
trap '[ $made_policy = 1 ] && rm -f "$policy"' EXIT
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup-host: installing ${missing[*]}"
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"; chmod +x "$policy"; made_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
  # Belt and braces: stop anything a package started anyway (no systemd here, so init scripts).
  for svc in tftpd-hpa nginx nbd-server docker; do
    [ -x /etc/init.d/$svc ] && /etc/init.d/$svc stop >/dev/null 2>&1 || true
  done
fi
ipxe_present || fetch_ipxe
echo "setup-host: done"
