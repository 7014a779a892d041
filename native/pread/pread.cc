// netboot_pread: reads a file range only when the page cache already holds it, synchronously
// (preadv2 with RWF_NOWAIT). A read through Node's thread pool costs the event loop a hand-off
// and a turn; in a boot storm, where a few squashfs pages are read by every machine and are
// always cached, that hand-off was most of the NBD server's main-thread time. Pages not in the
// cache make this return early (EAGAIN) instead of waiting for the disk: the caller reads the
// rest through the pool, so the event loop never blocks on storage.
//
// readCached(fd: number, buffer: Uint8Array, offset: number, length: number, position: number): number
//   bytes read into buffer[offset..]: `length`, fewer when the rest is not cached (or at end of
//   file), 0 when none is cached, or -1 when the file system does not support RWF_NOWAIT.
//   Throws on a bad argument or another read error.
#include <node_api.h>

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/uio.h>

#include <cstdint>

#ifndef RWF_NOWAIT
#define RWF_NOWAIT 0x00000008
#endif

namespace {

napi_value Throw(napi_env env, const char* message) {
  napi_throw_error(env, nullptr, message);
  return nullptr;
}

bool IntArg(napi_env env, napi_value value, int64_t* out) {
  double number = 0;
  if (napi_get_value_double(env, value, &number) != napi_ok) return false;
  if (!(number >= 0) || number > 9007199254740991.0 || number != static_cast<double>(static_cast<int64_t>(number))) return false;
  *out = static_cast<int64_t>(number);
  return true;
}

napi_value ReadCached(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  if (napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr) != napi_ok || argc != 5) {
    return Throw(env, "readCached(fd, buffer, offset, length, position): 5 arguments expected");
  }
  int64_t fd = 0, offset = 0, length = 0, position = 0;
  void* data = nullptr;
  size_t size = 0;
  bool isTyped = false;
  if (!IntArg(env, argv[0], &fd) || fd > 0x7fffffff) return Throw(env, "readCached: fd must be a non-negative integer");
  if (napi_is_typedarray(env, argv[1], &isTyped) != napi_ok || !isTyped) return Throw(env, "readCached: buffer must be a Uint8Array");
  napi_typedarray_type type;
  size_t elements = 0;
  napi_value arrayBuffer;
  size_t byteOffset = 0;
  if (napi_get_typedarray_info(env, argv[1], &type, &elements, &data, &arrayBuffer, &byteOffset) != napi_ok || type != napi_uint8_array) {
    return Throw(env, "readCached: buffer must be a Uint8Array");
  }
  size = elements;
  if (!IntArg(env, argv[2], &offset) || !IntArg(env, argv[3], &length) || !IntArg(env, argv[4], &position)) {
    return Throw(env, "readCached: offset, length and position must be non-negative integers");
  }
  if (static_cast<uint64_t>(offset) > size || static_cast<uint64_t>(length) > size - static_cast<uint64_t>(offset)) {
    return Throw(env, "readCached: offset + length is beyond the buffer");
  }

  int64_t done = 0;
  while (done < length) {
    struct iovec iov = {static_cast<char*>(data) + offset + done, static_cast<size_t>(length - done)};
    ssize_t n = preadv2(static_cast<int>(fd), &iov, 1, position + done, RWF_NOWAIT);
    if (n > 0) {
      done += n;
      continue;
    }
    if (n == 0) break;  // end of file
    if (errno == EINTR) continue;
    if (errno == EAGAIN) break;  // the rest is not in the page cache
    if (errno == EOPNOTSUPP || errno == ENOSYS || errno == EINVAL) {
      if (done > 0) break;
      done = -1;
      break;
    }
    char message[160];
    snprintf(message, sizeof message, "readCached: preadv2: %s", strerror(errno));
    return Throw(env, message);
  }
  napi_value result;
  napi_create_int64(env, done, &result);
  return result;
}

napi_value Init(napi_env env, napi_value exports) {
  napi_value fn;
  napi_create_function(env, "readCached", NAPI_AUTO_LENGTH, ReadCached, nullptr, &fn);
  napi_set_named_property(env, exports, "readCached", fn);
  return exports;
}

}  // namespace

NAPI_MODULE(NODE_GYP_MODULE_NAME, Init)
