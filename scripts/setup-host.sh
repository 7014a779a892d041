#!/usr/bin/env bash
# Installs the Debian packages netboot needs. Idempotent: installs only what is missing.
# Usage: scripts/setup-host.sh [runtime|test|arm64|all]   (default: all; arm64 = test + what the opt-in
# arm64 end-to-end test needs; NETBOOT_ARM64=1 adds those to all/test too)
# Services that packages would start (tftpd-hpa, docker, nginx, nbd-server) are kept from
# starting: netboot never wants a daemon listening on the host's real interfaces.
set -euo pipefail
profile=${1:-all}

# gcc/g++/make/python3/libc6-dev: the native parts (the initramfs NBD client, the sendfile addon built by npm ci)
runtime=(squashfs-tools-ng busybox-static ipxe iproute2 zstd xz-utils openssh-client gcc g++ make python3 libc6-dev ndisc6)
# cryptsetup-bin: veritysetup, the reference our dm-verity tree builder is tested against
test=(qemu-system-x86 ipxe-qemu ovmf docker.io docker-compose debootstrap atftp tftp-hpa curl
      dnsmasq-base tshark libarchive-tools iptables nbd-client libnbd-bin qemu-utils
      tftpd-hpa nbd-server nginx-light wrk cpio chromium strace cryptsetup-bin)
# arm64 VMs (TCG) with AAVMF, and debootstrap --arch arm64 (second stage under qemu-user-static)
arm64=(qemu-system-arm qemu-efi-aarch64 qemu-user-static binfmt-support)
[ "${NETBOOT_ARM64:-}" = 1 ] && test+=("${arm64[@]}")
case "$profile" in
  runtime) want=("${runtime[@]}") ;;
  test|all) want=("${runtime[@]}" "${test[@]}") ;;
  arm64) want=("${runtime[@]}" "${test[@]}" "${arm64[@]}") ;;
  *) echo "usage: $0 [runtime|test|arm64|all]" >&2; exit 2 ;;
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

# Images of the other architecture (issue 17: linux/arm64 on an amd64 server, or the reverse)
# need a busybox for their CPU in the initramfs: Debian's busybox-static for that architecture,
# pinned and checksum-checked, unpacked to $NETBOOT_SHARE/busybox/<arch>/busybox (never installed).
BUSYBOX_VERSION=1:1.35.0-4+deb12u1+b1
declare -A BUSYBOX_SHA256=(
  [amd64]=3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744
  [arm64]=732c9135564fc71337e0e05fb4da4d11e6c28c1834bce3e405e575afef2a52f5
)
BUSYBOX_SUITE=bookworm
NETBOOT_SHARE=${NETBOOT_SHARE_DIR:-/usr/local/share/netboot}
case "$(dpkg --print-architecture)" in
  amd64) BUSYBOX_ARCH=arm64 ;;
  arm64) BUSYBOX_ARCH=amd64 ;;
  *) BUSYBOX_ARCH= ;;
esac
busybox_present() { [ -z "$BUSYBOX_ARCH" ] || [ "$(cat "$NETBOOT_SHARE/busybox/$BUSYBOX_ARCH/VERSION" 2>/dev/null)" = "$BUSYBOX_VERSION" ]; }

fetch_busybox() {
  local tmp deb dest=$NETBOOT_SHARE/busybox/$BUSYBOX_ARCH sha=${BUSYBOX_SHA256[$BUSYBOX_ARCH]}
  tmp=$(mktemp -d)
  mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial" "$tmp/unpacked"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $IPXE_MIRROR $BUSYBOX_SUITE main" > "$tmp/sources.list"
  local apt_opts=(-o Dir::Etc::sourcelist="$tmp/sources.list" -o Dir::Etc::sourceparts=- -o Dir::State::Lists="$tmp/lists"
                  -o Dir::Cache="$tmp/cache" -o APT::Sandbox::User=root -o APT::Architecture="$BUSYBOX_ARCH"
                  -o APT::Architectures::="$BUSYBOX_ARCH" -qq)
  if ! (apt-get "${apt_opts[@]}" update && cd "$tmp" && apt-get "${apt_opts[@]}" download "busybox-static=$BUSYBOX_VERSION") >/dev/null 2>"$tmp/apt.err"; then
    echo "setup-host: apt-get download busybox-static:$BUSYBOX_ARCH failed ($(tail -1 "$tmp/apt.err")); trying the pool URL" >&2
    /usr/lib/apt/apt-helper -o APT::Sandbox::User=root download-file \
      "$IPXE_MIRROR/pool/main/b/busybox/busybox-static_${BUSYBOX_VERSION#*:}_$BUSYBOX_ARCH.deb" "$tmp/busybox-static.deb" "SHA256:$sha" >/dev/null
  fi
  deb=$(ls "$tmp"/busybox-static*.deb)
  if [ "$(sha256sum "$deb" | cut -d' ' -f1)" != "$sha" ]; then
    echo "setup-host: $deb does not have sha256 $sha; not using it" >&2
    rm -rf "$tmp"; exit 1
  fi
  dpkg-deb -x "$deb" "$tmp/unpacked"
  mkdir -p "$dest.new"
  cp "$tmp/unpacked/bin/busybox" "$dest.new/busybox"
  echo "$BUSYBOX_VERSION" > "$dest.new/VERSION"
  rm -rf "$dest.old"; [ -e "$dest" ] && mv "$dest" "$dest.old"
  mv "$dest.new" "$dest"; rm -rf "$dest.old" "$tmp"
  echo "setup-host: busybox-static $BUSYBOX_VERSION for $BUSYBOX_ARCH in $dest"
}

# debootstrap --arch of the other architecture runs its second stage through qemu-user-static.
ensure_binfmt() {
  [ -n "$BUSYBOX_ARCH" ] && command -v update-binfmts >/dev/null || return 0
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
  local q; q=$([ "$BUSYBOX_ARCH" = arm64 ] && echo aarch64 || echo x86_64)
  grep -qs enabled "/proc/sys/fs/binfmt_misc/qemu-$q" || update-binfmts --enable "qemu-$q" 2>/dev/null ||
    echo "setup-host: qemu-$q is not registered with binfmt_misc; debootstrap --arch $BUSYBOX_ARCH will fail" >&2
}

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ] && ipxe_present && busybox_present; then
  echo "setup-host: all ${#want[@]} packages present, iPXE $IPXE_VERSION in $IPXE_DEST${BUSYBOX_ARCH:+, busybox for $BUSYBOX_ARCH}"
  [ "$(id -u)" = 0 ] && [ "$profile" != runtime ] && ensure_binfmt
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  [ ${#missing[@]} -gt 0 ] && echo "setup-host: missing packages: ${missing[*]}" >&2 &&
    echo "run as root:  sudo apt-get update && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}" >&2
  ipxe_present || echo "setup-host: iPXE $IPXE_VERSION is not in $IPXE_DEST; run this script as root to fetch it" >&2
  busybox_present || echo "setup-host: busybox-static for $BUSYBOX_ARCH is not in $NETBOOT_SHARE/busybox; run this script as root to fetch it" >&2
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
# Optional (only images of the other architecture need it): a host or image build without the
# network to Debian's archive still finishes, with a warning.
busybox_present || (fetch_busybox) ||
  echo "setup-host: warning: no busybox-static for $BUSYBOX_ARCH fetched; linux/$BUSYBOX_ARCH images will not build until this script fetches it" >&2
[ "$profile" != runtime ] && ensure_binfmt
ipxe_present || fetch_ipxe
echo "setup-host: done"
