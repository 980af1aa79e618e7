// hotprobe's vocabulary for expected failures: a Result holds a value or an Error with a
// specific code and a message a person can act on. No exceptions cross hotprobe's API:
// value() (and ->, *) of a Result that holds an Error is a bug in the caller, and stops
// the program with the error's message on stderr (abort); error() of a Result that holds
// a value is an Error whose code is Errc::ok and whose message is empty.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

#include "hotprobe/api.h"

namespace hotprobe {

enum class Errc : std::uint16_t {
  ok = 0,
  invalid_argument,    // a malformed spec, option or script
  not_found,           // no such module, symbol, process
  permission_denied,   // ptrace, mprotect, membarrier refused
  unsupported,         // the kernel or the instruction stream does not allow it
  not_on_boundary,     // offset is not on an instruction boundary
  not_relocatable,     // displaced bytes cannot be moved (and int3 mode is off)
  no_memory_in_reach,  // no trampoline memory within +-2 GiB
  already_attached,    // incompatible option on an attached site
  busy,                // resource is in use
  timed_out,           // waited past a bound
  io_error,            // a system call failed
  internal,            // hotprobe's own fault: report it
};

HOTPROBE_API std::string_view to_string(Errc code) noexcept;

class Error {
 public:
  Error() = default;
  Error(Errc code, std::string message) : code_(code), message_(std::move(message)) {}
  Errc code() const noexcept { return code_; }
  const std::string& message() const noexcept { return message_; }
  explicit operator bool() const noexcept { return code_ != Errc::ok; }

 private:
  Errc code_ = Errc::ok;
  std::string message_;
};

namespace result_detail {

// value() of a Result that holds an Error: the caller did not check ok().
[[noreturn]] inline void value_of_error(const Error& e) noexcept {
  const std::string_view code = to_string(e.code());
  std::fprintf(stderr,
               "hotprobe: Result::value() called on an error (%.*s): %s; check ok() before "
               "value()\n",
               static_cast<int>(code.size()), code.data(), e.message().c_str());
  std::abort();
}

inline const Error& no_error() noexcept {
  static const Error none;
  return none;
}

}  // namespace result_detail

// Result<T>: a T or an Error. Result<void> is the form for operations without a value.
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value)
      : v_(std::in_place_index<0>, std::move(value)) {}  // NOLINT(google-explicit-constructor)
  Result(Error error) : v_(std::in_place_index<1>, std::move(error)) {}  // NOLINT
  bool ok() const noexcept { return v_.index() == 0; }
  explicit operator bool() const noexcept { return ok(); }
  T& value() & noexcept {
    if (!ok()) result_detail::value_of_error(*std::get_if<1>(&v_));
    return *std::get_if<0>(&v_);
  }
  const T& value() const& noexcept {
    if (!ok()) result_detail::value_of_error(*std::get_if<1>(&v_));
    return *std::get_if<0>(&v_);
  }
  T&& value() && noexcept {
    if (!ok()) result_detail::value_of_error(*std::get_if<1>(&v_));
    return std::move(*std::get_if<0>(&v_));
  }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const Error& error() const noexcept {
    return ok() ? result_detail::no_error() : *std::get_if<1>(&v_);
  }
  // f(value) when there is one (f returns a Result), else this error in f's Result:
  //   auto engine = hotprobe::options_from_environment().and_then(&hotprobe::Engine::create);
  template <class F>
  auto and_then(F&& f) && -> std::invoke_result_t<F, T&&> {
    if (!ok()) return std::move(*std::get_if<1>(&v_));
    return std::invoke(std::forward<F>(f), std::move(*std::get_if<0>(&v_)));
  }

 private:
  std::variant<T, Error> v_;
};

template <>
class [[nodiscard]] Result<void> {
 public:
  Result() = default;
  Result(Error error) : error_(std::move(error)) {}  // NOLINT(google-explicit-constructor)
  bool ok() const noexcept { return !error_; }
  explicit operator bool() const noexcept { return ok(); }
  const Error& error() const { return error_; }

 private:
  Error error_;
};

}  // namespace hotprobe
