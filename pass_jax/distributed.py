"""Multi-process (multi-host) helpers: join the runtime, split a global batch, gather results.

JAX's multi-controller model: every process runs the same program on its own devices; a global
`jax.Array` spans the devices of all processes and each process holds (and feeds) only its own
shards. Typical use on a TPU pod slice or a multi-GPU cluster:

    initialize_from_env()                          # before any other JAX call
    mesh = make_mesh("2x4")                        # over jax.devices(): all processes' devices
    rows = process_local_batch(global_batch, mesh) # the rows this host reads
    tokens = global_array_from_local(local_tokens[rows], mesh)
    ...                                            # jit as usual
    out = gather_to_host(state.tokens)             # numpy, the whole batch, on every process

Environment (all optional; explicit arguments win):
  PASS_JAX_DISTRIBUTED=1          join the runtime (alone: let JAX auto-detect TPU/SLURM/MPI settings)
  PASS_JAX_COORDINATOR_ADDRESS    host:port of process 0 (JAX's own JAX_COORDINATOR_ADDRESS works too)
  PASS_JAX_NUM_PROCESSES          number of processes
  PASS_JAX_PROCESS_ID             this process's index, 0 .. N-1
On CPU, cross-process collectives use gloo, JAX 0.10's default (`jax_cpu_collectives_implementation`).
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from .errors import PassJaxError

ENV_FLAG = "PASS_JAX_DISTRIBUTED"
ENV_COORDINATOR = "PASS_JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "PASS_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "PASS_JAX_PROCESS_ID"


class DistributedError(PassJaxError):
    """A multi-process setting that cannot work."""


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    text = env.get(name)
    if text in (None, ""):
        return None
    try:
        return int(text)
    except ValueError:
        raise DistributedError(f"{name}={text!r} is not an integer") from None


def initialize_from_env(coordinator_address: str | None = None, num_processes: int | None = None,
                        process_id: int | None = None, *, env: Mapping[str, str] | None = None,
                        initialization_timeout: int = 300) -> bool:
    """Join JAX's multi-controller runtime once; returns whether this is a distributed run.

    Does nothing (returns False) unless PASS_JAX_DISTRIBUTED=1 or a setting is given (argument or
    environment). Calling it again after a successful initialisation is a no-op returning True.
    Must run before anything touches a JAX device.
    """
    if jax.distributed.is_initialized():
        return True
    env = os.environ if env is None else env
    coordinator_address = coordinator_address or env.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(env, ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(env, ENV_PROCESS_ID)
    given = (coordinator_address, num_processes, process_id)
    if env.get(ENV_FLAG) != "1" and all(value is None for value in given):
        return False
    if num_processes is not None and process_id is not None and not 0 <= process_id < num_processes:
        raise DistributedError(f"process id {process_id} is outside 0..{num_processes - 1}")
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id, initialization_timeout=initialization_timeout)
    return True


def process_local_batch(global_batch_rows: int, mesh=None) -> slice:
    """The rows of a global batch that this process reads (and feeds to `global_array_from_local`).

    With a mesh: the rows held by this process's devices under `batch_sharding` (all rows when the
    data axes do not span processes, e.g. pure tensor parallelism across hosts). Without one: an
    equal contiguous block per process.
    """
    if mesh is None:
        count, index = jax.process_count(), jax.process_index()
        if global_batch_rows % count:
            raise DistributedError(f"a global batch of {global_batch_rows} rows does not split over {count} processes")
        size = global_batch_rows // count
        return slice(index * size, (index + 1) * size)
    from .sharding import batch_sharding
    indices = batch_sharding(mesh, (global_batch_rows,)).addressable_devices_indices_map((global_batch_rows,))
    spans = sorted({idx[0].indices(global_batch_rows)[:2] for idx in indices.values()})
    start, stop = spans[0][0], spans[-1][1]
    covered = sum(b - a for a, b in spans)
    if covered != stop - start:
        raise DistributedError(f"this process's rows of the batch are not contiguous ({spans}); "
                               "build the mesh with make_mesh so each process holds one block")
    return slice(start, stop)


def global_array_from_local(local: Any, mesh=None, logical: Sequence[str | None] | None = None, *,
                            sharding: NamedSharding | None = None,
                            global_shape: Sequence[int] | None = None) -> jax.Array:
    """This process's rows -> one global array (`jax.make_array_from_process_local_data`).

    The sharding is `sharding`, or the logical axes `logical` on `mesh`, or by default the batch
    sharding (leading dimension over the data axes). The global shape defaults to the local rows
    times the number of distinct row blocks across processes.
    """
    local = np.asarray(local)
    if sharding is None:
        if mesh is None:
            raise DistributedError("global_array_from_local needs a mesh or a sharding")
        from .sharding import batch_sharding, named_sharding
        if global_shape is None:
            global_shape = (_global_rows(local.shape[0], mesh),) + local.shape[1:]
        sharding = (batch_sharding(mesh, global_shape) if logical is None
                    else named_sharding(tuple(logical), global_shape, mesh))
    return jax.make_array_from_process_local_data(sharding, local, None if global_shape is None else tuple(global_shape))


def _global_rows(local_rows: int, mesh) -> int:
    """The batch is split into one block per data-parallel group of the mesh (data x fsdp); this
    process feeds the blocks of the groups its devices belong to (several processes feed the same
    block when tensor parallelism spans hosts)."""
    groups = np.asarray(mesh.devices).reshape(mesh.shape["data"] * mesh.shape.get("fsdp", 1), -1)
    mine = sum(any(d.process_index == jax.process_index() for d in row) for row in groups)
    if local_rows % mine:
        raise DistributedError(f"{local_rows} local rows do not split over this process's {mine} data groups")
    return local_rows // mine * len(groups)


def replicate(tree: Any, mesh) -> Any:
    """Host values that are identical on every process (look-ahead vectors, PRNG keys, small
    state) -> global arrays replicated over the mesh. `jax.device_put` cannot do this across
    processes: it only accepts shardings of this process's devices."""
    sharding = NamedSharding(mesh, PartitionSpec())

    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return jax.device_put(x, sharding)
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(one(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])

    return jax.tree.map(one, tree)


def gather_to_host(tree: Any) -> Any:
    """Every leaf as a full numpy array on every process (so process 0 can write the outputs).

    Uses `multihost_utils.process_allgather`; in a single-process run it is `jax.device_get`.
    All processes must call it (it is a collective).
    """
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, jax.device_get(tree))
    from jax.experimental import multihost_utils
    return jax.tree.map(lambda x: np.asarray(multihost_utils.process_allgather(x, tiled=True)), tree)


def agree(value: int) -> int:
    """Process 0's `value` on every process (a collective in a multi-process run; identity otherwise).

    For host-side choices that every process must make alike, such as how many loop iterations the next
    call runs: processes that ran the jitted loop for different counts would wait on each other's
    collectives for ever.
    """
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils
    return int(multihost_utils.broadcast_one_to_all(np.int32(value)))
