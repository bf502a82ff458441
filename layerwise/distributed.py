"""Multi-process pruning through ``torch.distributed`` (NCCL on GPUs, gloo on CPUs), started by torchrun.

    torchrun --nproc-per-node 4 -m layerprune.layerwise.cli prune --model M --device cuda …

Every rank runs the same driver loop; a :class:`World` (rank, size) is consulted at a few points:

* **samples**: the calibration mini-batches (``batch_size`` sequences each) are split into
  ``size`` contiguous shards (:meth:`World.batch_range`); each rank captures and forwards its
  own, so a block's forwards are data-parallel and each mini-batch is the same computation as
  in one process;
* **Hessians**: each rank accumulates Hₛ = Σ_{x in its shard} xᵀx (and the count nₛ) in the
  usual accumulators, then :meth:`World.reduce_accumulators` replaces them by
  H = ((H₀ + H₁) + H₂) + … in rank order, the same sum on every rank (gathered, then added in a
  fixed order: no reduction tree whose order the library chooses). One process with
  ``hessian_shards = N`` accumulates the same N shards and adds them in the same order
  (:func:`block_hessians`), so it reproduces an N-rank run bit for bit; with the default one
  shard it is the plain sequential accumulation, and an N-rank run differs from it only by
  that summation order (float32 roundings, ~1e-7 relative);
* **solves**: a block's layer problems (one per linear; the layers ``solve_many`` would stack
  stay one unit) are given to ranks by longest-processing-time first (:func:`lpt_assign`) on a
  cost per unit: for the first block a formula (:func:`formula_cost`), later the seconds each
  layer took in the previous block; each rank solves its units, then every pruned weight is
  broadcast from its solver (:meth:`World.broadcast`) before the block's outputs are computed,
  and the log entries (with ``rank``) are gathered in the one-process order;
* **files**: rank 0 writes checkpoints and the output, the others wait at a barrier;
* **sparsity profiles**: the dense pre-pass (``layerwise.profiles``) runs on each rank's shard and
  sums its statistics (OWL's ‖X_j‖², the curves' H) the same way, so every rank allocates alike.

World size 1 makes every collective a no-op. An error on one rank during a block's solves is
exchanged (:meth:`World.raise_if_any`) so every rank stops with it; elsewhere torchrun ends the
other workers when one exits, and every collective has the process group's timeout.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

from layerprune.layerwise.errors import LayerwiseError

DEFAULT_TIMEOUT_S = 3600.0  # a rank may wait a whole block's solve at a broadcast
GATHER_CHUNK = 1 << 24  # elements per all_gather chunk of an accumulator (64 MiB of float32 per rank)


def env_world_size() -> int:
    """The ``WORLD_SIZE`` torchrun set (1 when absent)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise LayerwiseError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


def check_distributed_device(device: str, size: int) -> None:
    """Under several processes the device is ``cpu`` (gloo) or ``cuda`` (NCCL: each rank's ``cuda:LOCAL_RANK``)."""
    if size > 1 and str(device) not in ("cpu", "cuda"):
        raise LayerwiseError(f"--device {device}: with {size} processes give 'cuda' (each rank uses cuda:LOCAL_RANK) "
                             "or 'cpu'")


