# The machine's local disk for /init (sourced, busybox sh): a cache of image roots and the
# directories kept across boots (config `disk:`, README "Machines with a disk").
#
# netboot only ever touches a filesystem labelled $DISK_LABEL. It writes a partition table
# and a filesystem only on a disk that is empty (no partition, first and last MiB all zero)
# and only with netboot.disk.init; any other disk is left alone and the machine boots diskless.
#
# Kernel command line: netboot.disk=LABEL netboot.disk.cache=MiB netboot.disk.keep=/a,/b
# netboot.disk.device=/dev/X netboot.disk.init

DISK_LABEL=
DISK_CACHE_MIB=
DISK_KEEP=
DISK_DEVICE=
DISK_INIT=
DISK_READY=
DISK_MNT=$NETBOOT_RUN/disk        # moved into the booted system with /run
DISK_PART=
ROOTFS_FILE=
ROOTFS_DEVICE=                    # the cached root mapped through dm-verity, already mounted
DISK_MARKER=                      # images/<id>.booting: removed by report-up once the boot is up
VERITY_NAME=netboot-root

disk_parse_arg() {
	case "$1" in
		netboot.disk=*) DISK_LABEL="${1#*=}" ;;
		netboot.disk.cache=*) DISK_CACHE_MIB="${1#*=}" ;;
		netboot.disk.keep=*) DISK_KEEP="${1#*=}" ;;
		netboot.disk.device=*) DISK_DEVICE="${1#*=}" ;;
		netboot.disk.init | netboot.disk.init=1 | netboot.disk.init=y*) DISK_INIT=1 ;;
		*) return 1 ;;
	esac
}

disk_check_args() {
	case "$DISK_LABEL" in *[!A-Za-z0-9_-]*) log "disk: ignoring netboot.disk=$DISK_LABEL (label: letters, digits, _ and -)"; DISK_LABEL= ;; esac
	case "$DISK_CACHE_MIB" in *[!0-9]*) DISK_CACHE_MIB= ;; esac
	case "$DISK_DEVICE" in '' | /dev/[a-z]*) ;; *) DISK_DEVICE= ;; esac
	case "$DISK_DEVICE" in *..* | *[!a-z0-9/]*) DISK_DEVICE= ;; esac
	return 0
}

# A line on the console and an event; the machine goes on without its disk.
disk_skip() {
	log "disk: $2; booting diskless"
	event disk "$1: $2"
}

# Whole disks (not partitions, loops, RAM disks, NBD or optical drives), by name: vda sda nvme0n1 ...
disk_candidates() {
	local dev name
	for dev in /sys/block/*; do
		name=${dev##*/}
		case "$name" in vd* | sd* | hd* | xvd* | nvme*n* | mmcblk[0-9]*) ;; *) continue ;; esac
		[ "$(cat "$dev/size" 2>/dev/null)" -gt 0 ] 2>/dev/null || continue
		echo "$name"
	done
}

# Disks appear while their drivers probe: wait a little for one (or for the configured one).
disk_wait_for_devices() {
	local tries
	for tries in $(seq 1 25); do
		if [ -n "$DISK_DEVICE" ]; then
			[ -b "$DISK_DEVICE" ] && return 0
		else
			[ -n "$(disk_candidates)" ] && return 0
		fi
		sleep 0.2
	done
	return 1
}

disk_partition_name() {
	case "$1" in
		*[0-9]) echo "${1}p$2" ;;
		*) echo "$1$2" ;;
	esac
}

# True when /dev/$1 has no partition and its first and last MiB are zeros: nothing (no
# partition table, GPT backup, filesystem, RAID or LVM signature) that anyone put there.
disk_is_empty() {
	local name=$1 sectors part
	for part in /sys/block/"$name"/"$name"*; do
		[ -e "$part" ] && return 1
	done
	sectors=$(cat "/sys/block/$name/size")
	[ "$sectors" -ge 4096 ] || return 1
	cmp -s -n 1048576 "/dev/$name" /dev/zero || return 1
	dd if="/dev/$name" bs=512 skip=$((sectors - 2048)) count=2048 2>/dev/null | cmp -s -n 1048576 - /dev/zero
}

