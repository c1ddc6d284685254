#pragma once
// Inputs that shrink while they are mapped. Reading a mapped page past a file's new end raises
// SIGBUS, which would kill the process (a user truncating or rewriting an input in place while
// a merge reads it, a network file system losing a file). Every MappedFile registers its range
// here; the SIGBUS handler maps zero pages over the rest of a registered range and marks it
// faulted, and the code that used the bytes asks afterwards and throws an io_error naming the
// file. No output is committed while a live mapping is marked (AtomicFile::commit asks).
#include <cstddef>
#include <filesystem>

namespace revmerge {

/// Registers [data, data + size) as the mapping of `path`; returns its slot, or -1 when the
/// table is full (that mapping is then unguarded: SIGBUS ends the process as before).
int guard_mapping(const void* data, std::size_t size, const std::filesystem::path& path);
/// Forgets a slot from guard_mapping (before the range is unmapped).
void unguard_mapping(int slot) noexcept;
/// Whether a read of the slot's range went past its file's end.
bool mapping_faulted(int slot) noexcept;
/// Throws io_error naming the file of `path` as truncated while read.
[[noreturn]] void throw_truncated(const std::filesystem::path& path);
/// Throws io_error for the first live mapping that faulted; nothing when none did.
void check_mapped_inputs_intact();

}  // namespace revmerge
