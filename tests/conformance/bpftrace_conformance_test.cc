// Conformance against bpftrace itself: each script runs under `bpftrace -c` (kernel
// uprobes) and under `hotprobe run` on the same deterministic program
// (examples/demo_service: its calls per route do not depend on scheduling), and the map
// output of both must be identical, byte for byte, in text and in JSON. Skipped, with
// the reason, where bpftrace cannot run (not installed, not root, no uprobe support).
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>

namespace {

struct Output {
  int status = -1;
  std::string out;
  std::string err;
};

// Runs argv with stdout and stderr captured (stdin: /dev/null).
Output run(const std::vector<std::string>& argv) {
  char out_path[] = "/tmp/hp_conf_outXXXXXX";
  char err_path[] = "/tmp/hp_conf_errXXXXXX";
  int out_fd = ::mkstemp(out_path);
  int err_fd = ::mkstemp(err_path);
  Output r;
  pid_t pid = ::fork();
  if (pid == 0) {
    int null_fd = ::open("/dev/null", O_RDONLY);
    ::dup2(null_fd, 0);
    ::dup2(out_fd, 1);
    ::dup2(err_fd, 2);
    std::vector<char*> args;
    for (const auto& a : argv)
      args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execvp(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  r.status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  auto slurp = [](int fd) {
    std::string s;
    char buf[65536];
    ::lseek(fd, 0, SEEK_SET);
    for (ssize_t n; (n = ::read(fd, buf, sizeof buf)) > 0;)
      s.append(buf, static_cast<std::size_t>(n));
    ::close(fd);
    return s;
  };
  r.out = slurp(out_fd);
  r.err = slurp(err_fd);
  ::unlink(out_path);
  ::unlink(err_path);
  return r;
}

// Entries with equal values: bpftrace prints them in its hash table's order, which is
// not specified (and not stable across runs), so both outputs sort each run of equal
// values by key before comparing.
template <class Entry>
void sort_ties(std::vector<Entry>& v) {
  for (std::size_t i = 0; i < v.size();) {
    std::size_t j = i;
    while (j < v.size() && v[j].value == v[i].value)
      ++j;
    std::sort(v.begin() + static_cast<std::ptrdiff_t>(i),
              v.begin() + static_cast<std::ptrdiff_t>(j));
    i = j;
  }
}

struct Entry {
  std::string value, line;
  bool operator<(const Entry& o) const { return line < o.line; }
};

// ustack(perf) prints each frame's address ("\t55d0c0a1b2c3 main+42 (PATH)"): the two
// runs load the program at other addresses, so the address is left out of the comparison.
std::string without_perf_addresses(std::string s, const std::string& tab) {
  for (std::size_t p = 0; (p = s.find(tab, p)) != std::string::npos;) {
    std::size_t e = p + tab.size();
    while (e < s.size() && std::isxdigit(static_cast<unsigned char>(s[e])))
      ++e;
    if (e > p + tab.size() && e < s.size() && s[e] == ' ')
      s.replace(p + tab.size(), e - p - tab.size(), "ADDR");
    p += tab.size();
  }
  return s;
}

// Text: runs of "@name[key]: value" lines of one map.
std::string canonical_text(const std::string& raw) {
  std::istringstream in(without_perf_addresses(raw, "\t"));
  std::string line, kept;
  std::vector<Entry> run;
  std::string run_map;
  auto flush = [&] {
    sort_ties(run);
    for (const auto& e : run)
      kept += e.line + "\n";
    run.clear();
  };
  while (std::getline(in, line)) {
    if (line.rfind("Attaching ", 0) == 0 && line.find(" probe") != std::string::npos) continue;
    std::size_t bracket = line.find('[');
    std::size_t colon = line.rfind("]: ");
    if (line.rfind('@', 0) == 0 && bracket != std::string::npos && colon != std::string::npos) {
      std::string map = line.substr(0, bracket);
      if (map != run_map) flush();
      run_map = map;
      run.push_back({line.substr(colon + 3), line});
      continue;
    }
    flush();
    run_map.clear();
    kept += line + "\n";
  }
  flush();
  return kept;
}

// JSON: one object per line; blank lines (bpftrace prints two before its exit dump) are
// dropped, and in {"type": "map", "data": {"@m": {"k": v, ...}}} ties are sorted.
std::string canonical_json(const std::string& raw) {
  std::istringstream in(without_perf_addresses(raw, "\\t"));
  std::string line, kept;
  while (std::getline(in, line)) {
    if (line.empty() || line.find("\"type\": \"attached_probes\"") != std::string::npos) continue;
    const std::string head = "{\"type\": \"map\", \"data\": {\"";
    std::size_t inner = line.find(": {\"", head.size());
    if (line.rfind(head, 0) == 0 && inner != std::string::npos && line.size() > inner + 6) {
      std::string body = line.substr(inner + 3, line.size() - (inner + 3) - 3);  // "k": v, ...
      std::vector<Entry> entries;
      for (std::size_t p = 0; p < body.size();) {
        std::size_t next = body.find(", \"", p);
        std::string item = body.substr(p, next == std::string::npos ? std::string::npos : next - p);
        entries.push_back({item.substr(item.rfind(": ") + 2), item});
        if (next == std::string::npos) break;
        p = next + 2;
      }
      sort_ties(entries);
      std::string rebuilt = line.substr(0, inner + 3);
      for (std::size_t i = 0; i < entries.size(); ++i)
        rebuilt += (i ? ", " : "") + entries[i].line;
      line = rebuilt + "}}}";
    }
    kept += line + "\n";
  }
  return kept;
}

std::string why_bpftrace_cannot_run() {
  static const std::string reason = [] {
#if defined(HOTPROBE_ASAN) || defined(HOTPROBE_TSAN)
    // The outputs are compared in the release tree; a sanitizer runtime in the traced
    // program changes its timing, not what the two tracers print.
    return std::string("sanitizer build (conformance runs in the release build)");
#endif
    if (::geteuid() != 0) return std::string("not root");
    Output v = run({"bpftrace", "--version"});
    if (v.status != 0) return std::string("bpftrace is not installed (apt-get install bpftrace)");
    Output t = run({"bpftrace", "-e", "BEGIN { exit(); }"});
    if (t.status != 0) return "bpftrace cannot run here: " + t.err.substr(0, 200);
    return std::string();
  }();
  return reason;
}

constexpr const char* kDemo = HP_DEMO_BIN;
constexpr const char* kStructFixture = HP_STRUCT_BIN;
constexpr const char* kStackFixture = HP_STACK_BIN;
constexpr const char* kHotprobe = HP_HOTPROBE_BIN;
const std::vector<std::string> kDemoArgs = {"--threads", "2", "--requests", "3000", "--quiet"};

std::string substitute(std::string script, const std::string& bin) {
  for (std::size_t p; (p = script.find("BIN")) != std::string::npos;)
    script.replace(p, 3, bin);
  return script;
}

// A fresh copy of the demo (a new inode) at `path`. Kernel uprobes are keyed by inode and
// bpftrace -c attaches them system-wide: tests running in parallel must not trace each
// other's processes, and hotprobe must not find a kernel uprobe's int3 in the code it
// patches. So each run gets its own file, and bpftrace's copy is replaced by a new one at
// the same path (the `probe` builtin prints it) before hotprobe runs.
void fresh_copy(const std::string& path, const char* from) {
  ::unlink(path.c_str());
  int in = ::open(from, O_RDONLY | O_CLOEXEC);
  int out = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0755);
  ASSERT_GE(in, 0);
  ASSERT_GE(out, 0);
  char buf[65536];
  for (ssize_t n; (n = ::read(in, buf, sizeof buf)) > 0;) {
    ASSERT_EQ(::write(out, buf, static_cast<std::size_t>(n)), n);
  }
  ::close(in);
  ASSERT_EQ(::close(out), 0);
}

struct Case {
  const char* name;
  const char* script;
  bool on_struct_fixture = false;        // struct_fixture.c (no arguments) instead of the demo
  bool on_stack_fixture = false;         // stack_fixture.cc (no arguments)
  std::vector<std::string> params = {};  // the script's positional parameters $1.. $N
};

// The C-type cases' definitions: struct_fixture.c's, with `level` declared unsigned:
// bpftrace 0.17 reads a signed bit field without its sign (13 for -3), hotprobe as C does.
#define HP_STRUCT_DEFS                                                                     \
  "struct inner { short x; unsigned char y; };\n"                                          \
  "struct node { int id; char name[16]; struct inner in; long vals[3]; struct node *next;" \
  " unsigned int flag : 1; unsigned int level : 4;"                                        \
  " union { unsigned int w; unsigned char b[4]; } u; };\n"

// Scripts whose output is deterministic on demo_service.
const Case kCases[] = {
    {"count_by_arg", "uprobe:BIN:handle_request { @[arg0] = count(); }"},
    {"predicate_and_named_map",
     "uprobe:BIN:handle_request /arg0 >= 3/ { @calls[arg0] = count(); }"},
    {"sum_and_hist",
     "uprobe:BIN:handle_request { @bytes[arg0 % 4] = sum(arg1); @size = hist(arg1); }"},
    {"lhist_stats_avg_min_max",
     "uprobe:BIN:handle_request /arg0 < 6/ { @l = lhist(arg1, 0, 100, 10); @s = stats(arg1); "
     "@a = avg(arg1); @mn = min(arg1); @mx = max(arg1); }"},
    // Not `func`: bpftrace 0.17 symbolizes a uprobe's func when it prints, after the traced
    // process has exited, and prints addresses (@[0x55...]); hotprobe prints the names.
    {"shared_block", "uprobe:BIN:compute, uprobe:BIN:lookup_cache { @[arg0 % 2] = count(); }"},
    {"probe_builtin", "uprobe:BIN:send_response { @[probe] = count(); }"},
    {"retval", "uretprobe:BIN:parse_request { @route[retval] = count(); }"},
    {"str_of_argument", "uprobe:BIN:parse_request { @line[str(arg0)] = count(); }"},
    {"comm", "uprobe:BIN:handle_request { @[comm] = count(); }"},
    {"two_keys", "uprobe:BIN:handle_request /arg0 < 4/ { @x[arg0, arg1] = count(); }"},
    {"entry_return_pair",
     "uprobe:BIN:handle_request { @start[tid] = arg0; } "
     "uretprobe:BIN:handle_request { @ret[@start[tid]] = count(); delete(@start[tid]); }"},
    {"if_else_ternary",
     "uprobe:BIN:handle_request { if (arg0 > 2) { @big = count(); } else { @small = count(); } "
     "@odd[arg0 % 2 == 1 ? 1 : 0] = count(); $x = arg0 * 2 + 1; @v = sum($x); }"},
    {"begin_end_printf",
     "BEGIN { printf(\"start %d %s\\n\", 42, \"x\"); } "
     "uprobe:BIN:handle_request { @n = count(); } END { printf(\"end\\n\"); }"},
    // C types: casts truncate and extend as bpftrace's; a struct laid over parse_request's
    // line ("N GET /"): fields, a char array read as a string, an array index, pointer
    // arithmetic and a dereference.
    {"integer_casts",
     "uprobe:BIN:handle_request { @[(uint8)(arg1 * 40), (int8)(arg1 * 3), (uint16)(0 - arg0)] "
     "= count(); }"},
    {"struct_over_a_buffer",
     "struct line { char c0; char c1; unsigned short w; char rest[4]; };\n"
     "uprobe:BIN:parse_request { $l = (struct line *)arg0; "
     "@[$l->c0, $l->w, $l->rest, *((uint8 *)arg0 + 2), sizeof(struct line), "
     "((uint16 *)arg0)[1]] = count(); }"},
    {"struct_fields_nested_and_through_pointers",
     HP_STRUCT_DEFS
     "uprobe:BIN:visit { $n = (struct node *)arg0; "
     "@a[$n->id, $n->name, $n->in.x, $n->in.y, $n->vals[1], $n->next->name, "
     "$n->next->next->id] = count(); "
     "@b[$n->flag, $n->level, $n->u.w, (*$n).vals[2], sizeof(struct node)] = count(); "
     "@c[((struct node *)arg0)->next->in.y] = sum($n->vals[0]); }",
     true},
    {"wildcard_probe_names_each_function", "uprobe:BIN:*_request { @[probe] = count(); }"},
    // Stacks and symbols: printed from done() while the program exists (bpftrace names
    // user frames only then), and cleared, so both exit dumps are empty. leaf has no
    // frame of its own (no push %rbp: its caller's frame is skipped, as the kernel walks
    // it); middle starts with push %rbp (its caller's return address at [rsp] is kept).
    {"ustack_keys_with_counts",
     "uprobe:BIN:leaf { @[ustack] = count(); @three[ustack(3)] = count(); "
     "@perf[ustack(perf)] = count(); @two[ustack(perf, 2)] = count(); } "
     "uprobe:BIN:_ZN2ns3Mid6middleEi { @mid[ustack, arg0 % 2] = count(); } "
     "uprobe:BIN:done { print(@); print(@three); print(@perf); print(@two); print(@mid); "
     "clear(@); clear(@three); clear(@perf); clear(@two); clear(@mid); }",
     false, true},
    {"usym_and_reg",
     "uprobe:BIN:outer { @s[usym(reg(\"ip\")), usym(reg(\"ip\") + 1)] = count(); "
     "@di[reg(\"di\")] = count(); } "
     "uprobe:BIN:done { print(@s); print(@di); clear(@s); clear(@di); }",
     false, true},
    // join() prints main's argv (the fixture's path, the same in both runs); buf() keys
    // its first bytes, and the bytes of a pointer (unprintable ones as \xNN).
    {"join_and_buf",
     "uprobe:BIN:main { join(arg1); join(arg1, \"+\"); printf(\"<%r>\\n\", buf(arg1, 0)); "
     "@[buf(*(uint64 *)arg1, 5)] = count(); "
     "@n[buf(arg1 - arg1 + *(uint64 *)arg1 + 1, 3)] = count(); }",
     false, true},
    {"print_and_clear_in_end",
     "uprobe:BIN:handle_request { @a[arg0 % 3] = count(); @b = count(); } "
     "END { print(@a); clear(@a); }"},
    // Positional parameters (an integer, a string, their count), while with break and
    // continue, and the small builtins bpftrace 0.17 has.
    {"positional_parameters",
     "uprobe:BIN:handle_request /arg0 >= $1/ { @[str($2), $#, $3] = count(); }",
     false,
     false,
     {"3", "hot"}},
    {"while_break_continue",
     "uprobe:BIN:handle_request { $i = 0; $s = 0; while ($i < arg0) { $i++; "
     "if ($i == 2) { continue; } if ($i > 5) { break; } $s += $i; } @[arg0] = sum($s); }"},
    {"strncmp_ntop_uptr",
     "uprobe:BIN:parse_request { @s[strncmp(str(arg0), \"1 GET\", 5)] = count(); } "
     "uprobe:BIN:handle_request { @n[ntop(0x0100007f + (arg0 << 24)), ntop(2, arg0)] = count(); "
     "@u[uptr(arg0)] = count(); }"},
    // Tuples in $variables: printed whole (text and json) and read by element.
    {"tuples",
     "BEGIN { $t = (1, \"x\", -3); print($t); printf(\"%d %s %d\\n\", $t.0, $t.1, $t.2); } "
     "uprobe:BIN:handle_request { $p = (arg0, arg0 % 2); $p = ($p.1, $p.0); "
     "@[$p.0] = sum($p.1); @t[arg0 % 3] = (arg0 % 3, \"r\"); @one = (7, \"s\"); } "
     "END { $e = (\"end\", 2); print($e); }"},
};

class Conformance : public ::testing::TestWithParam<Case> {};

void compare(const Case& c, bool json) {
  std::string why = why_bpftrace_cannot_run();
  if (!why.empty()) GTEST_SKIP() << "bpftrace conformance skipped: " << why;
  char dir[] = "/tmp/hp_confXXXXXX";
  ASSERT_NE(::mkdtemp(dir), nullptr);
  const char* from = c.on_struct_fixture  ? kStructFixture
                     : c.on_stack_fixture ? kStackFixture
                                          : kDemo;
  const std::vector<std::string> args =
      c.on_struct_fixture || c.on_stack_fixture ? std::vector<std::string>{} : kDemoArgs;
  const std::string bin = std::string(dir) + "/hp_conf_demo";
  fresh_copy(bin, from);
  std::string script = substitute(c.script, bin);
  std::string cmd = bin;
  for (const auto& a : args)
    cmd += " " + a;
  std::vector<std::string> bt = {"bpftrace"};
  if (json) bt.insert(bt.end(), {"-f", "json"});
  bt.insert(bt.end(), {"-e", script});
  bt.insert(bt.end(), c.params.begin(), c.params.end());
  bt.insert(bt.end(), {"-c", cmd});
  Output b = run(bt);
  ASSERT_EQ(b.status, 0) << "bpftrace failed: " << b.err;
  fresh_copy(bin, from);
  std::vector<std::string> hp = {kHotprobe, "run"};
  if (json) hp.insert(hp.end(), {"-o", "json"});
  hp.insert(hp.end(), {"-e", script});
  hp.insert(hp.end(), c.params.begin(), c.params.end());
  hp.insert(hp.end(), {"--", bin});
  hp.insert(hp.end(), args.begin(), args.end());
  Output h = run(hp);
  ::unlink(bin.c_str());
  ::rmdir(dir);
  ASSERT_EQ(h.status, 0) << "hotprobe run failed: " << h.err;
  auto canonical = json ? canonical_json : canonical_text;
  EXPECT_EQ(canonical(h.out), canonical(b.out))
      << "script: " << script << "\nhotprobe stderr: " << h.err;
}

TEST_P(Conformance, TextOutputMatchesBpftrace) {
  compare(GetParam(), false);
}
TEST_P(Conformance, JsonOutputMatchesBpftrace) {
  compare(GetParam(), true);
}

INSTANTIATE_TEST_SUITE_P(Scripts, Conformance, ::testing::ValuesIn(kCases),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
