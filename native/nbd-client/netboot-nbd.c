/*
 * netboot-nbd: the initramfs's NBD client. Connects one read-only export to /dev/nbdN through
 * the kernel's netlink interface with a dead-connection timeout, then stays in the background:
 * when the kernel reports the link dead (the server restarted, the network blinked), it
 * reconnects and hands the kernel the new socket (NBD_CMD_RECONFIGURE). Meanwhile the kernel
 * queues I/O instead of failing it, so a server restart does not kill the machine.
 * (Debian 12's nbd-client 3.24 reconnects only in ioctl mode, where reads in the gap get EIO.)
 *
 *   netboot-nbd HOST PORT EXPORT INDEX [REQUEST_TIMEOUT_S [DEAD_CONN_TIMEOUT_S]]
 *   netboot-nbd --check HOST PORT EXPORT     (handshake only: prints the export's size and flags)
 *
 * Exit status 0 once /dev/nbd<INDEX> is connected (the daemon keeps running), 1 on failure with
 * a one-line reason on stderr. The daemon logs to /dev/kmsg and marks itself with '@' in
 * argv[0] so systemd leaves it running at shutdown (the root filesystem depends on it).
 * Built statically by the server (server/initramfs/nbd-client.ts); no library beyond libc.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/genetlink.h>
#include <linux/nbd-netlink.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define NBDMAGIC 0x4e42444d41474943ULL
#define IHAVEOPT 0x49484156454f5054ULL
#define REPLY_MAGIC 0x3e889045565a9ULL
#define NBD_FLAG_FIXED_NEWSTYLE 1
#define NBD_FLAG_NO_ZEROES 2
#define NBD_OPT_GO 7
#define NBD_REP_ACK 1
#define NBD_REP_INFO 3
#define NBD_INFO_EXPORT 0
#define NBD_FLAG_READ_ONLY 2

static int kmsg = -1;
static int daemonized = 0;

/* One message: on stderr before the daemon starts, then as one record in the kernel log
 * (which reaches the console), or on the console itself when /dev/kmsg cannot be opened. */
