// netboot_sendfile: sends file ranges to connected, non-blocking TCP sockets with
// sendfile(2) on one native thread, so file bytes never pass through the JS thread or
// userspace buffers.
//
// JS API (instance per Node environment):
//   start(socketFd, fileFd, offset, length, done(bytes, errno)) -> jobId
//   cancel(jobId)            done is then called with errno ECANCELED (unless it already finished)
//   activeJobs() -> number   jobs whose done has not been called yet
//   stats() -> { started, bytesSent }
//
// Both fds are dup()ed at start: JS may close its own socket or file handle at any time
// and the thread never writes to a reused fd number; the thread closes its copies when the
// job ends. done is called exactly once per job, on the JS thread, with the bytes handed to
// the socket and 0 or an errno (ECANCELED, EPIPE, ECONNRESET, ENODATA for a file that
// shrank, ...).
//
// Threading: the JS thread only queues jobs and cancels under `mu` and wakes the worker
// through an eventfd. The worker owns the epoll set and the running jobs. Completions go
// back through a napi_threadsafe_function, which is referenced only while jobs are active
// so an idle engine never keeps the process alive.

#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

// Bytes one job may send per turn before the others get theirs.
constexpr int64_t kTurnCap = 4 << 20;
// Largest count sendfile(2) accepts in one call on Linux.
constexpr int64_t kSendfileMax = 0x7ffff000;

struct Job {
  uint64_t id;
  int sock;
  int file;
  int64_t offset;
  int64_t remaining;
  int64_t sent = 0;
  bool ready = true;
  bool registered = false;
};

struct Completion {
  uint64_t id;
  int64_t bytes;
  int err;
};

struct Engine {
  // Shared between the JS thread and the worker, under mu.
  std::mutex mu;
  std::vector<Job*> incoming;
  std::vector<uint64_t> cancels;
  napi_threadsafe_function tsfn = nullptr;  // cleared when Node finalizes it
  bool stopping = false;
  int64_t bytesSent = 0;

  // Set up on the JS thread before the worker starts, torn down after it is joined.
  std::thread* worker = nullptr;
  int epfd = -1;
  int evfd = -1;

  // JS thread only.
  bool instanceAlive = true;
  bool tsfnAlive = false;
  uint64_t nextId = 1;
  double started = 0;
  std::unordered_map<uint64_t, napi_ref> callbacks;
  bool tsfnReferenced = false;

  // Worker only.
  std::unordered_map<uint64_t, Job*> jobs;
};

void Wake(Engine* e) {
  uint64_t one = 1;
  ssize_t ignored = write(e->evfd, &one, sizeof one);
  (void)ignored;  // EAGAIN means the counter is already non-zero: the worker wakes anyway
}

void CloseJob(Job* j) {
  close(j->sock);
  close(j->file);
  delete j;
}

// Worker: ends a job and queues its completion for the JS thread.
void Finish(Engine* e, Job* j, int err) {
  if (j->registered) epoll_ctl(e->epfd, EPOLL_CTL_DEL, j->sock, nullptr);
  auto* c = new Completion{j->id, j->sent, err};
  e->jobs.erase(j->id);
  CloseJob(j);
  std::lock_guard<std::mutex> lock(e->mu);
  if (e->tsfn == nullptr || napi_call_threadsafe_function(e->tsfn, c, napi_tsfn_nonblocking) != napi_ok) delete c;
}

