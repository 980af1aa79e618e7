#include "kernel_uprobe.h"

#include <elf.h>
#include <link.h>
#include <linux/perf_event.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <utility>

namespace hpbench {

namespace {

constexpr const char* kPmuDir = "/sys/bus/event_source/devices/uprobe";

bool read_first_line(const std::string& path, std::string* line) {
  std::ifstream in(path);
  return static_cast<bool>(std::getline(in, *line));
}

}  // namespace

UprobePmu find_uprobe_pmu() {
  UprobePmu pmu;
  std::string line;
  if (!read_first_line(std::string(kPmuDir) + "/type", &line)) {
    pmu.error = std::string("no uprobe PMU (") + kPmuDir + "/type unreadable)";
    return pmu;
  }
  pmu.type = std::atoi(line.c_str());
  // The format file reads "config:0": the retprobe flag is that bit of attr.config.
  if (!read_first_line(std::string(kPmuDir) + "/format/retprobe", &line) ||
      line.rfind("config:", 0) != 0) {
    pmu.error = "uprobe PMU without a config:N retprobe format";
    return pmu;
  }
  pmu.retprobe_bit = std::atoi(line.c_str() + 7);
  if (pmu.retprobe_bit < 0 || pmu.retprobe_bit > 63) pmu.error = "bad retprobe bit: " + line;
  return pmu;
}

namespace {

struct LocateRequest {
  std::uintptr_t address;
  FileLocation* out;
  bool found;
};

int locate_in_object(dl_phdr_info* info, std::size_t, void* data) {
  auto* request = static_cast<LocateRequest*>(data);
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    std::uintptr_t start = info->dlpi_addr + ph.p_vaddr;
    if (request->address < start || request->address >= start + ph.p_memsz) continue;
    std::uint64_t file_offset = request->address - start + ph.p_offset;
    if (request->address - start >= ph.p_filesz) {
      request->out->error = "address lies in the zero-filled part of a segment";
    } else {
      request->out->offset = file_offset;
    }
    std::string name = info->dlpi_name ? info->dlpi_name : "";
    if (name.empty()) name = "/proc/self/exe";  // the main program
    char resolved[PATH_MAX];
    if (realpath(name.c_str(), resolved) == nullptr) {
      request->out->error = "cannot resolve " + name + ": " + std::strerror(errno);
    } else {
      request->out->path = resolved;
    }
    request->found = true;
    return 1;
  }
  return 0;
}

}  // namespace

FileLocation file_location_of(const void* address) {
  FileLocation location;
  LocateRequest request{reinterpret_cast<std::uintptr_t>(address), &location, false};
  dl_iterate_phdr(locate_in_object, &request);
  if (!request.found) location.error = "address not in any loaded object";
  return location;
}

KernelUprobe KernelUprobe::open(const UprobePmu& pmu, const std::string& path, std::uint64_t offset,
                                bool retprobe) {
  KernelUprobe probe;
  if (!pmu.ok()) {
    probe.error_ = pmu.error;
    return probe;
  }
  perf_event_attr attr;
  std::memset(&attr, 0, sizeof attr);
  attr.size = sizeof attr;
  attr.type = static_cast<std::uint32_t>(pmu.type);
  attr.config = retprobe ? (std::uint64_t{1} << pmu.retprobe_bit) : 0;
  attr.config1 = reinterpret_cast<std::uint64_t>(path.c_str());  // uprobe_path
  attr.config2 = offset;                                         // probe_offset
  attr.read_format = 0;                                          // read() gives the count
  long fd = syscall(SYS_perf_event_open, &attr, 0 /* this process */, -1 /* any CPU */,
                    -1 /* no group */, PERF_FLAG_FD_CLOEXEC);
  if (fd < 0) {
    probe.error_ = std::string("perf_event_open(uprobe") + (retprobe ? ", retprobe" : "") +
                   ") refused: " + std::strerror(errno);
    return probe;
  }
  probe.fd_ = static_cast<int>(fd);
  return probe;
}

KernelUprobe::KernelUprobe(KernelUprobe&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)), error_(std::move(other.error_)) {}

KernelUprobe& KernelUprobe::operator=(KernelUprobe&& other) noexcept {
  if (this != &other) {
    close();
    fd_ = std::exchange(other.fd_, -1);
    error_ = std::move(other.error_);
  }
  return *this;
}

KernelUprobe::~KernelUprobe() {
  close();
}

std::uint64_t KernelUprobe::count() const {
  std::uint64_t value = 0;
  if (fd_ < 0 || ::read(fd_, &value, sizeof value) != static_cast<ssize_t>(sizeof value))
    return ~std::uint64_t{0};
  return value;
}

void KernelUprobe::close() {
  if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

}  // namespace hpbench
