#include "agent/credentials.h"

#include <linux/capability.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>

#include "core/thread_state.h"

namespace hp::agent {
namespace {

// glibc's internal signal for set*id (nptl: SIGSETXID = __SIGRTMIN + 1).
constexpr int kSetxidSignal = 33;
// PR_SET_SECUREBITS' keep-caps bit (linux/securebits.h: 1 << SECURE_KEEP_CAPS).
constexpr int kSecbitKeepCaps = 1 << 4;

// A thread's credential state that capset and prctl change for that thread alone.
struct CredState {
  std::uint64_t effective = 0, permitted = 0, inheritable = 0;
  std::uint64_t bounding = 0, ambient = 0;
  std::uint64_t securebits = 0;
  bool operator==(const CredState&) const = default;
};
constexpr int kWords = 6;

// The kernel's struct sigaction (rt_sigaction on x86-64), read and written with the system
// call: glibc's sigaction refuses its internal signals.
struct KernelSigaction {
  void (*handler)(int, siginfo_t*, void*);
  unsigned long flags;
  void (*restorer)();
  std::uint64_t mask;
};

std::atomic<bool> g_relay_installed{false};
void (*g_glibc_handler)(int, siginfo_t*, void*) = nullptr;  // set before the relay is in place
int g_last_cap = -1;                                        // the highest capability known

long raw_prctl(int option, unsigned long a = 0, unsigned long b = 0) noexcept {
  return ::syscall(SYS_prctl, option, a, b, 0UL, 0UL);
}

bool read_own(CredState& s) noexcept {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  if (::syscall(SYS_capget, &header, data) != 0) return false;
  auto both = [](std::uint32_t lo, std::uint32_t hi) {
    return static_cast<std::uint64_t>(lo) | static_cast<std::uint64_t>(hi) << 32;
  };
  s.effective = both(data[0].effective, data[1].effective);
  s.permitted = both(data[0].permitted, data[1].permitted);
  s.inheritable = both(data[0].inheritable, data[1].inheritable);
  const long bits = raw_prctl(PR_GET_SECUREBITS);
  if (bits < 0) return false;
  s.securebits = static_cast<std::uint64_t>(bits);
  s.bounding = s.ambient = 0;
  for (int c = 0; c <= g_last_cap; ++c) {
    if (raw_prctl(PR_CAPBSET_READ, static_cast<unsigned long>(c)) == 1)
      s.bounding |= std::uint64_t{1} << c;
    if (raw_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, static_cast<unsigned long>(c)) == 1)
      s.ambient |= std::uint64_t{1} << c;
  }
  return true;
}

bool set_caps(std::uint64_t effective, std::uint64_t permitted,
              std::uint64_t inheritable) noexcept {
  __user_cap_header_struct header{_LINUX_CAPABILITY_VERSION_3, 0};
  __user_cap_data_struct data[2]{};
  for (int i = 0; i < 2; ++i) {
    data[i].effective = static_cast<std::uint32_t>(effective >> (32 * i));
    data[i].permitted = static_cast<std::uint32_t>(permitted >> (32 * i));
    data[i].inheritable = static_cast<std::uint32_t>(inheritable >> (32 * i));
  }
  return ::syscall(SYS_capset, &header, data) == 0;
}

// The calling thread takes state `t`: each step while it still holds what the step needs
// (CAP_SETPCAP for the bounding set and the securebits, a capability permitted and
// inheritable to make it ambient), the sets themselves last. A step the kernel refuses is
// one the program's thread could not have taken from the same state either.
void adopt(const CredState& t) noexcept {
  CredState cur;
  if (!read_own(cur) || cur == t) return;
  if (!set_caps(cur.permitted, cur.permitted, t.inheritable))
    (void)set_caps(cur.permitted, cur.permitted, cur.inheritable);
  for (int c = 0; c <= g_last_cap; ++c) {
    const std::uint64_t bit = std::uint64_t{1} << c;
    if ((cur.bounding & bit) && !(t.bounding & bit))
      (void)raw_prctl(PR_CAPBSET_DROP, static_cast<unsigned long>(c));
  }
  if (cur.ambient != t.ambient) {
    (void)raw_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL);
    for (int c = 0; c <= g_last_cap; ++c) {
      if (t.ambient & (std::uint64_t{1} << c))
        (void)raw_prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, static_cast<unsigned long>(c));
    }
  }
  if (cur.securebits != t.securebits &&
      raw_prctl(PR_SET_SECUREBITS, static_cast<unsigned long>(t.securebits)) != 0)
    (void)raw_prctl(PR_SET_KEEPCAPS, (t.securebits & kSecbitKeepCaps) ? 1 : 0);
  (void)set_caps(t.effective, t.permitted, t.inheritable);
}

