/*
 * netboot-ra-io: the raw frame I/O behind netboot's IPv6 Router Solicitation answers
 * (server/ipv6/). Node cannot open packet sockets; everything else (which RS to answer, the
 * RA's bytes) is TypeScript. This program only moves frames.
 *
 *   netboot-ra-io IFNAME
 *
 * stdout: records [u16 big-endian length][Ethernet frame], one per ICMPv6 Router Solicitation
 *         or Advertisement on IFNAME (a kernel filter drops everything else), advertisements
 *         this host sends included (ours too: netboot tells them apart), solicitations it
 *         sends not. The first record is empty: the socket is open and filtered ("ready").
 * stdin:  records [u16 big-endian length][Ethernet frame], each sent on IFNAME as it is.
 *         End of input ends the program (netboot went away).
 * Errors: one line on stderr, exit status 1 (2: usage).
 *
 * A packet socket sees the frames only; the host's own IPv6 stack is not involved, so this
 * works whether or not the interface has IPv6 enabled. Needs CAP_NET_RAW.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/filter.h>
#include <linux/if_ether.h>
#include <linux/if_packet.h>
#include <net/if.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAX_FRAME 1514

static void die(const char *what) {
  fprintf(stderr, "netboot-ra-io: %s: %s\n", what, strerror(errno));
  exit(1);
}

static void write_all(int fd, const uint8_t *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write stdout");
    }
    buf += n;
    len -= (size_t)n;
  }
}

static void emit(const uint8_t *frame, size_t len) {
  uint8_t header[2] = {(uint8_t)(len >> 8), (uint8_t)len};
  write_all(1, header, 2);
  if (len) write_all(1, frame, len);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: netboot-ra-io IFNAME\n");
    return 2;
  }
  unsigned ifindex = if_nametoindex(argv[1]);
  if (!ifindex) die(argv[1]);

  int fd = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_IPV6));
  if (fd < 0) die("socket(AF_PACKET)");

  /* IPv6 (ethertype at 12), next header ICMPv6 (58, at 14+6), ICMPv6 type 133 or 134 (router
   * solicitation or advertisement, at 14+40). Extension headers are not looked through: RFC
   * 4861 senders add none. */
  struct sock_filter code[] = {
      BPF_STMT(BPF_LD | BPF_H | BPF_ABS, 12),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, ETH_P_IPV6, 0, 6),
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 20),
      BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, 58, 0, 4),
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 54),
      BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 133, 0, 2),
      BPF_JUMP(BPF_JMP | BPF_JGT | BPF_K, 134, 1, 0),
      BPF_STMT(BPF_RET | BPF_K, MAX_FRAME),
      BPF_STMT(BPF_RET | BPF_K, 0),
  };
  struct sock_fprog prog = {.len = sizeof(code) / sizeof(code[0]), .filter = code};
  if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)) < 0) die("SO_ATTACH_FILTER");

  struct sockaddr_ll addr = {.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_IPV6), .sll_ifindex = (int)ifindex};
  if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0) die("bind");

  /* Frames queued before the filter was attached may be anything: drop them. */
  uint8_t frame[MAX_FRAME + 2];
  while (recv(fd, frame, sizeof(frame), MSG_DONTWAIT) >= 0) {
  }
  emit(NULL, 0);

  uint8_t in[2 + 65535];
  size_t have = 0;
  struct pollfd fds[2] = {{.fd = fd, .events = POLLIN}, {.fd = 0, .events = POLLIN}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      die("poll");
    }
    if (fds[0].revents & POLLIN) {
      struct sockaddr_ll from;
      socklen_t fromlen = sizeof(from);
      ssize_t n = recvfrom(fd, frame, sizeof(frame), MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen);
      /* Frames this host sends show up too: its own solicitations are not for us to answer,
       * but its advertisements count (a router daemon on this host is a router on the link). */
      int outgoing_rs = from.sll_pkttype == PACKET_OUTGOING && n > 54 && frame[54] == 133;
      if (n > 0 && !outgoing_rs) emit(frame, (size_t)(n > MAX_FRAME ? MAX_FRAME : n));
      else if (n < 0 && errno != EAGAIN && errno != EINTR) die("recv");
    }
    if (fds[1].revents & (POLLIN | POLLHUP)) {
      ssize_t n = read(0, in + have, sizeof(in) - have);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) die("read stdin");
      if (n == 0) return 0;
      have += (size_t)n;
      size_t at = 0;
      while (have - at >= 2) {
        size_t len = ((size_t)in[at] << 8) | in[at + 1];
        if (have - at < 2 + len) break;
        if (len >= 14 && len <= MAX_FRAME && send(fd, in + at + 2, len, 0) < 0) {
          /* One frame that cannot go out (link down, buffer full) is not fatal. */
          fprintf(stderr, "netboot-ra-io: send: %s\n", strerror(errno));
        }
        at += 2 + len;
      }
      memmove(in, in + at, have - at);
      have -= at;
    }
  }
}
