/* SPDX-License-Identifier: BSD-3-Clause */
/*
 * regcache/export.h - symbol visibility for the regcache shared library.
 *
 * libregcache is built with -fvisibility=hidden and a linker version script; only
 * functions marked REGCACHE_API (all named regcache_*) are exported. Consumers never
 * need to define anything.
 */
#ifndef REGCACHE_EXPORT_H
#define REGCACHE_EXPORT_H

#if defined(REGCACHE_BUILDING_LIBRARY)
#define REGCACHE_API __attribute__((visibility("default")))
#else
#define REGCACHE_API
#endif

#ifdef __cplusplus
#define REGCACHE_EXTERN_C_BEGIN extern "C" {
#define REGCACHE_EXTERN_C_END }
#else
#define REGCACHE_EXTERN_C_BEGIN
#define REGCACHE_EXTERN_C_END
#endif

#endif /* REGCACHE_EXPORT_H */
