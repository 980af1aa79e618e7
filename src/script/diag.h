// Diagnostics of the script front end: errors with a location, rendered as bpftrace 0.17
// renders them:
//
//   FILE:LINE:COL-ENDCOL: ERROR: MESSAGE
//   <the source line>
//               ~~~~
//
// A hint ("did you mean ...") is part of the message: "unknown function 'cont' (did you mean
// 'count'?)".
//
// COL is 1-based, ENDCOL = COL + length (one past the last byte, as bpftrace prints it).
#pragma once

#include <cstddef>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "base/strings.h"
#include "hotprobe/result.h"
#include "script/ast.h"

namespace hotprobe::script {

struct Diagnostic {
  ast::Loc loc;
  std::string message;
};

class Diagnostics {
 public:
  // After this many errors the rest are dropped (and one line says how many).
  static constexpr std::size_t kMaxErrors = 20;

  void error(ast::Loc loc, std::string message);
  bool empty() const { return list_.empty(); }
  std::size_t size() const { return list_.size(); }
  const std::vector<Diagnostic>& all() const { return list_; }

  // Every diagnostic, rendered, separated by nothing (each ends with a newline).
  std::string render(std::string_view source, std::string_view filename) const;
  // Errc::invalid_argument with render() as the message.
  Error to_error(std::string_view source, std::string_view filename) const;

 private:
  std::vector<Diagnostic> list_;
  std::size_t dropped_ = 0;
};

std::string render(const Diagnostic& d, std::string_view source, std::string_view filename);

// Levenshtein distance (base/strings.h).
using hp::edit_distance;
// The candidate closest to `name` if it is close enough to be a likely typo (distance at
// most 2, and less than half of the name); empty otherwise.
std::string_view closest(std::string_view name, std::span<const std::string_view> candidates);
// " (did you mean 'X'?)" or "" when nothing is close.
std::string did_you_mean(std::string_view name, std::span<const std::string_view> candidates);

}  // namespace hotprobe::script
