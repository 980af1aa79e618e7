// A bounded single-producer single-consumer byte ring of whole records: the probed thread
// appends (Sink::write) without blocking, locking or allocating; the agent's reporter
// thread drains. A record that does not fit is not written and is counted as lost.
//
// Ordering: the producer writes the bytes, then publishes `head_` (release, H1); the
// consumer loads `head_` (acquire, H2) before reading the bytes. The consumer frees space
// by publishing `tail_` (release, T1) after reading; the producer loads `tail_` (acquire,
// T2) before overwriting. H1/H2 and T1/T2 are the only pairs.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <string_view>

namespace hp::agent {

class Ring {
 public:
  explicit Ring(std::size_t capacity) : cap_(capacity), buf_(new char[capacity]) {}

  // Producer only. False (and counted) when the record does not fit now.
  bool write(std::string_view text) { return write_record({}, text, false); }
  // A request record (system(), cat()): `kind` then `text`, handed to drain's `on_request`
  // instead of appended.
  bool write_request(char kind, std::string_view text) {
    return write_record(std::string_view(&kind, 1), text, true);
  }

  // Consumer only: appends every complete record to `out`, in order; at a request record,
  // calls on_request(out, request text) (`out` then holds what came before it).
  template <class OnRequest>
  void drain(std::string& out, OnRequest&& on_request) {
    std::uint64_t head = head_.load(std::memory_order_acquire);  // H2
    std::uint64_t tail = tail_.load(std::memory_order_relaxed);
    std::string request;
    while (tail < head) {
      std::uint32_t word;
      copy_out(tail, &word, sizeof word);
      const std::uint32_t len = word & ~kRequestBit;
      std::string& to = (word & kRequestBit) ? request : out;
      std::size_t at = (word & kRequestBit) ? 0 : to.size();
      to.resize(at + len);
      copy_out(tail + sizeof word, to.data() + at, len);
      tail += sizeof word + len;
      if (word & kRequestBit) on_request(out, std::string_view(request));
    }
    tail_.store(tail, std::memory_order_release);  // T1
  }
  void drain(std::string& out) {
    drain(out, [](std::string&, std::string_view) {});
  }

  // Records the producer could not write so far (read by the consumer).
  std::uint64_t lost() const { return lost_.load(std::memory_order_relaxed); }

  // In a fork child (one thread, nobody else running): forget what the parent had
  // written but not yet sent, and the parent's losses.
  void reset_after_fork() {
    tail_.store(head_.load(std::memory_order_relaxed), std::memory_order_relaxed);
    lost_.store(0, std::memory_order_relaxed);
  }

 private:
  // One record: `prefix` then `text`, its length word marked when `request`.
  bool write_record(std::string_view prefix, std::string_view text, bool request) {
    const std::uint64_t size = prefix.size() + text.size();
    const std::uint64_t need = sizeof(std::uint32_t) + size;
    std::uint64_t head = head_.load(std::memory_order_relaxed);
    std::uint64_t tail = tail_.load(std::memory_order_acquire);  // T2
    if (need > cap_ - (head - tail) || size >= kRequestBit) {
      lost_.store(lost_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
      return false;
    }
    const auto len = static_cast<std::uint32_t>(size) | (request ? kRequestBit : 0);
    copy_in(head, &len, sizeof len);
    copy_in(head + sizeof len, prefix.data(), prefix.size());
    copy_in(head + sizeof len + prefix.size(), text.data(), text.size());
    head_.store(head + need, std::memory_order_release);  // H1
    return true;
  }

  void copy_in(std::uint64_t pos, const void* src, std::size_t n) {
    if (n == 0) return;  // an empty prefix's data() may be null, which memcpy may not take
    std::size_t at = pos % cap_, first = std::min(n, cap_ - at);
    std::memcpy(buf_.get() + at, src, first);
    std::memcpy(buf_.get(), static_cast<const char*>(src) + first, n - first);
  }
  void copy_out(std::uint64_t pos, void* dst, std::size_t n) const {
    if (n == 0) return;
    std::size_t at = pos % cap_, first = std::min(n, cap_ - at);
    std::memcpy(dst, buf_.get() + at, first);
    std::memcpy(static_cast<char*>(dst) + first, buf_.get(), n - first);
  }

  static constexpr std::uint32_t kRequestBit = 1u << 31;  // in a record's length word

  const std::size_t cap_;
  std::unique_ptr<char[]> buf_;
  alignas(64) std::atomic<std::uint64_t> head_{0};  // producer writes
  alignas(64) std::atomic<std::uint64_t> tail_{0};  // consumer writes
  std::atomic<std::uint64_t> lost_{0};              // producer writes
};

}  // namespace hp::agent
