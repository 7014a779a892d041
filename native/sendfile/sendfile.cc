// netboot_sendfile: sends file ranges to connected, non-blocking TCP sockets with
// sendfile(2) on native threads, so file bytes never pass through the JS thread or
// userspace buffers.
//
// JS API (instance per Node environment):
//   start(socketFd, fileFd, offset, length, done(bytes, errno)) -> jobId
//   cancel(jobId)            done is then called with errno ECANCELED (unless it already finished)
//   activeJobs() -> number   jobs whose done has not been called yet
//   stats() -> { started, bytesSent, threads, threadBytes: number[] }
//
// Both fds are dup()ed at start: JS may close its own socket or file handle at any time
// and a thread never writes to a reused fd number; the thread closes its copies when the
// job ends. done is called exactly once per job, on the JS thread, with the bytes handed to
// the socket and 0 or an errno (ECANCELED, EPIPE, ECONNRESET, ENODATA for a file that
// shrank, ...).
//
// Threading: one worker thread per core (hardware_concurrency, at most kMaxThreads;
// NETBOOT_SENDFILE_THREADS overrides), started with the first job. sendfile(2) to a local or
// virtual link also runs the receiver's network stack on the sending CPU, so one thread
// caps every download at one core. A job stays on the worker it was given (the one with
// the fewest jobs at start). The JS thread only queues jobs and cancels under the worker's
// `mu` and wakes it through its eventfd; each worker owns its epoll set and its running
// jobs. Completions go back through one napi_threadsafe_function, referenced only while
// jobs are active so an idle engine never keeps the process alive.

#include <node_api.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

// Bytes one job may send per turn before the others on its worker get theirs.
constexpr int64_t kTurnCap = 4 << 20;
// Largest count sendfile(2) accepts in one call on Linux.
constexpr int64_t kSendfileMax = 0x7ffff000;
// More threads than this only contend for the same socket locks and cores.
constexpr unsigned kMaxThreads = 8;
// NETBOOT_SENDFILE_THREADS may ask for up to this many (tests spread jobs over more workers than cores).
constexpr unsigned kMaxThreadsOverride = 64;

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

struct Engine;

struct Worker {
  Engine* engine = nullptr;
  unsigned index = 0;

  // Shared between the JS thread and this worker's thread, under mu.
  std::mutex mu;
  std::vector<Job*> incoming;
  std::vector<uint64_t> cancels;
  bool stopping = false;

  // Set up on the JS thread before the thread starts, torn down after it is joined.
  std::thread* thread = nullptr;
  int epfd = -1;
  int evfd = -1;

  // Written by the worker, read by stats().
  std::atomic<int64_t> bytesSent{0};

  // JS thread only: jobs given to this worker whose done has not been called yet.
  uint32_t load = 0;

  // Worker thread only.
  std::unordered_map<uint64_t, Job*> jobs;
};

struct Callback {
  napi_ref ref;
  Worker* worker;
};

struct Engine {
  // Guards tsfn, which Node clears (OnTsfnFinalize) while workers may be finishing jobs.
  std::mutex tsfnMu;
  napi_threadsafe_function tsfn = nullptr;

  // JS thread only.
  std::vector<std::unique_ptr<Worker>> workers;  // empty until the first job, and again after Stop
  bool stopped = false;
  bool instanceAlive = true;
  bool tsfnAlive = false;
  uint64_t nextId = 1;
  double started = 0;
  unsigned nextWorker = 0;  // where the search for the least-loaded worker starts (round robin on ties)
  std::unordered_map<uint64_t, Callback> callbacks;
  bool tsfnReferenced = false;
  int64_t bytesOfStoppedWorkers = 0;
};

unsigned ThreadCount() {
  const char* env = getenv("NETBOOT_SENDFILE_THREADS");
  if (env != nullptr && *env != '\0') {
    char* end = nullptr;
    long n = strtol(env, &end, 10);
    if (end != nullptr && *end == '\0' && n >= 1) return static_cast<unsigned>(std::min<long>(n, kMaxThreadsOverride));
  }
  unsigned cores = std::thread::hardware_concurrency();
  return std::max(1u, std::min(cores == 0 ? 1u : cores, kMaxThreads));
}

void Wake(Worker* w) {
  uint64_t one = 1;
  ssize_t ignored = write(w->evfd, &one, sizeof one);
  (void)ignored;  // EAGAIN means the counter is already non-zero: the worker wakes anyway
}

void CloseJob(Job* j) {
  close(j->sock);
  close(j->file);
  delete j;
}

// Worker: ends a job and queues its completion for the JS thread.
void Finish(Worker* w, Job* j, int err) {
  if (j->registered) epoll_ctl(w->epfd, EPOLL_CTL_DEL, j->sock, nullptr);
  auto* c = new Completion{j->id, j->sent, err};
  w->jobs.erase(j->id);
  CloseJob(j);
  Engine* e = w->engine;
  std::lock_guard<std::mutex> lock(e->tsfnMu);
  if (e->tsfn == nullptr || napi_call_threadsafe_function(e->tsfn, c, napi_tsfn_nonblocking) != napi_ok) delete c;
}

