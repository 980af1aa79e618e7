// A session's output: each probed thread's ring (ring.h), registered at the thread's first
// write and handed to the reporters at its exit, and the reporter's drain of them into the
// messages it sends (docs/design/agent.md, "Threads, buffers and loss accounting").
#include <pthread.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include <array>
#include <mutex>
#include <string>
#include <string_view>

#include "agent/protocol.h"
#include "agent/session.h"
#include "core/thread_state.h"

namespace hp::agent {

using hp::core::OwnWork;

namespace {

constexpr std::size_t kRingBytes = 128 * 1024;

// A thread's rings, one per session it wrote to. At the thread's exit they are handed to
// the reporters, which free them once drained: by a pthread key's destructor, not a
// thread_local one, whose registration allocates a node that glibc frees at the thread's
// exit, outside any guard (a probe on free would count it).
struct TlsRings {
  static constexpr std::size_t kSlots = 4;
  std::array<Session*, kSlots> session{};
  std::array<Session::ThreadRing*, kSlots> ring{};
  bool exiting = false;  // past the key destructor: a ring made now is an exiting thread's
};
thread_local TlsRings t_rings;

// The thread's key destructor: its rings stay its own for its last steps (glibc's frees
// after every key destructor may hit probes that print), marked exiting: the reporter lets
// go for the thread once its tid is gone. A ring whose session ended is let go now.
void release_thread_rings(void*) {
  OwnWork own;
  t_rings.exiting = true;
  for (auto*& r : t_rings.ring) {
    if (!r) continue;
    if (r->session_gone.load(std::memory_order_acquire)) {
      r->producer_gone.store(true, std::memory_order_release);
      Session::ThreadRing::release(r);
      r = nullptr;
    } else {
      r->exiting.store(true, std::memory_order_release);
    }
  }
}

// Whether thread `tid` of this process is gone (signal 0; a tid reused by a new thread
// only keeps the ring until that one is gone too).
bool thread_gone(int tid) {
  return ::syscall(SYS_tgkill, ::syscall(SYS_getpid), tid, 0) == -1 && errno == ESRCH;
}
// The reporter looks at the rings of threads not known to be exiting (a thread whose first
// write came after its key destructors) every kSweepDrains drains.
constexpr unsigned kSweepDrains = 200;
pthread_key_t g_rings_key;
const bool g_rings_key_made = pthread_key_create(&g_rings_key, &release_thread_rings) == 0;
// Set on the reporter thread and during BEGIN: output is appended here directly (those
// threads are the consumer, and END may print more than a ring holds).
thread_local std::string* t_direct = nullptr;

}  // namespace

void Session::set_direct_output(std::string* out) noexcept {
  t_direct = out;
}

bool Session::ring_of_this_thread(const ThreadRing* r) noexcept {
  for (auto* t : t_rings.ring)
    if (t == r) return true;
  return false;
}

void Session::drain_and_send() {
  std::string lost_msg;
  const bool sweep = ++drains_ % kSweepDrains == 0;
  {
    std::scoped_lock lock(rings_mu_);
    std::uint64_t lost = lost_retired_;
    for (auto it = rings_.begin(); it != rings_.end();) {
      ThreadRing* tr = *it;
      bool gone = tr->producer_gone.load(std::memory_order_acquire);
      // A thread that ended after its key destructors: it writes no more; let go for it.
      if (!gone && (sweep || tr->exiting.load(std::memory_order_acquire)) &&
          thread_gone(tr->tid.load(std::memory_order_relaxed))) {
        tr->producer_gone.store(true, std::memory_order_relaxed);
        ThreadRing::release(tr);
        gone = true;
      }
      tr->ring.drain(out_, [this](std::string& before, std::string_view record) {
        queue_request(before, record);
      });
      lost += tr->ring.lost();
      if (gone) {
        lost_retired_ += tr->ring.lost();
        ThreadRing::release(tr);
        it = rings_.erase(it);
      } else {
        ++it;
      }
    }
    if (lost > lost_sent_) {
      put<std::uint64_t>(lost_msg, lost - lost_sent_);
      lost_sent_ = lost;
    }
  }
  // Sent outside rings_mu_: a full socket must not hold up a thread's first write.
  if (!lost_msg.empty()) send_checked(encode(Msg::lost, lost_msg));
  send_queued();
  if (!out_.empty()) {
    send_text_checked(Msg::output, out_);
    out_.clear();
  }
}

// The calling thread's ring for this session; made (and registered) at its first write.
// A slot whose session ended is reused.
Session::ThreadRing* Session::ring_for_this_thread() {
  auto& t = t_rings;
  for (std::size_t i = 0; i < TlsRings::kSlots; ++i) {
    if (t.session[i] == this && t.ring[i] &&
        !t.ring[i]->session_gone.load(std::memory_order_acquire))
      return t.ring[i];
  }
  for (std::size_t i = 0; i < TlsRings::kSlots; ++i) {
    if (t.ring[i] && !t.ring[i]->session_gone.load(std::memory_order_acquire)) continue;
    if (t.ring[i]) ThreadRing::release(t.ring[i]);
    auto* r = new ThreadRing(kRingBytes);
    r->tid.store(static_cast<int>(::syscall(SYS_gettid)), std::memory_order_relaxed);
    r->exiting.store(t.exiting, std::memory_order_relaxed);
    {
      std::scoped_lock lock(rings_mu_);
      rings_.push_back(r);
    }
    t.session[i] = this;
    t.ring[i] = r;
    if (g_rings_key_made) pthread_setspecific(g_rings_key, &t);  // release at thread exit
    return r;
  }
  return nullptr;
}

void Session::write(std::string_view text) {
  if (t_direct) {
    t_direct->append(text);
    return;
  }
  if (ThreadRing* r = ring_for_this_thread()) {
    r->ring.write(text);
  } else {
    std::scoped_lock lock(rings_mu_);
    ++lost_retired_;  // more sessions than a thread has slots: counted, not dropped silently
  }
}

void Session::request(Request kind, std::string_view text) {
  if (t_direct) {  // the kind byte, then the text, as a ring record holds them
    queue_request(*t_direct, std::string(1, static_cast<char>(kind)).append(text));
    return;
  }
  if (ThreadRing* r = ring_for_this_thread()) {
    r->ring.write_request(static_cast<char>(kind), text);
  } else {
    std::scoped_lock lock(rings_mu_);
    ++lost_retired_;
  }
}

void Session::queue_request(std::string& before, std::string_view record) {
  if (!before.empty()) queued_.emplace_back(Msg::output, std::move(before));
  before.clear();
  queued_.emplace_back(Msg::command, std::string(record));
}

void Session::send_queued() {
  for (auto& [type, text] : queued_) {
    if (type == Msg::output) {
      send_text_checked(type, text);
    } else {
      send_checked(encode(type, text));
    }
  }
  queued_.clear();
}

}  // namespace hp::agent
