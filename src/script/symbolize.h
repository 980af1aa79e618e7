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
    std::string module;             // the mapped file's path; empty outside every file mapping
    std::uint64_t file_offset = 0;  // the address's offset in `module`
  };
  Name name(std::uint64_t addr);
  // Where `addr` is in its module's file, as the kernel's build-id stacks give it: the
  // module's GNU build id in hex and the file offset. False outside every file mapping or
  // for a module without a build id.
  bool file_place(std::uint64_t addr, std::string& build_id, std::uint64_t& offset);

  // Where `addr` is in the source (show_debug_info), by the lookup set_source_lookup
  // installed: the functions inlined there, innermost first, each with its place, then
  // the containing function's place (its `function` empty: name() names it). Empty when
  // no lookup is installed, or the module has no DWARF for it.
  struct SourcePlace {
    std::string function;  // the inlined function's name
    std::string file;      // the source file's path
    std::uint32_t line = 0;
  };
  const std::vector<SourcePlace>& source(std::uint64_t addr);

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
  std::map<std::uint64_t, std::vector<SourcePlace>> source_cache_;
};

// The DWARF lookup behind Symbolizer::source: the module's path and the address's offset in
// that file to the places (innermost inlined function first, the containing function's
// place last). The hotprobe command installs one (libdw: elf/source_frames.h); the agent
// links no DWARF reader and installs none.
using SourceLookup = std::vector<Symbolizer::SourcePlace> (*)(const std::string& module,
                                                              std::uint64_t file_offset);
void set_source_lookup(SourceLookup lookup);

// config = { show_debug_info = 1 }: stack frames print with their source places and inlined
// functions (bpftrace main's form) where a lookup is installed. Set by the parser for the
// script of this process (its last parse); off by default (bpftrace 0.17's output).
void set_show_debug_info(bool on);
bool show_debug_info();

// Text printed while the program runs is named by the agent, which has no lookup. When the
// command says it names places in what it receives (a line `//hotprobe-env
// source_places=reader` after the script, read by the parser), the agent's reader
// (expand_symbols, text output) puts a request before each frame's line under
// show_debug_info: kPlaceRequest MODULE kPlaceField FILE_OFFSET(hex) kPlaceField FORM
// kPlaceRequest, FORM `s` and the indent in decimal (bpftrace mode: the places go at the
// end of the next line, the inlined functions before it) or `p` and the address in hex
// (perf: the inlined functions before it). name_source_places, on the command's side,
// replaces each request by the inlined functions' lines and the place.
inline constexpr char kPlaceRequest = '\x1d';
inline constexpr char kPlaceField = '\x1c';
void set_places_by_reader(bool on);
bool places_by_reader();
bool has_place_requests(std::string_view text);
void name_source_places(std::string& text);
// `text` as the command prints it: itself, or (when it holds place requests) a copy in
// `named` with the places named.
std::string_view with_source_places(std::string_view text, std::string& named);

// bpftrace's text of one ustack frame: "main+52", or "0x55d0c0a1b2c3" when unknown.
std::string frame_text(const Symbolizer::Name& n, std::uint64_t addr);

// The agent's side: writes this process's module list into `r` (region::Header::
// modules_off); again later to add what was loaded since.
void publish_modules(SharedRegion& r);
// hotprobe's side: printing names addresses with the module list found in `r`, if any.
void use_region_modules(const SharedRegion& r);

}  // namespace hotprobe::script
