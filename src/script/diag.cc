#include "script/diag.h"

#include <algorithm>
#include <utility>

namespace hotprobe::script {

void Diagnostics::error(ast::Loc loc, std::string message) {
  if (list_.size() >= kMaxErrors) {
    ++dropped_;
    return;
  }
  list_.push_back(Diagnostic{loc, std::move(message)});
}

std::string Diagnostics::render(std::string_view source, std::string_view filename) const {
  std::string out;
  for (const Diagnostic& d : list_)
    out += script::render(d, source, filename);
  if (dropped_ > 0) {
    out += std::string(filename) + ": " + std::to_string(dropped_) +
           " more error(s) not shown (fix the ones above first)\n";
  }
  return out;
}

Error Diagnostics::to_error(std::string_view source, std::string_view filename) const {
  std::string text = render(source, filename);
  while (!text.empty() && text.back() == '\n')
    text.pop_back();
  return Error(Errc::invalid_argument, std::move(text));
}

namespace {

// The text of 1-based line `line` of `source`, without its newline.
std::string_view source_line(std::string_view source, int line) {
  std::size_t begin = 0;
  for (int i = 1; i < line; ++i) {
    std::size_t nl = source.find('\n', begin);
    if (nl == std::string_view::npos) return {};
    begin = nl + 1;
  }
  std::size_t end = source.find('\n', begin);
  if (end == std::string_view::npos) end = source.size();
  return source.substr(begin, end - begin);
}

}  // namespace

std::string render(const Diagnostic& d, std::string_view source, std::string_view filename) {
  std::string out;
  out += filename;
  out += ':' + std::to_string(d.loc.line) + ':' + std::to_string(d.loc.column) + '-' +
         std::to_string(d.loc.column + d.loc.length) + ": ERROR: " + d.message + '\n';
  if (d.loc.line <= 0) return out;
  std::string_view line = source_line(source, d.loc.line);
  out += line;
  out += '\n';
  // The marks keep tabs where the line has them, so they stay under the text.
  std::string marks;
  for (int i = 1; i < d.loc.column; ++i) {
    std::size_t at = static_cast<std::size_t>(i - 1);
    marks += at < line.size() && line[at] == '\t' ? '\t' : ' ';
  }
  marks.append(static_cast<std::size_t>(std::max(d.loc.length, 0)), '~');
  out += marks;
  out += '\n';
  return out;
}

std::string_view closest(std::string_view name, std::span<const std::string_view> candidates) {
  std::string_view best;
  std::size_t best_distance = 3;  // at most 2 edits
  for (std::string_view c : candidates) {
    std::size_t d = edit_distance(name, c);
    if (d < best_distance && d * 2 < std::max(name.size(), c.size())) {
      best = c;
      best_distance = d;
    }
  }
  return best;
}

std::string did_you_mean(std::string_view name, std::span<const std::string_view> candidates) {
  std::string_view best = closest(name, candidates);
  if (best.empty()) return {};
  return " (did you mean '" + std::string(best) + "'?)";
}

}  // namespace hotprobe::script
