/* SPDX-License-Identifier: BSD-3-Clause */
/* tests/regcache/attack_bss_lib.c - a plugin whose .bss a test registers and
 * then unloads with dlclose (attack_test.cc, DlcloseBss). 2 MiB of .bss: all
 * but its first page is an anonymous mapping ld.so makes and later unmaps. */
#include <stddef.h>

__attribute__((aligned(4096))) char attack_bss[2u << 20];

char *attack_bss_addr(void) { return attack_bss; }
