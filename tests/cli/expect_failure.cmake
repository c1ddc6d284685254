# Runs CMD with ARGS (a ;-list); passes when it exits non-zero (exactly RC when given) and its
# output matches REGEX.
execute_process(COMMAND ${CMD} ${ARGS} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0)
  message(FATAL_ERROR "expected a non-zero exit, got 0\nstdout: ${out}\nstderr: ${err}")
endif()
if(DEFINED RC AND NOT rc EQUAL RC)
  message(FATAL_ERROR "expected exit ${RC}, got ${rc}\nstdout: ${out}\nstderr: ${err}")
endif()
if(NOT "${err}${out}" MATCHES "${REGEX}")
  message(FATAL_ERROR "exit ${rc}, but the message does not match '${REGEX}':\n${err}${out}")
endif()
message(STATUS "exit ${rc}: ${err}")