# One primary partition over the whole disk (from 1 MiB), an ext2 filesystem with our label.
disk_prepare() {
	local name=$1 part tries
	log "disk: preparing empty /dev/$name (disk.init): one partition, ext2 labelled $DISK_LABEL"
	# busybox fdisk exits 1 when the kernel did not re-read the table; the partition check below decides.
	printf 'o\nn\np\n1\n2048\n\nw\n' | fdisk "/dev/$name" >"$NETBOOT_RUN/fdisk.log" 2>&1
	partprobe "/dev/$name" 2>/dev/null
	part=$(disk_partition_name "$name" 1)
	for tries in $(seq 1 25); do
		[ -b "/dev/$part" ] && break
		sleep 0.2
	done
	if [ ! -b "/dev/$part" ]; then
		DISK_ERROR="no /dev/$part after partitioning: $(tail -n 1 "$NETBOOT_RUN/fdisk.log")"
		return 1
	fi
	if ! mke2fs -b 4096 -m 0 -L "$DISK_LABEL" "/dev/$part" >"$NETBOOT_RUN/mke2fs.log" 2>&1; then
		DISK_ERROR="mke2fs /dev/$part: $(tail -n 1 "$NETBOOT_RUN/mke2fs.log")"
		return 1
	fi
	DISK_PART=/dev/$part
	event disk "prepared: /dev/$name, partition $DISK_PART, ext2 labelled $DISK_LABEL"
}

# Finds this machine's netboot filesystem (or prepares an empty disk) and mounts it at DISK_MNT.
disk_setup() {
	[ -n "$DISK_LABEL" ] || return 0
	STEP=disk
	local name part
	# ext4 asks the crypto API for crc32c at mount time; without it, mount says ENOENT.
	modprobe -q -a crc32c_intel crc32c_generic ext4 2>/dev/null
	if ! disk_wait_for_devices; then
		disk_skip no_disk "no ${DISK_DEVICE:-disk} found (block devices: $(echo $(ls /sys/block)))"
		return 0
	fi
	part=$(findfs "LABEL=$DISK_LABEL" 2>/dev/null)
	if [ -n "$part" ] && [ -n "$DISK_DEVICE" ]; then
		case "$part" in "$DISK_DEVICE"*) ;; *) part= ;; esac
	fi
	if [ -n "$part" ]; then
		DISK_PART=$part
	else
		if [ -n "$DISK_DEVICE" ]; then name=${DISK_DEVICE#/dev/}; else name=$(disk_candidates | head -n 1); fi
		if ! disk_is_empty "$name"; then
			disk_skip untouched "/dev/$name holds data netboot does not recognise (no filesystem labelled $DISK_LABEL): left untouched"
			return 0
		fi
		if [ -z "$DISK_INIT" ]; then
			disk_skip not_prepared "/dev/$name is empty; netboot prepares it only when this machine's config says disk.init: true"
			return 0
		fi
		DISK_ERROR=
		if ! disk_prepare "$name"; then
			disk_skip prepare_failed "cannot prepare /dev/$name: $DISK_ERROR"
			return 0
		fi
	fi
	mkdir -p "$DISK_MNT"
	chmod 0700 "$DISK_MNT"
	if ! mount -t ext4 -o noatime "$DISK_PART" "$DISK_MNT" 2>"$NETBOOT_RUN/mount.err" &&
		! mount -o noatime "$DISK_PART" "$DISK_MNT" 2>>"$NETBOOT_RUN/mount.err"; then
		disk_skip mount_failed "cannot mount $DISK_PART: $(head -n 1 "$NETBOOT_RUN/mount.err")"
		return 0
	fi
	DISK_READY=1
	log "disk: $DISK_PART (label $DISK_LABEL) mounted, $(df -k "$DISK_MNT" | awk 'NR == 2 { print int($4 / 1024) }') MiB free"
}

# Sum of the sizes of the cached files other than image $1's.
disk_cache_others() {
	local f total=0
	for f in "$DISK_MNT"/images/*; do
		[ -f "$f" ] || continue
		case "${f##*/}" in "$1".*) continue ;; esac
		total=$((total + $(file_size "$f")))
	done
	echo "$total"
}

