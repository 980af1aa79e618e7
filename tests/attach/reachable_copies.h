// Copies of programs and libraries from the build tree in a directory that every user can
// reach and that root may load an agent from. A checkout in a `mktemp -d` directory (mode
// 0700, below /tmp) keeps user nobody from executing anything there.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <utility>
#include <vector>

namespace hp_test {

// Whether every directory from / down to `dir` is owned by root, writable by nobody else
// and searchable by everyone.
inline bool root_only_and_reachable(const std::string& dir) {
  for (std::string d = dir;;) {
    struct stat st;
    if (::stat(d.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != 0 ||
        (st.st_mode & (S_IWGRP | S_IWOTH)) || !(st.st_mode & S_IXOTH))
      return false;
    if (d == "/") return true;
    const auto slash = d.rfind('/');
    d = slash == 0 ? "/" : d.substr(0, slash);
  }
}

inline std::string dir_of(const std::string& path) {
  return path.substr(0, path.rfind('/'));
}

// `files` (a path and the name of its copy) copied with mode 0755 into a fresh directory of
// mode 0755 under the first of /run, /var/lib, /opt, / that passes
// root_only_and_reachable(); removed with the object. Needs root.
class ReachableCopies {
 public:
  explicit ReachableCopies(const std::vector<std::pair<std::string, std::string>>& files) {
    for (const char* base : {"/run", "/var/lib", "/opt", "/"}) {
      if (!root_only_and_reachable(base)) continue;
      std::string templ =
          std::string(base == std::string("/") ? "" : base) + "/hotprobe-test-copies-XXXXXX";
      if (::mkdtemp(templ.data()) == nullptr) continue;
      dir_ = templ;
      break;
    }
    if (dir_.empty()) {
      error_ =
          "no directory owned by root that other users can reach (tried /run, /var/lib, "
          "/opt, /) to copy the programs into";
      return;
    }
    ::chmod(dir_.c_str(), 0755);
    for (const auto& [from, name] : files) {
      const std::string to = path(name);
      std::error_code ec;
      std::filesystem::copy_file(from, to, ec);
      if ((ec || ::chmod(to.c_str(), 0755) != 0) && error_.empty())
        error_ = "cannot copy " + from + " to " + to + ": " + ec.message();
    }
  }
  ~ReachableCopies() {
    if (dir_.empty()) return;
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  ReachableCopies(const ReachableCopies&) = delete;
  ReachableCopies& operator=(const ReachableCopies&) = delete;

  // What went wrong ("" when the copies are in place).
  const std::string& error() const { return error_; }
  const std::string& dir() const { return dir_; }
  std::string path(const std::string& name) const { return dir_ + "/" + name; }

 private:
  std::string dir_, error_;
};

inline std::string base_name(const std::string& path) {
  return path.substr(path.rfind('/') + 1);
}

}  // namespace hp_test