// The state published by the last set*id caller: a sequence lock (odd while a caller
// writes; 0 before the first), words that a relay reads again if the sequence moved.
std::atomic<std::uint64_t> g_seq{0};
std::atomic<std::uint64_t> g_words[kWords];

void store_published(const CredState& s) noexcept {
  std::uint64_t seq = g_seq.load(std::memory_order_relaxed);
  // Two program threads changing credentials at once: one writes at a time.
  while ((seq & 1) != 0 || !g_seq.compare_exchange_weak(seq, seq + 1, std::memory_order_acquire,
                                                        std::memory_order_relaxed))
    seq = g_seq.load(std::memory_order_relaxed);
  const std::uint64_t w[kWords] = {s.effective, s.permitted, s.inheritable,
                                   s.bounding,  s.ambient,   s.securebits};
  for (int i = 0; i < kWords; ++i)
    g_words[i].store(w[i], std::memory_order_relaxed);
  g_seq.store(seq + 2, std::memory_order_release);
}

bool load_published(CredState& s) noexcept {
  for (;;) {
    const std::uint64_t seq = g_seq.load(std::memory_order_acquire);
    if (seq == 0) return false;
    if (seq & 1) continue;
    std::uint64_t w[kWords];
    for (int i = 0; i < kWords; ++i)
      w[i] = g_words[i].load(std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_acquire);
    if (g_seq.load(std::memory_order_relaxed) != seq) continue;
    s = CredState{w[0], w[1], w[2], w[3], w[4], w[5]};
    return true;
  }
}

// In front of glibc's handler: on a thread of hotprobe's, the broadcast's caller's state
// first. glibc's handler checks the signal's origin itself.
void setxid_relay(int sig, siginfo_t* info, void* context) {
  const int saved = errno;
  CredState t;
  if (info && info->si_code == SI_TKILL && hp::core::is_own_thread() && load_published(t)) adopt(t);
  errno = saved;
  g_glibc_handler(sig, info, context);
}

}  // namespace

bool install_setxid_relay() noexcept {
#if defined(HOTPROBE_TSAN)
  // ThreadSanitizer's runtime has a thread of its own, which takes no capset either (a
  // program dropping root as setpriv does aborts under TSan alone), and instrumented code
  // run by a handler installed behind its back faults on that thread.
  return false;
#endif
  if (g_relay_installed.load(std::memory_order_acquire)) return true;
  static std::atomic<bool> claimed{false};
  if (claimed.exchange(true)) return g_relay_installed.load(std::memory_order_acquire);
  while (g_last_cap < 63 &&
         raw_prctl(PR_CAPBSET_READ, static_cast<unsigned long>(g_last_cap) + 1) >= 0)
    ++g_last_cap;
  KernelSigaction old{};
  if (::syscall(SYS_rt_sigaction, kSetxidSignal, nullptr, &old, sizeof old.mask) != 0) return false;
  const auto handler = reinterpret_cast<std::uintptr_t>(old.handler);
  if (handler == reinterpret_cast<std::uintptr_t>(SIG_DFL) ||
      handler == reinterpret_cast<std::uintptr_t>(SIG_IGN) || !(old.flags & SA_SIGINFO))
    return false;
  g_glibc_handler = old.handler;
  KernelSigaction relay = old;
  relay.handler = &setxid_relay;
  if (::syscall(SYS_rt_sigaction, kSetxidSignal, &relay, nullptr, sizeof relay.mask) != 0)
    return false;
  g_relay_installed.store(true, std::memory_order_release);
  return true;
}

void publish_caller_credentials() noexcept {
  if (!g_relay_installed.load(std::memory_order_acquire)) return;
  CredState s;
  if (read_own(s)) store_published(s);
}

}  // namespace hp::agent