# Removes other images' copies, least recently used first, until $2 more bytes for image $1
# fit both the budget and the free space. PRUNED lists what went.
disk_make_room() {
	local id=$1 need=$2 budget=$((DISK_CACHE_MIB * 1048576)) free victim
	PRUNED=
	[ "$need" -le "$budget" ] || { DISK_ERROR="the image ($((need / 1048576)) MiB) is larger than the cache budget ($DISK_CACHE_MIB MiB)"; return 1; }
	while :; do
		free=$(df -k "$DISK_MNT" | awk 'NR == 2 { print $4 * 1024 }')
		if [ $(($(disk_cache_others "$id") + need)) -le "$budget" ] && [ "$free" -ge $((need - $(file_size "$DISK_MNT/images/$id.part") + 16777216)) ]; then
			return 0
		fi
		# An image's files (copy, .part, .verity tree, .booting marker) go together; a hit touches them all.
		victim=$(ls -1tr "$DISK_MNT/images" | grep -v "^$id\." | head -n 1)
		victim=${victim%%.*}
		if [ -z "$victim" ]; then
			DISK_ERROR="only $((free / 1048576)) MiB free on $DISK_PART for $((need / 1048576)) MiB"
			return 1
		fi
		rm -f "$DISK_MNT/images/$victim".*
		PRUNED="$PRUNED $victim"
		log "disk cache: pruned $victim"
	done
}

disk_sha256() {
	sha256sum "$1" | cut -d ' ' -f 1
}

# Field $1 of the manifest's dm-verity entry for rootfs.squashfs (dataBlocks, blockSize, salt, rootHash).
manifest_verity() {
	tr -d ' \n\t\r' <"$NETBOOT_RUN/manifest.json" |
		sed -n "s/.*\"verity\":{[^}]*\"$1\":\"\\{0,1\\}\\([0-9a-f]*\\).*/\\1/p"
}

# True when the cached root of $1 bytes can be read through dm-verity: the manifest lists its
# hash tree, this initramfs has netboot-verity (the host's architecture) and the kernel has
# dm-verity. Sets VERITY_BLOCKS, VERITY_ROOT and VERITY_SALT.
disk_verity_ready() {
	command -v netboot-verity >/dev/null || return 1
	VERITY_BLOCKS=$(manifest_verity dataBlocks)
	VERITY_ROOT=$(manifest_verity rootHash)
	VERITY_SALT=$(manifest_verity salt)
	[ "$(manifest_verity blockSize)" = 4096 ] && [ "${#VERITY_ROOT}" = 64 ] || return 1
	case "$VERITY_BLOCKS" in '' | *[!0-9]*) return 1 ;; esac
	[ $((VERITY_BLOCKS * 4096)) = "$1" ] || return 1
	# The CPU's sha256 first: dm-verity takes the best one registered when the table loads.
	modprobe -q sha256_ssse3 2>/dev/null
	modprobe -q sha2_ce 2>/dev/null
	modprobe -q dm_verity 2>/dev/null
	[ -e /sys/module/dm_verity ]
}

# The image's hash tree (rootfs.verity, about 1/128 of the root) next to its cached copy,
# checked against the manifest's sha256 for it.
disk_fetch_tree() {
	local tree=$1 url="$ARTIFACTS/images/$IMAGE/rootfs.verity" expected
	expected=$(tr -d ' \n\t\r' <"$NETBOOT_RUN/manifest.json" | sed -n 's/.*"rootfs\.verity":{[^}]*"sha256":"\([0-9a-f]*\)".*/\1/p')
	[ "${#expected}" = 64 ] || return 1
	download "$url" "$tree.part" || { log "disk cache: cannot fetch $url: $DOWNLOAD_ERROR"; rm -f "$tree.part"; return 1; }
	if [ "$(disk_sha256 "$tree.part")" != "$expected" ]; then
		log "disk cache: $url does not match its sha256"
		rm -f "$tree.part"
		return 1
	fi
	mv "$tree.part" "$tree"
}

