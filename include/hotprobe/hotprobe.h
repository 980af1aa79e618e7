// hotprobe: user-space uprobes for x86-64 Linux. The public API.
#pragma once

#include "hotprobe/probe.h"
#include "hotprobe/result.h"
#include "hotprobe/version.h"
