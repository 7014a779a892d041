# Helpers for /init (sourced, busybox sh): logging, failure, event reporting, downloads.

NETBOOT_RUN=/run/netboot          # handed over to the booted system (moved with /run)
EVENTS_DIR=$NETBOOT_RUN/events    # queued event bodies, posted in order by one background pump
NETBOOT_RW=/netboot/rw            # tmpfs: layer/, upper/, work/
NETBOOT_IMAGE=/netboot/image      # tmpfs sized to the squashfs (ram mode)
NETBOOT_LOWER=/netboot/lower      # the squashfs, mounted read-only
EVENTS_URL=
EVENTS_PID=
EVENT_TOKEN=                      # netboot.token: this boot's event token, sent as a bearer token
EVENT_SEQ=0
DOWNLOAD_ERROR=
CHECK_ERROR=
REMOTE_SIZE=

uptime_s() {
	local t rest
	read -r t rest </proc/uptime 2>/dev/null || t=0
	echo "$t"
}

log() {
	echo "[$(uptime_s)] netboot: $*"
}

# aa-BB-cc-dd-ee-ff, AA:BB:..., aabbccddeeff -> aa:bb:cc:dd:ee:ff
normalize_mac() {
	local mac
	mac=$(echo "$1" | tr 'A-F-' 'a-f:')
	case "$mac" in
		????????????) mac=$(echo "$mac" | sed 's/\(..\)/\1:/g; s/:$//') ;;
	esac
	echo "$mac"
}

mac_hyphens() {
	echo "$1" | tr ':' '-'
}

loaded_modules() {
	cut -d ' ' -f 1 /proc/modules 2>/dev/null | sort
}

file_size() {
	stat -c %s "$1" 2>/dev/null || echo 0
}

# A signed URL (the layer's) is a secret of this boot: printed and reported without its query.
mask_url() {
	case "$1" in
		*[?\&]sig=*) echo "${1%%\?*}?(signature hidden)" ;;
		*) echo "$1" ;;
	esac
}

# Any sig=VALUE in a text (an error message quoting a URL) loses its value.
redact_sig() {
	printf '%s' "$1" | sed 's/\([?&]sig=\)[^&[:space:]"]*/\1(hidden)/g'
}

json_string() {
	# Escape backslash and quote, drop control characters.
	printf '%s' "$1" | tr -d '\000-\037' | sed 's/\\/\\\\/g; s/"/\\"/g'
}

# Queues an event (phase, detail, optional byte count); the pump posts queued events in order once the network is up.
event() {
	local phase=$1 detail=$2 bytes=
	[ -d "$EVENTS_DIR" ] || return 0
	case "$3" in '' | *[!0-9]*) ;; *) bytes=",\"bytes\":$3" ;; esac
	EVENT_SEQ=$((EVENT_SEQ + 1))
	printf '{"phase":"%s","t":%s,"detail":"%s"%s}' "$phase" "$(uptime_s)" "$(json_string "$(redact_sig "$detail")")" "$bytes" \
		>"$EVENTS_DIR/.tmp"
	mv "$EVENTS_DIR/.tmp" "$EVENTS_DIR/$(printf '%04d' "$EVENT_SEQ").json"
}

# One POST at a time, each bounded by a short timeout, so a slow or absent server
# never stalls the boot and events arrive in the order they happened.
events_pump() {
	local f
	while :; do
		for f in "$EVENTS_DIR"/*.json; do
			[ -e "$f" ] || break
			timeout 3 wget -q -Y off -O /dev/null --header 'Content-Type: application/json' \
				${EVENT_TOKEN:+--header "Authorization: Bearer $EVENT_TOKEN"} \
				--post-file "$f" "$EVENTS_URL" >/dev/null 2>&1
			rm -f "$f"
		done
		if [ -e "$EVENTS_DIR/stop" ]; then
			set -- "$EVENTS_DIR"/*.json
			[ -e "$1" ] || exit 0
		fi
		sleep 0.2
	done
}

events_start() {
	[ -n "$EVENTS_PID" ] && return 0
	[ -n "$SERVER" ] && [ -n "$MAC" ] || return 0
	EVENTS_URL="$SERVER/api/machines/$(mac_hyphens "$MAC")/events"
	rm -f "$EVENTS_DIR/stop"
	events_pump </dev/null &
	EVENTS_PID=$!
}

# Lets the pump post what is queued, waiting at most $1 seconds.
events_stop() {
	local waited=0
	[ -n "$EVENTS_PID" ] || return 0
	touch "$EVENTS_DIR/stop"
	while kill -0 "$EVENTS_PID" 2>/dev/null && [ "$waited" -lt $(($1 * 5)) ]; do
		sleep 0.2
		waited=$((waited + 1))
	done
	kill "$EVENTS_PID" 2>/dev/null
	wait "$EVENTS_PID" 2>/dev/null
	EVENTS_PID=
}

# The one failure path: a single clear line, `failed` to the server, then a shell or a reboot.
fail() {
	local step=$1 what why
	what=$(redact_sig "$2")
	why=$(redact_sig "$3")
	echo "netboot: FAILED at $step: $what: $why"
	event failed "$step: $what: $why"
	if [ -n "$EVENTS_PID" ]; then
		events_stop 5
	elif [ -n "$EVENTS_URL" ]; then
		events_start
		events_stop 5
	fi
	if [ -n "$DEBUG" ]; then
		echo "netboot: netboot.debug: starting a shell on the console; exit it to reboot"
		setsid cttyhack sh -l
	else
		echo "netboot: rebooting in ${REBOOT_DELAY:-30} s (add netboot.debug to the kernel command line for a shell instead)"
		sleep "${REBOOT_DELAY:-30}"
	fi
	echo "netboot: rebooting"
	reboot -f
	# PID 1 must never exit: the kernel would panic.
	while :; do sleep 3600; done
}

# Sets REMOTE_SIZE to the Content-Length of $1, or DOWNLOAD_ERROR and returns 1.
remote_size() {
	local url=$1 out attempt
	for attempt in 1 2 3; do
		out=$(timeout 15 wget -Y off -S --spider "$url" 2>&1)
		REMOTE_SIZE=$(echo "$out" | sed -n 's/^ *[Cc]ontent-[Ll]ength: *\([0-9]*\).*/\1/p' | tail -n 1)
		[ -n "$REMOTE_SIZE" ] && return 0
		DOWNLOAD_ERROR=$(echo "$out" | grep -v '^ \|^Connecting' | tail -n 1)
		[ -n "$DOWNLOAD_ERROR" ] || DOWNLOAD_ERROR="no Content-Length in the response"
		case "$DOWNLOAD_ERROR" in *" 4"[0-9][0-9]*) return 1 ;; esac  # a 4xx will not change on retry
		log "HEAD $(mask_url "$url"): $DOWNLOAD_ERROR (attempt $attempt/3)"
		sleep "$attempt"
	done
	return 1
}

