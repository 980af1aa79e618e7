#include "cli/preflight.h"

#include <elf.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace hp::cli {

namespace {

bool read_at(int fd, void* buf, std::size_t n, off_t at) {
  return ::pread(fd, buf, n, at) == static_cast<ssize_t>(n);
}

// The reason, after the program's quoted path: "'PROGRAM' is ...".
void refuse(std::string* out, const std::string& program, const std::string& why) {
  *out = "'" + program + "' " + why;
}

// "#!INTERP [ARG]": the interpreter's path, or empty.
std::string interpreter_of(int fd) {
  char line[256] = {};
  const ssize_t n = ::pread(fd, line, sizeof line - 1, 0);
  if (n < 3 || line[0] != '#' || line[1] != '!') return {};
  std::string s(line + 2, static_cast<std::size_t>(n - 2));
  const std::size_t start = s.find_first_not_of(" \t");
  if (start == std::string::npos) return {};
  const std::size_t end = s.find_first_of(" \t\n", start);
  return s.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

bool check(const std::string& program, int depth, std::string* why) {
  const int fd = ::open(program.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return true;  // exec reports it (EACCES, ENOENT...)
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return true;
  }
  // Secure execution (AT_SECURE): the set-ID bit changes the effective user or group.
  const bool setuid = (st.st_mode & S_ISUID) && st.st_uid != ::getuid();
  const bool setgid = (st.st_mode & S_ISGID) && (st.st_mode & S_IXGRP) && st.st_gid != ::getgid();
  if (setuid || setgid) {
    ::close(fd);
    refuse(why, program,
           std::string("is set-") + (setuid ? "user" : "group") +
               "-ID: the kernel runs it in secure-execution mode, where the dynamic loader "
               "ignores LD_PRELOAD, so hotprobe's agent cannot be loaded into it. Trace a copy "
               "without the bit (cp PROGRAM /tmp/p; hotprobe run ... -- /tmp/p), or start it "
               "and use 'hotprobe attach -p PID'");
    return false;
  }
  Elf64_Ehdr eh{};
  if (!read_at(fd, &eh, sizeof eh, 0) || std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0) {
    std::string interp = depth == 0 ? interpreter_of(fd) : std::string();
    ::close(fd);
    if (!interp.empty()) return check(interp, depth + 1, why);
    return true;  // not ELF: exec decides
  }
  if (eh.e_ident[EI_CLASS] != ELFCLASS64 || eh.e_machine != EM_X86_64) {
    ::close(fd);
    refuse(why, program,
           "is not an x86-64 program (32-bit or another machine): hotprobe's agent is an "
           "x86-64 library and traces x86-64 programs only");
    return false;
  }
  bool interp = false;
  std::string loader;
  if (eh.e_phentsize == sizeof(Elf64_Phdr) && eh.e_phnum < 4096) {
    std::vector<Elf64_Phdr> ph(eh.e_phnum);
    if (read_at(fd, ph.data(), ph.size() * sizeof(Elf64_Phdr), static_cast<off_t>(eh.e_phoff))) {
      for (const Elf64_Phdr& p : ph) {
        if (p.p_type != PT_INTERP) continue;
        interp = true;
        char path[256] = {};
        const std::size_t n = std::min<std::size_t>(p.p_filesz, sizeof path - 1);
        if (read_at(fd, path, n, static_cast<off_t>(p.p_offset))) loader = path;
      }
    } else {
      interp = true;  // unreadable headers: exec decides
    }
  } else {
    interp = true;
  }
  ::close(fd);
  if (loader.find("ld-musl") != std::string::npos) {
    refuse(why, program,
           "is linked against musl libc (its loader is " + loader +
               "): hotprobe's agent is a glibc library and cannot be loaded into it");
    return false;
  }
  if (!interp) {
    refuse(why, program,
           "is statically linked (no dynamic loader: a pure Go program, busybox-static, a "
           "static-pie...): nothing reads LD_PRELOAD, so hotprobe's agent cannot be loaded "
           "and the program would run untraced. 'hotprobe attach -p' cannot trace it either "
           "(it loads the agent with the program's dlopen, which a static program lacks). "
           "Trace a dynamically linked build of it (Go: build with cgo, for instance "
           "-ldflags=-linkmode=external)");
    return false;
  }
  return true;
}

}  // namespace

bool preflight_program(const std::string& program) {
  const std::string why = preload_refusal(program);
  if (!why.empty()) std::fprintf(stderr, "hotprobe run: %s\n", why.c_str());
  return why.empty();
}

std::string preload_refusal(const std::string& program) {
  std::string why;
  (void)check(program, 0, &why);
  return why;
}

}  // namespace hp::cli