// Worker: sends up to kTurnCap bytes. Returns 0 to keep going, or the errno ending the job.
// Leaves j->ready false once the socket buffer is full (EPOLLET reports the next edge).
int Turn(Engine* e, Job* j) {
  int64_t budget = kTurnCap;
  int64_t sentThisTurn = 0;
  int result = 0;
  while (j->remaining > 0 && budget > 0) {
    off_t offset = static_cast<off_t>(j->offset);
    size_t want = static_cast<size_t>(std::min({budget, j->remaining, kSendfileMax}));
    ssize_t n = sendfile(j->sock, j->file, &offset, want);
    if (n > 0) {
      j->offset += n;
      j->remaining -= n;
      j->sent += n;
      budget -= n;
      sentThisTurn += n;
      continue;
    }
    if (n == 0) {
      result = ENODATA;  // the file is shorter than the range
      break;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN) {
      j->ready = false;
      break;
    }
    result = errno;
    break;
  }
  if (sentThisTurn > 0) {
    std::lock_guard<std::mutex> lock(e->mu);
    e->bytesSent += sentThisTurn;
  }
  return result;
}

void Run(Engine* e) {
  epoll_event events[64];
  std::vector<Job*> incoming;
  std::vector<uint64_t> cancels;
  for (;;) {
    bool stop;
    {
      std::lock_guard<std::mutex> lock(e->mu);
      incoming.swap(e->incoming);
      cancels.swap(e->cancels);
      stop = e->stopping;
    }
    if (stop) {
      for (Job* j : incoming) CloseJob(j);
      break;
    }
    for (Job* j : incoming) {
      e->jobs[j->id] = j;
      epoll_event ev{};
      ev.events = EPOLLOUT | EPOLLET;
      ev.data.u64 = j->id;
      if (epoll_ctl(e->epfd, EPOLL_CTL_ADD, j->sock, &ev) != 0) {
        Finish(e, j, errno);
        continue;
      }
      j->registered = true;
    }
    incoming.clear();
    for (uint64_t id : cancels) {
      auto it = e->jobs.find(id);
      if (it != e->jobs.end()) Finish(e, it->second, ECANCELED);
    }
    cancels.clear();

    std::vector<std::pair<Job*, int>> ended;
    bool anyReady = false;
    for (auto& [id, j] : e->jobs) {
      if (!j->ready) continue;
      int err = Turn(e, j);
      if (err != 0 || j->remaining == 0) {
        ended.emplace_back(j, err);
      } else if (j->ready) {
        anyReady = true;  // stopped at the turn cap, not at EAGAIN
      }
    }
    for (auto& [j, err] : ended) Finish(e, j, err);

    int n = epoll_wait(e->epfd, events, 64, anyReady ? 0 : -1);
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 == 0) {
        uint64_t count;
        ssize_t ignored = read(e->evfd, &count, sizeof count);
        (void)ignored;
        continue;
      }
      auto it = e->jobs.find(events[i].data.u64);
      if (it != e->jobs.end()) it->second->ready = true;  // EPOLLERR/EPOLLHUP too: sendfile reports why
    }
  }
  for (auto& [id, j] : e->jobs) CloseJob(j);
  e->jobs.clear();
}

// JS thread, at environment teardown (or instance data finalization): stops and joins the worker.
void Stop(Engine* e) {
  if (e->worker == nullptr) return;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    e->stopping = true;
  }
  Wake(e);
  e->worker->join();
  delete e->worker;
  e->worker = nullptr;
  close(e->epfd);
  close(e->evfd);
  e->epfd = e->evfd = -1;
}

void OnEnvCleanup(void* data) { Stop(static_cast<Engine*>(data)); }

// The engine is freed by whichever of these two finalizers runs last (both on the JS thread).
void OnInstanceFinalize(napi_env, void* data, void*) {
  auto* e = static_cast<Engine*>(data);
  Stop(e);
  e->instanceAlive = false;
  if (!e->tsfnAlive) delete e;
}

void OnTsfnFinalize(napi_env, void* data, void*) {
  auto* e = static_cast<Engine*>(data);
  {
    std::lock_guard<std::mutex> lock(e->mu);
    e->tsfn = nullptr;
  }
  e->tsfnAlive = false;
  if (!e->instanceAlive) delete e;
}