static void say(int level, const char *fmt, ...) {
	char msg[400], record[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	if (!daemonized || kmsg < 0) {
		fprintf(stderr, "netboot-nbd: %s\n", msg);
		return;
	}
	int n = snprintf(record, sizeof record, "<%d>netboot-nbd: %s\n", level, msg);
	if (n > 0 && write(kmsg, record, (size_t)n < sizeof record ? (size_t)n : sizeof record - 1) < 0) {
		/* nowhere left to report to */
	}
}

/* ---- the NBD handshake (fixed newstyle, NBD_OPT_GO) ---- */

static int read_full(int fd, void *buf, size_t len) {
	uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = read(fd, p, len);
		if (n == 0) { errno = ECONNRESET; return -1; }
		if (n < 0) { if (errno == EINTR) continue; return -1; }
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len) {
	const uint8_t *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0) { if (errno == EINTR) continue; return -1; }
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

struct export_info {
	uint64_t size;
	uint16_t flags;
};

/* Seconds the handshake may wait for the server: NETBOOT_NBD_HANDSHAKE_TIMEOUT_S (tests), else 30. */
static unsigned handshake_timeout_s(void) {
	const char *env = getenv("NETBOOT_NBD_HANDSHAKE_TIMEOUT_S");
	char *end;
	unsigned long s = env ? strtoul(env, &end, 10) : 0;
	return env && *end == '\0' && s > 0 && s <= 3600 ? (unsigned)s : 30;
}

/* Connects and negotiates; returns the socket in transmission phase, or -1 with *why set. */
static int nbd_connect(const char *host, const char *port, const char *name, struct export_info *info, const char **why) {
	static char reason[256];
	*why = reason;
	/* Numeric addresses only: a static binary cannot use glibc's resolver modules, and the
	 * server's address on the kernel command line is always an IP. */
	struct sockaddr_storage addr = { 0 };
	socklen_t addr_len;
	char *end;
	unsigned long port_number = strtoul(port, &end, 10);
	if (*end != '\0' || port_number == 0 || port_number > 65535) { snprintf(reason, sizeof reason, "bad port '%s'", port); return -1; }
	struct sockaddr_in *v4 = (struct sockaddr_in *)&addr;
	struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&addr;
	if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
		v4->sin_family = AF_INET;
		v4->sin_port = htons((uint16_t)port_number);
		addr_len = sizeof *v4;
	} else if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
		v6->sin6_family = AF_INET6;
		v6->sin6_port = htons((uint16_t)port_number);
		addr_len = sizeof *v6;
	} else {
		snprintf(reason, sizeof reason, "'%s' is not an IP address", host);
		return -1;
	}
	int fd = socket(addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) { snprintf(reason, sizeof reason, "socket: %s", strerror(errno)); return -1; }
	if (connect(fd, (struct sockaddr *)&addr, addr_len) < 0) {
		snprintf(reason, sizeof reason, "connect %s:%s: %s", host, port, strerror(errno));
		close(fd);
		return -1;
	}
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
	/* Without keepalive a server that vanished (no FIN) is only noticed by the request timeout. */
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof one);
	/* A server that accepted and never speaks (overloaded, or our connection was lost from its full
	 * accept queue after our side saw it established) would otherwise hold the boot for good: the
	 * server speaks first, so nothing we send would find out. Cleared before the kernel gets the socket. */
	unsigned handshake_s = handshake_timeout_s();
	struct timeval limit = { .tv_sec = handshake_s, .tv_usec = 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &limit, sizeof limit);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);

	struct { uint64_t magic, opt; uint16_t flags; } __attribute__((packed)) hello;
	if (read_full(fd, &hello, sizeof hello) < 0) goto io_error;
	if (be64toh(hello.magic) != NBDMAGIC || be64toh(hello.opt) != IHAVEOPT) {
		snprintf(reason, sizeof reason, "not an NBD newstyle server");
		goto fail;
	}
	uint16_t server_flags = be16toh(hello.flags);
	if (!(server_flags & NBD_FLAG_FIXED_NEWSTYLE)) { snprintf(reason, sizeof reason, "server lacks fixed newstyle"); goto fail; }
	uint32_t client_flags = htobe32(NBD_FLAG_FIXED_NEWSTYLE | (server_flags & NBD_FLAG_NO_ZEROES));
	if (write_full(fd, &client_flags, 4) < 0) goto io_error;

	size_t name_len = strlen(name);
	struct { uint64_t magic; uint32_t opt, len, name_len; } __attribute__((packed)) go = {
		htobe64(IHAVEOPT), htobe32(NBD_OPT_GO), htobe32((uint32_t)(4 + name_len + 2)), htobe32((uint32_t)name_len),
	};
	uint16_t no_info_requests = 0;
	if (write_full(fd, &go, sizeof go) < 0 || write_full(fd, name, name_len) < 0 || write_full(fd, &no_info_requests, 2) < 0) goto io_error;

	int have_export = 0;
	for (;;) {
		struct { uint64_t magic; uint32_t opt, type, len; } __attribute__((packed)) rep;
		if (read_full(fd, &rep, sizeof rep) < 0) goto io_error;
		uint32_t type = be32toh(rep.type), len = be32toh(rep.len);
		if (be64toh(rep.magic) != REPLY_MAGIC || len > 65536) { snprintf(reason, sizeof reason, "malformed option reply"); goto fail; }
		uint8_t data[65536];
		if (read_full(fd, data, len) < 0) goto io_error;
		if (type & 0x80000000u) {
			snprintf(reason, sizeof reason, "export '%s' refused (error %u%s%.*s)", name, type & 0x7fffffffu, len ? ": " : "", (int)(len > 200 ? 200 : len), data);
			goto fail;
		}
		if (type == NBD_REP_INFO && len >= 12 && ((data[0] << 8) | data[1]) == NBD_INFO_EXPORT) {
			uint64_t size;
			uint16_t flags;
			memcpy(&size, data + 2, 8);
			memcpy(&flags, data + 10, 2);
			info->size = be64toh(size);
			info->flags = be16toh(flags);
			have_export = 1;
		}
		if (type == NBD_REP_ACK) break;
	}
	if (!have_export) { snprintf(reason, sizeof reason, "server sent no export size"); goto fail; }
	struct timeval none = { 0, 0 };
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &none, sizeof none);
	setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &none, sizeof none);
	return fd;

