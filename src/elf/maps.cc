#include "elf/maps.h"

#include <fcntl.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <charconv>
#include <cstdio>

namespace hp::elf {

namespace {

constexpr std::string_view kDeletedSuffix = " (deleted)";

// Consumes a hexadecimal number from the front of `s`.
bool take_hex(std::string_view& s, std::uint64_t& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 16);
  if (ec != std::errc() || p == s.data()) return false;
  s.remove_prefix(static_cast<std::size_t>(p - s.data()));
  return true;
}

bool take_dec(std::string_view& s, std::uint64_t& out) {
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), out, 10);
  if (ec != std::errc() || p == s.data()) return false;
  s.remove_prefix(static_cast<std::size_t>(p - s.data()));
  return true;
}

bool take_char(std::string_view& s, char c) {
  if (s.empty() || s.front() != c) return false;
  s.remove_prefix(1);
  return true;
}

void skip_spaces(std::string_view& s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
    s.remove_prefix(1);
}

// One line: "start-end perms offset major:minor inode [path]".
bool parse_line(std::string_view s, Mapping& m) {
  std::uint64_t start, end, offset, major, minor, inode;
  if (!take_hex(s, start) || !take_char(s, '-') || !take_hex(s, end)) return false;
  if (!take_char(s, ' ') || s.size() < 4) return false;
  const std::string_view p = s.substr(0, 4);
  std::uint8_t perms = 0;
  if (p[0] == 'r') {
    perms |= kPermRead;
  } else if (p[0] != '-') {
    return false;
  }
  if (p[1] == 'w') {
    perms |= kPermWrite;
  } else if (p[1] != '-') {
    return false;
  }
  if (p[2] == 'x') {
    perms |= kPermExec;
  } else if (p[2] != '-') {
    return false;
  }
  if (p[3] == 's') {
    perms |= kPermShared;
  } else if (p[3] != 'p') {
    return false;
  }
  s.remove_prefix(4);
  if (!take_char(s, ' ') || !take_hex(s, offset) || !take_char(s, ' ')) return false;
  if (!take_hex(s, major) || !take_char(s, ':') || !take_hex(s, minor)) return false;
  if (!take_char(s, ' ') || !take_dec(s, inode)) return false;
  if (end < start) return false;
  // The path is separated by padding spaces; it may itself contain spaces.
  skip_spaces(s);
  m.start = start;
  m.end = end;
  m.perms = perms;
  m.offset = offset;
  m.dev_major = static_cast<std::uint32_t>(major);
  m.dev_minor = static_cast<std::uint32_t>(minor);
  m.inode = inode;
  m.path.assign(s);
  return true;
}

}  // namespace

std::string ModuleKey::to_string() const {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%02x:%02x/%llu", major(dev), minor(dev),
                static_cast<unsigned long long>(ino));
  return buf;
}

bool Mapping::deleted() const {
  return path.size() > kDeletedSuffix.size() && path.ends_with(kDeletedSuffix);
}

ModuleKey Mapping::key() const {
  return ModuleKey{makedev(dev_major, dev_minor), inode};
}

std::string Mapping::perms_string() const {
  std::string s = "----";
  if (readable()) s[0] = 'r';
  if (writable()) s[1] = 'w';
  if (executable()) s[2] = 'x';
  s[3] = (perms & kPermShared) ? 's' : 'p';
  return s;
}

Result<std::vector<Mapping>> parse_maps(std::string_view text) {
  std::vector<Mapping> out;
  std::size_t line_no = 0;
  while (!text.empty()) {
    ++line_no;
    std::size_t nl = text.find('\n');
    std::string_view line = text.substr(0, nl);
    text.remove_prefix(nl == std::string_view::npos ? text.size() : nl + 1);
    if (line.empty()) continue;
    Mapping m;
    if (!parse_line(line, m)) {
      return Error(Errc::invalid_argument,
                   "malformed maps line " + std::to_string(line_no) + ": '" + std::string(line) +
                       "' (expected 'start-end perms offset major:minor inode [path]')");
    }
    out.push_back(std::move(m));
  }
  return out;
}

Result<std::string> read_proc_file(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return sys_error("cannot open " + path);
  std::string data;
  char buf[16384];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return sys_error("cannot read " + path, err);
    }
    if (n == 0) break;
    data.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return data;
}

Result<std::vector<Mapping>> read_maps(pid_t pid) {
  std::string path = pid == 0 ? "/proc/self/maps" : "/proc/" + std::to_string(pid) + "/maps";
  auto text = read_proc_file(path);
  if (!text.ok()) {
    if (text.error().code() == Errc::not_found && pid != 0) {
      return Error(Errc::not_found, "no process with pid " + std::to_string(pid) + " (" +
                                        text.error().message() + ")");
    }
    return text.error();
  }
  return parse_maps(*text);
}

}  // namespace hp::elf
