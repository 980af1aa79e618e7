// The agent's identity, for a person looking at a process's maps (and for hotprobe attach
// to check that the library it injected is the one it talks to).
#include "agent/protocol.h"

extern "C" __attribute__((visibility("default"))) const char* hotprobe_agent_protocol() {
  return "hotprobe-agent-1";
}
