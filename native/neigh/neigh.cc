// netboot_neigh: one IPv4 neighbour (ARP) entry from the kernel, by address and interface, over
// rtnetlink (RTM_GETNEIGH with NDA_DST; Linux 5.0+). The alternative, /proc/net/arp, formats the
// whole table on every read: about 0.8 ms of kernel time for 600 entries, once per identity
// check, which a boot storm makes thousands of. This asks for one entry: microseconds.
//
// lookup(ip: string, ifname: string): string | null   (lower-case MAC of a valid entry, or null)
// Throws on a malformed argument or an unexpected netlink error.
#include <arpa/inet.h>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <linux/neighbour.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <node_api.h>
#include <sys/socket.h>
#include <unistd.h>

namespace {

napi_value Throw(napi_env env, const char* message) {
  napi_throw_error(env, nullptr, message);
  return nullptr;
}

bool StringArg(napi_env env, napi_value value, char* out, size_t size) {
  size_t length = 0;
  return napi_get_value_string_utf8(env, value, out, size, &length) == napi_ok && length > 0 && length < size - 1;
}

// 0 with the MAC in `mac` (6 bytes), ENOENT when there is no valid entry, or another errno.
int Query(in_addr_t address, unsigned ifindex, unsigned char mac[6]) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
  if (fd < 0) return errno;
  struct {
    nlmsghdr header;
    ndmsg body;
    char attrs[RTA_SPACE(4)];
  } request;
  memset(&request, 0, sizeof request);
  request.header.nlmsg_len = NLMSG_LENGTH(sizeof(ndmsg)) + RTA_SPACE(4);
  request.header.nlmsg_type = RTM_GETNEIGH;
  request.header.nlmsg_flags = NLM_F_REQUEST;
  request.header.nlmsg_seq = 1;
  request.body.ndm_family = AF_INET;
  request.body.ndm_ifindex = static_cast<int>(ifindex);
  rtattr* dst = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(&request) + NLMSG_ALIGN(request.header.nlmsg_len) - RTA_SPACE(4));
  dst->rta_type = NDA_DST;
  dst->rta_len = RTA_LENGTH(4);
  memcpy(RTA_DATA(dst), &address, 4);
  sockaddr_nl kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.nl_family = AF_NETLINK;
  int result = EPROTO;
  char reply[8192];
  if (sendto(fd, &request, request.header.nlmsg_len, 0, reinterpret_cast<sockaddr*>(&kernel), sizeof kernel) < 0) {
    result = errno;
  } else {
    ssize_t n;
    do n = recv(fd, reply, sizeof reply, 0);
    while (n < 0 && errno == EINTR);
    if (n < 0) result = errno;
    for (nlmsghdr* h = reinterpret_cast<nlmsghdr*>(reply); n > 0 && NLMSG_OK(h, static_cast<unsigned>(n)); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_type == NLMSG_ERROR) {
        const nlmsgerr* e = static_cast<const nlmsgerr*>(NLMSG_DATA(h));
        result = e->error == 0 ? ENOENT : -e->error;
        break;
      }
      if (h->nlmsg_type != RTM_NEWNEIGH) continue;
      const ndmsg* nd = static_cast<const ndmsg*>(NLMSG_DATA(h));
      // What /proc/net/arp marks complete (ATF_COM): NUD_VALID.
      const unsigned valid = NUD_PERMANENT | NUD_NOARP | NUD_REACHABLE | NUD_PROBE | NUD_STALE | NUD_DELAY;
      result = ENOENT;
      if ((nd->ndm_state & valid) == 0) break;
      int length = static_cast<int>(NLMSG_PAYLOAD(h, sizeof(ndmsg)));
      for (rtattr* a = reinterpret_cast<rtattr*>(reinterpret_cast<char*>(const_cast<ndmsg*>(nd)) + NLMSG_ALIGN(sizeof(ndmsg))); RTA_OK(a, length); a = RTA_NEXT(a, length)) {
        if (a->rta_type == NDA_LLADDR && RTA_PAYLOAD(a) == 6) {
          memcpy(mac, RTA_DATA(a), 6);
          result = 0;
        }
      }
      break;
    }
  }
  close(fd);
  return result;
}

napi_value Lookup(napi_env env, napi_callback_info info) {
  size_t argc = 2;
  napi_value argv[2];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  char ip[INET_ADDRSTRLEN + 1];
  char ifname[IF_NAMESIZE + 1];
  if (argc < 2 || !StringArg(env, argv[0], ip, sizeof ip) || !StringArg(env, argv[1], ifname, sizeof ifname)) {
    return Throw(env, "lookup(ip, ifname): two non-empty strings expected");
  }
  in_addr address;
  if (inet_pton(AF_INET, ip, &address) != 1) return Throw(env, "lookup: not an IPv4 address");
  unsigned ifindex = if_nametoindex(ifname);
  napi_value null;
  napi_get_null(env, &null);
  if (ifindex == 0) return null;  // the interface went away: no entry on it
  unsigned char mac[6];
  int err = Query(address.s_addr, ifindex, mac);
  if (err == ENOENT || err == ENODEV || err == EADDRNOTAVAIL) return null;
  if (err != 0) {
    char message[96];
    snprintf(message, sizeof message, "RTM_GETNEIGH failed: %s", strerror(err));
    return Throw(env, message);
  }
  char text[18];
  snprintf(text, sizeof text, "%02x:%02x:%02x:%02x:%02x:%02x", mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
  napi_value out;
  napi_create_string_utf8(env, text, NAPI_AUTO_LENGTH, &out);
  return out;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "lookup", NAPI_AUTO_LENGTH, Lookup, nullptr, &fn);
  napi_set_named_property(env, exports, "lookup", fn);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
