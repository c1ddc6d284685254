#pragma once
/// \file
/// revmerge's version; bumped with each release, matching project(VERSION) in CMakeLists.txt.
#define REVMERGE_VERSION_MAJOR 0
#define REVMERGE_VERSION_MINOR 1
#define REVMERGE_VERSION_PATCH 0
#define REVMERGE_VERSION_STRING "0.1.0"