// Worker: sends up to kTurnCap bytes. Returns 0 to keep going, or the errno ending the job.
// Leaves j->ready false once the socket buffer is full (EPOLLET reports the next edge).
int Turn(Worker* w, Job* j) {
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
  if (sentThisTurn > 0) w->bytesSent.fetch_add(sentThisTurn, std::memory_order_relaxed);
  return result;
}

void Run(Worker* w) {
  char name[16];
  snprintf(name, sizeof name, "nb-sendfile-%u", w->index);
  pthread_setname_np(pthread_self(), name);  // per-thread CPU in top -H and /proc/<pid>/task
  epoll_event events[64];
  std::vector<Job*> incoming;
  std::vector<uint64_t> cancels;
  std::vector<std::pair<Job*, int>> ended;
  for (;;) {
    bool stop;
    {
      std::lock_guard<std::mutex> lock(w->mu);
      incoming.swap(w->incoming);
      cancels.swap(w->cancels);
      stop = w->stopping;
    }
    if (stop) {
      for (Job* j : incoming) CloseJob(j);
      break;
    }
    for (Job* j : incoming) {
      w->jobs[j->id] = j;
      epoll_event ev{};
      ev.events = EPOLLOUT | EPOLLET;
      ev.data.u64 = j->id;
      if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, j->sock, &ev) != 0) {
        Finish(w, j, errno);
        continue;
      }
      j->registered = true;
    }
    incoming.clear();
    for (uint64_t id : cancels) {
      auto it = w->jobs.find(id);
      if (it != w->jobs.end()) Finish(w, it->second, ECANCELED);
    }
    cancels.clear();

    bool anyReady = false;
    for (auto& [id, j] : w->jobs) {
      if (!j->ready) continue;
      int err = Turn(w, j);
      if (err != 0 || j->remaining == 0) {
        ended.emplace_back(j, err);
      } else if (j->ready) {
        anyReady = true;  // stopped at the turn cap, not at EAGAIN
      }
    }
    for (auto& [j, err] : ended) Finish(w, j, err);
    ended.clear();

    int n = epoll_wait(w->epfd, events, 64, anyReady ? 0 : -1);
    for (int i = 0; i < n; i++) {
      if (events[i].data.u64 == 0) {
        uint64_t count;
        ssize_t ignored = read(w->evfd, &count, sizeof count);
        (void)ignored;
        continue;
      }
      auto it = w->jobs.find(events[i].data.u64);
      if (it != w->jobs.end()) it->second->ready = true;  // EPOLLERR/EPOLLHUP too: sendfile reports why
    }
  }
  for (auto& [id, j] : w->jobs) CloseJob(j);
  w->jobs.clear();
}

// JS thread, at environment teardown (or instance data finalization): stops and joins every worker.
void Stop(Engine* e) {
  e->stopped = true;
  for (auto& w : e->workers) {
    if (w->thread == nullptr) continue;
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->stopping = true;
    }
    Wake(w.get());
  }
  for (auto& w : e->workers) {
    if (w->thread != nullptr) {
      w->thread->join();
      delete w->thread;
      w->thread = nullptr;
    }
    if (w->epfd >= 0) close(w->epfd);
    if (w->evfd >= 0) close(w->evfd);
    w->epfd = w->evfd = -1;
    e->bytesOfStoppedWorkers += w->bytesSent.load();
  }
  e->workers.clear();
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
    std::lock_guard<std::mutex> lock(e->tsfnMu);
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
  napi_ref ref = it->second.ref;
  Worker* w = it->second.worker;
  e->callbacks.erase(it);
  // Workers live until Stop, and Stop runs after the last delivery (or clears the callbacks' use).
  if (!e->stopped && w != nullptr && w->load > 0) w->load--;
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

// JS thread: the eventfd, epoll set and thread of one worker. False (errno set) when one could not be made.
bool StartWorker(Worker* w) {
  w->evfd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  w->epfd = epoll_create1(EPOLL_CLOEXEC);
  if (w->evfd < 0 || w->epfd < 0) return false;
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0;  // job ids start at 1
  if (epoll_ctl(w->epfd, EPOLL_CTL_ADD, w->evfd, &ev) != 0) return false;
  // Signals stay with Node's threads (SIGPIPE is ignored process-wide by Node anyway).
  sigset_t all, previous;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &previous);
  w->thread = new std::thread(Run, w);  // built without exceptions: a thread that cannot start aborts, as before
  pthread_sigmask(SIG_SETMASK, &previous, nullptr);
  return true;
}

