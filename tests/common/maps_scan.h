/* SPDX-License-Identifier: BSD-3-Clause */
// tests/common/maps_scan.h - scans /proc/self/maps without allocating (a
// caller-provided buffer, raw open/read), so that a thread can scan in a loop
// while another one changes mappings.
//
//   CountWx(buf, cap, first, first_cap)  the number of mappings whose
//       permissions are both writable and executable (-1 if the file cannot be
//       opened), copying the first such line into `first`. A maps file longer
//       than cap - 1 bytes is cut there.
#ifndef REGCACHE_TESTS_COMMON_MAPS_SCAN_H_
#define REGCACHE_TESTS_COMMON_MAPS_SCAN_H_

#include <fcntl.h>
#include <unistd.h>

#include <cstddef>
#include <cstring>

namespace regcache::testing {

// Scans /proc/self/maps; returns how many lines have both 'w' and 'x' in their
// permissions, copying the first into `first`.
inline int CountWx(char *buf, size_t cap, char *first, size_t first_cap) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return -1;
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, cap - 1 - n);
    if (r <= 0) break;
    n += static_cast<size_t>(r);
    if (n == cap - 1) break;
  }
  close(fd);
  buf[n] = '\0';
  int found = 0;
  for (char *line = buf; line && *line;) {
    char *nl = strchr(line, '\n');
    char *sp = strchr(line, ' ');  // "start-end perms ..."
    if (sp != nullptr && (nl == nullptr || sp < nl) && sp[1] && sp[2] &&
        sp[3] && sp[2] == 'w' && sp[3] == 'x') {
      if (found++ == 0) {
        size_t len = nl ? static_cast<size_t>(nl - line) : strlen(line);
        if (len >= first_cap) len = first_cap - 1;
        memcpy(first, line, len);
        first[len] = '\0';
      }
    }
    line = nl ? nl + 1 : nullptr;
  }
  return found;
}

}  // namespace regcache::testing

#endif  // REGCACHE_TESTS_COMMON_MAPS_SCAN_H_
