// The C++26 <rcu> shape: the public include/hotprobe/rcu.h (its implementation,
// src/rcu_api.cc, is compiled into this test because tests/sync programs link hotprobe_sync,
// not the shared library) and the internal inline src/sync/rcu.h.
#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "../../src/rcu_api.cc"  // NOLINT(bugprone-suspicious-include): see above
#include "hotprobe/rcu.h"
#include "sync/rcu.h"

namespace {

using namespace std::chrono_literals;

constexpr std::uint64_t kLive = 0x0123'4567'89ab'cdefULL;
constexpr std::uint64_t kPoison = 0xdeaddeaddeaddeadULL;

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

 private:
  std::mutex m_;
  std::condition_variable cv_;
  bool set_ = false;
};

// ---- public API ----

struct PubObj;
struct PubPoison {
  void operator()(PubObj* o) const noexcept;
};
struct PubObj : hotprobe::rcu_obj_base<PubObj, PubPoison> {
  std::atomic<std::uint64_t> v{kLive};
  std::atomic<bool>* deleter_in_reader = nullptr;
};
void PubPoison::operator()(PubObj* o) const noexcept {
  if (o->deleter_in_reader) o->deleter_in_reader->store(hp::sync::tasks_trace().in_reader());
  o->v.store(kPoison);  // poisoned, freed by the test
}

TEST(RcuApi, DomainIsBasicLockableAndNests) {
  hotprobe::rcu_domain& d = hotprobe::rcu_default_domain();
  EXPECT_EQ(&d, &hotprobe::rcu_default_domain());
  EXPECT_FALSE(hp::sync::tasks_trace().in_reader());
  {
    std::scoped_lock l(d);
    EXPECT_TRUE(hp::sync::tasks_trace().in_reader());
    d.lock();
    d.unlock();
    EXPECT_TRUE(hp::sync::tasks_trace().in_reader());
  }
  EXPECT_FALSE(hp::sync::tasks_trace().in_reader());
}

TEST(RcuApi, SynchronizeWaitsForEarlierReader) {
  Event entered;
  std::atomic<bool> left{false};
  std::thread r([&] {
    std::scoped_lock l(hotprobe::rcu_default_domain());
    entered.set();
    std::this_thread::sleep_for(150ms);
    left.store(true);
  });
  entered.wait();
  hotprobe::rcu_synchronize();
  EXPECT_TRUE(left.load());
  r.join();
}

// rcu_obj_base::retire: the deleter runs after the reader that could see the object left,
// outside any read section, and rcu_barrier() waits for it.
TEST(RcuApi, ObjBaseRetireAfterGracePeriod) {
  auto* obj = new PubObj;
  std::atomic<bool> in_reader{true};
  obj->deleter_in_reader = &in_reader;
  std::atomic<PubObj*> ptr{obj};
  Event entered, release;
  std::atomic<std::uint64_t> seen{0};
  std::thread r([&] {
    std::scoped_lock l(hotprobe::rcu_default_domain());
    PubObj* p = ptr.load(std::memory_order_acquire);
    entered.set();
    release.wait();
    std::this_thread::sleep_for(50ms);
    seen.store(p->v.load());
  });
  entered.wait();
  ptr.store(nullptr, std::memory_order_release);
  obj->retire();
  release.set();
  r.join();
  hotprobe::rcu_barrier();
  EXPECT_EQ(seen.load(), kLive);
  EXPECT_EQ(obj->v.load(), kPoison);
  EXPECT_FALSE(in_reader.load());
  delete obj;
}

TEST(RcuApi, ObjBaseDefaultDeleterDeletes) {
  static std::atomic<int> destroyed{0};
  struct Counted : hotprobe::rcu_obj_base<Counted> {
    ~Counted() { destroyed.fetch_add(1); }
  };
  for (int i = 0; i < 10; i++)
    (new Counted)->retire();
  hotprobe::rcu_barrier();
  EXPECT_EQ(destroyed.load(), 10);  // and ASan/LSan see no leak
}

TEST(RcuApi, RetireAnyPointerWithDeleter) {
  std::atomic<int> calls{0};
  auto* x = new int(7);
  hotprobe::rcu_retire(x, [&calls](int* p) {
    calls.fetch_add(*p);
    delete p;
  });
  hotprobe::rcu_retire(new double(1.5));  // default_delete
  hotprobe::rcu_barrier();
  EXPECT_EQ(calls.load(), 7);
}

TEST(RcuApi, RetireInsideReadSectionRunsAfterIt) {
  std::atomic<bool> left{false};
  std::atomic<bool> saw_left{false};
  {
    std::scoped_lock l(hotprobe::rcu_default_domain());
    hotprobe::rcu_retire(new int(0), [&](int* p) {
      saw_left.store(left.load());
      delete p;
    });
    std::this_thread::sleep_for(50ms);
    left.store(true);
  }
  hotprobe::rcu_barrier();
  EXPECT_TRUE(saw_left.load());
}

// Copies of an rcu_obj_base start unretired and can be retired on their own.
TEST(RcuApi, CopiedObjectsRetireIndependently) {
  static std::atomic<int> destroyed{0};
  struct C : hotprobe::rcu_obj_base<C> {
    int v = 1;
    ~C() { destroyed.fetch_add(1); }
  };
  auto* a = new C;
  auto* b = new C(*a);
  a->retire();
  b->retire();
  hotprobe::rcu_barrier();
  EXPECT_EQ(destroyed.load(), 2);
}

// A lambda deleter type (not assignable) works with rcu_obj_base too.
TEST(RcuApi, ObjBaseWithLambdaDeleterType) {
  static std::atomic<int> calls{0};
  auto del = [](auto* p) {
    calls.fetch_add(1);
    delete p;
  };
  struct L : hotprobe::rcu_obj_base<L, decltype(del)> {};
  (new L)->retire(del);
  hotprobe::rcu_barrier();
  EXPECT_EQ(calls.load(), 1);
}

// ---- internal inline equivalent ----

struct IntObj : hp::sync::RcuObjBase<IntObj> {
  static inline std::atomic<int> destroyed{0};
  ~IntObj() { destroyed.fetch_add(1); }
};

TEST(RcuInternal, LockableAndRetire) {
  auto dom = hp::sync::rcu_default();
  {
    std::scoped_lock l(dom);
    EXPECT_TRUE(hp::sync::tasks_trace().in_reader());
    (new IntObj)->retire();
  }
  EXPECT_FALSE(hp::sync::tasks_trace().in_reader());
  hp::sync::rcu_retire(new IntObj);
  hp::sync::tasks_trace().barrier();
  EXPECT_EQ(IntObj::destroyed.load(), 2);
}

}  // namespace
