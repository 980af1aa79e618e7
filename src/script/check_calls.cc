// The check pass: calls and builtins (check_pass.h).
#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cstdlib>
#include <optional>
#include <string>

#include "script/check.h"
#include "script/check_pass.h"
#include "script/parser.h"
#include "script/run_misc.h"
#include "script/run_stack.h"

namespace hotprobe::script::checking {

// Expr::value of a ustack or usym call on its way into ustack_key/usym_key: a value, not
// a map key.
constexpr std::int64_t kStackValue = -0x57ac;

bool Checker::resolve_func(Expr& call) {
  for (std::size_t i = 0; i < kFuncNames.size(); ++i) {
    if (call.name == kFuncNames[i]) {
      call.func = static_cast<Func>(i);
      return true;
    }
  }
  return false;
}

// ustack, usym and reg() need a probed thread's registers or code addresses: not in
// BEGIN, END or interval probes. The probe that has none, or null.
static const ast::AttachPoint* probe_without_registers(const ast::Action& a) {
  for (const ast::AttachPoint& p : a.probes) {
    const Probe::Kind k = p.probe.kind;
    if (k == Probe::Kind::begin || k == Probe::Kind::end || k == Probe::Kind::interval) return &p;
  }
  return nullptr;
}

bool Checker::needs_registers(const Expr& e, std::string_view what) {
  const ast::AttachPoint* bad = probe_without_registers(*action_);
  if (!bad) return true;
  error(e.loc, std::string(what) + " can only be used in uprobe and uretprobe probes (not '" +
                   std::string(probe_kind_name(bad->probe.kind)) +
                   "'): it reads the probed thread's registers");
  return false;
}

// ustack ([MODE][, LIMIT]) as a map key, or as a value when e.value is kStackValue on
// entry (printf("%s", ustack), print(ustack), $s = ustack: run_stack.h). MODE bpftrace or
// perf (a value also takes raw, bpftrace main's), LIMIT an integer literal 1..1024
// (bpftrace's limits and words). A value is a string (its marker) and keeps its form and
// limit in e.value (SymbolForm | limit << 8).
Value Checker::ustack_key(Expr& e) {
  const bool as_value = e.value == kStackValue;
  e.value = 0;
  // As a value in BEGIN, END or interval it is the empty stack, as bpftrace's.
  if (!as_value && !needs_registers(e, "ustack")) return Value::bad();
  const std::size_t n = e.kind == Expr::Kind::call ? e.args.size() : 0;
  if (n > 2) {
    error(e.loc, "ustack() takes up to 2 arguments (" + std::to_string(n) + " provided)");
    return Value::bad();
  }
  Type mode = Type::ustack;
  SymbolForm form = SymbolForm::stack;
  std::int64_t limit = ast::kUstackFrames;
  for (std::size_t i = 0; i < n; ++i) {
    Expr& a = *e.args[i];
    if (i == 0 && a.kind == Expr::Kind::builtin) {
      if (a.name == "perf") {
        mode = Type::ustack_perf;
        form = SymbolForm::stack_perf;
      } else if ((a.name == "raw" || a.name == "build_id") && as_value) {
        form = a.name == "raw" ? SymbolForm::stack_raw : SymbolForm::stack_build_id;
      } else if (a.name == "raw") {  // a key part of its own: its frames' words (a record)
        form = SymbolForm::stack_raw;
      } else if (a.name == "build_id") {
        error(a.loc,
              "ustack(" + a.name + ") is printed as a value here (printf(\"%s\", ustack(" + a.name +
                  "))), not as a map key: key the map by ustack, ustack(perf) or ustack(raw)");
        return Value::bad();
      } else if (a.name != "bpftrace") {
        error(a.loc, "ustack(): unknown stack mode '" + a.name +
                         "': the modes are bpftrace, perf, raw and build_id (the last as a value "
                         "only)");
        return Value::bad();
      }
      continue;
    }
    if (!constant(a, limit)) {
      error(e.loc, n == 2 && i == 0
                       ? "ustack() expects a stack mode literal (bpftrace, perf, raw or build_id)"
                       : "ustack() expects an integer literal as its limit");
      return Value::bad();
    }
    if (limit < 0 || limit > ast::kMaxUstackLimit) {
      error(e.loc, "ustack([int limit]): limit shouldn't exceed " +
                       std::to_string(ast::kMaxUstackLimit) + ", " +
                       std::to_string(static_cast<std::uint64_t>(limit)) + " given");
      return Value::bad();
    }
    if (limit == 0) {  // bpftrace accepts it, then cannot make the stack map
      error(e.loc, "ustack(0) keeps no frame: the limit is 1 to " +
                       std::to_string(ast::kMaxUstackLimit) + ", or none for every frame");
      return Value::bad();
    }
    annotate(a, Value::integer());
  }
  if (e.kind == Expr::Kind::call) e.func = Func::ustack;
  const auto frames = static_cast<std::uint32_t>(std::min<std::int64_t>(limit, ast::kUstackFrames));
  if (as_value) {
    e.value = static_cast<std::int64_t>(form) | std::int64_t{frames} << 8;
    return Value::string(kSymbolMarkerBytes);
  }
  if (form == SymbolForm::stack_raw) {  // ustack(raw) as a key: lowered to s_ustack_raw
    const int t = program_.types.raw_stack(frames);
    const Value v{Type::record, std::nullopt, program_.types.size_of(t), false, t};
    annotate(e, v);
    return v;
  }
  e.type = mode;
  e.str_size = frames;
  return Value{mode, std::nullopt, e.str_size, false};
}

// An argument that must be an integer (a pointer): false, reported as "EXPECTS (TYPE
// provided)", when it is not (or was wrong already).
bool Checker::integer_argument(Expr& a, std::string_view expects) {
  const Value v = value(a);
  if (v.error) return false;
  if (v.is_int()) return true;
  error(a.loc, std::string(expects) + " (" + printf_type_name(v) + " provided)");
  return false;
}

// usym(addr) as a map key, or as a value when e.value is kStackValue on entry (a string:
// its marker, run_stack.h).
Value Checker::usym_key(Expr& e) {
  const bool as_value = e.value == kStackValue;
  e.value = 0;
  if (e.args.size() != 1) {
    error(e.loc, "usym() requires one argument (" + std::to_string(e.args.size()) + " provided)");
    return Value::bad();
  }
  if (!integer_argument(*e.args[0], "usym() expects an integer or pointer argument"))
    return Value::bad();
  e.func = Func::usym;
  if (as_value) return Value::string(kSymbolMarkerBytes);
  e.type = Type::usym;
  return Value{Type::usym, std::nullopt, 0, false};
}

Value Checker::key_value(Expr& k) {
  if (k.kind == Expr::Kind::builtin && k.name == "ustack") return ustack_key(k);
  if (k.kind == Expr::Kind::call && k.name == "ustack") return ustack_key(k);
  if (k.kind == Expr::Kind::call && k.name == "usym") return usym_key(k);
  allow_tuple();
  Value v = value(k);
  if (!v.error && v.type == Type::tuple) {
    error(k.loc,
          "tuple cannot be used as a map key. Try a multi-key associative array instead "
          "(eg `@map[$1, $2] = ...)`.");
    return Value::bad();
  }
  return v;
}

Value Checker::builtin(Expr& e) {
  if (e.name == "ustack") {
    e.value = kStackValue;
    return ustack_key(e);
  }
  if (e.name == "usermode") return Value::integer();  // 1: a probe of user code (run_misc.cc)
  std::size_t i = 0;
  while (i < kBuiltinNames.size() && e.name != kBuiltinNames[i])
    ++i;
  if (i == kBuiltinNames.size() && lowering::extra_builtin(e.name) >= 0) {
    // sarg0..sarg9 (uprobe only, as bpftrace), pcomm and leader_comm: run_misc.h.
    if (lowering::extra_builtin(e.name) >= lowering::kPcomm) return Value::string(ast::kCommSize);
    for (const ast::AttachPoint& p : action_->probes) {
      if (p.probe.kind != Probe::Kind::uprobe || p.usdt) {
        error(e.loc, "The " + e.name +
                         " builtin can only be used with 'uprobes' probes (the stack arguments "
                         "of a function at its entry; not '" +
                         p.probe.text + "')");
        return Value::bad();
      }
    }
    return Value::integer();
  }
  if (i == kBuiltinNames.size()) {
    auto en = program_.types.enumerators.find(e.name);
    if (en != program_.types.enumerators.end()) {
      e.kind = Expr::Kind::integer;
      e.value = en->second;
      return Value::integer();
    }
    // A function name written without its parentheses.
    for (std::string_view f : kFuncNames) {
      if (e.name == f) {
        error(e.loc, "unknown identifier '" + e.name + "' (did you mean '" + e.name + "()'?)");
        return Value::bad();
      }
    }
    error(e.loc, "unknown identifier '" + e.name + "'" + did_you_mean(e.name, kBuiltinNames));
    return Value::bad();
  }
  e.builtin = static_cast<Builtin>(i);
  auto bad_probe = [&](auto allowed) -> const ast::AttachPoint* {
    for (const ast::AttachPoint& p : action_->probes) {
      if (!allowed(p.probe.kind)) return &p;
    }
    return nullptr;
  };
  const ast::AttachPoint* bad = nullptr;
  switch (e.builtin) {
    case Builtin::arg0:
    case Builtin::arg1:
    case Builtin::arg2:
    case Builtin::arg3:
    case Builtin::arg4:
    case Builtin::arg5:
      bad = bad_probe([](Probe::Kind k) { return k == Probe::Kind::uprobe; });
      if (bad) {
        error(e.loc, "The " + e.name + " builtin can only be used with 'uprobes' probes (not '" +
                         std::string(probe_kind_name(bad->probe.kind)) + "')");
        return Value::bad();
      }
      break;
    case Builtin::retval:
      bad = bad_probe([](Probe::Kind k) { return k == Probe::Kind::uretprobe; });
      if (bad) {
        error(e.loc, "The retval builtin can only be used with 'uretprobe' probes (not '" +
                         std::string(probe_kind_name(bad->probe.kind)) + "')");
        return Value::bad();
      }
      break;
    case Builtin::func:
      bad = bad_probe(
          [](Probe::Kind k) { return k == Probe::Kind::uprobe || k == Probe::Kind::uretprobe; });
      if (bad) {
        error(e.loc,
              "The func builtin can only be used with 'uprobe' and 'uretprobe' probes "
              "(not '" +
                  std::string(probe_kind_name(bad->probe.kind)) + "')");
        return Value::bad();
      }
      break;
    default:
      break;
  }
  const BuiltinDef& def = builtin_def(e.builtin);
  return def.str_size ? Value::string(def.str_size) : Value::integer();
}

// The argument of print/clear/zero/delete: a map (whole, or one element for delete).
bool Checker::map_argument(Expr& call, bool with_keys) {
  std::string name(ast::to_string(call.func));
  if (call.args.size() != 1 && !(call.func == Func::print && call.args.size() <= 3)) {
    if (call.func == Func::del) {
      error(call.loc,
            "delete() takes a map element, delete(@m[KEY]), or a map and its key, "
            "delete(@m, KEY) (" +
                std::to_string(call.args.size()) + " arguments provided)");
      return false;
    }
    error(call.loc,
          name + "() requires one argument (" + std::to_string(call.args.size()) + " provided)");
    return false;
  }
  Expr& m = *call.args[0];
  if (m.kind != Expr::Kind::map) {
    error(call.loc, name + "() expects a map to be provided");
    return false;
  }
  if (!with_keys && !m.args.empty()) {
    error(m.loc, name + "() expects a whole map: write " + name + "(" + m.name + ")");
    return false;
  }
  Value v = map_read(m, !with_keys);
  annotate(m, v);
  // A delete inside a for loop over the map is bpftrace's (the loop goes on over the rows
  // it started with); any other change there is refused.
  if (call.func != Func::print && call.func != Func::del) not_iterated(m);
  if (with_keys && !v.error) {
    const ast::MapInfo& info = program_.maps[static_cast<std::size_t>(m.map_id)];
    if (info.key_types.size() != m.args.size()) {
      // map_read already reported an arity mismatch when keys were given.
      if (m.args.empty()) {
        error(m.loc, "delete() of " + m.name + " needs its keys: delete(" + m.name + "[...])");
      }
      return false;
    }
  }
  return !v.error;
}

namespace {

// What the command found for uaddr("NAME") in MODULE (run_misc.h, kUaddrPrefix): the
// symbol's link-time value and size and the module's file; nullopt when it added no line.
struct UaddrFact {
  bool found = false;
  std::uint64_t value = 0, size = 0;
  std::string path;
};
std::optional<UaddrFact> uaddr_fact(std::string_view source, std::string_view module,
                                    std::string_view name) {
  const std::string head =
      std::string(kUaddrPrefix) + std::string(module) + "\t" + std::string(name) + "\t";
  const std::size_t at = source.find(head);
  if (at == std::string_view::npos) return std::nullopt;
  std::string_view rest = source.substr(at + head.size());
  rest = rest.substr(0, rest.find('\n'));
  UaddrFact f;
  const std::size_t t1 = rest.find('\t'), t2 = rest.find('\t', t1 + 1);
  if (t1 == std::string_view::npos || t2 == std::string_view::npos) return std::nullopt;
  f.found = rest.substr(0, t1) != "-";
  f.value = std::strtoull(std::string(rest.substr(0, t1)).c_str(), nullptr, 16);
  f.size = std::strtoull(std::string(rest.substr(t1 + 1, t2 - t1 - 1)).c_str(), nullptr, 16);
  f.path = std::string(rest.substr(t2 + 1));
  return f;
}

// The load bias of the module whose file is `path` in this process (the traced program,
// where the agent compiles the script); 0 when it is not loaded (the command's check, or a
// non-PIE executable).
std::uint64_t load_bias(const std::string& path) {
  struct Search {
    std::string want;
    std::uint64_t bias = 0;
  } search;
  char real[PATH_MAX];
  if (!::realpath(path.c_str(), real)) return 0;
  search.want = real;
  dl_iterate_phdr(
      [](dl_phdr_info* info, std::size_t, void* data) {
        auto* s = static_cast<Search*>(data);
        char buf[PATH_MAX];
        const char* name = info->dlpi_name;
        if (!name || !*name) {  // the main program
          const ssize_t n = ::readlink("/proc/self/exe", buf, sizeof buf - 1);
          if (n <= 0) return 0;
          buf[n] = '\0';
        } else if (!::realpath(name, buf)) {
          return 0;
        }
        if (s->want != buf) return 0;
        s->bias = info->dlpi_addr;
        return 1;
      },
      &search);
  return search.bias;
}

}  // namespace

Value Checker::call(Expr& e, Context ctx) {
  // uaddr("NAME"): the address of symbol NAME of the action's uprobe module, typed as
  // bpftrace types it: a pointer to int8, int16 or int32 for a symbol of that size, else to
  // int64. Rewritten into the cast `(intN *)ADDRESS`, the address computed here, where the
  // agent compiles the script in the traced program (its load bias, for a PIE).
  // (out of line, as a lambda: the checker's other calls keep a narrow frame)
  auto uaddr = [ this, &e ]() __attribute__((noinline, cold))->Value {
    if (e.args.size() != 1 || e.args[0]->kind != Expr::Kind::string) {
      error(e.loc, "uaddr() takes one string literal, the symbol's name: uaddr(\"GLOBAL\")");
      return Value::bad();
    }
    const std::string name = e.args[0]->text;
    std::optional<std::uint64_t> size, address;
    for (const ast::AttachPoint& p : action_->probes) {
      if ((p.probe.kind != Probe::Kind::uprobe && p.probe.kind != Probe::Kind::uretprobe) ||
          p.usdt) {
        error(e.loc,
              "uaddr() names a symbol of the probed binary: it is for uprobe and "
              "uretprobe probes (not '" +
                  p.probe.text + "')");
        return Value::bad();
      }
      const std::optional<UaddrFact> f = uaddr_fact(program_.source, p.module, name);
      if (!f || !f->found) {
        error(e.loc, "Could not resolve symbol: " + p.module + ":" + name +
                         (f ? std::string(" (") + f->path + " has no symbol of that name)"
                            : std::string(" (uaddr needs the hotprobe command, which reads the "
                                          "binary's symbols)")));
        return Value::bad();
      }
      if (size && *size != f->size) {
        error(e.loc, "Symbol size mismatch between probes. Symbol \"" + name + "\" has size " +
                         std::to_string(*size) + " for probe \"" + action_->probes[0].probe.text +
                         "\" but size " + std::to_string(f->size) + " for probe \"" + p.probe.text +
                         "\"");
        return Value::bad();
      }
      size = f->size;
      if (!address) address = load_bias(f->path) + f->value;
    }
    if (!address) return Value::bad();
    const std::uint32_t bytes =
        *size == 1 || *size == 2 || *size == 4 ? static_cast<std::uint32_t>(*size) : 8;
    auto lit = std::make_unique<Expr>();
    lit->kind = Expr::Kind::integer;
    lit->value = static_cast<std::int64_t>(*address);
    lit->loc = e.loc;
    e.kind = Expr::Kind::cast;
    e.cast_type = program_.types.pointer(program_.types.integer(bytes, true));
    e.args.clear();
    e.args.push_back(std::move(lit));
    return cast(e);
  };
  if (e.name == "uaddr") return uaddr();
  if (!resolve_func(e)) {
    for (std::string_view b : kBuiltinNames) {
      if (e.name == b) {
        error(e.loc, "'" + e.name + "' is a builtin, not a function: write " + e.name);
        return Value::bad();
      }
    }
    error(e.loc, "unknown function '" + e.name + "'" + did_you_mean(e.name, kFuncNames));
    for (auto& a : e.args)
      expr(*a, Context::value);
    return Value::bad();
  }
  std::string name(ast::to_string(e.func));
  std::size_t n = e.args.size();
  if (ast::is_aggregation(e.func)) {
    error(e.loc, name + "() should be directly assigned to a map");
    return Value::bad();
  }
  auto no_value = [&]() {
    if (ctx == Context::value) return Value{Type::none, std::nullopt, 0, false};
    return Value{};
  };
  switch (e.func) {
    case Func::del:
      // bpftrace's newer form delete(@m, KEY): delete(@m[KEY]) (a tuple KEY for a map of
      // several key parts, as $kv.0 of a for loop gives it).
      if (e.args.size() == 2 && e.args[0] && e.args[0]->kind == Expr::Kind::map &&
          e.args[0]->args.empty()) {
        e.args[0]->args.push_back(std::move(e.args[1]));
        e.args.pop_back();
      }
      map_argument(e, true);
      return no_value();
    case Func::clear:
    case Func::zero:
      map_argument(e, false);
      return no_value();
    case Func::print: {
      if (n == 0) {
        error(e.loc, "print() requires at least one argument (0 provided)");
        return Value::bad();
      }
      if (e.args[0]->kind == Expr::Kind::map && e.args[0]->args.empty()) {
        if (map_argument(e, false)) {
          for (std::size_t i = 1; i < n; ++i) {
            std::int64_t c = 0;
            if (!constant(*e.args[i], c) || c < 0) {
              error(e.args[i]->loc,
                    "print(): the top and div arguments are non-negative "
                    "integer literals");
            }
            annotate(*e.args[i], Value::integer());
          }
        }
        return no_value();
      }
      if (n != 1) {
        error(e.loc, "print() of a value takes one argument (" + std::to_string(n) +
                         " provided); top and div are for maps");
        return Value::bad();
      }
      allow_tuple();
      Value v = value(*e.args[0]);
      if (!v.error && v.agg) {
        error(e.args[0]->loc,
              "print() of one element of an aggregation map is not "
              "supported: print the whole map, print(" +
                  e.args[0]->name + ")");
      }
      return no_value();
    }
    case Func::printf:
      return printf_call(e, ctx);
    case Func::time:
      if (n > 1 || (n == 1 && e.args[0]->kind != Expr::Kind::string)) {
        error(e.loc, "time() takes no argument or one string literal (a strftime format)");
        return Value::bad();
      }
      if (n == 1)
        annotate(*e.args[0], Value::string(static_cast<std::uint32_t>(e.args[0]->text.size() + 1)));
      return no_value();
    case Func::exit:
      if (n != 0) {
        error(e.loc, "exit() requires no arguments (" + std::to_string(n) + " provided)");
        return Value::bad();
      }
      return no_value();
    case Func::str: {
      if (n < 1 || n > 2) {
        error(e.loc, "str() requires one or two arguments (" + std::to_string(n) + " provided)");
        return Value::bad();
      }
      Value p = value(*e.args[0]);
      bool ok = !p.error;
      if (ok && !p.is_int() && !p.is_str()) {
        error(e.args[0]->loc,
              "str() expects an integer pointer or a string as its first "
              "argument (" +
                  printf_type_name(p) + " provided)");
        ok = false;
      }
      std::uint32_t size = p.is_str() ? p.size : ast::kDefaultStrSize;
      if (n == 2) {
        Value len = value(*e.args[1]);
        if (!len.error && !len.is_int()) {
          error(e.args[1]->loc,
                "str() expects an integer length (" + printf_type_name(len) + " provided)");
          ok = false;
        }
        std::int64_t c = 0;
        if (constant(*e.args[1], c) && c >= 0 && c < ast::kDefaultStrSize) {
          size = static_cast<std::uint32_t>(c) + 1;
        }
      }
      if (!ok) return Value::bad();
      return Value::string(size);
    }
    case Func::ustack:
      e.value = kStackValue;
      return ustack_key(e);
    case Func::usym:
      e.value = kStackValue;
      return usym_key(e);
    case Func::reg: {
      if (n != 1) {
        error(e.loc, "reg() requires one argument (" + std::to_string(n) + " provided)");
        return Value::bad();
      }
      if (e.args[0]->kind != Expr::Kind::string) {
        Value a = value(*e.args[0]);
        if (!a.error)
          error(e.loc, "reg() expects a string literal (" + printf_type_name(a) + " provided)");
        return Value::bad();
      }
      annotate(*e.args[0], Value::string(static_cast<std::uint32_t>(e.args[0]->text.size() + 1)));
      if (!find_reg(e.args[0]->text)) {
        std::string names;
        for (const RegName& r : kRegNames)
          names += (names.empty() ? "" : " ") + std::string(r.name);
        error(e.loc, "'" + e.args[0]->text +
                         "' is not a valid register on this architecture (x86_64): the registers "
                         "are " +
                         names);
        return Value::bad();
      }
      if (!needs_registers(e, "reg()")) return Value::bad();
      return Value::integer();
    }
    case Func::strftime: {
      if (n != 2 || e.args[0]->kind != Expr::Kind::string) {
        error(e.loc,
              "strftime() takes a format string literal and a time in nanoseconds since "
              "boot: strftime(\"%H:%M:%S\", nsecs)");
        return Value::bad();
      }
      annotate(*e.args[0], Value::string(static_cast<std::uint32_t>(e.args[0]->text.size() + 1)));
      if (!integer_argument(*e.args[1], "strftime() expects an integer time")) return Value::bad();
      return Value::string(ast::kDefaultStrSize);
    }
    case Func::join: {
      if (n < 1 || n > 2 || (n == 2 && e.args[1]->kind != Expr::Kind::string)) {
        error(e.loc,
              "join() takes an array of strings and an optional separator literal: "
              "join(arg1) or join(arg1, \",\")");
        return Value::bad();
      }
      if (!integer_argument(*e.args[0], "join() expects a pointer to an array of strings"))
        return Value::bad();
      if (n == 2)
        annotate(*e.args[1], Value::string(static_cast<std::uint32_t>(e.args[1]->text.size() + 1)));
      return no_value();
    }
    case Func::buf: {
      std::int64_t len = 0;
      // buf(ARRAY[, N]) of an array read in place (a field, an element): its address, and
      // its size when N is not given (bpftrace's form).
      const Expr::Kind k = n >= 1 ? e.args[0]->kind : Expr::Kind::integer;
      if (k == Expr::Kind::field || k == Expr::Kind::index || k == Expr::Kind::deref) {
        const Value v = expr(*e.args[0], Context::value);
        if (v.error) return Value::bad();
        if (v.type == Type::object && program_.types.at(v.ctype).kind == ast::CType::Kind::array) {
          if (n == 1) {
            e.args.push_back(std::make_unique<Expr>());
            e.args[1]->loc = e.loc;
            e.args[1]->value = program_.types.size_of(v.ctype);
          }
          n = e.args.size();
        } else if (!v.is_int()) {
          error(e.args[0]->loc,
                "buf() expects a pointer or an array (" +
                    (v.type == Type::object ? cname(v.ctype) : printf_type_name(v)) + " provided)");
          return Value::bad();
        }
      }
      if (n != 2 || !constant(*e.args[1], len)) {
        error(e.loc, "buf() takes a pointer and a length literal: buf(arg0, 16)");
        return Value::bad();
      }
      if (len < 0 || len > ast::kMaxBufLength) {
        error(e.args[1]->loc, "buf(): the length is 0 to " + std::to_string(ast::kMaxBufLength) +
                                  " bytes (" + std::to_string(len) +
                                  " given; bpftrace's BPFTRACE_STRLEN): read it in parts");
        return Value::bad();
      }
      annotate(*e.args[1], Value::integer());
      if (k != Expr::Kind::field && k != Expr::Kind::index && k != Expr::Kind::deref) {
        const Value a = value(*e.args[0]);  // a pointer, or a string's bytes
        if (a.error) return Value::bad();
        if (!a.is_int() && !a.is_str()) {
          error(e.args[0]->loc, "buf() expects a pointer, a string or an array read in place (" +
                                    printf_type_name(a) +
                                    " provided: take buf() of the member, buf($p->arr))");
          return Value::bad();
        }
      }
      // [length][bytes] (TypeTable::buffer), printed as \xNN text (layout.h).
      const int t = program_.types.buffer(static_cast<std::uint32_t>(len));
      return Value{Type::record, std::nullopt, program_.types.size_of(t), false, t};
    }
    case Func::len:
      // len(ustack), len($s) of a stack value: its frames (run_stack.h, stack_frame_count);
      // len(@m) of a whole map: check_misc.cc.
      if (n == 1 && !(e.args[0]->kind == Expr::Kind::map && e.args[0]->args.empty())) {
        Expr& a = *e.args[0];
        const Value v = value(a);
        if (v.error) return Value::bad();
        if (a.kind == Expr::Kind::map && !v.is_str()) {  // an element that holds no stack
          error(a.loc, "len() expects a whole map: write len(" + a.name + ")");
          return Value::bad();
        }
        if (!v.is_str() || a.kind == Expr::Kind::string) {
          error(e.args[0]->loc,
                "len() takes a map (len(@m)) or a stack (len(ustack), len($s) of "
                "$s = ustack), not " +
                    printf_type_name(v));
          return Value::bad();
        }
        return Value::integer();
      }
      return misc_call(e, ctx);  // check_misc.cc
    default:
      return misc_call(e, ctx);  // check_misc.cc
  }
}

Value Checker::printf_call(Expr& e, Context ctx) {
  std::size_t n = e.args.size();
  const std::string fn(ast::to_string(e.func));  // printf, system, cat
  if (n == 0) {
    error(e.loc, fn + "() requires at least one argument (0 provided)");
    return Value::bad();
  }
  if (n - 1 > ast::kMaxPrintfArgs) {
    error(e.loc, fn + "() can only take up to " + std::to_string(ast::kMaxPrintfArgs) +
                     " arguments after its format (" + std::to_string(n - 1) +
                     " provided): split it into several " + fn + "() calls");
    return Value::bad();
  }
  std::vector<Value> args;
  for (auto& a : e.args)
    args.push_back(value(*a));
  if (e.args[0]->kind != Expr::Kind::string) {
    if (!args[0].error) {
      error(e.loc, fn + "() expects a string literal (" + printf_type_name(args[0]) + " provided)");
    }
    return Value::bad();
  }
  std::size_t before = diags_.size();
  e.format = parse_format(e.args[0]->text, e.args[0]->loc, diags_);
  if (diags_.size() != before) return Value::bad();
  std::size_t conversions = 0;
  for (const FormatSpec& p : e.format) {
    if (p.conversion != 0) ++conversions;
  }
  if (n - 1 < conversions) {
    error(e.loc, fn + ": Not enough arguments for format string (" + std::to_string(n - 1) +
                     " supplied, " + std::to_string(conversions) + " expected)");
    return Value::bad();
  }
  if (n - 1 > conversions) {
    error(e.loc, fn + ": Too many arguments for format string (" + std::to_string(n - 1) +
                     " supplied, " + std::to_string(conversions) + " expected)");
    return Value::bad();
  }
  for (FormatSpec& p : e.format) {
    if (p.conversion == 0) continue;
    const Value& v = args[static_cast<std::size_t>(p.arg)];
    if (v.error) continue;
    bool want_string = p.conversion == 's';
    const bool buffer = v.type == Type::record && program_.types.is_buffer(v.ctype);  // %r
    if (want_string ? !v.is_str() && !buffer : !v.is_int()) {
      error(e.loc, fn + ": %" + p.conversion + " specifier expects a value of type " +
                       (want_string ? "string" : "integer") + " (" + printf_type_name(v) +
                       " supplied)");
    }
  }
  if (ctx == Context::value) return Value{Type::none, std::nullopt, 0, false};
  return Value{};
}

}  // namespace hotprobe::script::checking
