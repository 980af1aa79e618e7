// One ELF file as hotprobe needs it: its loadable segments (to turn a symbol's virtual
// address into a file offset, the unit probes are keyed by), its SONAME, and its
// functions from .symtab and .dynsym, merged.
//
// Files are read through libelf, whose types stay inside the .cc files (STYLE.md item 8).
// An ElfFile is immutable once loaded and shared: load_elf() caches one per (device,
// inode), so every module spec and every process that maps the same file share one
// table, and a file is parsed once.
//
//   auto libc = hp::elf::load_elf("/lib/x86_64-linux-gnu/libc.so.6");
//   auto hits = (*libc)->lookup("str*cmp");          // glob
//   auto one = (*libc)->lookup_one("malloc+0x10");  // symbol+offset
//   auto at = (*libc)->lookup_one("0x28a40");       // a virtual address, as nm(1) prints it
//   auto raw = (*libc)->lookup_one("fileoff:0x28a40");  // a file offset
//
// Code that is not a function: GCC moves the unlikely paths of a function into fragments
// named NAME.cold or NAME.cold.N (Symbol::fragment). A fragment is entered by a jump from
// its function, not by a call, so it has no return address of its own and its flags and
// stack are the middle of its function's. Globs skip fragments unless the pattern itself
// names them (contains ".cold"). Clones (NAME.part.N, NAME.isra.N, NAME.constprop.N) are
// real functions, entered by calls, and are never fragments.
//
// Limits: x86-64 ELF64 only. Separate debug files (.gnu_debuglink, build-id under
// /usr/lib/debug) are not followed: a stripped file offers its .dynsym only, and
// debuglink() names the debug file so a message can say what to install.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "base/error.h"
#include "base/strings.h"
#include "elf/maps.h"

namespace hp::elf {

enum class SymbolKind : std::uint8_t {
  function,  // STT_FUNC
  ifunc,     // STT_GNU_IFUNC: the symbol's code is a resolver that picks the implementation
};

struct Symbol {
  // Views into the owning ElfFile. Non-default versions of a .dynsym symbol are named
  // "name@VERSION" (as `nm -D` writes them); the default version keeps the plain name.
  std::string_view name;
  std::uint64_t value = 0;        // st_value: link-time virtual address
  std::uint64_t size = 0;         // st_size; 0 when the assembler was not told
  std::uint64_t file_offset = 0;  // where the first byte lies in the file
  SymbolKind kind = SymbolKind::function;
  bool global = false;    // STB_GLOBAL, STB_WEAK or STB_GNU_UNIQUE (not STB_LOCAL)
  bool dynamic = false;   // listed in .dynsym, so the dynamic linker (dlsym) knows it
  bool fragment = false;  // NAME.cold or NAME.cold.N: a piece of a function, not one

  bool is_ifunc() const { return kind == SymbolKind::ifunc; }
  bool contains_offset(std::uint64_t off) const {
    return off >= file_offset && (off - file_offset < size || (size == 0 && off == file_offset));
  }
};

// A PT_LOAD program header.
struct Segment {
  std::uint64_t vaddr = 0;
  std::uint64_t memsz = 0;
  std::uint64_t offset = 0;
  std::uint64_t filesz = 0;
  bool executable = false;
};

// A place to probe, in file terms. `symbol` points into the ElfFile that produced it, so
// keep the ElfFile (shared_ptr) while using it.
struct Target {
  const Symbol* symbol = nullptr;  // null for a raw file offset outside every function
  std::uint64_t offset_in_symbol = 0;
  std::uint64_t file_offset = 0;
  std::uint64_t vaddr = 0;  // link-time virtual address
};

class ElfFile {
 public:
  ElfFile(const ElfFile&) = delete;
  ElfFile& operator=(const ElfFile&) = delete;
  ~ElfFile();

  const std::string& path() const { return path_; }
  ModuleKey key() const { return key_; }
  std::uint64_t file_size() const { return file_size_; }
  bool position_independent() const { return pic_; }  // ET_DYN (PIE or shared library)
  const std::string& soname() const { return soname_; }
  const std::string& debuglink() const { return debuglink_; }  // empty if none
  bool has_symtab() const { return has_symtab_; }              // false once stripped
  std::span<const Segment> segments() const { return segments_; }

