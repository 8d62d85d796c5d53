// SPDX-License-Identifier: BSD-3-Clause
// notifier/patch_x86.cc - x86-64 code recognition for the patch source: the
// entry prologues we know how to patch over, and the jumps another patcher
// leaves at an entry.
#include <cstdint>

#include "notifier/patch_internal.h"

#if defined(__x86_64__)

namespace regcache::notifier::sources {
inline namespace patch_impl {

// Another patcher's jump at the entry (jmp rel32/rel8, jmp [rip], movabs
// r11/rax, int3).
bool LooksPatched(const uint8_t *p) {
  return p[0] == 0xE9 || p[0] == 0xEB || p[0] == 0xCC ||
         (p[0] == 0xFF && p[1] == 0x25) || (p[0] == 0x49 && p[1] == 0xBB) ||
         (p[0] == 0x48 && p[1] == 0xB8);
}

// First instructions we know how to patch over (glibc 2.3x x86_64 wrappers).
bool KnownPrologue(const uint8_t *p) {
  return p[0] == 0xB8 ||                                    // mov $imm32, %eax
         (p[0] == 0x48 && p[1] == 0x83 && p[2] == 0xEC) ||  // sub $imm8, %rsp
         (p[0] == 0x41 && p[1] == 0x89 && p[2] == 0xCA) ||  // mov %ecx, %r10d
         (p[0] == 0x49 && p[1] == 0x89 && p[2] == 0xCA) ||  // mov %rcx, %r10
         (p[0] == 0x80 && p[1] == 0x3D) ||  // cmpb $imm8, rel32(%rip): 7 bytes
         (p[0] == 0xF3 && p[1] == 0x0F && p[2] == 0x1E &&
          p[3] == 0xFA) ||  // endbr64
         // ret, then padding (ld.so's _dl_debug_state): only the ret ever
         // runs, so the jump may cover the nops after it.
         (p[0] == 0xC3 &&
          (p[1] == 0x66 || p[1] == 0x0F || p[1] == 0x90 || p[1] == 0xCC));
}

}  // namespace patch_impl
}  // namespace regcache::notifier::sources

#endif  // __x86_64__