io_error:
	if (errno == EAGAIN || errno == EWOULDBLOCK)
		snprintf(reason, sizeof reason, "handshake with %s:%s: no answer within %u s (the server accepted the connection but never spoke: overloaded?)", host, port, handshake_s);
	else
		snprintf(reason, sizeof reason, "handshake with %s:%s: %s", host, port, strerror(errno));
fail:
	close(fd);
	return -1;
}

/* ---- generic netlink, just enough for the nbd family ---- */

struct nl {
	int fd;
	uint16_t family;
	uint32_t mcast_group;
	uint32_t seq;
};

struct msg {
	struct nlmsghdr h;
	struct genlmsghdr g;
	uint8_t attrs[1024];
};

static struct nlattr *attr_put(struct msg *m, uint16_t type, const void *data, size_t len) {
	struct nlattr *a = (struct nlattr *)((uint8_t *)m + NLMSG_ALIGN(m->h.nlmsg_len));
	a->nla_type = type;
	a->nla_len = (uint16_t)(NLA_HDRLEN + len);
	if (len) memcpy((uint8_t *)a + NLA_HDRLEN, data, len);
	m->h.nlmsg_len = NLMSG_ALIGN(m->h.nlmsg_len) + NLA_ALIGN(a->nla_len);
	return a;
}

static void attr_u32(struct msg *m, uint16_t type, uint32_t v) { attr_put(m, type, &v, 4); }
static void attr_u64(struct msg *m, uint16_t type, uint64_t v) { attr_put(m, type, &v, 8); }
static void attr_end_nest(struct msg *m, struct nlattr *start) {
	start->nla_len = (uint16_t)((uint8_t *)m + m->h.nlmsg_len - (uint8_t *)start);
}

static void msg_init(struct msg *m, struct nl *nl, uint16_t family, uint8_t cmd, uint8_t version) {
	memset(m, 0, sizeof *m);
	m->h.nlmsg_len = NLMSG_LENGTH(GENL_HDRLEN);
	m->h.nlmsg_type = family;
	m->h.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
	m->h.nlmsg_seq = ++nl->seq;
	m->g.cmd = cmd;
	m->g.version = version;
}

static struct nlattr *attr_first(struct nlmsghdr *h, size_t *left) {
	*left = h->nlmsg_len - NLMSG_LENGTH(GENL_HDRLEN);
	return (struct nlattr *)((uint8_t *)NLMSG_DATA(h) + GENL_HDRLEN);
}

#define ATTR_EACH(a, first, left) \
	for (struct nlattr *a = (first); (left) >= NLA_HDRLEN && a->nla_len >= NLA_HDRLEN && a->nla_len <= (left); \
	     (left) -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((uint8_t *)a + NLA_ALIGN(a->nla_len)))
#define ATTR_DATA(a) ((uint8_t *)(a) + NLA_HDRLEN)

static uint8_t reply_buf[16384];

/* Sends m and reads until the kernel's ACK; returns 0 or a negative errno. on_reply sees data messages. */
static int nl_call(struct nl *nl, struct msg *m, void (*on_reply)(struct nlmsghdr *, void *), void *ctx) {
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	if (sendto(nl->fd, m, m->h.nlmsg_len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return -errno;
	for (;;) {
		ssize_t n = recv(nl->fd, reply_buf, sizeof reply_buf, 0);
		if (n < 0) { if (errno == EINTR) continue; return -errno; }
		for (struct nlmsghdr *h = (struct nlmsghdr *)reply_buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != m->h.nlmsg_seq) continue;
			if (h->nlmsg_type == NLMSG_ERROR) return ((struct nlmsgerr *)NLMSG_DATA(h))->error;
			if (on_reply) on_reply(h, ctx);
		}
	}
}

static void on_family(struct nlmsghdr *h, void *ctx) {
	struct nl *nl = ctx;
	size_t left;
	ATTR_EACH(a, attr_first(h, &left), left) {
		if (a->nla_type == CTRL_ATTR_FAMILY_ID) memcpy(&nl->family, ATTR_DATA(a), 2);
		if (a->nla_type != CTRL_ATTR_MCAST_GROUPS) continue;
		size_t groups_left = a->nla_len - NLA_HDRLEN;
		ATTR_EACH(group, (struct nlattr *)ATTR_DATA(a), groups_left) {
			size_t fields_left = group->nla_len - NLA_HDRLEN;
			uint32_t id = 0;
			int ours = 0;
			ATTR_EACH(f, (struct nlattr *)ATTR_DATA(group), fields_left) {
				if (f->nla_type == CTRL_ATTR_MCAST_GRP_ID) memcpy(&id, ATTR_DATA(f), 4);
				if (f->nla_type == CTRL_ATTR_MCAST_GRP_NAME && strcmp((char *)ATTR_DATA(f), NBD_GENL_MCAST_GROUP_NAME) == 0) ours = 1;
			}
			if (ours) nl->mcast_group = id;
		}
	}
}

static int nl_open(struct nl *nl) {
	memset(nl, 0, sizeof *nl);
	nl->fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_GENERIC);
	if (nl->fd < 0) return -errno;
	struct sockaddr_nl local = { .nl_family = AF_NETLINK };
	if (bind(nl->fd, (struct sockaddr *)&local, sizeof local) < 0) return -errno;
	struct msg m;
	msg_init(&m, nl, GENL_ID_CTRL, CTRL_CMD_GETFAMILY, 1);
	attr_put(&m, CTRL_ATTR_FAMILY_NAME, NBD_GENL_FAMILY_NAME, sizeof NBD_GENL_FAMILY_NAME);
	int rc = nl_call(nl, &m, on_family, nl);
	if (rc < 0) return rc;
	return nl->family ? 0 : -ENOENT;
}

