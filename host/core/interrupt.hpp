#pragma once
// Ctrl-C and SIGTERM end a long job cleanly: the handler only sets a flag, the work loops check
// it between units of work and throw, and unwinding removes every temporary output.
namespace revmerge {

/// Installs SIGINT / SIGTERM handlers that request an interrupt (the CLI calls this once).
void install_interrupt_handlers();
/// Asks running work to stop at its next check (also what the handlers do).
void request_interrupt() noexcept;
/// Clears a pending request (tests).
void clear_interrupt() noexcept;
/// Throws revmerge::interrupted when an interrupt was requested; `where` names the work.
void throw_if_interrupted(const char* where);

}  // namespace revmerge
