// Semaphores of USDT probes: <sys/sdt.h>'s PROVIDER_NAME_ENABLED() reads a 2-byte counter
// in the probed file's .probes section, which a tracer raises while it watches the probe
// (the program then computes the probe's arguments; at 0 it skips the whole site).
//
// The engine runs in the traced process, so raising it is a memory add at the loaded
// module's address of the semaphore. The Resolver notes, for each USDT site it resolves,
// the semaphore of its note (note_usdt_semaphore); the engine then calls
// usdt_site_attached/usdt_site_detached for each consumer that starts or stops probing a
// site (a library loaded later: when its pending probe is applied). A site that is no
// noted USDT site costs one relaxed load.
#pragma once

#include <cstdint>

#include "core/site_key.h"
#include "elf/modules.h"

namespace hp::core {

// The run-time address of the semaphore at link-time address `semaphore_vaddr` of the file
// `site` is in, in this process (0: the file is not mapped here, or not there).
std::uintptr_t usdt_semaphore_address(const elf::ModuleList& mods, const SiteKey& site,
                                      std::uint64_t semaphore_vaddr);

// Records that the USDT site `site` has the semaphore at `semaphore_vaddr` of its file;
// `address`: its run-time address when known now (0: found when the site is attached).
void note_usdt_semaphore(const SiteKey& site, std::uint64_t semaphore_vaddr,
                         std::uintptr_t address);

// A consumer starts (attached) or stops (detached) probing `site`: its semaphore, if it
// has one, goes up or down by one.
void usdt_site_attached(const SiteKey& site);
void usdt_site_detached(const SiteKey& site);

// The file of `site` was unmapped while probed: its consumers wait for it again, and its
// semaphore went with the memory (nothing to write).
void usdt_site_unmapped(const SiteKey& site);

// The semaphore's current value for a noted site (tests); -1 when none is known.
int usdt_semaphore_value(const SiteKey& site);

}  // namespace hp::core
