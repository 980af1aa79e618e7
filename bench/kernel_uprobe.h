// Kernel uprobes for probe_bench: one perf event per probe through the `uprobe` PMU
// (perf_event_open with type from /sys/bus/event_source/devices/uprobe/type, config1 = the
// file's path, config2 = the probed file offset, the retprobe bit from .../format/retprobe),
// counting hits, so the benchmark can compare hotprobe with the kernel on the same function
// in the same run and check that the kernel saw every call.
#pragma once

#include <cstdint>
#include <string>

namespace hpbench {

// The uprobe PMU of this kernel, or why it is not there.
struct UprobePmu {
  int type = -1;          // perf_event_attr.type
  int retprobe_bit = -1;  // bit of perf_event_attr.config that asks for a uretprobe
  std::string error;      // empty when usable
  bool ok() const { return error.empty(); }
};
UprobePmu find_uprobe_pmu();

// Where a function of this process lives in its file: the mapped file's path and the
// function's file offset (what kernel uprobes are keyed by). Empty path and an error when
// the address is not in a file-backed PT_LOAD segment.
struct FileLocation {
  std::string path;
  std::uint64_t offset = 0;
  std::string error;
  bool ok() const { return error.empty(); }
};
FileLocation file_location_of(const void* address);

// One kernel uprobe (or uretprobe) on this process, counting hits. Move-only; closing
// unregisters it (the kernel then waits for a grace period: tens of milliseconds).
class KernelUprobe {
 public:
  KernelUprobe() = default;
  // Opens the event for the calling process (pid 0, any CPU); check ok() and error().
  static KernelUprobe open(const UprobePmu& pmu, const std::string& path, std::uint64_t offset,
                           bool retprobe);
  KernelUprobe(KernelUprobe&& other) noexcept;
  KernelUprobe& operator=(KernelUprobe&& other) noexcept;
  KernelUprobe(const KernelUprobe&) = delete;
  KernelUprobe& operator=(const KernelUprobe&) = delete;
  ~KernelUprobe();

  bool ok() const { return fd_ >= 0; }
  const std::string& error() const { return error_; }
  // Hits so far (read() on the counting event); ~0 on a read error.
  std::uint64_t count() const;
  void close();

 private:
  int fd_ = -1;
  std::string error_;
};

}  // namespace hpbench
