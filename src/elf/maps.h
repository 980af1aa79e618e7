// The memory map of a process, as /proc/PID/maps states it, and the key that names a
// mapped file the way the kernel's uprobes do: (device, inode).
//
// A mapping is one line of /proc/PID/maps. Parsing is a pure function of the text
// (parse_maps), so it is tested on fixed input as well as on the live file (read_maps).
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "base/error.h"

namespace hp::elf {

// A file, named by the device and inode the kernel reports for its mappings. `dev` is the
// kernel's encoding, makedev(major, minor), so it compares equal to stat(2)'s st_dev.
struct ModuleKey {
  std::uint64_t dev = 0;
  std::uint64_t ino = 0;

  friend bool operator==(const ModuleKey&, const ModuleKey&) = default;
  // "fe:00/332835": major:minor in hex as /proc/PID/maps writes them, then the inode.
  std::string to_string() const;
};

struct ModuleKeyHash {
  std::size_t operator()(const ModuleKey& k) const noexcept {
    // Inodes differ far more often than devices; mix the device in so (d, i) and (i, d)
    // do not collide.
    return std::hash<std::uint64_t>()(k.ino ^ (k.dev * 0x9e3779b97f4a7c15ull));
  }
};

}  // namespace hp::elf

template <>
struct std::hash<hp::elf::ModuleKey> : hp::elf::ModuleKeyHash {};

namespace hp::elf {

// Access bits of a mapping, from the "rwxp" column.
enum Perm : std::uint8_t {
  kPermRead = 1,
  kPermWrite = 2,
  kPermExec = 4,
  kPermShared = 8,  // 's' instead of 'p'
};

struct Mapping {
  std::uintptr_t start = 0;  // first byte
  std::uintptr_t end = 0;    // one past the last byte
  std::uint8_t perms = 0;    // Perm bits
  std::uint64_t offset = 0;  // file offset of `start`
  std::uint32_t dev_major = 0;
  std::uint32_t dev_minor = 0;
  std::uint64_t inode = 0;  // 0 for anonymous mappings
  std::string path;         // may be empty, "[heap]", "[vdso]", or end in " (deleted)"

  bool readable() const { return perms & kPermRead; }
  bool writable() const { return perms & kPermWrite; }
  bool executable() const { return perms & kPermExec; }
  std::uintptr_t size() const { return end - start; }
  bool contains(std::uintptr_t addr) const { return addr >= start && addr < end; }
  // Backed by a file (not anonymous, not a pseudo-path like "[vdso]").
  bool file_backed() const { return inode != 0 && !path.empty() && path[0] == '/'; }
  // Whether the file was deleted (or replaced) after it was mapped.
  bool deleted() const;
  ModuleKey key() const;
  // The "rwxp" column, as the kernel writes it.
  std::string perms_string() const;
};

// Parses the text of a /proc/PID/maps file. A malformed line is an invalid_argument error
// that names the line number and quotes it.
Result<std::vector<Mapping>> parse_maps(std::string_view text);

// Reads and parses /proc/PID/maps; pid 0 means this process (/proc/self/maps).
Result<std::vector<Mapping>> read_maps(pid_t pid = 0);

// Reads a whole /proc file (their sizes are not known in advance).
Result<std::string> read_proc_file(const std::string& path);

}  // namespace hp::elf
