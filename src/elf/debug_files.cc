// Where the DWARF of an ELF file without its own is found: the separate debug files to
// try, the standard places and bpftrace's --debuginfo directories.
#include <elfutils/libdw.h>
#include <elfutils/libdwelf.h>
#include <limits.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "elf/dwarf.h"
#include "elf/elf_file.h"

namespace hp::elf {

namespace {

std::string dir_of(const std::string& path) {
  const auto slash = path.rfind('/');
  return slash == std::string::npos ? "." : path.substr(0, slash);
}

// Directories given with --debuginfo (set_debuginfo_dirs), searched after the standard
// places. Never destroyed: read by whatever opens DWARF, until the process ends.
std::vector<std::string>& debuginfo_dirs() {
  static auto* dirs = new std::vector<std::string>;
  return *dirs;
}

// The separate debug files to try for the ELF file at `path`, most specific first.
}  // namespace

std::vector<std::string> debug_candidates(const std::string& path) {
  std::vector<std::string> out;
  auto opened = open_regular_file(path);
  if (!opened.ok()) return out;
  const int fd = *opened;
  (void)elf_version(EV_CURRENT);
  Elf* elf = elf_begin(fd, ELF_C_READ_MMAP, nullptr);
  if (elf) {
    const void* id = nullptr;
    const ssize_t n = dwelf_elf_gnu_build_id(elf, &id);
    std::string by_id;  // "xx/yyyy.debug" under a .build-id directory
    if (n > 1) {
      const auto* b = static_cast<const unsigned char*>(id);
      char two[3];
      for (ssize_t i = 0; i < n; ++i) {
        std::snprintf(two, sizeof two, "%02x", b[i]);
        by_id += two;
        if (i == 0) by_id += "/";
      }
      by_id += ".debug";
      out.push_back("/usr/lib/debug/.build-id/" + by_id);
    }
    GElf_Word crc = 0;
    const char* link = dwelf_elf_gnu_debuglink(elf, &crc);
    const std::string dir = dir_of(path);
    if (link) {
      out.push_back(dir + "/" + link);
      out.push_back(dir + "/.debug/" + link);
      out.push_back("/usr/lib/debug" + dir + "/" + link);
    }
    // --debuginfo DIR, as elfutils searches its debuginfo path (a relative DIR is below
    // the file's own directory): DIR/.build-id/, then the debug link (or, with none, the
    // file's name + ".debug") in DIR and in DIR + the file's absolute directory.
    const std::string name = link ? std::string(link) : path.substr(path.rfind('/') + 1) + ".debug";
    char real[PATH_MAX];
    const std::string abs_dir = ::realpath(dir.c_str(), real) ? std::string(real) : dir;
    for (const std::string& given : debuginfo_dirs()) {
      const std::string d = given.starts_with('/') ? given : dir + "/" + given;
      if (!by_id.empty()) out.push_back(d + "/.build-id/" + by_id);
      out.push_back(d + "/" + name);
      out.push_back(d + abs_dir + "/" + name);
    }
    elf_end(elf);
  }
  ::close(fd);
  return out;
}

void set_debuginfo_dirs(std::vector<std::string> dirs) {
  debuginfo_dirs() = std::move(dirs);
}

}  // namespace hp::elf
