"""Spreading the training work: over torchrun processes (DDP) and over DataLoader worker processes.

**Processes** (`init_distributed`, `wrap_ddp`). `torchrun --nproc_per_node=K [--nnodes=M ...] train.py`
starts K·M processes; each joins the process group from torchrun's variables (RANK, WORLD_SIZE,
LOCAL_RANK, MASTER_ADDR, MASTER_PORT), NCCL on GPUs and gloo on CPU, and uses GPU LOCAL_RANK. At 7B
almost every weight is frozen (stage 1 trains the 0.2 B abstractor, stage 2 the 8.4 M LoRA tensors), so
DDP must never touch the frozen ones: wrapping the whole `GPT4Video` plainly would broadcast all 7 B of
them from rank 0 at start-up (13.5 GB per rank, over the network between nodes). `wrap_ddp` hands DDP
the names of every frozen parameter and every buffer to ignore (`_set_params_and_buffers_to_ignore_for_model`,
DDP's own option for this): DDP then holds only the trainable tensors — it broadcasts those from rank 0
at start-up (so the ranks provably start equal) and averages only their gradients. Why not the other
ways: wrapping only the trainable part works for stage 1's abstractor but not for stage 2, whose LoRA
tensors sit inside every LLaMA block; `init_sync=False` would skip the start-up broadcast of the
trainable tensors too, and leave DDP holding (and checking the shapes of) all 7 B frozen parameters.
Each rank reads the frozen weights itself, straight onto its GPU one tensor at a time
(`weights.load_llama(..., device=)`), so no rank holds a host copy of the model either.

**Agreeing to skip** (`agree`). A micro-batch none of whose examples loads (every video fails to
decode) cannot run its forward. Under DDP a rank that skipped one would leave the others waiting in the
gradient all-reduce until the NCCL timeout, so before any forward of a step the ranks exchange a table
of which of their micro-batches failed (one all-reduce) and all of them skip every round m in which any
rank failed: they run the same rounds and the same number of backward passes.

**Workers** (`plan_loader`, `default_num_workers`). Micro-batches are loaded (videos decoded and
preprocessed) by DataLoader worker processes while the GPU computes. The order is the plan's
(`trainer.BatchPlan`, a pure function of the step); worker processes change no number: whatever a
micro-batch's loading draws from python's, numpy's or torch's RNG is seeded by (seed, step, global
micro-batch index) — not by the worker, whose share of the batches depends on where a run started or
resumed — and the loading process's own RNG states are restored after it (in the main process they
drive dropout). So 0 or 8 workers, 1 or K processes, a run or its resume: the same micro-batches, loaded
the same way.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

MAX_WORKERS = 8      # the default's cap: every worker holds a copy of the data set and its prefetched batches


class DistributedError(RuntimeError):
    """Processes that cannot work together as asked; the message names the flag or the variable."""


@dataclass(frozen=True)
class Dist:
    """Where this process sits in a torchrun job (rank 0 of 1 without one)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1         # processes on this node

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_size() -> int:
    """How many processes torchrun started (WORLD_SIZE; 1 without torchrun), known before they meet."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def init_distributed(device: str) -> Dist:
    """Join the torchrun process group (NCCL on CUDA, gloo otherwise) when WORLD_SIZE > 1; a CUDA process
    uses GPU LOCAL_RANK. Multi-node jobs meet at MASTER_ADDR:MASTER_PORT, which torchrun sets."""
    world = world_size()
    if world == 1:
        return Dist()
    if not dist.is_available():
        raise DistributedError("torch.distributed: not available in this build of torch")
    local, cuda = int(os.environ.get("LOCAL_RANK", "0")), device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local)
    try:
        dist.init_process_group("nccl" if cuda else "gloo", device_id=torch.device("cuda", local) if cuda else None)
    except (RuntimeError, ValueError) as e:                                  # DistNetworkError, a timeout, ...
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise DistributedError(f"torchrun: cannot join the process group at {where} ({first})") from None
    return Dist(dist.get_rank(), world, local, int(os.environ.get("LOCAL_WORLD_SIZE", world)))


def grad_accum_for(batch_size: int, grad_accum: int, world: int, given: bool) -> int:
    """The micro-batches of one optimiser step, all K = `world` processes together (each runs A/K of them).

    --batch-size is the global batch and --grad-accum A splits it into A micro-batches of batch/A
    examples whatever K is, so K processes follow the one-process trajectory. A preset's A is rounded up
    to a multiple of K (K processes need at least K micro-batches: the preset's 1 becomes K); a --grad-accum
    `given` on the command line must be one. Checked before anything is loaded."""
    accum = grad_accum if given else -(-grad_accum // world) * world
    if accum % world:
        raise DistributedError(f"--grad-accum {grad_accum}: counts the micro-batches of a step over all {world} "
                               f"processes, so it must be a multiple of {world} (e.g. {-(-accum // world) * world}),"
                               " or leave it out to derive it")
    if batch_size % accum:
        raise DistributedError(
            f"--batch-size {batch_size}: the global batch does not split into {accum} equal micro-batches "
            + (f"(--grad-accum {accum})" if given or world == 1 else f"(one or more for each of the {world} processes)")
            + f"; pass a multiple of {accum}")
    return accum


def wrap_ddp(model: nn.Module, world: Dist, device: str, find_unused_parameters: bool = False) -> nn.Module:
    """`model` under DDP holding only its trainable parameters (see the module docstring); `model` itself
    with one process. Call it after `requires_grad` says what trains."""
    if world.world_size == 1:
        return model
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    buffers = [name for name, _ in model.named_buffers()]                    # (rank-local: a KV cache, if any)
    nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, frozen + buffers)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[world.local_rank] if device.startswith("cuda") else None,
        find_unused_parameters=find_unused_parameters)


def all_ranks(row: torch.Tensor, world: Dist, device: str) -> torch.Tensor:
    """Every rank's `row` (n,) as a table (K, n): one SUM all-reduce of a table holding only our row."""
    table = torch.zeros(world.world_size, len(row), dtype=torch.float64)
    table[world.rank] = row
    if world.world_size > 1:
        table = table.to(device)                                             # NCCL reduces GPU tensors
        dist.all_reduce(table)
    return table.cpu()


def agree(batches: list, waited: float, world: Dist, device: str) -> tuple[list[int], torch.Tensor, float]:
    """Which rounds of a step every rank runs (before any forward). `batches`: this rank's loaded
    micro-batches (None: nothing loaded); `waited`: seconds it waited for them. Returns (rounds m that
    no rank failed, failed (K, L) bool table, the longest wait of any rank)."""
    row = torch.tensor([float(b is None) for b in batches] + [waited], dtype=torch.float64)
    table = all_ranks(row, world, device)                                    # (K, L + 1)
    failed = table[:, :-1].bool()                                            # (K, L)
    return [m for m in range(len(batches)) if not failed[:, m].any()], failed, table[:, -1].max().item()


def skip_note(step: int, failed: torch.Tensor) -> str:
    """What step `step` skipped, from `agree`'s failed table (K, L), for the one reading the run's output."""
    k, local = failed.shape
    which = ", ".join(f"{r * local + m}" + f" (rank {r})" * (k > 1) for r, m in failed.nonzero().tolist())
    rounds = int(failed.any(0).sum())
    return (f"note: step {step}: no example of micro-batch {which} could be loaded; skipped" +
            f" with the rest of its round on every rank ({rounds * k} micro-batches)" * (k > 1))


def shard(items: list, world: Dist) -> list:
    """This rank's share of `items`: every K-th one, from its rank on."""
    return items[world.rank::world.world_size]


# --- workers ---------------------------------------------------------------------------------------

def default_num_workers(decodes: bool, world: Dist) -> int:
    """DataLoader workers per process when --num-workers is not given: the CPUs this process may run
    on, shared by the processes of its node, at most `MAX_WORKERS`; 0 when no example has anything to
    decode (text, cached features: reading them is cheaper than starting a worker)."""
    if not decodes:
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return min(MAX_WORKERS, cpus // world.local_world_size)


@contextmanager
def seeded(seed: int):
    """python's, numpy's and torch's (CPU) RNGs seeded with `seed` inside; the caller's states after."""
    python, numpy = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(python), np.random.set_state(numpy)


class PlanSampler:
    """A `batch_sampler`: this rank's micro-batches of `plan` for steps [first, last), in order, each as
    keys (step, g, i) — g the micro-batch's index in the global step (the same with any number of
    processes), i an example — for `PlanItems`."""

    def __init__(self, plan, first: int, last: int):
        self.plan, self.first, self.last = plan, first, last

    def __iter__(self):
        for step in range(self.first, self.last):
            for m, batch in enumerate(self.plan.micro_batches(step)):
                g = self.plan.rank * self.plan.local_accum + m
                yield [(step, g, i) for i in batch]

    def __len__(self) -> int:
        return (self.last - self.first) * self.plan.local_accum


class PlanItems(torch.utils.data.Dataset):
    """`dataset` as `plan_loader` reads it: the examples of micro-batch (step, g) are loaded with every
    RNG seeded by (seed, step, g), in whichever process loads them (see the module docstring)."""

    def __init__(self, dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int, int]):
        return self.__getitems__([key])[0]

    def __getitems__(self, keys: list[tuple[int, int, int]]) -> list:
        step, g, _ = keys[0]
        with seeded(int(np.random.SeedSequence([self.seed, step, g]).generate_state(1)[0])):
            return [self.dataset[i] for _, _, i in keys]


def plan_loader(dataset, plan, first: int, last: int, collate_fn, num_workers: int, seed: int,
                pin_memory: bool = False):
    """An iterator over this rank's collated micro-batches of steps [first, last), loaded by `num_workers`
    worker processes (0: in this one)."""
    return iter(torch.utils.data.DataLoader(
        PlanItems(dataset, seed), batch_sampler=PlanSampler(plan, first, last), num_workers=num_workers,
        collate_fn=collate_fn, pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed + first)))   # its own: the global RNG drives dropout
