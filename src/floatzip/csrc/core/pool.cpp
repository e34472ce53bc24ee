#include "core/pool.h"

#include <sched.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <cstdlib>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fz {

namespace {

thread_local bool in_job = false;

class Pool {
 public:
  explicit Pool(int workers) : pid_(getpid()) {
    for (int i = 0; i < workers; ++i) {
      threads_.emplace_back([this] { work(); });
      threads_.back().detach();
    }
  }
  ~Pool() = delete;
  int workers() const { return int(threads_.size()); }
  // a forked child has none of the parent's threads: it runs every job on the calling thread
  bool usable() const { return getpid() == pid_; }

  // false if another job holds the pool (the caller then runs the items itself)
  bool run(size_t n, int helpers, const std::function<void(size_t)>& fn) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> g(m_);
      fn_ = &fn;
      n_ = n;
      next_.store(0);
      done_ = 0;
      error_ = nullptr;
      seats_ = helpers;
      ++generation_;
    }
    wake_.notify_all();
    in_job = true;
    size_t mine = drain();
    in_job = false;
    std::unique_lock<std::mutex> g(m_);
    done_ += mine;
    finished_.wait(g, [&] { return done_ == n_ && active_ == 0; });
    fn_ = nullptr;
    std::exception_ptr err = error_;
    g.unlock();
    if (err) std::rethrow_exception(err);
    return true;
  }

 private:
  size_t drain() {
    size_t count = 0;
    for (;;) {
      size_t i = next_.fetch_add(1);
      if (i >= n_) break;
      try {
        (*fn_)(i);
      } catch (...) {
        std::lock_guard<std::mutex> g(m_);
        if (!error_) error_ = std::current_exception();
      }
      ++count;
    }
    return count;
  }

  void work() {
    in_job = true;
    uint64_t seen = 0;
    std::unique_lock<std::mutex> g(m_);
    for (;;) {
      wake_.wait(g, [&] { return generation_ != seen && seats_ > 0 && fn_ != nullptr; });
      seen = generation_;
      --seats_;
      ++active_;
      g.unlock();
      size_t mine = drain();
      g.lock();
      done_ += mine;
      --active_;
      if (done_ == n_ && active_ == 0) finished_.notify_all();
    }
  }

  pid_t pid_;
  std::vector<std::thread> threads_;
  std::mutex busy_;
  std::mutex m_;
  std::condition_variable wake_, finished_;
  const std::function<void(size_t)>* fn_ = nullptr;
  size_t n_ = 0;
  std::atomic<size_t> next_{0};
  size_t done_ = 0;
  int active_ = 0;
  int seats_ = 0;
  uint64_t generation_ = 0;
  std::exception_ptr error_;
};

Pool& pool() {
  // never destroyed: joining at exit could wait on threads a fork left behind
  static Pool* p = new Pool(default_threads() - 1);
  return *p;
}

}  // namespace

int default_threads() {
  static const int n = [] {
    if (const char* env = std::getenv("FLOATZIP_NUM_THREADS")) {
      int v = std::atoi(env);
      if (v >= 1) return v;
    }
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
      int c = CPU_COUNT(&set);
      if (c >= 1) return c;
    }
    unsigned h = std::thread::hardware_concurrency();
    return h ? int(h) : 1;
  }();
  return n;
}

void parallel_for(size_t n, int threads, const std::function<void(size_t)>& fn) {
  if (n == 0) return;
  if (threads > default_threads()) threads = default_threads();
  if (n == 1 || threads <= 1 || in_job) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  Pool& p = pool();
  if (!p.usable()) {
    for (size_t i = 0; i < n; ++i) fn(i);
    return;
  }
  int helpers = threads - 1;
  if (helpers > p.workers()) helpers = p.workers();
  if (size_t(helpers) > n - 1) helpers = int(n - 1);
  if (!p.run(n, helpers, fn)) {
    for (size_t i = 0; i < n; ++i) fn(i);
  }
}

}  // namespace fz
