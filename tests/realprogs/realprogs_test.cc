// Real Debian programs under `hotprobe run`, their counts compared with bpftrace's on the
// same command (the reference: the agent's own work must not show, DESIGN.md "The traced
// program cannot tell"). The commands are chosen so that their counts are the same from
// one run to the next (PYTHONHASHSEED=0; no file left over between runs), and they are
// short. redis-server is compared with its own INFO commandstats instead.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "agent_e2e_util.h"

namespace {

using hp::agent_test::bpftrace_counts;
using hp::agent_test::bpftrace_usable;
using hp::agent_test::map_value;
using hp::agent_test::read_file;
using hp::agent_test::run_command;
using hp::agent_test::RunResult;
using hp::agent_test::temp_dir;

const std::vector<std::string> kFunctions{"malloc", "free", "read", "openat"};

bool sanitized() {
  return std::strlen(HP_SANITIZE) != 0;
}

std::string count_script(const std::vector<std::string>& fns) {
  std::string script;
  for (const auto& f : fns)
    script += "uprobe:libc:" + f + " { @" + f + " = count(); } ";
  return script;
}

// Runs `command` under hotprobe and under bpftrace, `prepare` before each, and compares
// the counts of kFunctions. The command is split on spaces (bpftrace's -c does the same).
void compare_with_bpftrace(const std::vector<std::string>& command,
                           const std::vector<std::string>& env = {}, void (*prepare)() = nullptr) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer runtime in the program makes calls of its own";
  if (::access(command[0].c_str(), X_OK) != 0)
    GTEST_SKIP() << command[0] << " is not installed (scripts/install-deps.sh installs it)";
  if (std::string why = bpftrace_usable(); !why.empty()) GTEST_SKIP() << why;
  // The agent removes every HOTPROBE_* variable from the program's environment (the test
  // command exports HOTPROBE_STRESS_SECONDS): bpftrace's child must see the same
  // environment, or a program that copies it (perl's %ENV) allocates differently.
  std::vector<std::string> ours;
  for (char** e = environ; *e; e++)
    if (std::strncmp(*e, "HOTPROBE_", 9) == 0) ours.emplace_back(*e, std::strcspn(*e, "="));
  for (const auto& name : ours)
    ::unsetenv(name.c_str());
  for (const auto& kv : env)
    ::putenv(const_cast<char*>(kv.c_str()));  // bpftrace's -c child inherits it
  if (prepare) prepare();
  auto want = bpftrace_counts(kFunctions, command);
  ASSERT_TRUE(want.has_value());
  // The reference twice: a program whose own counts differ between two runs (a cache file
  // written by the first, a concurrent test's effect on it) cannot be compared exactly.
  if (prepare) prepare();
  auto again = bpftrace_counts(kFunctions, command);
  ASSERT_TRUE(again.has_value());
  if (*again != *want) GTEST_SKIP() << "the program's own counts vary from run to run here";
  if (prepare) prepare();
  std::vector<std::string> args{HP_HOTPROBE, "run", "-e", count_script(kFunctions), "--"};
  args.insert(args.end(), command.begin(), command.end());
  RunResult r = run_command(args, env, std::chrono::seconds(120));
  ASSERT_EQ(r.status, 0) << r.err;
  for (const auto& f : kFunctions) {
    EXPECT_EQ(map_value(r.out, f), (*want)[f]) << f << "\nhotprobe:\n" << r.out;
    ::testing::Test::RecordProperty(f, static_cast<int>(map_value(r.out, f)));
  }
}

TEST(RealPrograms, Python) {
  compare_with_bpftrace({"/usr/bin/python3", "-c", "print(sum(range(1000)))"},
                        {"PYTHONHASHSEED=0"});
}

// Imports load extension modules with dlopen (_json, _sqlite3 with libsqlite3, _ctypes with
// libffi): the module watcher runs inside each. The script lives in a directory of its own:
// Python lists the directory of its script (sys.path[0]) once, and the number of
// allocations that costs follows the number of entries, so a script in a shared directory
// such as /tmp is not the same program from one run to the next.
std::string g_script;

void write_import_script() {
  std::ofstream(g_script) << "import json, sqlite3, ctypes\n"
                             "for i in range(2000): json.dumps({'a': i})\n"
                             "sqlite3.connect(':memory:').execute('select 1').fetchall()\n"
                             "ctypes.CDLL(None).strlen(b'abc')\n";
}