# Maps $1 through dm-verity with tree $2 and mounts it read-only at NETBOOT_LOWER. Mounting
# reads the squashfs's superblock and tables, so a corrupt one fails here (DISK_ERROR says why).
disk_mount_verity() {
	local dev
	if ! dev=$(netboot-verity open "$VERITY_NAME" "$1" "$2" "$VERITY_BLOCKS" "$VERITY_ROOT" "${VERITY_SALT:--}" 2>"$NETBOOT_RUN/verity.err"); then
		DISK_ERROR=$(head -n 1 "$NETBOOT_RUN/verity.err")
		return 1
	fi
	mkdir -p "$NETBOOT_LOWER"
	if mount -t squashfs -o ro "$dev" "$NETBOOT_LOWER" 2>"$NETBOOT_RUN/mount.err"; then
		ROOTFS_DEVICE=$dev
		return 0
	fi
	DISK_ERROR="$(head -n 1 "$NETBOOT_RUN/mount.err"); dm-verity: $(netboot-verity status "$VERITY_NAME" 2>&1)"
	netboot-verity remove "$VERITY_NAME" 2>/dev/null
	return 1
}

# The root from the cache, checked one of two ways:
# - dm-verity (the manifest lists a tree and this boot can map it): nothing is read up front;
#   the kernel checks every block against the root hash as it is read, for as long as the
#   system runs. A corrupt superblock or table fails the mount here; a block read later
#   reads as an I/O error, and report-up then leaves the marker so the next boot checks all.
# - sha256 of the whole copy: without dm-verity, or when the last boot from this copy did not
#   come up (its marker images/<id>.booting is still there).
disk_use_cached() {
	local file=$1 tree=$2 size=$3 expected=$4 how
	if [ -n "$VERITY" ] && [ ! -e "$DISK_MARKER" ] && { [ -s "$tree" ] || disk_fetch_tree "$tree"; }; then
		log "disk cache: $IMAGE through dm-verity: each block is checked against the manifest's root hash when read"
		if ! disk_mount_verity "$file" "$tree"; then
			CORRUPT="failed its dm-verity check ($DISK_ERROR)"
			return 1
		fi
		how="dm-verity: each block checked when read"
	else
		if [ -e "$DISK_MARKER" ]; then
			log "disk cache: the last boot from $IMAGE did not come up: checking all of it ($((size / 1048576)) MiB, sha256)"
		else
			log "disk cache: checking $IMAGE ($((size / 1048576)) MiB, sha256)"
		fi
		if [ "$(disk_sha256 "$file")" != "$expected" ]; then
			CORRUPT="failed its sha256 check"
			return 1
		fi
		how="sha256 of the whole copy checked"
		# Verified in full: from here on dm-verity (when there is a tree) checks each read too.
		[ -n "$VERITY" ] && { [ -s "$tree" ] || disk_fetch_tree "$tree"; } && disk_mount_verity "$file" "$tree"
	fi
	log "disk cache: hit for $IMAGE: $size bytes from disk, none over the network ($how)"
	event disk "cache_hit: $IMAGE, $size bytes read from disk instead of the network ($how)" "$size"
	return 0
}

