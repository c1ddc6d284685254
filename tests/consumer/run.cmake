# Installs the build tree (with the build's compiler flags, so sanitizer builds link too) into a scratch prefix, then configures, builds and runs the consumer.
set(prefix ${WORK}/prefix)
file(REMOVE_RECURSE ${WORK})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD} --prefix ${prefix} COMMAND_ERROR_IS_FATAL ANY
                OUTPUT_QUIET)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/build -G Ninja
                -DCMAKE_PREFIX_PATH=${prefix} "-DCMAKE_CXX_FLAGS=${FLAGS}" "-DCMAKE_C_FLAGS=${FLAGS}"
                "-DCMAKE_EXE_LINKER_FLAGS=${FLAGS}" COMMAND_ERROR_IS_FATAL ANY OUTPUT_QUIET)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/build COMMAND_ERROR_IS_FATAL ANY OUTPUT_QUIET)
# Both programs must exit 0 and print what the fixture holds (the exit status is checked here:
# ctest's PASS_REGULAR_EXPRESSION alone would ignore it).
foreach(program consumer c_consumer)
  execute_process(COMMAND ${WORK}/build/${program} ${FIXTURE} OUTPUT_VARIABLE out
                  COMMAND_ERROR_IS_FATAL ANY)
  set(want "modules=8 scale=5.65685")
  if(program STREQUAL "c_consumer")
    set(want "c: revmerge [0-9.]+, status [1-9][0-9]*: .*rslora")  # refused by name: not a bundle
  endif()
  if(NOT out MATCHES "${want}")
    message(FATAL_ERROR "${program} printed '${out}', which does not match '${want}'")
  endif()
endforeach()
# A resident bundle from C: two example adapters merged, every task rebuilt as revert does.
execute_process(COMMAND ${WORK}/build/c_resident ${EXAMPLES}/qa ${EXAMPLES}/chat ${WORK}/bundle
                OUTPUT_VARIABLE out RESULT_VARIABLE rc)
if(NOT rc EQUAL 0 OR NOT out MATCHES "2 tasks x [0-9]+ modules materialized, [0-9]+ bytes resident, equal to revert")
  message(FATAL_ERROR "c_resident exited ${rc} and printed '${out}'")
endif()
