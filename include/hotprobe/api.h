#pragma once
// Marks the symbols hotprobe's shared library exports; everything else is hidden.
#define HOTPROBE_API __attribute__((visibility("default")))
