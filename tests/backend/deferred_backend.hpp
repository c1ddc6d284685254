#pragma once
// A test backend that behaves like a discrete GPU, on the CPU: its memory is not the caller's
// (shares_host_memory is false, so the methods take their device paths: pinned staging, uploads,
// the batched PT-SVD engine, the whole-batch RMM schedule), and the work queued on a stream runs
// only when that stream is synchronized — the latest moment CUDA allows — on the synchronizing
// thread. The arithmetic is the CPU backend's.
//
// What CUDA would let go wrong shows here as a wrong result instead of a rare race:
// - a download read before its stream is synchronized still holds what was there before;
// - a staging (pinned) buffer refilled before its upload ran uploads the new bytes (an upload
//   from ordinary pageable memory is copied when called, as CUDA does);
// - backend memory is NaN when allocated (CUDA's is whatever was there) and NaN again once
//   freed, and a freed block is not handed out again while any stream has work queued: work
//   that reads a buffer freed before it ran, or memory nobody wrote, produces NaN; work that
//   writes into a buffer freed before it ran (which a GPU's pool may meanwhile have handed to
//   another stream) makes the next synchronize throw device_error.
#include <memory>

#include "backend/backend.hpp"

namespace revmerge::test {

std::unique_ptr<Backend> make_deferred_backend(int threads = 2);

}  // namespace revmerge::test
