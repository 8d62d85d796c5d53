// SPDX-License-Identifier: BSD-3-Clause
// regcache/private_api.h - marks the few internal functions that the driver
// libraries (libregcache-verbs.so.0, libregcache-fabric.so.0) call in
// libregcache (internal).
//
// Everything in libregcache is compiled with hidden visibility; these
// declarations get default visibility so that regcache.map can export them
// under its REGCACHE_PRIVATE_* node. Not API: they are no part of an installed
// header, and the node is renamed when any of them changes
// (docs/versioning.md).
#ifndef REGCACHE_REGCACHE_PRIVATE_API_H_
#define REGCACHE_REGCACHE_PRIVATE_API_H_

#define REGCACHE_PRIVATE_API __attribute__((visibility("default")))

#endif  // REGCACHE_REGCACHE_PRIVATE_API_H_
