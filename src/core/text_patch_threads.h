// Thread moves and verdicts (text_patch_threads.cc), step 2 of the patch protocol
// (text_patch.h): the move signal and its handler, the listing of the process's threads,
// and the verdict that shows each of them outside every site, or moves it out.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "base/error.h"
#include "core/text_patch.h"

namespace hp::core::patching {

// Thread moves: the sites of the transaction in flight, for the move-signal handler.
struct Range {
  std::uintptr_t start, end;
  const PatchSite* site;
};
struct MoveTable {
  const Range* ranges;  // sites being patched: move threads inside them
  std::size_t n;
  // Or, when sampling (ranges == nullptr): count threads whose ip is in [start, end).
  const std::pair<std::uintptr_t, std::uintptr_t>* sample;
  std::size_t n_sample;
  // The threads asked: a handler running on tids[i] sets answered[i] (A1: matches A2).
  const pid_t* tids;
  std::atomic<std::uint8_t>* answered;
  std::size_t n_tids;
};

extern std::atomic<unsigned> g_sample_inside;
extern std::atomic<const MoveTable*> g_moves;
extern std::atomic<int> g_move_handlers_active;
extern std::atomic<unsigned> g_move_acks;

// The move signal: installed (g_move_signal, under g_patch_mutex, read by others after
// init) or, before that, the one that will be (g_move_signal_choice).
extern std::atomic<int> g_move_signal;
extern std::atomic<int> g_move_signal_choice;
extern std::atomic<std::uint64_t> g_threads_moved;
extern std::atomic<int> g_verdict_fd;  // $HOTPROBE_PATCH_VERDICT_LOG, or -1

// Installs the move signal's handler (under the patcher's mutex).
Result<void> install_move_signal();

struct ThreadState {
  // kUnreadable: its /proc file could not be read although the thread exists.
  enum { kBlocked, kPreempted, kRunning, kGone, kUnreadable } state;
  std::uintptr_t pc;
};

// "/proc/self/task/<tid>/syscall": kRunning, or where the thread is.
ThreadState read_thread(pid_t tid);

// The other threads of the process, every one of them (text_patch_threads.cc says why a
// listing is whole); kListingCut when none was shown whole by `deadline`.
inline constexpr long kListingCut = -2;
long list_all_threads(pid_t* tids, std::size_t cap, std::int64_t deadline, unsigned& cuts);
std::size_t thread_count_estimate();

// Step 2's buffers, allocated before the window opens.
struct Observation {
  std::unique_ptr<pid_t[]> tids;
  std::unique_ptr<std::atomic<std::uint8_t>[]> answered;
  std::unique_ptr<std::uint8_t[]> settled;
  std::unique_ptr<std::uint8_t[]> signalled;
  std::unique_ptr<std::int64_t[]> cpu_at_start;
  std::size_t cap = 0;

  explicit Observation(std::size_t c)
      : tids(new pid_t[c]),
        answered(new std::atomic<std::uint8_t>[c]),
        settled(new std::uint8_t[c]),
        signalled(new std::uint8_t[c]),
        cpu_at_start(new std::int64_t[c]),
        cap(c) {}
};

// Why step 2 could not finish (the message is made after the rollback: no allocation
// while sites spin).
struct ObserveFailure {
  enum { kNone, kProc, kTooMany, kChurn, kStayed } kind = kNone;
  pid_t tid = 0;
  bool preempted_inside = false;
  bool unreadable = false;  // tid's /proc file could not be read
};

inline constexpr std::int64_t kObserveBudgetNs = 1000000000;  // 1 s

// Step 2 over `ranges` (sorted by start): see text_patch_threads.cc.
ObserveFailure observe_threads(const Range* ranges, std::size_t n_ranges, Observation& obs, int sig,
                               bool cpu_rule, bool wait_for_blockers, PatchStats& stats);

// Sends the move signal to the threads of `mt` and waits (bounded) for their answers;
// the number that did not answer.
unsigned sample_running(MoveTable& mt, int sig);

}  // namespace hp::core::patching
