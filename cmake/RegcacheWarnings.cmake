# SPDX-License-Identifier: BSD-3-Clause
# Project-wide compile flags, applied per target through regcache_target_defaults() so that
# a parent project that add_subdirectory()s us keeps its own global flags.
add_library(regcache_build_flags INTERFACE)
target_compile_options(regcache_build_flags INTERFACE -Wall -Wextra
  $<$<BOOL:${REGCACHE_WERROR}>:-Werror>
  $<$<AND:$<BOOL:${REGCACHE_THREAD_SAFETY}>,$<CXX_COMPILER_ID:Clang>>:-Wthread-safety>)
if(REGCACHE_SANITIZE STREQUAL "asan")
  target_compile_options(regcache_build_flags INTERFACE -fsanitize=address,undefined
                         -fno-omit-frame-pointer -fno-sanitize-recover=undefined)
  target_link_options(regcache_build_flags INTERFACE -fsanitize=address,undefined
    # A C program linked with the C driver still needs UBSan's C++ runtime for
    # the vptr checks inside libregcache.
    $<$<AND:$<LINK_LANGUAGE:C>,$<C_COMPILER_ID:Clang>>:-fsanitize-link-c++-runtime -lstdc++>)
  target_compile_definitions(regcache_build_flags INTERFACE REGCACHE_SANITIZE_ADDRESS=1)
elseif(REGCACHE_SANITIZE STREQUAL "tsan")
  target_compile_options(regcache_build_flags INTERFACE -fsanitize=thread -fno-omit-frame-pointer)
  target_link_options(regcache_build_flags INTERFACE -fsanitize=thread)
  target_compile_definitions(regcache_build_flags INTERFACE REGCACHE_SANITIZE_THREAD=1)
elseif(NOT REGCACHE_SANITIZE STREQUAL "")
  message(FATAL_ERROR "REGCACHE_SANITIZE must be '', asan or tsan (got '${REGCACHE_SANITIZE}')")
endif()

# Internal (non-installed) headers are named from the source root:
#   #include "notifier/address_space.h", "regcache/cache.h", "regcache/driver_port.h".
# Tests and examples see the whole source root (regcache_target_defaults). A library
# module's targets do not (regcache_module_target): each module gets an include root of
# its own under <build>/layering/<module>/ holding a link to its own directory and links
# to the headers its dependencies export, as cmake/layering.txt allows; an include of
# anything else does not compile. scripts/check_layering.sh (ctest layering_check)
# checks the same graph over the sources.
function(regcache_target_defaults tgt)
  target_link_libraries(${tgt} PRIVATE regcache_build_flags)
  target_include_directories(${tgt} PRIVATE ${PROJECT_SOURCE_DIR})
endfunction()

file(STRINGS ${PROJECT_SOURCE_DIR}/cmake/layering.txt REGCACHE_LAYERING
     REGEX "^(uses|exports) ")
set_property(DIRECTORY ${PROJECT_SOURCE_DIR} APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             ${PROJECT_SOURCE_DIR}/cmake/layering.txt)

# _regcache_link(<target path> <link path>): a symbolic link, made once.
function(_regcache_link target link)
  if(NOT IS_SYMLINK ${link})
    get_filename_component(dir ${link} DIRECTORY)
    file(MAKE_DIRECTORY ${dir})
    file(CREATE_LINK ${target} ${link} SYMBOLIC)
  endif()
endfunction()

