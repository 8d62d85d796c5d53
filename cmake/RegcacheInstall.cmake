# Install rules: library, headers (via regcache_public_include_dir), regcache.pc, and a
# CMake package (find_package(regcache) -> regcache::regcache). Skipped when regcache is
# a subproject of another build (MPICH/Open MPI vendor their transports that way).
if(NOT PROJECT_IS_TOP_LEVEL)
  return()
endif()
include(CMakePackageConfigHelpers)

target_include_directories(regcache_headers INTERFACE
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
install(TARGETS regcache regcache_headers EXPORT regcacheTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT regcacheTargets NAMESPACE regcache::
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/regcache)
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/regcacheConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/regcacheConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/regcache)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/regcacheConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/regcacheConfig.cmake
  ${CMAKE_CURRENT_BINARY_DIR}/regcacheConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/regcache)

# Only the shared library is installed: its private dependencies (spdlog, fmt,
# libibverbs, libfabric) are recorded in its DT_NEEDED, so the .pc lists none.
configure_file(${PROJECT_SOURCE_DIR}/cmake/regcache.pc.in
  ${CMAKE_CURRENT_BINARY_DIR}/regcache.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/regcache.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
