// The check pass: positional parameters, loops and the small builtins (check_pass.h;
// docs/design/script-language.md, "Positional parameters, loops, small builtins").
#include <csignal>
#include <cstring>
#include <string>

#include "script/check.h"
#include "script/check_pass.h"
#include "script/loops.h"

namespace hotprobe::script::checking {

namespace {

// "$3" -> 3, "$#" -> 0; -1 for another name.
int positional_index(std::string_view name) {
  if (name.size() < 2 || name[0] != '$') return -1;
  if (name == "$#") return 0;
  int n = 0;
  for (char c : name.substr(1)) {
    if (c < '0' || c > '9') return -1;
    n = std::min(n * 10 + (c - '0'), 1 << 20);
  }
  return n;
}

// A parameter that reads as an integer: decimal or 0x hex, with an optional sign, as
// bpftrace reads `bpftrace -e '...' 42 0x10`.
bool param_integer(std::string_view text, std::int64_t& out) {
  bool neg = false;
  if (!text.empty() && (text[0] == '-' || text[0] == '+')) {
    neg = text[0] == '-';
    text.remove_prefix(1);
  }
  int base = 10;
  if (text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
    base = 16;
    text.remove_prefix(2);
  }
  if (text.empty()) return false;
  unsigned __int128 v = 0;
  for (char c : text) {
    int d = c >= '0' && c <= '9'                 ? c - '0'
            : base == 16 && c >= 'a' && c <= 'f' ? c - 'a' + 10
            : base == 16 && c >= 'A' && c <= 'F' ? c - 'A' + 10
                                                 : -1;
    if (d < 0) return false;
    v = v * static_cast<unsigned>(base) + static_cast<unsigned>(d);
    if (v > UINT64_MAX) return false;
  }
  const auto u = static_cast<std::uint64_t>(v);
  out = static_cast<std::int64_t>(neg ? 0 - u : u);
  return true;
}

class ParamResolver {
 public:
  ParamResolver(ast::Program& p, Diagnostics& diags) : p_(p), diags_(diags) {}

  void run() {
    for (ast::Action& a : p_.actions) {
      if (a.predicate) expr(*a.predicate);
      stmts(a.body);
    }
  }

 private:
  void stmts(std::vector<Stmt>& body) {
    for (Stmt& s : body) {
      for (ast::ExprPtr* e : {&s.expr, &s.target, &s.value, &s.cond})
        if (*e && !(e == &s.target && s.kind == Stmt::Kind::for_)) expr(**e);
      stmts(s.body);
      stmts(s.else_body);
    }
  }

  // A work list, not a recursion: a chain a+b+c+... is as tall as it is long.
  void expr(Expr& root) {
    std::vector<Expr*> todo{&root};
    while (!todo.empty()) {
      Expr& e = *todo.back();
      todo.pop_back();
      if (e.kind == Expr::Kind::call && e.name == "str" && !e.args.empty() &&
          e.args[0]->kind == Expr::Kind::variable && positional_index(e.args[0]->name) > 0) {
        to_string(*e.args[0]);
      } else if (e.kind == Expr::Kind::variable) {
        to_integer(e);
      }
      for (ast::ExprPtr& a : e.args)
        if (a) todo.push_back(a.get());
    }
  }

  const std::string* param(int n) const {
    return n >= 1 && static_cast<std::size_t>(n) <= p_.params.size()
               ? &p_.params[static_cast<std::size_t>(n) - 1]
               : nullptr;
  }

  // str($N): the parameter's text ("" when it was not given).
  void to_string(Expr& e) {
    const std::string* text = param(positional_index(e.name));
    e.kind = Expr::Kind::string;
    e.text = text ? *text : std::string();
  }

  // $N elsewhere: its integer (0 when it was not given), $#: how many there are.
  void to_integer(Expr& e) {
    const int n = positional_index(e.name);
    if (n < 0) return;
    std::int64_t v = 0;
    if (e.name == "$#") {
      v = static_cast<std::int64_t>(p_.params.size());
    } else if (n == 0) {
      diags_.error(e.loc,
                   "$0 is not a positional parameter: they are $1, $2, ... (the words "
                   "after the script on the command line)");
      return;
    } else if (const std::string* text = param(n); text && !param_integer(*text, v)) {
      diags_.error(e.loc, e.name + " used numerically but given \"" + *text + "\". Try using str(" +
                              e.name + ").");
      return;
    }
    e.kind = Expr::Kind::integer;
    e.value = v;
  }