// JS thread: delivers one completion to its job's callback.
void Deliver(napi_env env, napi_value, void* context, void* data) {
  auto* c = static_cast<Completion*>(data);
  auto* e = static_cast<Engine*>(context);
  if (env == nullptr) {  // the tsfn is being torn down
    delete c;
    return;
  }
  auto it = e->callbacks.find(c->id);
  if (it == e->callbacks.end()) {
    delete c;
    return;
  }
  napi_ref ref = it->second;
  e->callbacks.erase(it);
  if (e->callbacks.empty() && e->tsfnReferenced && e->tsfn != nullptr) {
    napi_unref_threadsafe_function(env, e->tsfn);
    e->tsfnReferenced = false;
  }
  napi_value callback, undefined, argv[2];
  napi_get_reference_value(env, ref, &callback);
  napi_delete_reference(env, ref);
  napi_get_undefined(env, &undefined);
  napi_create_double(env, static_cast<double>(c->bytes), &argv[0]);
  napi_create_int32(env, c->err, &argv[1]);
  delete c;
  if (callback != nullptr) napi_call_function(env, undefined, callback, 2, argv, nullptr);
}

napi_value ThrowErrno(napi_env env, const char* what, int err) {
  char message[160];
  snprintf(message, sizeof message, "%s: %s", what, strerror(err));
  napi_value code, msg, error;
  napi_create_int32(env, err, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &msg);
  napi_create_error(env, nullptr, msg, &error);
  napi_set_named_property(env, error, "errno", code);
  napi_throw(env, error);
  return nullptr;
}

bool EnsureWorker(napi_env env, Engine* e) {
  if (e->worker != nullptr) return true;
  if (e->stopping) {
    napi_throw_error(env, nullptr, "netboot_sendfile: the engine has stopped");
    return false;
  }
  e->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  e->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (e->evfd < 0 || e->epfd < 0) {
    int err = errno;
    if (e->evfd >= 0) close(e->evfd);
    if (e->epfd >= 0) close(e->epfd);
    e->evfd = e->epfd = -1;
    ThrowErrno(env, "netboot_sendfile: eventfd/epoll_create1", err);
    return false;
  }
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // job ids start at 1
  epoll_ctl(e->epfd, EPOLL_CTL_ADD, e->evfd, &ev);

  if (e->tsfn == nullptr) {
    napi_value name;
    napi_create_string_utf8(env, "netboot_sendfile", NAPI_AUTO_LENGTH, &name);
    if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, e, OnTsfnFinalize, e, Deliver, &e->tsfn) != napi_ok) {
      close(e->evfd);
      close(e->epfd);
      e->evfd = e->epfd = -1;
      napi_throw_error(env, nullptr, "netboot_sendfile: napi_create_threadsafe_function failed");
      return false;
    }
    e->tsfnAlive = true;
    napi_unref_threadsafe_function(env, e->tsfn);
    e->tsfnReferenced = false;
  }

  // Signals stay with Node's threads (SIGPIPE is ignored process-wide by Node anyway).
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  e->worker = new std::thread(Run, e);
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  return true;
}

Engine* EngineOf(napi_env env) {
  void* data = nullptr;
  napi_get_instance_data(env, &data);
  return static_cast<Engine*>(data);
}

