// The run pass's output nodes (run_nodes.h): print, tuples, printf, time, strftime, join,
// buf and exit.
#include <algorithm>
#include <cstring>
#include <ctime>

#include "script/run_nodes.h"

namespace hotprobe::script {
namespace nodes {

static std::string& out_buffer() {
  thread_local std::string& buf = *new std::string;  // never destroyed: hits run in exit()
  if (buf.capacity() < 4096) buf.reserve(4096);
  buf.clear();
  return buf;
}
static std::string& text_buffer() {
  thread_local std::string& buf = *new std::string;  // never destroyed: hits run in exit()
  if (buf.capacity() < 4096) buf.reserve(4096);
  buf.clear();
  return buf;
}

std::int64_t i_print_map(const Node* n, Frame& f) {
  Runtime* rt = f.rt;
  std::string s;
  const std::uint32_t map = n->a->map;
  append_map(s, rt->maps->desc(map), rt->maps->snapshot(map), rt->format,
             n->b ? static_cast<std::uint32_t>(n->b->i(n->b, f)) : 0,
             n->c ? static_cast<std::uint32_t>(n->c->i(n->c, f)) : 0);
  rt->write(s);
  return 0;
}
std::int64_t i_print_value(const Node* n, Frame& f) {
  FmtArg v;
  char buf[kStrBytes];
  if (n->a->s) {
    const std::uint32_t len = n->a->s(n->a, f, buf);
    v.s = std::string_view(buf, len);
    v.is_string = true;
    if (!n->layouts.empty()) v.layout = n->layouts[0];
  } else {
    v.i = n->a->i(n->a, f);
  }
  std::string& out = out_buffer();
  append_value(out, v, f.rt->format);
  f.rt->write(out);
  return 0;
}
// The first `count` of n->keys (a tuple's elements, printf's values) evaluated into
// `args`, strings into `bufs`.
namespace {
void eval_args(const Node* n, std::size_t count, Frame& f, FmtArg* args, char (*bufs)[kStrBytes]) {
  for (std::size_t k = 0; k < count; ++k) {
    const Node* e = n->keys[k];
    if (e->s) {
      const std::uint32_t len = e->s(e, f, bufs[k]);
      args[k].s = std::string_view(bufs[k], len);
      args[k].is_string = true;
      if (k < n->layouts.size()) args[k].layout = n->layouts[k];
    } else {
      args[k].i = e->i(e, f);
    }
  }
}
void eval_tuple(const Node* n, Frame& f, FmtArg* args, char (*bufs)[kStrBytes]) {
  eval_args(n, n->keys.size(), f, args, bufs);
}
}  // namespace
std::int64_t i_tuple(const Node* n, Frame& f) {
  FmtArg args[ast::kMaxTupleElems];
  char bufs[ast::kMaxTupleElems][kStrBytes];
  eval_tuple(n, f, args, bufs);
  return 0;
}
std::int64_t i_print_tuple(const Node* n, Frame& f) {
  FmtArg args[ast::kMaxTupleElems];
  char bufs[ast::kMaxTupleElems][kStrBytes];
  eval_tuple(n->a, f, args, bufs);
  std::string& out = out_buffer();
  append_tuple(out, std::span<const FmtArg>(args, n->a->keys.size()), f.rt->format);
  f.rt->write(out);
  return 0;
}
// Every element is evaluated before any is stored: `$t = ($t.1, $t.0)` swaps.
bool st_var_tuple(const SNode* s, Frame& f) {
  FmtArg args[ast::kMaxTupleElems];
  char bufs[ast::kMaxTupleElems][kStrBytes];
  eval_tuple(s->value, f, args, bufs);
  for (std::size_t k = 0; k < s->target->keys.size(); ++k) {
    const std::int64_t slot = s->target->keys[k]->imm;
    if (args[k].is_string) {
      // Zeros after the bytes: a copied array or struct is compared and keyed whole.
      std::memcpy(f.sslots[slot], args[k].s.data(), args[k].s.size());
      std::memset(f.sslots[slot] + args[k].s.size(), 0, kStrBytes - args[k].s.size());
    } else {
      f.islots[slot] = args[k].i;
    }
  }
  return true;
}
void format_call(const Node* n, Frame& f, std::string& text, bool escape) {
  constexpr std::size_t kMaxArgs = ast::kMaxPrintfArgs;  // the checker refuses more
  FmtArg args[kMaxArgs];
  char bufs[kMaxArgs][kStrBytes];
  const std::size_t nargs = std::min(n->keys.size(), kMaxArgs);
  eval_args(n, nargs, f, args, bufs);
  format_printf(text, n->format, std::span<const FmtArg>(args, nargs), escape);
}
std::int64_t i_printf(const Node* n, Frame& f) {
  std::string& text = text_buffer();
  format_call(n, f, text, f.rt->format == OutputFormat::text);
  if (f.rt->format == OutputFormat::text) {
    f.rt->write(text);
  } else {
    std::string& out = out_buffer();
    append_message(out, "printf", text, OutputFormat::json);
    f.rt->write(out);
  }
  return 0;
}
std::int64_t i_time(const Node* n, Frame& f) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t;
  localtime_r(&ts.tv_sec, &t);
  char buf[256];
  const std::size_t len = strftime(buf, sizeof buf, n->text.c_str(), &t);
  std::string& out = out_buffer();
  append_message(out, "time", std::string_view(buf, len), f.rt->format);
  f.rt->write(out);
  return 0;
}
// strftime(fmt, ns): ns since boot (bpftrace 0.17's base: nsecs, which is
// CLOCK_MONOTONIC, is since boot too) as local time; %f is the microseconds.
std::uint32_t s_strftime(const Node* n, Frame& f, char* out) {
  const std::int64_t ns = n->a->i(n->a, f);
  timespec real, boot;
  clock_gettime(CLOCK_REALTIME, &real);
  clock_gettime(CLOCK_BOOTTIME, &boot);
  const std::int64_t wall =
      ns + (real.tv_sec - boot.tv_sec) * 1'000'000'000 + (real.tv_nsec - boot.tv_nsec);
  const time_t sec = static_cast<time_t>(wall / 1'000'000'000);
  char fmt[kStrBytes];
  std::size_t k = 0;
  for (std::size_t i = 0; i < n->text.size() && k + 7 < sizeof fmt; ++i) {
    if (n->text[i] == '%' && i + 1 < n->text.size() && n->text[i + 1] == 'f') {
      k += static_cast<std::size_t>(std::snprintf(fmt + k, sizeof fmt - k, "%06lld",
                                                  static_cast<long long>(wall / 1000 % 1000000)));
      ++i;
    } else {
      if (n->text[i] == '%' && i + 1 < n->text.size()) fmt[k++] = n->text[i++];
      fmt[k++] = n->text[i];
    }
  }
  fmt[k] = 0;
  tm t;
  localtime_r(&sec, &t);
  const std::size_t len = strftime(out, ast::kDefaultStrSize, fmt, &t);
  out[len] = 0;
  return static_cast<std::uint32_t>(len);
}
// join(argv [, sep]): the strings of a NULL-ended array of char*, at most kJoinEntries of
// kJoinEntryBytes each, joined by sep, as a line of output ("join" events in JSON).
std::int64_t i_join(const Node* n, Frame& f) {
  const std::uint64_t arr = u(n->a->i(n->a, f));
  std::string& text = text_buffer();
  const bool escape = f.rt->format == OutputFormat::text;
  for (std::uint32_t k = 0; k < ast::kJoinEntries; ++k) {
    std::uint64_t p = 0;
    if (!read_user(arr + 8 * k, &p, sizeof p) || p == 0) break;
    char s[ast::kJoinEntryBytes];
    const std::uint32_t len = read_user_string(p, sizeof s, s);
    if (k) text += n->text;
    if (escape) {
      append_text_escaped(text, std::string_view(s, len));
    } else {
      text.append(s, len);
    }
  }
  std::string& out = out_buffer();
  if (escape) {
    out += text;
    out += '\n';
  } else {
    append_message(out, "join", text, OutputFormat::json);
  }
  f.rt->write(out);
  return 0;
}
std::int64_t i_exit(const Node*, Frame& f) {
  f.rt->exited.store(true, std::memory_order_relaxed);
  if (f.rt->sink) f.rt->sink->request_exit();
  return 0;
}
bool st_exit(const SNode* s, Frame& f) {
  i_exit(s->target, f);
  return false;
}

}  // namespace nodes
}  // namespace hotprobe::script
