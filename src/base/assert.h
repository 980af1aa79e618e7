// Broken invariants die loudly with file and line (STYLE.md item 6). Expected failures
// are Results (error.h), never these.
#pragma once

#include "base/compiler.h"

namespace hp::detail {
[[noreturn]] HP_COLD void die(const char* file, int line, const char* what,
                              const char* msg) noexcept;
}  // namespace hp::detail

// Always checked.
#define HP_DIE(msg) ::hp::detail::die(__FILE__, __LINE__, "fatal", (msg))
#define HP_CHECK(cond)                                                               \
  do {                                                                               \
    if (HP_UNLIKELY(!(cond))) ::hp::detail::die(__FILE__, __LINE__, #cond, nullptr); \
  } while (0)
#define HP_CHECK_MSG(cond, msg)                                                    \
  do {                                                                             \
    if (HP_UNLIKELY(!(cond))) ::hp::detail::die(__FILE__, __LINE__, #cond, (msg)); \
  } while (0)

// Checked in debug builds only: lifetime rules ("one of" lists) on hot paths.
#ifndef NDEBUG
#define HP_ASSERT(cond) HP_CHECK(cond)
#define HP_ASSERT_MSG(cond, msg) HP_CHECK_MSG(cond, msg)
#else
#define HP_ASSERT(cond) ((void)0)
#define HP_ASSERT_MSG(cond, msg) ((void)0)
#endif
