#include "mpi_world.hpp"

#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "revmerge/error.hpp"

#ifdef REVMERGE_HAVE_MPI
#include <mpi.h>
#endif

namespace revmerge::cli {
namespace {

// What the common launchers set in each process they start (Open MPI, MPICH / Slurm's PMI,
// PMIx).
bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

#ifndef REVMERGE_HAVE_MPI
// The number of processes the launcher started, where it says (0: it does not).
long launched_size() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE"})
    if (const char* s = std::getenv(v)) return std::strtol(s, nullptr, 10);
  return 0;
}
#endif

#ifdef REVMERGE_HAVE_MPI
void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(rc, text, &length);
  throw error(std::string(call) + " failed: " + std::string(text, static_cast<std::size_t>(length)));
}

class MpiWorld final : public Peers {
 public:
  MpiWorld(int* argc, char*** argv) {
    // Only the thread that runs the command calls MPI (the merge's stages do not).
    int provided = 0;
    check_mpi(MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
    MPI_Comm_rank(MPI_COMM_WORLD, &rank_);
    MPI_Comm_size(MPI_COMM_WORLD, &size_);
    // The ranks that share this machine's memory: their order picks the GPUs.
    MPI_Comm node;
    check_mpi(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
              "MPI_Comm_split_type");
    MPI_Comm_rank(node, &node_rank_);
    MPI_Comm_free(&node);
  }
  ~MpiWorld() override { MPI_Finalize(); }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int node_rank() const override { return node_rank_; }

  std::vector<std::string> all_gather(const std::string& mine) override {
    const auto n = static_cast<std::size_t>(size_);
    const int length = static_cast<int>(mine.size());
    std::vector<int> lengths(n), offsets(n);
    check_mpi(MPI_Allgather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather");
    std::int64_t total = 0;
    for (std::size_t r = 0; r < n; ++r) offsets[r] = static_cast<int>(total), total += lengths[r];
    if (total > INT32_MAX) throw error("MPI_Allgatherv: the workers' messages pass 2 GiB");
    std::string all(static_cast<std::size_t>(total), '\0');
    check_mpi(MPI_Allgatherv(mine.data(), length, MPI_CHAR, all.data(), lengths.data(), offsets.data(), MPI_CHAR,
                             MPI_COMM_WORLD),
              "MPI_Allgatherv");
    std::vector<std::string> out;
    for (std::size_t r = 0; r < n; ++r) out.push_back(all.substr(static_cast<std::size_t>(offsets[r]), lengths[r]));
    return out;
  }

 private:
  int rank_ = 0, size_ = 1, node_rank_ = 0;
};
#endif

}  // namespace

bool have_mpi() {
#ifdef REVMERGE_HAVE_MPI
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Peers> join_mpi_world([[maybe_unused]] int* argc, [[maybe_unused]] char*** argv) {
  if (!launched_by_mpi()) return nullptr;
#ifdef REVMERGE_HAVE_MPI
  return std::make_unique<MpiWorld>(argc, argv);
#else
  if (launched_size() == 1) return nullptr;  // one process: nothing to split
  throw usage_error("started by an MPI launcher, but this revmerge was built without MPI (install "
                    "Open MPI and build again, or run it as one process)");
#endif
}

}  // namespace revmerge::cli