static void attr_socket(struct msg *m, int sock) {
	struct nlattr *socks = attr_put(m, NBD_ATTR_SOCKETS | NLA_F_NESTED, NULL, 0);
	struct nlattr *item = attr_put(m, NBD_SOCK_ITEM | NLA_F_NESTED, NULL, 0);
	attr_u32(m, NBD_SOCK_FD, (uint32_t)sock);
	attr_end_nest(m, item);
	attr_end_nest(m, socks);
}

/* ---- main ---- */

static const char *host, *port, *export_name;
static uint32_t dev_index;

static int reconnect_forever(struct nl *nl) {
	for (unsigned attempt = 1;; attempt++) {
		struct export_info info;
		const char *why;
		int sock = nbd_connect(host, port, export_name, &info, &why);
		if (sock >= 0) {
			struct msg m;
			msg_init(&m, nl, nl->family, NBD_CMD_RECONFIGURE, NBD_GENL_VERSION);
			attr_u32(&m, NBD_ATTR_INDEX, dev_index);
			attr_socket(&m, sock);
			int rc = nl_call(nl, &m, NULL, NULL);
			close(sock); /* the kernel holds its own reference */
			if (rc == 0) {
				say(4, "nbd%u: reconnected to %s:%s export %s (attempt %u)", dev_index, host, port, export_name, attempt);
				return 0;
			}
			/* ENOSPC: no dead socket to replace, the link already came back (or was never dead). */
			if (rc == -ENOSPC) return 0;
			say(3, "nbd%u: kernel refused the new connection: %s", dev_index, strerror(-rc));
		} else if (attempt == 1 || attempt % 30 == 0) {
			say(4, "nbd%u: reconnecting to %s:%s: %s (attempt %u)", dev_index, host, port, why, attempt);
		}
		sleep(1);
	}
}

