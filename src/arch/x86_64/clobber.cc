#include "arch/x86_64/clobber.h"

#include <sys/uio.h>
#include <unistd.h>

#include <Zydis/Zydis.h>

#include <array>
#include <cstring>
#include <memory>
#include <mutex>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace hp::arch {
namespace {

constexpr std::size_t kPage = 4096;
constexpr unsigned kBudget = 4096;

// Code pages of this process, read without trusting that they are mapped.
class CodeReader {
 public:
  // Copies up to 15 bytes at `address` into `out`; returns how many could be read.
  std::size_t read(std::uint64_t address, std::uint8_t* out, std::size_t want) {
    std::size_t got = 0;
    while (got < want) {
      const std::uint64_t a = address + got;
      const Page* p = page(a & ~(kPage - 1));
      if (!p) break;
      const std::size_t off = a & (kPage - 1);
      const std::size_t n = std::min(want - got, kPage - off);
      std::memcpy(out + got, p->data() + off, n);
      got += n;
    }
    return got;
  }

 private:
  using Page = std::array<std::uint8_t, kPage>;

  const Page* page(std::uint64_t base) {
    auto it = pages_.find(base);
    if (it != pages_.end()) return it->second.get();
    auto p = std::make_unique<Page>();
    iovec local{p->data(), kPage};
    iovec remote{reinterpret_cast<void*>(base), kPage};
    const Page* result = nullptr;
    if (::process_vm_readv(::getpid(), &local, 1, &remote, 1, 0) == static_cast<ssize_t>(kPage)) {
      result = p.get();
    } else {
      p.reset();
    }
    pages_.emplace(base, std::move(p));
    return result;
  }

  std::unordered_map<std::uint64_t, std::unique_ptr<Page>> pages_;
};

bool vector_class(ZydisRegister r) {
  switch (ZydisRegisterGetClass(r)) {
    case ZYDIS_REGCLASS_X87:
    case ZYDIS_REGCLASS_MMX:
    case ZYDIS_REGCLASS_XMM:
    case ZYDIS_REGCLASS_YMM:
    case ZYDIS_REGCLASS_ZMM:
    case ZYDIS_REGCLASS_TMM:
    case ZYDIS_REGCLASS_MASK:
      return true;
    default:
      return false;
  }
}

bool vector_category(ZydisInstructionCategory c) {
  switch (c) {
    case ZYDIS_CATEGORY_AMD3DNOW:
    case ZYDIS_CATEGORY_AMX_TILE:
    case ZYDIS_CATEGORY_AVX:
    case ZYDIS_CATEGORY_AVX2:
    case ZYDIS_CATEGORY_AVX2GATHER:
    case ZYDIS_CATEGORY_AVX512:
    case ZYDIS_CATEGORY_AVX512_4FMAPS:
    case ZYDIS_CATEGORY_AVX512_4VNNIW:
    case ZYDIS_CATEGORY_AVX512_BITALG:
    case ZYDIS_CATEGORY_AVX512_VBMI:
    case ZYDIS_CATEGORY_AVX512_VP2INTERSECT:
    case ZYDIS_CATEGORY_FCMOV:
    case ZYDIS_CATEGORY_FMA4:
    case ZYDIS_CATEGORY_FP16:
    case ZYDIS_CATEGORY_KMASK:
    case ZYDIS_CATEGORY_MMX:
    case ZYDIS_CATEGORY_SSE:
    case ZYDIS_CATEGORY_VEX:
    case ZYDIS_CATEGORY_VFMA:
    case ZYDIS_CATEGORY_X87_ALU:
    case ZYDIS_CATEGORY_XOP:
    case ZYDIS_CATEGORY_XSAVE:
    case ZYDIS_CATEGORY_XSAVEOPT:
      return true;
    default:
      return false;
  }
}

class Walk {
 public:
  // True when some path may write a vector register (or cannot be seen through).
  bool run(std::uint64_t start) {
    add(start);
    while (!todo_.empty()) {
      std::uint64_t a = todo_.back();
      todo_.pop_back();
      if (path(a)) return true;
    }
    return false;
  }

