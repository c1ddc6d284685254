# Runs CMD with ARGS (a ;-list); passes when it exits 0 and its output matches REGEX. (ctest's
# PASS_REGULAR_EXPRESSION alone ignores the exit status: a crash after the output would pass.)
execute_process(COMMAND ${CMD} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "expected exit 0, got ${rc}\nstdout: ${out}\nstderr: ${err}")
endif()
if(NOT "${out}${err}" MATCHES "${REGEX}")
  message(FATAL_ERROR "exit 0, but the output does not match '${REGEX}':\n${out}${err}")
endif()