  // Functions sorted by file offset (then name). Symbols that both tables list with the
  // same name and value appear once.
  std::span<const Symbol> symbols() const { return symbols_; }

  Result<std::uint64_t> vaddr_to_offset(std::uint64_t vaddr) const;
  Result<std::uint64_t> offset_to_vaddr(std::uint64_t offset) const;
  // Whether `offset` lies in the file part of an executable PT_LOAD segment.
  bool offset_is_code(std::uint64_t offset) const;

  // The extent of the function holding `offset` by the module's call-frame information
  // (the sorted table of .eh_frame_hdr, then the FDE it points to): the code that no
  // symbol sizes (a stripped file, an IFUNC's implementation written in assembly, such as
  // libc's __strlen_evex) still has an FDE, which the unwinder needs. `file_offset` is the
  // FDE's first byte, where the function starts. nullopt when the file has no
  // .eh_frame_hdr (PT_GNU_EH_FRAME), no FDE covers `offset`, or the table uses an encoding
  // other than the ones linkers write; reads the file (a few small reads per call).
  struct Extent {
    std::uint64_t file_offset = 0;
    std::uint64_t size = 0;
  };
  std::optional<Extent> cfi_extent(std::uint64_t offset) const;

  // Every function with exactly this name (several for local functions of different
  // translation units that share a name).
  std::vector<const Symbol*> find(std::string_view name) const;
  // A Go program or library: its symbol table has the Go runtime's functions.
  bool is_go() const;
  // The function whose [file_offset, file_offset + size) holds `offset`, preferring a
  // global name among aliases; null if none.
  const Symbol* containing_offset(std::uint64_t offset) const;
  // Up to `max` distinct names closest to `name` by edit distance, nearest first; empty
  // if nothing is close.
  std::vector<std::string_view> suggestions(std::string_view name, std::size_t max = 3) const;

  // Resolves what a user writes after the module in a probe spec:
  //   NAME           exactly one function (or one address shared by aliases)
  //   GLOB           fnmatch(3) pattern with * ? [..]: every matching function, one target per
  //                  distinct file offset, sorted by offset; no match is not_found
  //   NAME+OFF       OFF bytes into NAME (decimal or 0x hex), must be inside its size
  //   0xADDR         a link-time virtual address (st_value, as nm(1) and bpftrace read it)
  //   fileoff:0xOFF  a file offset (what the kernel's uprobe_events take)
  // An address or offset must lie inside a function (whether it starts an instruction is
  // checked when the probe is planned, by decoding from the function's start); only in a
  // stripped file, whose functions are not known, one outside every known function is
  // taken as given (Target::symbol null).
  // A glob skips fragments (Symbol::fragment) unless it contains ".cold".
  Result<std::vector<Target>> lookup(std::string_view spec) const;
  // The same, appending to `out` (a batch reuses one list; on failure `out` is unchanged).
  Result<void> lookup(std::string_view spec, std::vector<Target>& out) const;
  // Hints that lookup(name) comes soon, for a batch that looks a few names ahead: the
  // first brings the name's slot of the hash index into the cache, the second (once the
  // slot is there) the symbol it names. A name of another file, a glob or NAME+OFFSET
  // just fetches a line in vain.
  void prefetch_slot(std::string_view name) const;
  void prefetch_symbol(std::string_view name) const;
  // Whether `spec` is one of the address forms (0xADDR, fileoff:0xOFF).
  static bool is_address_spec(std::string_view spec);
  // lookup() for specs that must name one place (not a glob).
  Result<Target> lookup_one(std::string_view spec) const;

  // Reads `len` bytes at file offset `offset` from the file on disk, after checking that
  // the path still names this (device, inode).
  Result<std::vector<std::uint8_t>> read_bytes(std::uint64_t offset, std::size_t len) const;

