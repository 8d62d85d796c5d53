#!/usr/bin/env bash
# SPDX-License-Identifier: BSD-3-Clause
# run-mpi.sh BINARY [ARGS...] - runs an MPI example on 2 ranks of this machine with Debian's
# Open MPI, keeping Open MPI itself off the RDMA device: ob1 over shared memory (vader) and
# self, no UCX, no openib; the RDMA device is the example's own (through regcache).
# Root is allowed (the rxe guest runs everything as root).
set -euo pipefail
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun --allow-run-as-root --oversubscribe -np 2 \
  --mca pml ob1 --mca btl self,vader --mca osc ^ucx,rdma --mca btl_vader_single_copy_mechanism none \
  "$@"
