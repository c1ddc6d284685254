# Installs the build tree (with the build's compiler flags, so sanitizer builds link too) into a scratch prefix, then configures, builds and runs the consumer.
set(prefix ${WORK}/prefix)
file(REMOVE_RECURSE ${WORK})
execute_process(COMMAND ${CMAKE_COMMAND} --install ${BUILD} --prefix ${prefix} COMMAND_ERROR_IS_FATAL ANY
                OUTPUT_QUIET)
execute_process(COMMAND ${CMAKE_COMMAND} -S ${SRC} -B ${WORK}/build -G Ninja
                -DCMAKE_PREFIX_PATH=${prefix} "-DCMAKE_CXX_FLAGS=${FLAGS}" "-DCMAKE_C_FLAGS=${FLAGS}"
                "-DCMAKE_EXE_LINKER_FLAGS=${FLAGS}" COMMAND_ERROR_IS_FATAL ANY OUTPUT_QUIET)
execute_process(COMMAND ${CMAKE_COMMAND} --build ${WORK}/build COMMAND_ERROR_IS_FATAL ANY OUTPUT_QUIET)
execute_process(COMMAND ${WORK}/build/consumer ${FIXTURE} COMMAND_ERROR_IS_FATAL ANY)
execute_process(COMMAND ${WORK}/build/c_consumer ${FIXTURE} COMMAND_ERROR_IS_FATAL ANY)