# The image's root from the disk cache: a verified copy is used as is (no root bytes over the
# network); a missing or corrupt one is downloaded once into the cache (resuming a cut
# download from its .part). Sets ROOTFS_FILE (and ROOTFS_DEVICE when already mounted through
# dm-verity); returns 1 when the cache cannot be used.
disk_cached_rootfs() {
	[ -n "$DISK_READY" ] && [ -n "$DISK_CACHE_MIB" ] && [ -n "$IMAGE" ] || return 1
	STEP=rootfs
	local dir="$DISK_MNT/images" size expected file tree part url actual attempt
	rootfs_size || fail rootfs "$MANIFEST_URL" "$DOWNLOAD_ERROR"
	size=$REMOTE_SIZE
	expected=$(manifest_rootfs sha256)
	if [ "${#expected}" != 64 ]; then
		disk_skip no_hash "$MANIFEST_URL lists no sha256 for rootfs.squashfs, so a cached copy could not be checked: not caching"
		return 1
	fi
	file="$dir/$IMAGE.squashfs"
	tree="$dir/$IMAGE.verity"
	part="$dir/$IMAGE.part"
	DISK_MARKER="$dir/$IMAGE.booting"
	VERITY=
	disk_verity_ready "$size" && VERITY=1
	mkdir -p "$dir"
	if [ -e "$file" ]; then
		CORRUPT="has $(file_size "$file") bytes instead of $size"
		if [ "$(file_size "$file")" = "$size" ] && disk_use_cached "$file" "$tree" "$size" "$expected"; then
			touch "$file"
			[ -e "$tree" ] && touch "$tree"
			: >"$DISK_MARKER"
			ROOTFS_FILE=$file
			return 0
		fi
		log "disk cache: the cached copy of $IMAGE $CORRUPT: downloading it again"
		event disk "cache_corrupt: $IMAGE $CORRUPT, downloading again"
		rm -f "$file" "$tree" "$DISK_MARKER"
	fi
	DISK_ERROR=
	if ! disk_make_room "$IMAGE" "$size"; then
		disk_skip no_space "cannot cache $IMAGE: $DISK_ERROR"
		return 1
	fi
	url="$ARTIFACTS/images/$IMAGE/rootfs.squashfs"
	[ "$ARTIFACTS" = "$SERVER" ] && url="$url?mac=$(mac_hyphens "$MAC")"
	for attempt in 1 2; do
		[ -s "$part" ] && log "disk cache: resuming $IMAGE at $(file_size "$part") of $size bytes"
		log "disk cache: downloading $url ($((size / 1048576)) MiB) to $DISK_PART"
		download_rootfs "$url" "$part" "$size" || fail rootfs "$url" "$DOWNLOAD_ERROR"
		actual=$(disk_sha256 "$part")
		[ "$actual" = "$expected" ] && break
		log "disk cache: downloaded $IMAGE does not match its sha256 ($actual): starting over"
		rm -f "$part"
		[ "$attempt" = 2 ] && fail rootfs "$url" "sha256 mismatch twice: expected $expected, got $actual"
	done
	mv "$part" "$file"
	[ -n "$VERITY" ] && disk_fetch_tree "$tree" && disk_mount_verity "$file" "$tree"
	: >"$DISK_MARKER"
	sync
	ROOTFS_FILE=$file
	event disk "cache_miss: $IMAGE, $size bytes downloaded and kept on $DISK_PART${PRUNED:+; pruned$PRUNED}" "$size"
	return 0
}

# True when no component of /newroot$1 is a symlink: a bind mount must land inside the new root.
disk_path_inside_root() {
	local path=/newroot rest=${1#/} part
	while [ -n "$rest" ]; do
		part=${rest%%/*}
		[ "$part" = "$rest" ] && rest= || rest=${rest#*/}
		path="$path/$part"
		[ -L "$path" ] && return 1
	done
	return 0
}

# Kept directories: each one lives at DISK_MNT/keep/<path> and is bind-mounted over the image's.
# The first boot seeds it from the image and top layer; later boots find what was left there.
disk_keep_dirs() {
	[ -n "$DISK_READY" ] && [ -n "$DISK_KEEP" ] || return 0
	local dir src kept=
	for dir in $(echo "$DISK_KEEP" | tr ',' ' '); do
		case "$dir" in /?* ) ;; *) log "disk: not keeping '$dir' (not an absolute path)"; continue ;; esac
		case "$dir" in */../* | */.. | */./* | */.) log "disk: not keeping $dir (. or .. in the path)"; continue ;; esac
		if ! disk_path_inside_root "$dir"; then
			log "disk: not keeping $dir (a symlink in the image's path)"
			continue
		fi
		src="$DISK_MNT/keep$dir"
		if [ ! -d "$src" ]; then
			mkdir -p "$src"
			[ -d "/newroot$dir" ] && cp -a "/newroot$dir/." "$src/"
		fi
		mkdir -p "/newroot$dir"
		if mount --bind "$src" "/newroot$dir" 2>"$NETBOOT_RUN/mount.err"; then
			kept="$kept $dir"
		else
			log "disk: cannot keep $dir: $(head -n 1 "$NETBOOT_RUN/mount.err")"
		fi
	done
	log "disk: kept across boots:${kept:- nothing}"
	event disk "keep:${kept:- nothing}"
}
