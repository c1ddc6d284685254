#pragma once
// The MPI ranks of `mpirun -n N revmerge merge …` as the merge's workers (revmerge/peers.hpp).
#include <memory>

#include "revmerge/peers.hpp"

namespace revmerge::cli {

/// Joins the MPI world when an MPI launcher (mpirun, mpiexec, srun with PMI) started this
/// process and the program was built with MPI: MPI is initialised here and finalised when the
/// result is destroyed. Null otherwise (one process, no MPI calls at all); a launched process
/// of a build without MPI is refused with a usage_error.
std::unique_ptr<Peers> join_mpi_world(int* argc, char*** argv);

/// Whether MPI was built in.
bool have_mpi();

}  // namespace revmerge::cli