 private:
  friend Result<std::shared_ptr<const ElfFile>> load_elf_uncached(int fd, std::string path);
  ElfFile() = default;

  Error no_such_function(std::string_view name) const;
  // The target at file offset `off`, which `spec` named (an address or a file offset).
  Result<Target> place_at(std::uint64_t off, std::string_view spec, bool is_vaddr) const;
  // The functions named `name`: `one` when it names one function, else the positions
  // [first, last) in by_name_ (empty if none).
  struct NameHit {
    const Symbol* one = nullptr;
    std::size_t first = 0;
    std::size_t last = 0;
  };
  NameHit name_hit(std::string_view name) const;

  std::string path_;
  ModuleKey key_;
  std::uint64_t file_size_ = 0;
  bool pic_ = false;
  bool has_symtab_ = false;
  std::string soname_;
  std::string debuglink_;
  std::vector<Segment> segments_;
  Segment eh_frame_hdr_;                // PT_GNU_EH_FRAME (filesz 0: none)
  std::string names_;                   // every symbol name, NUL-separated
  std::vector<Symbol> symbols_;         // by file offset
  std::vector<std::uint32_t> by_name_;  // indices into symbols_, by name
  // Hash index of the names (index_names()): `ref` is 0 for an empty slot, kOne | the
  // index in symbols_ for a name of one function, else 1 + the position in by_name_ of the
  // name's first entry; `tag` is the upper half of the name's hash.
  struct NameSlot {
    static constexpr std::uint32_t kOne = 0x80000000u;
    std::uint32_t ref = 0;
    std::uint32_t tag = 0;
  };
  std::vector<NameSlot> name_index_;
  void index_names();
};

// The ElfFile for (device, inode) `key`, parsed from `path` the first time and cached for
// the life of the process. The file opened must still be `key` (a library replaced on
// disk after it was mapped is refused with not_found, naming both).
// `name`, if given, is the file's path() (for messages and read_bytes) when `path` is
// only a way to reach it (/proc/PID/map_files/..., /proc/PID/root/...), which does not
// outlive that process while the cached ElfFile does.
Result<std::shared_ptr<const ElfFile>> load_elf(ModuleKey key, const std::string& path,
                                                std::string_view name = {});
// The same for a path a user gave: the key comes from stat(2).
Result<std::shared_ptr<const ElfFile>> load_elf(const std::string& path);
// Parses the open file `fd` (taken over) without consulting the cache: for tests and
// for files without a stable identity.
Result<std::shared_ptr<const ElfFile>> load_elf_uncached(int fd, std::string path);

// `len` bytes at file offset `offset` of the file at `path`, which must be (device, inode)
// `key`: not_found if the path now names another file, invalid_argument past its end.
Result<std::vector<std::uint8_t>> read_file_bytes(const std::string& path, ModuleKey key,
                                                  std::uint64_t offset, std::size_t len);

// Number of files parsed so far by load_elf (to test that the cache loads each once).
std::uint64_t elf_files_parsed();

// Whether a symbol name is a fragment's: NAME.cold or NAME.cold.N (N decimal digits).
bool is_fragment_name(std::string_view name);

// What helps when `file` offers no function: its debug file, debuginfod, a build with
// symbols. For messages ("... is stripped: " + stripped_advice(f)).
std::string stripped_advice(const ElfFile& file);

// Opens a file hotprobe reads as root on behalf of someone else (a path from another
// process's maps, a path a user typed) without letting the name do harm: O_RDONLY |
// O_NONBLOCK | O_NOCTTY | O_CLOEXEC (a FIFO does not block the open, a terminal does not
// become ours), plus O_NOFOLLOW when `no_follow`; then fstat(2): anything but a regular
// file is refused (invalid_argument), and when `key` is given (non-zero) a file that is
// not (device, inode) `key` is not_found. Returns the open descriptor.
Result<int> open_regular_file(const std::string& path, ModuleKey key = {}, bool no_follow = false);

// Levenshtein distance (base/strings.h), here for the symbol tests.
using hp::edit_distance;

}  // namespace hp::elf
