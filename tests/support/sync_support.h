// Helpers shared by the sync-layer tests: waiting for a condition with a generous bound,
// a one-shot event, a reader thread held inside a section, and a hang detector that turns
// "the test hangs until ctest's timeout" into a failure that names what was stuck.
//
// None of these is a timing assertion: every bound is tens of seconds, far beyond what a
// correct run needs on a busy machine; it only stops a broken run from hanging.
#pragma once

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <thread>
#include <utility>

#include "sync/domain.h"

namespace hp::test {

// The bound every wait below uses unless told otherwise.
inline constexpr std::chrono::seconds kHangBound{30};

// Polls pred every millisecond until it is true (returns true) or `bound` has passed
// (returns false).
template <class Pred>
bool eventually(Pred pred, std::chrono::milliseconds bound = kHangBound) {
  auto end = std::chrono::steady_clock::now() + bound;
  while (!pred()) {
    if (std::chrono::steady_clock::now() > end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return true;
}

// A one-shot event.
class Event {
 public:
  void set() {
    std::lock_guard l(m_);
    set_ = true;
    cv_.notify_all();
  }
  void wait() {
    std::unique_lock l(m_);
    cv_.wait(l, [&] { return set_; });
  }
  bool wait_for(std::chrono::milliseconds d) {
    std::unique_lock l(m_);
    return cv_.wait_for(l, d, [&] { return set_; });
  }
  bool is_set() {
    std::lock_guard l(m_);
    return set_;
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool set_ = false;
};

// A reader thread that enters a section of `d`, reports it, and leaves when released (or
// destroyed).
template <class D>
class HeldReader {
 public:
  explicit HeldReader(D& d)
      : t_([this, &d] {
          sync::ReadToken tok = d.read_lock();
          in_.set_value();
          out_.get_future().wait();
          d.read_unlock(tok);
        }) {
    in_.get_future().wait();
  }
  ~HeldReader() { release(); }
  HeldReader(const HeldReader&) = delete;
  HeldReader& operator=(const HeldReader&) = delete;
  // Returns once the reader has left its section.
  void release() {
    if (t_.joinable()) {
      out_.set_value();
      t_.join();
    }
  }

 private:
  std::promise<void> in_, out_;
  std::thread t_;
};

// Hang detector: runs fn() on its own thread and waits for it up to `bound`. If it has not
// returned by then, reports a failure naming `what` and the state(): text, then ends the
// test program with exit status 1: the stuck thread cannot be stopped, and it refers to
// objects on the caller's stack, so the program cannot go on.
inline void finish_within(const std::string& what, const std::function<void()>& fn,
                          const std::function<std::string()>& state = {},
                          std::chrono::milliseconds bound = kHangBound) {
  std::promise<void> done;
  std::future<void> f = done.get_future();
  std::thread t([&] {
    fn();
    done.set_value();
  });
  if (f.wait_for(bound) != std::future_status::ready) {
    ADD_FAILURE() << what << " did not finish within " << bound.count() << " ms (a hang)"
                  << (state ? "; state: " + state() : std::string());
    std::fprintf(stderr,
                 "hang detector: ending the test program (the stuck thread cannot be stopped)\n");
    std::fflush(nullptr);
    std::_Exit(1);
  }
  t.join();
}

}  // namespace hp::test
