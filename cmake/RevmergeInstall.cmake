# install(EXPORT) with a package config, so `find_package(revmerge)` gives revmerge::core.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set_target_properties(revmerge_core PROPERTIES
  OUTPUT_NAME revmerge
  VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
  INSTALL_RPATH "$ORIGIN")
set_target_properties(revmerge PROPERTIES INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}")

install(TARGETS revmerge_core EXPORT revmergeTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(TARGETS revmerge RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/revmerge DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT revmergeTargets NAMESPACE revmerge::
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/revmerge)

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/revmergeConfig.cmake.in
  ${PROJECT_BINARY_DIR}/revmergeConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/revmerge)
write_basic_package_version_file(${PROJECT_BINARY_DIR}/revmergeConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/revmergeConfig.cmake
              ${PROJECT_BINARY_DIR}/revmergeConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/revmerge)