bool EnsureWorkers(napi_env env, Engine* e) {
  if (!e->workers.empty()) return true;
  if (e->stopped) {
    napi_throw_error(env, nullptr, "netboot_sendfile: the engine has stopped");
    return false;
  }
  if (e->tsfn == nullptr) {
    napi_value name;
    napi_create_string_utf8(env, "netboot_sendfile", NAPI_AUTO_LENGTH, &name);
    if (napi_create_threadsafe_function(env, nullptr, nullptr, name, 0, 1, e, OnTsfnFinalize, e, Deliver, &e->tsfn) != napi_ok) {
      napi_throw_error(env, nullptr, "netboot_sendfile: napi_create_threadsafe_function failed");
      return false;
    }
    e->tsfnAlive = true;
    napi_unref_threadsafe_function(env, e->tsfn);
    e->tsfnReferenced = false;
  }
  unsigned count = ThreadCount();
  for (unsigned i = 0; i < count; i++) {
    auto w = std::make_unique<Worker>();
    w->engine = e;
    w->index = i;
    bool ok = StartWorker(w.get());
    int err = errno;
    e->workers.push_back(std::move(w));
    if (!ok) {
      if (i > 0) {  // fewer threads than asked: the ones running will do
        Worker* last = e->workers.back().get();
        if (last->epfd >= 0) close(last->epfd);
        if (last->evfd >= 0) close(last->evfd);
        e->workers.pop_back();
        break;
      }
      Stop(e);
      e->stopped = false;  // nothing ran: a later start may try again
      ThrowErrno(env, "netboot_sendfile: starting a worker", err);
      return false;
    }
  }
  return true;
}

Engine* EngineOf(napi_env env) {
  void* data = nullptr;
  napi_get_instance_data(env, &data);
  return static_cast<Engine*>(data);
}

// JS thread: the worker with the fewest jobs, searching from a rotating start so ties spread.
Worker* PickWorker(Engine* e) {
  size_t count = e->workers.size();
  Worker* best = nullptr;
  for (size_t k = 0; k < count; k++) {
    Worker* w = e->workers[(e->nextWorker + k) % count].get();
    if (best == nullptr || w->load < best->load) best = w;
  }
  e->nextWorker = static_cast<unsigned>((e->nextWorker + 1) % count);
  return best;
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

  // Only stream sockets in non-blocking mode: a blocking one would stall every job of its worker.
  int type = 0;
  socklen_t typeLength = sizeof type;
  if (getsockopt(socketFd, SOL_SOCKET, SO_TYPE, &type, &typeLength) != 0) return ThrowErrno(env, "netboot_sendfile: not a socket", errno);
  int flags = fcntl(socketFd, F_GETFL);
  if (type != SOCK_STREAM || flags < 0 || (flags & O_NONBLOCK) == 0) return ThrowErrno(env, "netboot_sendfile: not a non-blocking stream socket", EINVAL);

  if (!EnsureWorkers(env, e)) return nullptr;
  int sock = fcntl(socketFd, F_DUPFD_CLOEXEC, 0);
  if (sock < 0) return ThrowErrno(env, "netboot_sendfile: dup socket", errno);
  int file = fcntl(fileFd, F_DUPFD_CLOEXEC, 0);
  if (file < 0) {
    int err = errno;
    close(sock);
    return ThrowErrno(env, "netboot_sendfile: dup file", err);
  }

  uint64_t id = e->nextId++;
  Worker* w = PickWorker(e);
  napi_ref ref;
  napi_create_reference(env, argv[4], 1, &ref);
  e->callbacks[id] = Callback{ref, w};
  w->load++;
  if (!e->tsfnReferenced && e->tsfn != nullptr) {
    napi_ref_threadsafe_function(env, e->tsfn);
    e->tsfnReferenced = true;
  }
  e->started++;
  {
    std::lock_guard<std::mutex> lock(w->mu);
    w->incoming.push_back(new Job{id, sock, file, offset, length});
  }
  Wake(w);
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
  auto it = id > 0 ? e->callbacks.find(static_cast<uint64_t>(id)) : e->callbacks.end();
  if (it != e->callbacks.end() && !e->stopped) {
    Worker* w = it->second.worker;
    {
      std::lock_guard<std::mutex> lock(w->mu);
      w->cancels.push_back(static_cast<uint64_t>(id));
    }
    Wake(w);
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
  int64_t bytes = e->bytesOfStoppedWorkers;
  napi_value result, started, sent, threads, threadBytes;
  napi_create_object(env, &result);
  napi_create_array_with_length(env, e->workers.size(), &threadBytes);
  for (size_t i = 0; i < e->workers.size(); i++) {
    int64_t b = e->workers[i]->bytesSent.load(std::memory_order_relaxed);
    bytes += b;
    napi_value v;
    napi_create_double(env, static_cast<double>(b), &v);
    napi_set_element(env, threadBytes, static_cast<uint32_t>(i), v);
  }
  napi_create_double(env, e->started, &started);
  napi_create_double(env, static_cast<double>(bytes), &sent);
  napi_create_uint32(env, static_cast<uint32_t>(e->workers.size()), &threads);
  napi_set_named_property(env, result, "started", started);
  napi_set_named_property(env, result, "bytesSent", sent);
  napi_set_named_property(env, result, "threads", threads);
  napi_set_named_property(env, result, "threadBytes", threadBytes);
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
