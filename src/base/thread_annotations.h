// Clang thread-safety annotations (Abseil's names), checked by the clang -Wthread-safety
// build in scripts/test.sh; no-ops for g++. Declare the lock order where the lock is
// declared (HP_ACQUIRED_AFTER), as liburcu does in prose.
#pragma once

#include <mutex>

#if defined(__clang__)
#define HP_TSA(x) __attribute__((x))
#else
#define HP_TSA(x)
#endif

#define HP_CAPABILITY(x) HP_TSA(capability(x))
#define HP_SCOPED_CAPABILITY HP_TSA(scoped_lockable)
#define HP_GUARDED_BY(x) HP_TSA(guarded_by(x))
#define HP_PT_GUARDED_BY(x) HP_TSA(pt_guarded_by(x))
#define HP_ACQUIRED_AFTER(...) HP_TSA(acquired_after(__VA_ARGS__))
#define HP_ACQUIRED_BEFORE(...) HP_TSA(acquired_before(__VA_ARGS__))
#define HP_REQUIRES(...) HP_TSA(requires_capability(__VA_ARGS__))
#define HP_EXCLUDES(...) HP_TSA(locks_excluded(__VA_ARGS__))
#define HP_ACQUIRE(...) HP_TSA(acquire_capability(__VA_ARGS__))
#define HP_RELEASE(...) HP_TSA(release_capability(__VA_ARGS__))
#define HP_TRY_ACQUIRE(...) HP_TSA(try_acquire_capability(__VA_ARGS__))
#define HP_ASSERT_CAPABILITY(x) HP_TSA(assert_capability(x))
#define HP_NO_THREAD_SAFETY_ANALYSIS HP_TSA(no_thread_safety_analysis)

namespace hp {

// std::mutex with a capability, so GUARDED_BY can name it.
class HP_CAPABILITY("mutex") Mutex {
 public:
  void lock() HP_ACQUIRE() { m_.lock(); }
  void unlock() HP_RELEASE() { m_.unlock(); }
  bool try_lock() HP_TRY_ACQUIRE(true) { return m_.try_lock(); }
  std::mutex& native() { return m_; }
  // Tells the analysis that this mutex is held where it was locked under another name:
  // the analysis compares lock expressions as written, so `reg.mu_` and
  // `Registry::get().mu_` are two mutexes to it. No run-time check.
  void assert_held() const HP_ASSERT_CAPABILITY(this) {}
  // After fork() in the child only: the parent's holder does not exist there.
  void reinit_after_fork() HP_NO_THREAD_SAFETY_ANALYSIS { new (&m_) std::mutex(); }

 private:
  std::mutex m_;
};

class HP_SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex& m) HP_ACQUIRE(m) : m_(m) { m_.lock(); }
  ~MutexLock() HP_RELEASE() { m_.unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex& m_;
};

}  // namespace hp
