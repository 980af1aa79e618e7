// hotprobe run's side of the rendezvous (agent/rendezvous.h): an abstract unix socket with
// a random name, and the answer to each process that connects: the channel, when the
// process is one of the traced tree's, else nothing.
#pragma once

#include <sys/types.h>

#include <functional>
#include <string>

namespace hp::cli {

class Rendezvous {
 public:
  // Listens; `channel` is the agents' end of the channel, passed to those who may have it
  // (kept open here as long as this object lives). Not listening (name() empty) when
  // `channel` is -1 or the socket cannot be made: a process that lost its channel then
  // stops tracing, as hotprobe says at the end.
  explicit Rendezvous(int channel);
  // HOTPROBE_RUN_RENDEZVOUS=0: none (a Rendezvous that does not listen).
  static bool wanted();
  ~Rendezvous();
  Rendezvous(const Rendezvous&) = delete;
  Rendezvous& operator=(const Rendezvous&) = delete;

  const std::string& name() const { return name_; }
  int fd() const { return listen_fd_; }
  // Answers every pending connection: the channel to a process `may_have(pid)` accepts
  // (pid as the kernel's SO_PEERCRED says), nothing to the others.
  void serve(const std::function<bool(pid_t)>& may_have);

 private:
  int listen_fd_ = -1;
  int channel_ = -1;
  std::string name_;
};

}  // namespace hp::cli
