# netboot in a container: `netboot serve --config /etc/netboot/netboot.yaml`, as the user
# `netboot` (uid 10001). Run it with docker-compose.yml (host network, NET_BIND_SERVICE; why:
# see there and the README's "Deploying").
#
#   docker build -t netboot .                       # the official Node 20 image from Docker Hub
#   docker build --build-arg BASE=my/node20 -t netboot .
#
# BASE: a Debian 12 (bookworm) image with Node >= 20.19 on PATH and its C headers (the official
# node:20 images have both). What the base already has is not installed again (the package steps
# install only what is missing), so a base holding it all builds without a network: the compose
# test (test/deploy/compose.test.ts) builds this file that way.
ARG BASE=node:20-bookworm-slim

# Build stage: the native parts. scripts/setup-host.sh `runtime` installs the compilers and the
# tools, and fetches the pinned iPXE build into /usr/local/share/netboot/ipxe; npm ci compiles the
# binding.gyp targets (the sendfile addon, helpers) against the headers of the Node that runs it;
# the initramfs NBD client (root: nbd images) is compiled here too, so the runtime needs no compiler.
FROM ${BASE} AS build
COPY scripts/setup-host.sh /tmp/setup-host.sh
RUN bash /tmp/setup-host.sh runtime && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/netboot
COPY package.json package-lock.json binding.gyp ./
COPY native/ native/
RUN npm_config_nodedir="$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")" \
      npm ci --omit=dev --no-audit --no-fund \
 && test -f build/Release/netboot_sendfile.node && test -f build/Release/netboot_neigh.node && test -f build/Release/netboot_pread.node \
 && find build/Release -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
COPY . .
# The server looks for its compiled initramfs tools (the NBD client, the dm-verity helper) in
# <tmpdir>/netboot-native/, named by the hash of source and flags, and compiles one only when its
# file is missing: the runtime, which has no compiler, ships these.
# Everything the runtime takes is staged under /out, so that it is one layer there.
RUN node --import tsx --input-type=module \
      -e "const m = await import('/opt/netboot/server/initramfs/static-tools.ts'); console.log((await m.compileAllStaticTools()).join('\\n'));" \
 && install -d -m 0755 /out/opt /out/usr/local/share && install -d -m 1777 /out/tmp \
 && cp -a /opt/netboot /out/opt/ && cp -a /usr/local/share/netboot /out/usr/local/share/ && cp -a /tmp/netboot-native /out/tmp/

# Runtime stage: Node, the source (run through tsx, as bin/netboot does), node_modules and the
# compiled native parts, and the Debian tools netboot runs: setup-host.sh's `runtime` list minus
# the compilers (tar2sqfs, busybox for the initramfs, iPXE, zstd/xz, ssh-keygen, ip, ...).
# It runs as `netboot`, not root, with file capabilities (setcap below) in place of root: Node may
# bind DHCP (67) and TFTP (69), below 1024 (NET_BIND_SERVICE); the helper that answers iPXE's IPv6
# router solicitations (server.ipv6RouterAdvert: auto) opens an AF_PACKET socket (NET_RAW). So the
# container must keep those two capabilities and must not set no-new-privileges (which ignores
# file capabilities).
FROM ${BASE}
COPY scripts/setup-host.sh /tmp/setup-host.sh
RUN set -eu; missing=; \
    for p in $(sed -n 's/^runtime=(\(.*\))$/\1/p' /tmp/setup-host.sh) libcap2-bin; do \
      case "$p" in gcc|g++|make|python3|libc6-dev) continue ;; esac; \
      dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"; \
    done; \
    if [ -n "$missing" ]; then \
      apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing \
      && rm -rf /var/lib/apt/lists/*; \
    fi; \
    rm /tmp/setup-host.sh; \
    groupadd --system --gid 10001 netboot; \
    useradd --system --uid 10001 --gid netboot --home-dir /var/lib/netboot --no-create-home --shell /usr/sbin/nologin netboot; \
    install -d -o netboot -g netboot -m 0700 /var/lib/netboot; \
    install -d -o netboot -g netboot -m 0755 /var/cache/netboot; \
    install -d -m 0755 /etc/netboot; \
    setcap cap_net_bind_service=+ep "$(readlink -f "$(command -v node)")"
# /opt/netboot, the iPXE build in /usr/local/share/netboot, the initramfs tools in /tmp/netboot-native.
COPY --from=build /out/ /
RUN setcap cap_net_raw=+ep /opt/netboot/build/Release/netboot-ra-io
USER netboot
WORKDIR /var/lib/netboot
VOLUME ["/var/lib/netboot", "/var/cache/netboot"]
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "/opt/netboot/deploy/healthcheck.mjs", "/etc/netboot/netboot.yaml"]
ENTRYPOINT ["/opt/netboot/bin/netboot"]
CMD ["serve", "--config", "/etc/netboot/netboot.yaml"]