  ast::Program& p_;
  Diagnostics& diags_;
};

// "KILL", "SIGKILL", "kill": its number; 0 when none.
int signal_number(std::string_view name) {
  if (name.starts_with("SIG")) name.remove_prefix(3);
  for (int s = 1; s < NSIG; ++s) {
    const char* abbrev = sigabbrev_np(s);
    if (abbrev && name == abbrev) return s;
  }
  if (name.starts_with("RTMIN+") || name.starts_with("RTMAX-")) {
    int k = 0;
    for (char c : name.substr(6)) {
      if (c < '0' || c > '9') return 0;
      k = k * 10 + (c - '0');
      if (k > 64) return 0;
    }
    const int s = name[3] == 'I' ? SIGRTMIN + k : SIGRTMAX - k;
    return s >= SIGRTMIN && s <= SIGRTMAX ? s : 0;
  }
  return 0;
}

}  // namespace

void resolve_params(ast::Program& program, Diagnostics& diags) {
  ParamResolver(program, diags).run();
}

int Checker::hidden_slot(const std::string& name) {
  ast::VarInfo info;
  info.name = name;
  info.slot = action_->num_slots++;
  info.type = Type::integer;
  action_->vars.push_back(std::move(info));
  return action_->vars.back().slot;
}

void Checker::loop_statement(Stmt& s) {
  auto slot_of = [&](const char* name) {
    const ast::VarInfo* v = find_var(name);
    return v ? v->slot : 0;  // the parser's preamble assigned both
  };
  const std::int64_t budget = slot_of(kLoopBudgetVar), control = slot_of(kLoopControlVar);
  const std::string word = s.kind == Stmt::Kind::break_ ? "break" : "continue";
  switch (s.kind) {
    case Stmt::Kind::break_:
    case Stmt::Kind::continue_:
      if (loop_depth_ == 0) {
        error(s.loc, word + " used outside of a loop (it belongs in a while or for body)");
      }
      s.count = control;
      return;
    case Stmt::Kind::while_: {
      condition(*s.cond, "while");
      s.count = budget | control << 8;
      ++loop_depth_;
      statements(s.body);
      --loop_depth_;
      return;
    }
    case Stmt::Kind::for_: {
      if (!s.cond) {
        map_loop(s, budget | control << 8);
        return;
      }
      for (Expr* bound : {s.value.get(), s.cond.get()}) {
        Value v = value(*bound);
        if (!v.error && !v.is_int()) {
          error(bound->loc, std::string("Loop range requires an integer for the ") +
                                (bound == s.value.get() ? "start" : "end") + " value (" +
                                printf_type_name(v) + " provided)");
        }
      }
      Expr& var = *s.target;
      if (positional_index(var.name) >= 0) {
        error(var.loc, var.name +
                           " is a positional parameter, not a loop variable: name it "
                           "$i or another $name");
        return;
      }
      if (find_var(var.name)) {
        error(var.loc, "Loop declaration shadows existing variable: " + var.name +
                           " (name the loop variable another $name)");
        return;
      }
      const int var_slot = hidden_slot(var.name);
      var.slot = var_slot;
      var.type = Type::integer;
      s.count = budget | control << 8;
      ++loop_depth_;
      statements(s.body);
      --loop_depth_;
      // The loop variable is the body's: after the loop, the name is free again.
      action_->vars[static_cast<std::size_t>(var_slot)].name = "$$for " + var.name;
      return;
    }
    default:
      return;
  }
}

// The tuple of a map's key parts as for ($kv : @m) gives it in $kv.0: each part laid out
// as a tuple inside a tuple lays its elements out (packed_tuple): an integer an int64, a
// string a char array of its size, a copy its type. -1 and `why` when a part is of another
// kind or the tuple does not fit a copied value.
static int key_tuple_type(ast::TypeTable& T, const ast::MapInfo& info, std::string& why) {
  ast::Record rec;
  rec.complete = true;
  rec.current_form = true;
  rec.tuple = true;
  rec.name = "tuple";
  for (std::size_t k = 0; k < info.key_types.size(); ++k) {
    int type = -1;
    if (info.key_types[k] == Type::integer) {
      type = T.integer(8, true);
    } else if (info.key_types[k] == Type::string) {
      type = T.array(T.integer(1, true), std::max(info.key_sizes[k], 1u));
    } else if (info.key_types[k] == Type::record) {
      type = info.key_ctypes[k];
    } else {
      why = " is keyed by " + key_list(info.key_types) +
            "; hotprobe iterates maps whose key parts are integers, strings, arrays or structs";
      return -1;
    }
    const std::uint32_t align = std::max<std::uint32_t>(T.align_of(type), 1);
    const std::uint32_t at = (rec.size + align - 1) / align * align;
    rec.fields.push_back(ast::Field{std::to_string(k), type, at, 0, 0});
    rec.size = at + T.size_of(type);
    rec.align = std::max(rec.align, align);
  }
  rec.size = (rec.size + rec.align - 1) / rec.align * rec.align;
  if (rec.size > kStrBytes) {
    why = "'s key parts (" + key_list(info.key_types) + ") make a tuple of " +
          std::to_string(rec.size) + " bytes, more than the " + std::to_string(kStrBytes) +
          " a copied value holds: key the map by fewer or smaller strings";
    return -1;
  }
  return T.made_record(std::move(rec));
}

// for ($kv : @m): $kv is a tuple (key, value) in hidden slots, filled for each entry of
// the map as it is when the loop starts. A map whose key parts are integers, strings or
// copied arrays or structs (several: a tuple of them, key_tuple_type) and whose value is
// an integer (count, sum, min, max, avg, a plain int), a string or a copy; the
// loop body may not change the map (bpftrace refuses it too).
void Checker::map_loop(Stmt& s, std::int64_t slots) {
  Expr& var = *s.target;
  Expr& m = *s.value;
  if (m.kind != Expr::Kind::map || !m.args.empty()) {
    error(m.loc, "for (" + var.name + " : ...) iterates a whole map (@m) or a range (START..END)");
    return;
  }
  Value v = map_read(m, true);
  if (v.error) return;
  const ast::MapInfo& info = program_.maps[static_cast<std::size_t>(m.map_id)];
  if (info.key_types.empty()) {
    error(m.loc, "for (" + var.name + " : " + m.name + "): " + m.name +
                     " has no key: read it as a value (" + m.name + ")");
    return;
  }
  // Several key parts: $kv.0 is the tuple of them, a record made as (a, b) inside a tuple
  // is (key_tuple), so $kv.0.1 reads the second part.
  std::string why;
  const int key_tuple = info.key_types.size() > 1 ? key_tuple_type(program_.types, info, why) : -1;
  if (info.key_types.size() > 1 && key_tuple < 0) {
    error(m.loc, "for (" + var.name + " : " + m.name + "): " + m.name + why);
    return;
  }
  const Type key = key_tuple >= 0 ? Type::record : info.key_types[0];
  const bool value_ok = info.kind == ValueKind::count || info.kind == ValueKind::sum ||
                        info.kind == ValueKind::min || info.kind == ValueKind::max ||
                        info.kind == ValueKind::avg || info.kind == ValueKind::integer ||
                        info.kind == ValueKind::string || info.kind == ValueKind::record;
  if ((key != Type::integer && key != Type::string && key != Type::record) || !value_ok) {
    error(m.loc, "for (" + var.name + " : " + m.name + "): " + m.name + " holds " +
                     key_list(info.key_types) + " -> " + map_type_name(info) +
                     "; hotprobe iterates maps whose key is an integer, a string, an array or "
                     "a struct and whose value is one of these or a count, sum, min, max or avg");
    return;
  }
  const std::uint32_t wide = std::max(
      info.kind == ValueKind::record ? info.str_size : 0,
      key_tuple < 0 && key == Type::record ? program_.types.size_of(info.key_ctypes[0]) : 0);
  if (wide > kStrBytes) {
    error(m.loc, "for (" + var.name + " : " + m.name + "): " + m.name + " holds a copy of " +
                     std::to_string(wide) +
                     " bytes; hotprobe iterates maps whose keys and values "
                     "have at most " +
                     std::to_string(kStrBytes) + ": read " + m.name + "[key] by its key instead");
    return;
  }
  if (find_var(var.name)) {
    error(var.loc, "Loop declaration shadows existing variable: " + var.name +
                       " (name the loop variable another $name)");
    return;
  }
  const int ki = key_tuple >= 0                      ? key_tuple
                 : info.key_types[0] == Type::record ? info.key_ctypes[0]
                                                     : -1;
  const std::uint32_t ksize = key_tuple >= 0        ? program_.types.size_of(key_tuple)
                              : key == Type::string ? std::max(info.key_sizes[0], 1u)
                                                    : info.key_sizes[0];
  ast::TupleElem k{key, ksize, ki};
  ast::TupleElem val{Type::integer, 0, -1};
  if (info.kind == ValueKind::string)
    val = ast::TupleElem{Type::string, std::max(info.str_size, 1u), -1};
  if (info.kind == ValueKind::record) val = ast::TupleElem{Type::record, info.str_size, info.ctype};
  ast::VarInfo tv;
  tv.name = var.name;
  tv.slot = action_->num_slots++;
  tv.type = Type::tuple;
  tv.first = var.loc;
  action_->vars.push_back(std::move(tv));
  const std::size_t index = action_->vars.size() - 1;
  assign_tuple(index, tuple_of({k, val}), var);
  var.ctype = key_tuple;  // the lowering packs the key parts into it (lower_loops.cc)
  s.count = slots;
  iterated_.push_back(m.map_id);
  ++loop_depth_;
  statements(s.body);
  --loop_depth_;
  iterated_.pop_back();
  action_->vars[index].name = "$$for " + var.name;
}

void Checker::not_iterated(const Expr& target) {
  for (int id : iterated_) {
    if (id == target.map_id) {
      error(target.loc, target.name +
                            " is changed inside a for loop over it: the loop reads "
                            "the map as it was when it started; change it after the loop");
      return;
    }
  }
}

bool Checker::unsafe_allowed(const Expr& e) {
  if (program_.unsafe) return true;
  error(e.loc, e.name +
                   "() is an unsafe function being used in safe mode (run hotprobe with "
                   "--unsafe to allow it)");
  return false;
}

bool Checker::only_uprobes(const Expr& e) {
  for (const ast::AttachPoint& p : action_->probes) {
    if (p.probe.kind != Probe::Kind::uprobe && p.probe.kind != Probe::Kind::uretprobe) {
      error(e.loc, e.name + " can not be used with \"" +
                       std::string(probe_kind_name(p.probe.kind)) +
                       "\" probes (it acts on the traced thread: use it in a uprobe or "
                       "uretprobe)");
      return false;
    }
  }
  return true;
}

// A field or element of an array or struct copied whole ($v.f of a record $v): its bytes
// are in the copy, not at an address of the program.
static bool in_record_copy(const Expr& e) {
  const Expr* b = &e;
  while (b->kind == Expr::Kind::field || b->kind == Expr::Kind::index) {
    if (b->kind == Expr::Kind::field && b->arrow) return false;
    b = b->args[0].get();
    if (b->type == Type::record) return true;
  }
  return false;
}

Value Checker::misc_call(Expr& e, Context ctx) {
  if (e.func == Func::len) return map_argument(e, false) ? Value::integer() : Value::bad();
  // A format and its arguments, as printf's (which checks them); the hotprobe command runs
  // the result.
  if (e.func == Func::system || e.func == Func::cat)
    return unsafe_allowed(e) ? printf_call(e, ctx) : Value::bad();
  const std::size_t n = e.args.size();
  const std::string name(ast::to_string(e.func));
  auto arity = [&](std::size_t lo, std::size_t hi) {
    if (n >= lo && n <= hi) return true;
    std::string want =
        lo == hi ? (lo == 1 ? std::string("one argument") : std::to_string(lo) + " arguments")
                 : std::to_string(lo) + " or " + std::to_string(hi) + " arguments";
    error(e.loc, name + "() requires " + want + " (" + std::to_string(n) + " provided)");
    return false;
  };
  std::vector<Value> args;
  for (auto& a : e.args)
    args.push_back(value(*a));
  for (const Value& v : args)
    if (v.error) return Value::bad();
  auto no_value = [&]() {
    if (ctx == Context::value) return Value{Type::none, std::nullopt, 0, false};
    return Value{};
  };
  switch (e.func) {
    case Func::strncmp: {
      if (!arity(3, 3)) return Value::bad();
      for (std::size_t k = 0; k < 2; ++k) {
        if (!args[k].is_str()) {
          error(e.loc, "strncmp() only supports string arguments (" + printf_type_name(args[k]) +
                           " provided)");
          return Value::bad();
        }
      }
      std::int64_t len = 0;
      if (!constant(*e.args[2], len) || len < 0) {
        error(e.loc, "strncmp() expects a integer literal (" + printf_type_name(args[2]) +
                         " provided): write the length as a number, e.g. strncmp(a, b, 4)");
        return Value::bad();
      }
      return Value::integer();
    }
    case Func::strcontains:
      if (!arity(2, 2)) return Value::bad();
      for (std::size_t k = 0; k < 2; ++k) {
        if (!args[k].is_str()) {
          error(e.args[k]->loc, "strcontains() only supports string arguments (" +
                                    printf_type_name(args[k]) + " provided)");
          return Value::bad();
        }
      }
      return Value::integer();
    case Func::uptr:
      if (!arity(1, 1)) return Value::bad();
      if (!args[0].is_int()) {
        error(e.args[0]->loc, "uptr() expects an integer or a pointer (" +
                                  printf_type_name(args[0]) + " provided)");
        return Value::bad();
      }
      return Value::typed(args[0].ctype);
    case Func::signal: {
      if (!arity(1, 1) || !unsafe_allowed(e) || !only_uprobes(e)) return Value::bad();
      Expr& a = *e.args[0];
      std::int64_t sig = 0;
      if (a.kind == Expr::Kind::string) {
        sig = signal_number(a.text);
        if (sig == 0) {
          error(e.loc, a.text +
                           " is not a valid signal (write a name such as \"KILL\", "
                           "\"SIGUSR1\" or a number 1 to 64)");
          return Value::bad();
        }
        a.kind = Expr::Kind::integer;  // the number, decoded once
        a.value = sig;
        annotate(a, Value::integer());
      } else if (!args[0].is_int()) {
        error(e.loc, "signal() expects a signal name or number (" + printf_type_name(args[0]) +
                         " provided)");
        return Value::bad();
      } else if (constant(a, sig) && (sig < 1 || sig > 64)) {
        error(e.loc, std::to_string(sig) + " is not a valid signal, allowed range: [1,64]");
        return Value::bad();
      }
      return no_value();
    }
    case Func::system:
    case Func::cat:
      return Value::bad();  // before the arguments, below
    case Func::ntop: {
      if (!arity(1, 2)) return Value::bad();
      const Value& addr = args[n - 1];
      if (n == 2 && !args[0].is_int()) {
        error(e.args[0]->loc,
              "ntop() expects an integer address family, AF_INET (2) or "
              "AF_INET6 (10) (" +
                  printf_type_name(args[0]) + " provided)");
        return Value::bad();
      }
      if (!addr.is_int()) {
        error(e.loc,
              "ntop() argument must be 4 or 16 bytes in size (hotprobe takes an "
              "integer holding an IPv4 address, or ntop(10, ADDR) for IPv6)");
        return Value::bad();
      }
      return Value::string(46);  // INET6_ADDRSTRLEN
    }
    case Func::macaddr:
      if (!arity(1, 1)) return Value::bad();
      if (e.args[0]->kind == Expr::Kind::string) {
        error(e.loc, "macaddr() does not support literal string arguments");
        return Value::bad();
      }
      if (Expr& a = *e.args[0]; !args[0].is_int() && a.ctype >= 0 &&
                                program_.types.size_of(a.ctype) == 6 &&
                                (a.kind == Expr::Kind::field || a.kind == Expr::Kind::index ||
                                 a.kind == Expr::Kind::deref) &&
                                !in_record_copy(a)) {
        a.type = Type::object;  // a 6-byte array or struct in memory: read at its address
      } else if (!args[0].is_int()) {
        error(e.loc,
              "macaddr() argument must be 6 bytes in size (hotprobe takes a pointer "
              "to the 6 bytes, or a 6-byte array or struct member such as $s->mac)");
        return Value::bad();
      }
      return Value::string(18);
    default:
      return Value::bad();
  }
}

}  // namespace hotprobe::script::checking