int main(int argc, char **argv) {
	if (argc == 5 && strcmp(argv[1], "--check") == 0) {
		struct export_info info;
		const char *why;
		int sock = nbd_connect(argv[2], argv[3], argv[4], &info, &why);
		if (sock < 0) { fprintf(stderr, "netboot-nbd: %s\n", why); return 1; }
		printf("%s: %llu bytes, flags 0x%04x\n", argv[4], (unsigned long long)info.size, info.flags);
		close(sock);
		return 0;
	}
	if (argc < 5) {
		fprintf(stderr, "usage: netboot-nbd HOST PORT EXPORT INDEX [REQUEST_TIMEOUT_S [DEAD_CONN_TIMEOUT_S]]\n       netboot-nbd --check HOST PORT EXPORT\n");
		return 2;
	}
	host = argv[1];
	port = argv[2];
	export_name = argv[3];
	dev_index = (uint32_t)strtoul(argv[4], NULL, 10);
	uint64_t request_timeout = argc > 5 ? strtoull(argv[5], NULL, 10) : 10;
	uint64_t dead_conn_timeout = argc > 6 ? strtoull(argv[6], NULL, 10) : 600;
	signal(SIGPIPE, SIG_IGN);

	struct nl nl;
	int rc = nl_open(&nl);
	if (rc < 0) {
		fprintf(stderr, "netboot-nbd: the kernel's nbd netlink family is missing (is nbd.ko loaded?): %s\n", strerror(-rc));
		return 1;
	}
	struct export_info info;
	const char *why;
	int sock = nbd_connect(host, port, export_name, &info, &why);
	if (sock < 0) {
		fprintf(stderr, "netboot-nbd: %s\n", why);
		return 1;
	}
	struct msg m;
	msg_init(&m, &nl, nl.family, NBD_CMD_CONNECT, NBD_GENL_VERSION);
	attr_u32(&m, NBD_ATTR_INDEX, dev_index);
	attr_u64(&m, NBD_ATTR_SIZE_BYTES, info.size);
	/* 4 KiB blocks only when the export is a whole number of them: the kernel cannot read a
	 * partial last block, and squashfs images need not be padded. */
	attr_u64(&m, NBD_ATTR_BLOCK_SIZE_BYTES, info.size % 4096 == 0 ? 4096 : 512);
	attr_u64(&m, NBD_ATTR_SERVER_FLAGS, info.flags | NBD_FLAG_READ_ONLY);
	attr_u64(&m, NBD_ATTR_TIMEOUT, request_timeout);
	attr_u64(&m, NBD_ATTR_DEAD_CONN_TIMEOUT, dead_conn_timeout);
	attr_socket(&m, sock);
	rc = nl_call(&nl, &m, NULL, NULL);
	close(sock);
	if (rc < 0) {
		fprintf(stderr, "netboot-nbd: connecting /dev/nbd%u: %s\n", dev_index, strerror(-rc));
		return 1;
	}
	/* Join the group that announces dead links before going to the background, so none is missed. */
	if (nl.mcast_group == 0 ||
	    setsockopt(nl.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, &nl.mcast_group, sizeof nl.mcast_group) < 0) {
		fprintf(stderr, "netboot-nbd: /dev/nbd%u connected, but dead-link events are unavailable: a server restart will not be survived\n", dev_index);
		return 0;
	}

	kmsg = open("/dev/kmsg", O_WRONLY | O_CLOEXEC);
	pid_t child = fork();
	if (child < 0) { perror("netboot-nbd: fork"); return 1; }
	if (child > 0) {
		printf("/dev/nbd%u: %llu bytes, reconnects for up to %llu s\n", dev_index, (unsigned long long)info.size, (unsigned long long)dead_conn_timeout);
		return 0;
	}
	setsid();
	daemonized = 1;
	argv[0][0] = '@'; /* systemd: do not kill at shutdown (the root depends on this process) */
	if (chdir("/") < 0) { /* nothing to do: / always exists */ }
	int devnull = open("/dev/null", O_RDWR);
	int console = kmsg < 0 ? open("/dev/console", O_WRONLY | O_NOCTTY) : -1;
	if (devnull >= 0) { dup2(devnull, 0); dup2(devnull, 1); dup2(console >= 0 ? console : devnull, 2); }
	if (devnull > 2) close(devnull);
	if (console > 2) close(console);

	/* Not reply_buf: reconnecting calls nl_call, which reuses that while we walk this one. */
	static uint8_t event_buf[16384];
	for (;;) {
		ssize_t n = recv(nl.fd, event_buf, sizeof event_buf, 0);
		if (n < 0) {
			if (errno == EINTR) continue;
			if (errno == ENOBUFS) continue; /* events were dropped; the next dead link still arrives */
			say(3, "netlink receive failed: %s; no more reconnects", strerror(errno));
			return 1;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)event_buf; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type != nl.family) continue;
			struct genlmsghdr *g = NLMSG_DATA(h);
			if (g->cmd != NBD_CMD_LINK_DEAD) continue;
			size_t left;
			uint32_t index = UINT32_MAX;
			ATTR_EACH(a, attr_first(h, &left), left) {
				if (a->nla_type == NBD_ATTR_INDEX) memcpy(&index, ATTR_DATA(a), 4);
			}
			if (index != dev_index) continue;
			say(3, "nbd%u: connection to %s:%s lost; reconnecting (I/O waits meanwhile)", dev_index, host, port);
			reconnect_forever(&nl);
		}
	}
}
