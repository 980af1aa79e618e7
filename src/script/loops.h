// Loops of the script language (while, for ... : START..END, break, continue): the bound
// every pass shares (docs/design/script-language.md, "Loops").
#pragma once

#include <cstdint>

namespace hotprobe::script {

// At most this many loop iterations in all in one hit of an action, nested loops
// together: past it the action stops, as `return` stops it (a hit is bounded in time,
// docs/design/security.md).
inline constexpr std::int64_t kMaxLoopIterations = 100000;

// An action with a loop starts with two hidden $variables set to 0, which a script cannot
// name ("$$" is no token): the iterations run so far in this hit, and the flag by which
// break (1) and continue (2) reach their loop.
inline constexpr const char* kLoopBudgetVar = "$$loops";
inline constexpr const char* kLoopControlVar = "$$loopctl";

}  // namespace hotprobe::script