TEST(RealPrograms, PythonImportingExtensionModules) {
  g_script = temp_dir("pyimport") + "/imports.py";
  compare_with_bpftrace({"/usr/bin/python3", g_script}, {"PYTHONHASHSEED=0"}, &write_import_script);
}

// The same through env(1), which exec's python3: the counts of both images, in one set of
// maps (docs/design/agent.md, "Exec").
TEST(RealPrograms, PythonExecdByEnv) {
  g_script = temp_dir("pyexec") + "/imports.py";
  compare_with_bpftrace({"/usr/bin/env", "/usr/bin/python3", g_script}, {"PYTHONHASHSEED=0"},
                        &write_import_script);
}

TEST(RealPrograms, Perl) {
  compare_with_bpftrace({"/usr/bin/perl", "-e", "print(join(q(,),sort(map{$_*3}1..500)))"});
}

std::string g_dir;

void make_db() {
  std::string db = g_dir + "/small.db";
  ::unlink(db.c_str());
  RunResult r = run_command({"/usr/bin/sqlite3", db,
                             "create table t(a,b); insert into t values (1,'x'),(2,'y'),(3,'z');"},
                            {}, std::chrono::seconds(60));
  ASSERT_EQ(r.status, 0) << r.err;
}

TEST(RealPrograms, Sqlite) {
  if (::access("/usr/bin/sqlite3", X_OK) != 0) GTEST_SKIP() << "sqlite3 is not installed";
  g_dir = temp_dir("sqlite");
  compare_with_bpftrace({"/usr/bin/sqlite3", g_dir + "/small.db", "select(count(*))from(t)"}, {},
                        &make_db);
}

// gzip -f -k: the input stays, the output is replaced; it is removed before each run so
// that both runs open the same files.
void make_gzip_input() {
  std::ofstream out(g_dir + "/data.txt");
  for (int i = 0; i < 20000; i++)
    out << i << "\n";
  out.close();
  ::unlink((g_dir + "/data.txt.gz").c_str());
}

TEST(RealPrograms, Gzip) {
  g_dir = temp_dir("gzip");
  compare_with_bpftrace({"/usr/bin/gzip", "-f", "-k", g_dir + "/data.txt"}, {}, &make_gzip_input);
}

// ls links libselinux, whose constructor (run before a preloaded library's) reads
// /proc/filesystems and makes mallocs and frees: they count as bpftrace counts them only
// with the agent started before it (docs/design/agent.md, "The process's first steps").
void make_listing() {
  for (int i = 0; i < 20; i++)
    std::ofstream(g_dir + "/file" + std::to_string(i)) << i << "\n";
}

TEST(RealPrograms, LsWithALibrarysConstructor) {
  g_dir = temp_dir("ls");
  compare_with_bpftrace({"/bin/ls", "-l", g_dir}, {}, &make_listing);
}

// A child Python's subprocess starts (a vfork child that closes every descriptor, the
// channel among them, before its execve) is traced under --follow-forks: its calls equal
// bpftrace's. The child is a copy of ls with a name of its own, which both scripts select
// by comm (bpftrace's probes see every process of the machine).
TEST(RealPrograms, PythonSubprocessChild) {
  if (sanitized()) GTEST_SKIP() << "a sanitizer runtime in the program makes calls of its own";
  if (::access("/usr/bin/python3", X_OK) != 0) GTEST_SKIP() << "python3 is not installed";
  if (std::string why = bpftrace_usable(); !why.empty()) GTEST_SKIP() << why;
  g_dir = temp_dir("pysub");
  make_listing();
  const std::string comm = "hpls" + std::to_string(::getpid() % 100000);
  const std::string ls = g_dir + "/" + comm;
  ASSERT_EQ(run_command({"/bin/cp", "/bin/ls", ls}, {}, std::chrono::seconds(30)).status, 0);
  const std::string py = g_dir + "/sub.py";
  std::ofstream(py) << "import subprocess\nsubprocess.run(['" << ls << "', '-l', '" << g_dir
                    << "'], stdout=subprocess.DEVNULL)\n";
  std::string script;
  for (const char* f : {"malloc", "free", "read"})
    script +=
        std::string("uprobe:libc:") + f + " /comm == \"" + comm + "\"/ { @" + f + " = count(); } ";
  RunResult bt = run_command({"bpftrace", "-e", script, "-c", "/usr/bin/python3 " + py}, {},
                             std::chrono::seconds(120));
  ASSERT_EQ(bt.status, 0) << bt.err;
  ASSERT_GT(map_value(bt.out, "malloc"), 0) << bt.out;
  RunResult r = run_command(
      {HP_HOTPROBE, "run", "--follow-forks", "-e", script, "--", "/usr/bin/python3", py}, {},
      std::chrono::seconds(120));
  ASSERT_EQ(r.status, 0) << r.err;
  EXPECT_EQ(r.err, "");
  EXPECT_GT(map_value(r.out, "malloc"), 0) << r.out;
  for (const char* f : {"malloc", "free", "read"})
    EXPECT_EQ(map_value(r.out, f), map_value(bt.out, f)) << f << "\nhotprobe:\n"
                                                         << r.out << "\nbpftrace:\n"
                                                         << bt.out;
}