 private:
  void add(std::uint64_t a) {
    if (seen_.insert(a).second) todo_.push_back(a);
  }

  // Walks one straight-line path from `a`, queueing branch targets; true on "may write".
  bool path(std::uint64_t a) {
    for (;;) {
      if (++steps_ > kBudget) return true;
      std::uint8_t bytes[ZYDIS_MAX_INSTRUCTION_LENGTH];
      const std::size_t n = reader_.read(a, bytes, sizeof bytes);
      if (n == 0) return true;
      ZydisDecodedInstruction insn;
      ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
      if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder_, bytes, n, &insn, ops))) return true;
      if (vector_category(insn.meta.category)) return true;
      for (unsigned i = 0; i < insn.operand_count; ++i) {
        if (ops[i].type == ZYDIS_OPERAND_TYPE_REGISTER && vector_class(ops[i].reg.value)) {
          return true;
        }
      }
      const std::uint64_t next = a + insn.length;
      switch (insn.mnemonic) {
        case ZYDIS_MNEMONIC_RET:
        case ZYDIS_MNEMONIC_UD0:
        case ZYDIS_MNEMONIC_UD1:
        case ZYDIS_MNEMONIC_UD2:
        case ZYDIS_MNEMONIC_HLT:
        case ZYDIS_MNEMONIC_INT3:
          return false;
        case ZYDIS_MNEMONIC_XBEGIN:
        case ZYDIS_MNEMONIC_IRET:
        case ZYDIS_MNEMONIC_IRETD:
        case ZYDIS_MNEMONIC_IRETQ:
        case ZYDIS_MNEMONIC_SYSRET:
        case ZYDIS_MNEMONIC_SYSEXIT:
          return true;
        default:
          break;
      }
      const ZydisInstructionCategory cat = insn.meta.category;
      if (cat == ZYDIS_CATEGORY_CALL || cat == ZYDIS_CATEGORY_UNCOND_BR ||
          cat == ZYDIS_CATEGORY_COND_BR) {
        // Direct branches have a relative immediate as their first operand; anything else
        // (register, memory, far pointer) is a target this walk cannot know.
        const ZydisDecodedOperand& op = ops[0];
        std::uint64_t target = 0;
        if (op.type != ZYDIS_OPERAND_TYPE_IMMEDIATE || !op.imm.is_relative ||
            !ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&insn, &op, a, &target))) {
          return true;
        }
        add(target);
        if (cat == ZYDIS_CATEGORY_UNCOND_BR) return false;
        // A call returns (or never does: then the bytes after it are still code of this
        // function or padding, both harmless to walk); a conditional branch falls through.
      }
      if (!seen_.insert(next).second) return false;
      a = next;
    }
  }

  ZydisDecoder decoder_ = [] {
    ZydisDecoder d;
    ZydisDecoderInit(&d, ZYDIS_MACHINE_MODE_LONG_64, ZYDIS_STACK_WIDTH_64);
    return d;
  }();
  CodeReader reader_;
  std::vector<std::uint64_t> todo_;
  std::unordered_set<std::uint64_t> seen_;
  unsigned steps_ = 0;
};

// Handlers are few and attached many times (one per probe of a glob): walk each once.
struct Cache {
  std::mutex mu;
  std::unordered_map<std::uint64_t, bool> may_write;
};
Cache& cache() {
  static Cache* c = new Cache;  // never destroyed: engines may attach from static destructors
  return *c;
}

}  // namespace

void forget_vector_register_walks() noexcept {
  Cache& c = cache();
  std::lock_guard lock(c.mu);
  c.may_write.clear();
}

bool may_write_vector_registers(std::uint64_t function) noexcept {
  if (function == 0) return false;
  try {
    Cache& c = cache();
    std::lock_guard lock(c.mu);
    auto it = c.may_write.find(function);
    if (it != c.may_write.end()) return it->second;
    Walk w;
    const bool may = w.run(function);
    c.may_write.emplace(function, may);
    return may;
  } catch (...) {
    return true;  // out of memory: the safe answer
  }
}

}  // namespace hp::arch