# regcache_module_target(<target>): build flags and the include root of the module the
# calling CMakeLists.txt belongs to (notifier, regcache, tools = regcache/tools,
# drivers/<name>).
function(regcache_module_target tgt)
  target_link_libraries(${tgt} PRIVATE regcache_build_flags)
  file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${CMAKE_CURRENT_SOURCE_DIR})
  if(rel MATCHES "^drivers/[^/]+")
    set(mod ${CMAKE_MATCH_0})
    set(key "drivers/*")
  elseif(rel MATCHES "^regcache/tools")
    set(mod tools)
    set(key tools)
  elseif(rel MATCHES "^(notifier|regcache)")
    set(mod ${CMAKE_MATCH_1})
    set(key ${mod})
  else()
    message(FATAL_ERROR "regcache_module_target(${tgt}): ${rel} is in no module")
  endif()
  set(root ${PROJECT_BINARY_DIR}/layering/${mod})
  if(mod STREQUAL "tools")
    # Its own internals as "tools/x.h" (regcache-info's units), like every module's.
    _regcache_link(${PROJECT_SOURCE_DIR}/regcache/tools ${root}/tools)
  else()
    _regcache_link(${PROJECT_SOURCE_DIR}/${mod} ${root}/${mod})
  endif()
  set(deps "")
  foreach(line IN LISTS REGCACHE_LAYERING)
    string(REGEX REPLACE "[ \t]+" ";" words "${line}")
    list(POP_FRONT words kw m)
    if(kw STREQUAL "uses" AND m STREQUAL key)
      set(deps ${words})
    endif()
  endforeach()
  foreach(line IN LISTS REGCACHE_LAYERING)
    string(REGEX REPLACE "[ \t]+" ";" words "${line}")
    list(POP_FRONT words kw m)
    if(kw STREQUAL "exports" AND m IN_LIST deps)
      foreach(h IN LISTS words)
        _regcache_link(${PROJECT_SOURCE_DIR}/${m}/${h} ${root}/${m}/${h})
      endforeach()
    endif()
  endforeach()
  target_include_directories(${tgt} PRIVATE ${root})
endfunction()

# Public headers of every module, for in-tree consumers (installed to include/regcache/).
add_library(regcache_headers INTERFACE)

# regcache_library_object(<target>): an OBJECT library that goes into libregcache.
function(regcache_library_object tgt)
  regcache_module_target(${tgt})
  target_compile_definitions(${tgt} PRIVATE REGCACHE_BUILDING_LIBRARY=1)
  # Every object of the libraries sees fmt header-only (FMT_HEADER_ONLY): one that
  # included regcache/log.h without it would reference libfmt.so's vformat.
  target_link_libraries(${tgt} PUBLIC regcache_headers regcache_fmt)
  set_target_properties(${tgt} PROPERTIES CXX_VISIBILITY_PRESET hidden
                        C_VISIBILITY_PRESET hidden VISIBILITY_INLINES_HIDDEN ON)
endfunction()

# regcache_add_driver(<object target>): a driver built into libregcache itself (host,
# custom: no dependency beyond libc). drivers/<name>/CMakeLists.txt calls this.
function(regcache_add_driver tgt)
  regcache_library_object(${tgt})
  set_property(GLOBAL APPEND PROPERTY REGCACHE_DRIVER_TARGETS ${tgt})
  set_property(GLOBAL APPEND PROPERTY REGCACHE_INTERNAL_OBJECTS ${tgt})
endfunction()

# regcache_driver_library(<name> <object target> <map file>): a driver with a heavy
# dependency (libibverbs, libfabric) as its own shared library libregcache-<name>.so.0
# (target regcache_<name>, alias and exported name regcache::<name>), so that a program
# using only the host or custom driver never loads that dependency (start-up cost: Debian's
# libfabric alone pulls in PSM, whose constructor sleeps). The library links libregcache
# for the logger and the tunables (its REGCACHE_PRIVATE_* node). The object target also
# goes into regcache_internal, so white-box tests keep one static archive.
function(regcache_driver_library name obj map)
  regcache_library_object(${obj})
  set_property(GLOBAL APPEND PROPERTY REGCACHE_INTERNAL_OBJECTS ${obj})
  set(tgt regcache_${name})
  add_library(${tgt} SHARED)
  add_library(regcache::${name} ALIAS ${tgt})
  target_link_libraries(${tgt} PRIVATE ${obj} regcache_build_flags)
  target_link_libraries(${tgt} PUBLIC regcache regcache_headers)
  target_link_options(${tgt} PRIVATE "LINKER:--version-script=${map}")
  if(REGCACHE_SANITIZE STREQUAL "")
    target_link_options(${tgt} PRIVATE "LINKER:--no-undefined")
  endif()
  set_target_properties(${tgt} PROPERTIES OUTPUT_NAME regcache-${name} EXPORT_NAME ${name}
    VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR} LINK_DEPENDS ${map}
    LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/regcache)
  set_property(GLOBAL APPEND PROPERTY REGCACHE_DRIVER_LIBRARIES ${name})
endfunction()

# regcache_public_include_dir(<dir>): adds <dir> (which holds regcache/*.h) to the public
# header set, in the build tree and in the install tree.
function(regcache_public_include_dir dir)
  target_include_directories(regcache_headers INTERFACE $<BUILD_INTERFACE:${dir}>)
  install(DIRECTORY ${dir}/regcache DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endfunction()
