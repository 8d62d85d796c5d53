# SPDX-License-Identifier: BSD-3-Clause
# Install rules: libraries, headers (via regcache_public_include_dir), one .pc per library
# and a CMake package with one component per library:
#   find_package(regcache 0.2 REQUIRED COMPONENTS verbs)  ->  regcache::regcache,
#   regcache::verbs (libregcache-verbs.so.0), regcache::fabric (libregcache-fabric.so.0).
# pkg-config modules: regcache, regcache-verbs, regcache-fabric.
# Every directory comes from GNUInstallDirs (lib, lib64, lib/<multiarch>, /usr prefix).
# Skipped when regcache is a subproject of another build (MPICH/Open MPI vendor their
# transports that way).
if(NOT PROJECT_IS_TOP_LEVEL)
  return()
endif()
include(CMakePackageConfigHelpers)

get_property(REGCACHE_DRIVER_LIBRARIES GLOBAL PROPERTY REGCACHE_DRIVER_LIBRARIES)
set(_libs regcache)
foreach(d IN LISTS REGCACHE_DRIVER_LIBRARIES)
  list(APPEND _libs regcache_${d})
endforeach()

target_include_directories(regcache_headers INTERFACE
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
install(TARGETS ${_libs} regcache_headers EXPORT regcacheTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
set(_cmakedir ${CMAKE_INSTALL_LIBDIR}/cmake/regcache)
install(EXPORT regcacheTargets NAMESPACE regcache:: DESTINATION ${_cmakedir})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/regcacheConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/regcacheConfig.cmake INSTALL_DESTINATION ${_cmakedir})
# docs/versioning.md: within major version 0 a minor release may break the API (0.1 ->
# 0.2 moved the driver functions to their own libraries), so a request for 0.x accepts
# exactly 0.x.*; from 1.0 on, any later 1.y. Keep the two in step.
if(PROJECT_VERSION_MAJOR EQUAL 0)
  set(_compat SameMinorVersion)
else()
  set(_compat SameMajorVersion)
endif()
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/regcacheConfigVersion.cmake
  COMPATIBILITY ${_compat})
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/regcacheConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/regcacheConfigVersion.cmake DESTINATION ${_cmakedir})

# The licence travels with the binaries (BSD-3-Clause, clause 2), with the release notes
# and the security notes: <prefix>/share/doc/regcache/.
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE ${PROJECT_SOURCE_DIR}/NEWS.md
  ${PROJECT_SOURCE_DIR}/SECURITY.md DESTINATION ${CMAKE_INSTALL_DOCDIR})

# pkg-config files, relocatable: prefix is ${pcfiledir} plus the relative path from
# <libdir>/pkgconfig back to the prefix, computed here for the configured libdir (lib:
# ../.., lib/x86_64-linux-gnu: ../../..). An absolute libdir/includedir is written as is.
set(_pcdir ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
if(IS_ABSOLUTE "${CMAKE_INSTALL_LIBDIR}")
  set(REGCACHE_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
  set(REGCACHE_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
else()
  file(RELATIVE_PATH _rel "/_prefix_/${_pcdir}" "/_prefix_")
  string(REGEX REPLACE "/$" "" _rel "${_rel}")
  set(REGCACHE_PC_PREFIX "\${pcfiledir}/${_rel}")
  set(REGCACHE_PC_LIBDIR "\${prefix}/${CMAKE_INSTALL_LIBDIR}")
endif()
if(IS_ABSOLUTE "${CMAKE_INSTALL_INCLUDEDIR}")
  set(REGCACHE_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
else()
  set(REGCACHE_PC_INCLUDEDIR "\${prefix}/${CMAKE_INSTALL_INCLUDEDIR}")
endif()

# regcache.pc: the shared library carries its private dependencies in DT_NEEDED (libc,
# libstdc++ only: spdlog and fmt are compiled in), so Libs.private lists none.
set(REGCACHE_PC_NAME regcache)
set(REGCACHE_PC_DESCRIPTION "User-space memory-registration cache for RDMA HCAs")
set(REGCACHE_PC_LIB regcache)
set(REGCACHE_PC_REQUIRES "")
set(REGCACHE_PC_REQUIRES_PRIVATE "")
configure_file(${PROJECT_SOURCE_DIR}/cmake/regcache.pc.in
  ${CMAKE_CURRENT_BINARY_DIR}/regcache.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/regcache.pc DESTINATION ${_pcdir})
# regcache-<driver>.pc: the driver library; its public header includes the back-end's
# headers (<infiniband/verbs.h>, <rdma/fabric.h>), hence Requires.private for the cflags.
set(_pc_dep_verbs libibverbs)
set(_pc_dep_fabric libfabric)
foreach(d IN LISTS REGCACHE_DRIVER_LIBRARIES)
  set(REGCACHE_PC_NAME regcache-${d})
  set(REGCACHE_PC_DESCRIPTION "regcache ${d} driver (libregcache-${d})")
  set(REGCACHE_PC_LIB regcache-${d})
  set(REGCACHE_PC_REQUIRES "regcache = ${PROJECT_VERSION}")
  set(REGCACHE_PC_REQUIRES_PRIVATE "${_pc_dep_${d}}")
  configure_file(${PROJECT_SOURCE_DIR}/cmake/regcache.pc.in
    ${CMAKE_CURRENT_BINARY_DIR}/regcache-${d}.pc @ONLY)
  install(FILES ${CMAKE_CURRENT_BINARY_DIR}/regcache-${d}.pc DESTINATION ${_pcdir})
endforeach()
