// Names of code addresses of the traced program, for the printers (ustack and usym map
// keys): never on a hit. docs/design/script-language.md, "Stacks and symbols".
//
//   Symbolizer sym = Symbolizer::current();   // this process, or the region's module list
//   Symbolizer::Name n = sym.name(addr);       // {"main", 52, "/usr/bin/prog", true}
//
// The modules are a /proc/PID/maps text: this process's at the time of printing, or, in
// hotprobe printing a traced program's maps from their region (the program may be gone),
// the text the agent left there (region::Header::modules_off). Symbols come from each
// module's file (hotprobe::list_functions), C++ names demangled as bpftrace shows them.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace hotprobe::script {

class SharedRegion;

class Symbolizer {
 public:
  explicit Symbolizer(std::string_view maps_text);
  // The modules printing uses now: the region's list when one was adopted
  // (use_region_modules), else this process's.
  static Symbolizer current();

  struct Name {
    std::string symbol;  // the function (demangled); empty when unknown
    std::uint64_t offset = 0;
    std::string module;  // the mapped file's path; empty outside every file mapping
  };
  Name name(std::uint64_t addr);
  // Where `addr` is in its module's file, as the kernel's build-id stacks give it: the
  // module's GNU build id in hex and the file offset. False outside every file mapping or
  // for a module without a build id.
  bool file_place(std::uint64_t addr, std::string& build_id, std::uint64_t& offset);

 private:
  struct Range {
    std::uint64_t start, end, file_offset;
    std::size_t module;  // index in modules_
  };
  struct Function {
    std::uint64_t file_offset, size;
    std::string name;
    int rank;  // of names at one address, the lowest is shown: 0 global, 1 weak, 2 local
  };
  struct Module {
    std::string path;
    bool loaded = false;
    std::vector<Function> functions;  // by file offset
    bool build_id_read = false;
    std::string build_id;  // hex; empty: none
  };
  std::vector<Range> ranges_;  // executable file mappings, by address
  std::vector<Module> modules_;
  std::map<std::uint64_t, Name> cache_;
};

// bpftrace's text of one ustack frame: "main+52", or "0x55d0c0a1b2c3" when unknown.
std::string frame_text(const Symbolizer::Name& n, std::uint64_t addr);

// The agent's side: writes this process's module list into `r` (region::Header::
// modules_off); again later to add what was loaded since.
void publish_modules(SharedRegion& r);
// hotprobe's side: printing names addresses with the module list found in `r`, if any.
void use_region_modules(const SharedRegion& r);

}  // namespace hotprobe::script