napi_value Start(napi_env env, napi_callback_info info) {
  size_t argc = 5;
  napi_value argv[5];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int32_t socketFd, fileFd;
  int64_t offset, length;
  napi_valuetype callbackType;
  if (argc < 5 || napi_get_value_int32(env, argv[0], &socketFd) != napi_ok || napi_get_value_int32(env, argv[1], &fileFd) != napi_ok ||
      napi_get_value_int64(env, argv[2], &offset) != napi_ok || napi_get_value_int64(env, argv[3], &length) != napi_ok ||
      napi_typeof(env, argv[4], &callbackType) != napi_ok || callbackType != napi_function || offset < 0 || length < 0) {
    napi_throw_type_error(env, nullptr, "start(socketFd, fileFd, offset >= 0, length >= 0, done)");
    return nullptr;
  }
  Engine* e = EngineOf(env);

  // Only stream sockets in non-blocking mode: a blocking one would stall every job.
  int type = 0;
  socklen_t typeLength = sizeof type;
  if (getsockopt(socketFd, SOL_SOCKET, SO_TYPE, &type, &typeLength) != 0) return ThrowErrno(env, "netboot_sendfile: not a socket", errno);
  int flags = fcntl(socketFd, F_GETFL);
  if (type != SOCK_STREAM || flags < 0 || (flags & O_NONBLOCK) == 0) return ThrowErrno(env, "netboot_sendfile: not a non-blocking stream socket", EINVAL);

  if (!EnsureWorker(env, e)) return nullptr;
  int sock = fcntl(socketFd, F_DUPFD_CLOEXEC, 0);
  if (sock < 0) return ThrowErrno(env, "netboot_sendfile: dup socket", errno);
  int file = fcntl(fileFd, F_DUPFD_CLOEXEC, 0);
  if (file < 0) {
    int err = errno;
    close(sock);
    return ThrowErrno(env, "netboot_sendfile: dup file", err);
  }

  uint64_t id = e->nextId++;
  napi_ref ref;
  napi_create_reference(env, argv[4], 1, &ref);
  e->callbacks[id] = ref;
  if (!e->tsfnReferenced && e->tsfn != nullptr) {
    napi_ref_threadsafe_function(env, e->tsfn);
    e->tsfnReferenced = true;
  }
  e->started++;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    e->incoming.push_back(new Job{id, sock, file, offset, length});
  }
  Wake(e);
  napi_value result;
  napi_create_double(env, static_cast<double>(id), &result);
  return result;
}

napi_value Cancel(napi_env env, napi_callback_info info) {
  size_t argc = 1;
  napi_value argv[1];
  napi_get_cb_info(env, info, &argc, argv, nullptr, nullptr);
  int64_t id;
  if (argc < 1 || napi_get_value_int64(env, argv[0], &id) != napi_ok) {
    napi_throw_type_error(env, nullptr, "cancel(jobId)");
    return nullptr;
  }
  Engine* e = EngineOf(env);
  if (id > 0 && e->callbacks.count(static_cast<uint64_t>(id)) && e->worker != nullptr) {
    {
      std::lock_guard<std::mutex> lock(e->mu);
      e->cancels.push_back(static_cast<uint64_t>(id));
    }
    Wake(e);
  }
  return nullptr;
}

napi_value ActiveJobs(napi_env env, napi_callback_info) {
  napi_value result;
  napi_create_uint32(env, static_cast<uint32_t>(EngineOf(env)->callbacks.size()), &result);
  return result;
}

napi_value Stats(napi_env env, napi_callback_info) {
  Engine* e = EngineOf(env);
  int64_t bytes;
  {
    std::lock_guard<std::mutex> lock(e->mu);
    bytes = e->bytesSent;
  }
  napi_value result, started, sent;
  napi_create_object(env, &result);
  napi_create_double(env, e->started, &started);
  napi_create_double(env, static_cast<double>(bytes), &sent);
  napi_set_named_property(env, result, "started", started);
  napi_set_named_property(env, result, "bytesSent", sent);
  return result;
}

}  // namespace

NAPI_MODULE_INIT() {
  auto* e = new Engine();
  napi_set_instance_data(env, e, OnInstanceFinalize, nullptr);
  napi_add_env_cleanup_hook(env, OnEnvCleanup, e);
  napi_property_descriptor properties[] = {
      {"start", nullptr, Start, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"cancel", nullptr, Cancel, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"activeJobs", nullptr, ActiveJobs, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
      {"stats", nullptr, Stats, nullptr, nullptr, nullptr, napi_enumerable, nullptr},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
  return exports;
}