int free_port() {
  int s = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  int port = -1;
  if (::bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(s, reinterpret_cast<sockaddr*>(&a), &len) == 0)
    port = ntohs(a.sin_port);
  ::close(s);
  return port;
}

// hotprobe's count of redis-server's `call` (one per command executed) against the
// server's own INFO commandstats. /usr/bin/redis-server is a symlink to redis-check-rdb:
// the probe names the symlink, and the agent finds the file it points to.
TEST(RealPrograms, RedisCallsEqualCommandstats) {
  if (sanitized()) GTEST_SKIP() << "the sanitized agent's runtime is not redis-server's";
  for (const char* p : {"/usr/bin/redis-server", "/usr/bin/redis-benchmark", "/usr/bin/redis-cli"})
    if (::access(p, X_OK) != 0) GTEST_SKIP() << p << " is not installed";
  const int port = free_port();
  ASSERT_GT(port, 0);
  const std::string sport = std::to_string(port);
  std::string dir = temp_dir("redis");
  std::string out_path = dir + "/out", err_path = dir + "/err";
  pid_t hp = ::fork();
  if (hp == 0) {
    ::setpgid(0, 0);
    FILE* o = std::freopen(out_path.c_str(), "w", stdout);
    FILE* e = std::freopen(err_path.c_str(), "w", stderr);
    if (!o || !e || ::chdir(dir.c_str()) != 0) ::_exit(98);
    ::execl(HP_HOTPROBE, HP_HOTPROBE, "run", "-e",
            "uprobe:/usr/bin/redis-server:call { @calls = count(); }", "--",
            "/usr/bin/redis-server", "--port", sport.c_str(), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--daemonize", "no", static_cast<char*>(nullptr));
    ::_exit(127);
  }
  auto cli = [&](std::vector<std::string> args) {
    std::vector<std::string> a{"/usr/bin/redis-cli", "-h", "127.0.0.1", "-p", sport};
    a.insert(a.end(), args.begin(), args.end());
    return run_command(a, {}, std::chrono::seconds(30));
  };
  // Up when PING answers (bounded: 20 s).
  bool up = false;
  for (int i = 0; i < 400 && !up; i++) {
    up = cli({"ping"}).out.find("PONG") != std::string::npos;
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  long total = -1;
  RunResult bench;
  if (up) {
    bench = run_command({"/usr/bin/redis-benchmark", "-h", "127.0.0.1", "-p", sport, "-n", "2000",
                         "-c", "4", "-q", "-t", "set,get,incr"},
                        {}, std::chrono::seconds(120));
    RunResult info = cli({"info", "commandstats"});
    // cmdstat_NAME:calls=N,usec=...
    total = 0;
    std::istringstream in(info.out);
    std::string line;
    while (std::getline(in, line)) {
      auto at = line.find(":calls=");
      if (line.rfind("cmdstat_", 0) == 0 && at != std::string::npos)
        total += std::atol(line.c_str() + at + 7);
    }
  }
  // SIGTERM to hotprobe: it stops tracing, passes the signal on, and redis shuts down.
  ::kill(hp, SIGTERM);
  int status = 0;
  ::waitpid(hp, &status, 0);
  std::string out = read_file(out_path);
  ASSERT_TRUE(up) << "redis-server did not answer:\n" << read_file(err_path) << out;
  EXPECT_EQ(bench.status, 0) << bench.err;
  // The INFO that read the stats is a command too: counted by `call` after its reply.
  EXPECT_EQ(map_value(out, "calls"), total + 1) << out;
  EXPECT_GE(total, 6000) << "the benchmark's commands were not all counted by redis";
  RecordProperty("redis_calls", static_cast<int>(map_value(out, "calls")));
}

}  // namespace