@dataclass(frozen=True)
class World:
    """This process's place among the ranks: ``rank`` of ``size`` (``local_rank`` on its host)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> World:
        """The initialized default process group's world, else a world of one."""
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank()
            return cls(rank, dist.get_world_size(), int(os.environ.get("LOCAL_RANK", rank)))
        return cls()

    @classmethod
    def init_from_env(cls, device: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> World:
        """Start the process group torchrun described (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, the
        rendezvous address): NCCL for ``cuda`` (and this rank's GPU made current for torch and
        CuPy), gloo for ``cpu``. A world of one without ``WORLD_SIZE`` > 1; an already initialized
        group is used as it is."""
        import torch.distributed as dist

        size = env_world_size()
        if size <= 1 or (dist.is_available() and dist.is_initialized()):
            world = cls.current()
        else:
            check_distributed_device(device, size)
            local = int(os.environ.get("LOCAL_RANK", "0"))
            backend = "nccl" if str(device) == "cuda" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(local)
            dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
            world = cls.current()
        world.use_device(device)
        return world

    def use_device(self, device: str) -> None:
        """Several ranks on ``cuda``: make ``cuda:LOCAL_RANK`` torch's and CuPy's current device, so that
        "cuda" everywhere (blocks, solvers, collectives) means this rank's GPU; checks the device first."""
        check_distributed_device(device, self.size)
        if self.size > 1 and str(device) == "cuda":
            torch.cuda.set_device(self.local_rank)
            from layerprune.problems.backend import cupy_or_none

            cp = cupy_or_none()
            if cp is not None:
                cp.cuda.Device(self.local_rank).use()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # -- samples ------------------------------------------------------------------------
    def batch_range(self, nbatches: int) -> range:
        """This rank's contiguous shard of ``nbatches`` mini-batches (sizes differ by at most one, the first larger)."""
        return shard_range(nbatches, self.size, self.rank)

    def check_batches(self, nsamples: int, batch_size: int, shards: int | None = None) -> None:
        """Every rank (or shard) needs at least one mini-batch; ``hessian_shards`` must equal the world size
        when several ranks run (one process may use any number to reproduce such a run)."""
        if shards is not None and self.size > 1 and shards != self.size:
            raise LayerwiseError(f"hessian_shards={shards} with {self.size} processes: leave it unset (one shard per "
                                 "rank) or set it to the number of processes")
        parts = shards or self.size
        nbatches = -(-nsamples // batch_size)
        if nbatches < parts:
            raise LayerwiseError(f"{nsamples} calibration samples in mini-batches of {batch_size} give {nbatches} "
                                 f"batch(es), fewer than the {parts} shards: use more samples or a smaller batch size")

    def shard_ids(self, ids: torch.Tensor, batch_size: int) -> torch.Tensor:
        """This rank's rows of the calibration ids (n × seqlen): its mini-batches, whole."""
        r = self.batch_range(-(-ids.shape[0] // batch_size))
        return ids[r.start * batch_size : r.stop * batch_size]

    # -- collectives (no-ops for one process) ----------------------------------------------
    def sum_in_order(self, tensors: Sequence[torch.Tensor]) -> None:
        """Each tensor replaced, in place, by Σ over ranks in rank order (((t₀ + t₁) + t₂) + …), on every rank
        the same bits. Gathered in chunks of ``GATHER_CHUNK`` elements (memory: size × chunk)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            flat = t.view(-1) if t.is_contiguous() else t.reshape(-1)
            for start in range(0, flat.numel(), GATHER_CHUNK):
                part = flat[start : start + GATHER_CHUNK]
                bufs = [torch.empty_like(part) for _ in range(self.size)]
                dist.all_gather(bufs, part.contiguous())
                total = bufs[0]
                for b in bufs[1:]:
                    total.add_(b)
                part.copy_(total)
            if flat.data_ptr() != t.data_ptr():
                t.copy_(flat.view(t.shape))

    def reduce_accumulators(self, accs: dict[str, Any]) -> None:
        """Sum accumulators over ranks, in place: every tensor attribute (H; a cross term C …) in rank order
        (:meth:`sum_in_order`) and the integer ``count``. The ranks must hold the same names (checked)."""
        if self.size == 1:
            return
        names = sorted(accs)
        layout = [(n, sorted(k for k, v in vars(accs[n]).items() if isinstance(v, torch.Tensor))) for n in names]
        seen = self.gather_objects(layout)
        if any(other != layout for other in seen):
            raise LayerwiseError("the ranks accumulated different layers' inputs (a non-deterministic block "
                                 f"forward?): {seen}")
        self.sum_in_order([getattr(accs[n], k) for n, keys in layout for k in keys])
        counts = [int(getattr(accs[n], "count", 0)) for n in names]
        for n, c in zip(names, [sum(col) for col in zip(*self.gather_objects(counts))]):
            accs[n].count = c

    def broadcast(self, tensors: Sequence[torch.Tensor], src: int) -> None:
        """Copy rank ``src``'s tensors into the others' (in place)."""
        if self.size == 1:
            return
        import torch.distributed as dist

        for t in tensors:
            if t.is_contiguous():
                dist.broadcast(t.data, src)
            else:
                buf = t.detach().contiguous()
                dist.broadcast(buf, src)
                t.data.copy_(buf)

    def gather_objects(self, obj: Any) -> list:
        """Every rank's ``obj`` (picklable), in rank order, on every rank."""
        if self.size == 1:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def raise_if_any(self, error: BaseException | None) -> None:
        """Every rank learns whether any rank failed; all raise (this rank's own error, or one naming the rank)."""
        if self.size == 1:
            if error is not None:
                raise error
            return
        told = self.gather_objects(None if error is None else f"{type(error).__name__}: {error}")
        if error is not None:
            raise error
        for rank, msg in enumerate(told):
            if msg is not None:
                raise LayerwiseError(f"rank {rank} failed: {msg}")

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def main_first(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on rank 0 only (a write), then let every rank pass a barrier; rank 0's failure
        reaches the others (:meth:`raise_if_any`) instead of leaving them at the barrier."""
        result, error = None, None
        if self.is_main:
            try:
                result = fn()
            except Exception as e:  # handed on to every rank below
                error = e
        self.raise_if_any(error)
        return result


def end_world() -> None:
    """Destroy the default process group if one is up (the end of a torchrun command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard_range(n: int, parts: int, index: int) -> range:
    """The ``index``-th of ``parts`` contiguous ranges of 0 … n−1 (``numpy.array_split``'s sizes)."""
    base, extra = divmod(n, parts)
    start = index * base + min(index, extra)
    return range(start, start + base + (1 if index < extra else 0))


# -- the cost model and the assignment ------------------------------------------------------
def lpt_assign(costs: Sequence[float], ranks: int) -> list[int]:
    """Longest processing time first: units in decreasing cost (ties: the earlier unit first), each to
    the rank with the least total so far (ties: the lowest rank). Returns each unit's rank; deterministic,
    so every rank computes the same assignment. Its makespan is at most 4/3 − 1/(3·ranks) of the optimum."""
    if ranks < 1:
        raise ValueError(f"ranks must be ≥ 1, got {ranks}")
    if any(not c >= 0 for c in costs):
        raise ValueError(f"costs must be finite and ≥ 0, got {list(costs)}")
    load = [0.0] * ranks
    owner = [0] * len(costs)
    for u in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(ranks), key=lambda j: (load[j], j))
        owner[u] = r
        load[r] += costs[u]
    return owner


def makespan(costs: Sequence[float], owner: Sequence[int], ranks: int) -> float:
    """The largest per-rank total of an assignment."""
    load = [0.0] * ranks
    for c, r in zip(costs, owner):
        load[r] += c
    return max(load)


def formula_cost(shape: tuple[int, int], needs_hessian: bool) -> float:
    """A first block's cost of one out × in layer: out·in² for a method that works with H (ALPS's and
    SparseGPT's products with in × in matrices), else out·in (magnitude, Wanda: one pass over W)."""
    out, inp = shape
    return float(out) * inp * (inp if needs_hessian else 1)


def unit_costs(units: Sequence[Sequence[str]], shapes: dict[str, tuple[int, int]], needs_hessian: Sequence[bool],
               measured: dict[str, float] | None) -> list[float]:
    """Each unit's cost: the sum of its layers' seconds in the previous block when every layer was measured
    there, else :func:`formula_cost` for all (one scale for the whole block)."""
    names = [n for unit in units for n in unit]
    if measured and all(n in measured for n in names):
        return [sum(measured[n] for n in unit) for unit in units]
    return [sum(formula_cost(shapes[n], h) for n in unit) for unit, h in zip(units, needs_hessian)]


# -- Hessians ------------------------------------------------------------------------------
def split_inputs(inputs: Any, parts: int) -> list:
    """A ``BlockInputs`` cut into ``parts`` contiguous runs of its mini-batches (:func:`shard_range`)."""
    n = len(inputs.hidden)
    out = []
    for k in range(parts):
        r = shard_range(n, parts, k)
        out.append(type(inputs)(inputs.hidden[r.start:r.stop], inputs.extras[r.start:r.stop], inputs.tuple_output))
    return out


def block_hessians(world: World, block: torch.nn.Module, inputs: Any, device: Any, index: int,
                   shards: int | None = None, collect: Callable | None = None):
    """``collect`` (``blocks.collect_hessians``) over the whole calibration set however it is split.

    Several ranks: each accumulates its own mini-batches, summed in rank order. One process with
    ``shards`` = K > 1: the K contiguous shards are accumulated one after the other from zero and
    added in shard order, the same additions as a K-rank run. Otherwise: the plain accumulation."""
    if collect is None:
        from layerprune.layerwise.blocks import collect_hessians as collect
    collect_hessians = collect
    if world.size > 1:
        return collect_hessians(block, inputs, device, index=index, reduce=world.reduce_accumulators)
    if not shards or shards <= 1:
        return collect_hessians(block, inputs, device, index=index)
    running: dict[str, dict[str, Any]] = {}

    def keep(accs: dict[str, Any]) -> None:  # shards 0 … K−2: the running sums
        for name, acc in accs.items():
            tensors = {k: v for k, v in vars(acc).items() if isinstance(v, torch.Tensor)}
            if name not in running:
                running[name] = {**{k: v.clone() for k, v in tensors.items()}, "count": acc.count}
            else:
                for k, v in tensors.items():
                    running[name][k] = running[name][k] + v
                running[name]["count"] += acc.count

    def finish(accs: dict[str, Any]) -> None:  # the last shard: running + its own, the order of sum_in_order
        if sorted(accs) != sorted(running):
            raise LayerwiseError("the shards accumulated different layers' inputs")
        for name, acc in accs.items():
            for k, v in vars(acc).items():
                if isinstance(v, torch.Tensor):
                    v.copy_(running[name][k] + v)
            acc.count += running[name]["count"]

    parts = split_inputs(inputs, shards)
    for part in parts[:-1]:
        collect_hessians(block, part, device, index=index, reduce=keep)
    return collect_hessians(block, parts[-1], device, index=index, reduce=finish)
