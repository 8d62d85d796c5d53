# SPDX-License-Identifier: BSD-3-Clause
# regcache_optional_dep(<option var> <Find module name> <result var>)
# AUTO: use the library if its Find module finds it; ON: fail if missing; OFF: never.
function(regcache_optional_dep opt pkg result)
  set(${result} OFF PARENT_SCOPE)
  if(${opt} STREQUAL "OFF")
    return()
  endif()
  if(${opt} STREQUAL "ON")
    find_package(${pkg} REQUIRED)
  else()
    find_package(${pkg} QUIET)
  endif()
  if(${pkg}_FOUND)
    set(${result} ON PARENT_SCOPE)
    set(${pkg}_VERSION "${${pkg}_VERSION}" PARENT_SCOPE)  # regcache-info --version
  endif()
endfunction()