# Downloads $1 to $2 with retries that resume (Range) where the last attempt stopped.
# With $3, the file must end up exactly that many bytes.
download() {
	local url=$1 file=$2 size=$3 attempt have
	DOWNLOAD_ERROR=
	for attempt in 1 2 3 4 5; do
		have=$(file_size "$file")
		if [ -n "$size" ] && [ "$have" -gt "$size" ]; then
			rm -f "$file"
			have=0
		fi
		if [ -n "$size" ] && [ "$have" = "$size" ]; then
			return 0
		fi
		if wget -q -Y off -c -O "$file" "$url" 2>"$NETBOOT_RUN/wget.err"; then
			have=$(file_size "$file")
			[ -z "$size" ] || [ "$have" = "$size" ] && return 0
			DOWNLOAD_ERROR="size mismatch: got $have of $size bytes"
		else
			DOWNLOAD_ERROR=$(tail -n 1 "$NETBOOT_RUN/wget.err")
			[ -n "$DOWNLOAD_ERROR" ] || DOWNLOAD_ERROR="download failed"
			case "$DOWNLOAD_ERROR" in *" 4"[0-9][0-9]*) return 1 ;; esac
		fi
		log "download $(mask_url "$url"): $DOWNLOAD_ERROR (attempt $attempt/5, have $(file_size "$file") bytes; resuming)"
		sleep "$attempt"
	done
	return 1
}

# The superblock says how many bytes the filesystem uses: a short file is truncated.
check_squashfs() {
	local file=$1 magic used have
	magic=$(dd if="$file" bs=4 count=1 2>/dev/null)
	if [ "$magic" != hsqs ]; then
		CHECK_ERROR="not a squashfs image (no hsqs magic)"
		return 1
	fi
	used=$(od -A n -t u8 -j 40 -N 8 "$file" | tr -d ' ')
	have=$(file_size "$file")
	if [ -z "$used" ] || [ "$used" -gt "$have" ]; then
		CHECK_ERROR="truncated squashfs: superblock says $used bytes, file has $have"
		return 1
	fi
	return 0
}

# The image's manifest.json (once per boot): small, immutable per id, never queued behind root
# streams, and it lists each artifact's size and sha256.
fetch_manifest() {
	MANIFEST_URL="${ARTIFACTS:-$SERVER}/images/$IMAGE/manifest.json"
	[ -s "$NETBOOT_RUN/manifest.json" ] && return 0
	download "$MANIFEST_URL" "$NETBOOT_RUN/manifest.json"
}

# Prints field $1 (size or sha256) of rootfs.squashfs from the fetched manifest.
manifest_rootfs() {
	tr -d ' \n\t\r' <"$NETBOOT_RUN/manifest.json" |
		sed -n "s/.*\"rootfs\\.squashfs\":{[^}]*\"$1\":\"\\{0,1\\}\\([0-9a-f]*\\).*/\\1/p"
}

# REMOTE_SIZE of the image's rootfs.squashfs from its manifest. A size probe by GET would be a
# whole root stream, which a busy server answers with 503 (and busybox wget shows no headers then).
rootfs_size() {
	if ! fetch_manifest; then
		DOWNLOAD_ERROR="cannot fetch $MANIFEST_URL: $DOWNLOAD_ERROR"
		return 1
	fi
	REMOTE_SIZE=$(manifest_rootfs size)
	case "$REMOTE_SIZE" in
		'' | *[!0-9]*) DOWNLOAD_ERROR="$MANIFEST_URL lists no size for rootfs.squashfs"; return 1 ;;
	esac
}

# netboot.verify=<sha256>, or netboot.verify alone: the sha256 listed for rootfs.squashfs
# in the image's manifest.json.
verify_sha256() {
	local url=$1 file=$2 expected actual
	case "$VERIFY" in
		[0-9a-f]*) expected=$VERIFY ;;
		*)
			if ! fetch_manifest; then
				CHECK_ERROR="cannot fetch $MANIFEST_URL for netboot.verify: $DOWNLOAD_ERROR"
				return 1
			fi
			expected=$(manifest_rootfs sha256)
			if [ "${#expected}" != 64 ]; then
				CHECK_ERROR="$MANIFEST_URL lists no sha256 for rootfs.squashfs"
				return 1
			fi
			;;
	esac
	log "verifying sha256 of $file"
	actual=$(sha256sum "$file" | cut -d ' ' -f 1)
	if [ "$actual" != "$expected" ]; then
		CHECK_ERROR="sha256 mismatch: expected $expected, got $actual"
		return 1
	fi
	log "sha256 ok ($actual)"
}
