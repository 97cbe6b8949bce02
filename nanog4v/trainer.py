"""The training loop of stages 1 and 2 (paper §3.3), and what makes it restartable and data-parallel.

`train.py` is the command line; the reusable pieces live here:

- **Optimiser** (`make_optimizer`, `lr_at`): AdamW (Loshchilov & Hutter 2019), weight decay on matrices
  only (≥ 2-D; biases, norms and query tokens are not decayed), learning rate with a linear warm-up
  then a cosine decay to 10 % of the peak (the paper gives only the peak: 1e-4 and 2e-5).
- **The batch plan** (`BatchPlan`): which examples every optimiser step sees, as a pure function of
  the step number. Epoch e visits the examples in a permutation seeded by (seed, e); step s takes the
  next `batch_size` of them (the global batch; an incomplete last batch is dropped) and splits it into
  `grad_accum` micro-batches. With K processes (torchrun) rank r runs micro-batches r·A/K … (r+1)·A/K − 1,
  so K processes see exactly the micro-batches one process would, and the global batch stays the same
  (`distributed.grad_accum_for` derives A from the batch and K). Each step first loads all of its
  micro-batches, timing the wait (`data_wait` in the log).
- **Loss and gradient.** Each micro-batch's loss is Eq. 5's mean over its trained tokens; the gradient
  of a step is the mean over its A micro-batches, (1/A) Σ_m ∇L_m. One process divides each backward by A;
  under DDP each rank divides by A/K and DDP averages the K ranks: the same sum. A micro-batch of which
  no example loads is skipped, on every rank the whole round it belongs to (`distributed.agree`), and
  the step's mean is over the R rounds that ran, (1/(R·K)) Σ; skips are counted in the log (`skipped`).
- **Checkpoints** (`save_checkpoint`, `load_checkpoint`): one file `last.pt` — trainable tensors,
  AdamW state, schedule, RNG states of every rank (python, numpy, torch, cuda), the data position and
  the step — written to a temp file, fsync'ed and renamed over the old one, so a crash at any moment
  leaves the previous checkpoint whole (the temp files of killed saves are removed by the next save).
  Resuming checks and restores all of it and cuts the JSONL log (`read_log`: a line torn by a kill is
  dropped) back to the checkpoint's step, so the log after a resume is the log of an uninterrupted run,
  bit for bit (CPU; on CUDA as far as the kernels are deterministic).
- **Memory and speed**: bf16 autocast on CUDA (trainable tensors stay fp32; LoRA adapters are fp32 by
  construction) and `checkpoint_blocks`, activation checkpointing over the LLaMA blocks.
- **Distributed** (torchrun; nanog4v/distributed.py): DDP over the trainable tensors only, NCCL (GPUs) or
  gloo (CPU), data loaded by worker processes. Each rank seeds its RNG with seed + rank, so LoRA dropout
  differs per rank; with dropout 0 K processes follow the one-process loss trajectory up to float
  summation order (tests/test_train.py).
"""
from __future__ import annotations

import functools
import json
import math
import os
import pickle
import random
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from .data import collate
from .distributed import Dist, agree, all_ranks, plan_loader, skip_note, wrap_ddp
from .safetensors_io import state_problems


class TrainError(RuntimeError):
    """A run that cannot start or go on; the message starts with the file it is about."""


# --- optimiser and schedule ------------------------------------------------------------------------

def lr_at(step: int, peak: float, warmup: int, total: int, final_ratio: float = 0.1) -> float:
    """Learning rate of optimiser step `step` (0-based): linear warm-up to `peak` over `warmup` steps,
    then a half cosine from `peak` down to `final_ratio`·peak at the last step (total − 1)."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - 1 - warmup)                  # 0 … 1
    return peak * (final_ratio + (1 - final_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def make_optimizer(named_params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; weight decay on ≥ 2-D tensors (matrices) only."""
    named_params = [(n, p) for n, p in named_params if p.requires_grad]
    groups = [{"params": [p for _, p in named_params if p.dim() >= 2], "weight_decay": weight_decay},
              {"params": [p for _, p in named_params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.999), eps=1e-8)


# --- the batch plan --------------------------------------------------------------------------------

@dataclass(frozen=True)
class BatchPlan:
    """Examples per optimiser step as a pure function of the step (see the module docstring)."""
    num_examples: int
    batch_size: int            # the global batch: examples per optimiser step, all processes together
    grad_accum: int            # micro-batches per optimiser step, all processes together
    world_size: int = 1
    rank: int = 0
    seed: int = 0

    def __post_init__(self):
        b, a, k = self.batch_size, self.grad_accum, self.world_size
        if b % a or a % k:
            raise TrainError(f"batch plan: batch size {b} must split into grad_accum {a} micro-batches, "
                             f"and grad_accum into the {k} processes")
        if self.num_examples < b:
            raise TrainError(f"batch plan: {self.num_examples} examples, fewer than one batch of {b}")

    @property
    def steps_per_epoch(self) -> int:
        return self.num_examples // self.batch_size

    @property
    def local_accum(self) -> int:
        return self.grad_accum // self.world_size                            # micro-batches per rank

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, index into that epoch's permutation) where step `step` starts."""
        return step // self.steps_per_epoch, (step % self.steps_per_epoch) * self.batch_size

    def permutation(self, epoch: int) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return torch.randperm(self.num_examples, generator=g).tolist()

    def micro_batches(self, step: int) -> list[list[int]]:
        """This rank's micro-batches (lists of example indices) for optimiser step `step`."""
        epoch, start = self.position(step)
        batch = self.permutation(epoch)[start:start + self.batch_size]
        size = self.batch_size // self.grad_accum
        mine = range(self.rank * self.local_accum, (self.rank + 1) * self.local_accum)
        return [batch[m * size:(m + 1) * size] for m in mine]


# --- checkpoints -----------------------------------------------------------------------------------

def rng_state() -> dict:
    """Every random number generator the loop touches (dropout, workers, anything user code seeds)."""
    np_state = np.random.get_state()
    return {"python": random.getstate(), "torch": torch.get_rng_state(),
            "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(tuple(tuple(x) if isinstance(x, list) else x for x in state["python"]))
    torch.set_rng_state(state["torch"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def _dead(pid: int) -> bool:
    """No process `pid` runs here (signal 0 only asks; PermissionError: alive, another user's)."""
    try:
        os.kill(pid, 0) if os.name == "posix" else None                      # on Windows os.kill kills
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):
        pass
    return False


def save_checkpoint(path: Path, state: dict) -> None:
    """torch.save to a temp file beside `path`, fsync, then rename: the old file stays whole until then.
    First the temp files of killed saves (`.last.pt.<pid>.tmp` of a dead pid, gigabytes at 7B) go."""
    for old in path.parent.glob(f".{path.name}.*.tmp"):
        pid = old.name[len(path.name) + 2:-4]
        if pid.isdigit() and _dead(int(pid)):
            old.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


CHECKPOINT_KEYS = {"version": int, "step": int, "epoch": int, "index": int, "trainable": dict, "optimizer": dict,
                   "scheduler": dict, "rng": list, "signature": dict}


def load_checkpoint(path: Path) -> dict:
    """A `save_checkpoint` file, read with weights_only=True (tensors and plain containers only); its
    keys and their types (`CHECKPOINT_KEYS`) are checked."""
    if not path.is_file():
        raise TrainError(f"{path}: no checkpoint to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:                                            # a class, a function: not run
        raise TrainError(f"{path}: not a readable checkpoint (it holds more than tensors and plain containers: "
                         "refused by torch.load's weights_only)") from None
    except Exception as e:                                                   # truncated, not a torch file
        first = (str(e).strip().split(". ")[0].splitlines() or [type(e).__name__])[0]    # EOFError: no message
        raise TrainError(f"{path}: not a readable checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("version") != 1:
        raise TrainError(f"{path}: not a train.py checkpoint (no version 1 header)")
    for key, kind in CHECKPOINT_KEYS.items():
        value = state.get(key)
        if not isinstance(value, kind) or isinstance(value, bool) or key == "trainable" and not all(
                isinstance(v, torch.Tensor) for v in value.values()):
            kind = {int: "an int", dict: "a dict", list: "a list"}[kind] + " of tensors" * (key == "trainable")
            raise TrainError(f"{path}: damaged checkpoint: {key!r} " + (f"is not {kind}" if key in state else "is missing"))
    return state


def _log_row(line: str) -> dict | None:
    try:
        row = json.loads(line)
    except ValueError:
        return None
    return row if isinstance(row, dict) and type(row.get("step")) is int and type(row.get("loss")) is float else None


def read_log(path: Path) -> list[dict]:
    """The rows of a log.jsonl ([] when there is none). A torn last line (a kill while it was written)
    is dropped with a note; a damaged earlier line is a TrainError naming the file and the line."""
    lines = path.read_text(encoding="utf-8", errors="replace").split("\n") if path.exists() else []
    rows = [(n, _log_row(line)) for n, line in enumerate(lines, 1) if line.strip()]
    if rows and rows[-1][1] is None:
        print(f"note: {path}:{rows.pop()[0]}: dropped a torn last line (killed while writing it)", file=sys.stderr)
    bad = [n for n, row in rows if row is None]
    if bad:
        raise TrainError(f"{path}:{bad[0]}: damaged log line (not a JSON row with a step and a loss)")
    return [row for _, row in rows]


# --- activation checkpointing ----------------------------------------------------------------------

def checkpoint_blocks(llm) -> None:
    """Recompute each LLaMA block's activations in the backward pass instead of storing them
    (`torch.utils.checkpoint`): memory ~ one block's activations, for one extra forward. Wraps each
    block's `forward` from outside; the RNG state is replayed, so LoRA dropout masks match."""
    for block in llm.layers:
        inner = block.forward

        def forward(*args, _inner=inner):
            if torch.is_grad_enabled():
                return checkpoint(_inner, *args, use_reentrant=False)
            return _inner(*args)
        block.forward = forward


# --- the loop --------------------------------------------------------------------------------------

@dataclass
class LoopConfig:
    """Everything `fit` needs besides the model and the data."""
    out: Path
    lr: float
    epochs: int
    batch_size: int
    grad_accum: int = 1                 # micro-batches per step, all processes together (a multiple of them)
    warmup_steps: int = 0
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    max_steps: int | None = None        # stop after this step; the schedule still spans all epochs
    save_every: int = 100
    device: str = "cpu"
    bf16: bool = False                  # autocast to bfloat16 (CUDA)
    num_workers: int = 0                # DataLoader worker processes per process (0: load in this one)
    progress: bool = True
    find_unused_parameters: bool = False   # DDP: some micro-batches leave trainable parameters unused
    signature: dict = field(default_factory=dict)   # settings a resume must repeat exactly


def _truncate_log(log: Path, step: int) -> None:
    """Keep the log rows of steps ≤ `step` (those after the checkpoint will be redone)."""
    if log.exists():
        rows = [row for row in read_log(log) if row["step"] <= step]
        log.write_text("".join(json.dumps(row) + "\n" for row in rows))


def restore(ckpt: Path, model, optimizer, plan: BatchPlan, signature: dict, world: Dist) -> int:
    """Load last.pt into the model's trainable tensors, AdamW and this rank's RNGs; return its step."""
    state = load_checkpoint(ckpt)
    for key, value in signature.items():
        if state["signature"].get(key) != value:
            raise TrainError(f"{ckpt}: written with {key}={state['signature'].get(key)!r}, now {value!r}; "
                             "resume with the settings of the run")
    problems = state_problems(state["trainable"], model.trainable_state_dict())
    if problems:
        raise TrainError(f"{ckpt}: its tensors do not match this model's trainable parts: " + "; ".join(problems))
    if (state["epoch"], state["index"]) != plan.position(state["step"]):
        raise TrainError(f"{ckpt}: data position {state['epoch']}/{state['index']} does not match the data")
    model.load_state_dict(state["trainable"], strict=False)
    try:
        optimizer.load_state_dict(state["optimizer"])
        set_rng_state(state["rng"][world.rank])
    except (IndexError, KeyError, TypeError, ValueError, RuntimeError) as e:
        raise TrainError(f"{ckpt}: damaged checkpoint: its AdamW or RNG state does not load ({e})") from None
    return state["step"]


def save_state(ckpt: Path, step: int, model, optimizer, plan: BatchPlan, schedule: dict, signature: dict,
               world: Dist) -> None:
    """Write last.pt (rank 0) with the RNG states of every rank."""
    states = [None] * world.world_size
    if world.world_size > 1:
        dist.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    if world.main:
        epoch, index = plan.position(step)
        trainable = {k: v.detach().cpu() for k, v in model.trainable_state_dict().items()}
        save_checkpoint(ckpt, {"version": 1, "step": step, "epoch": epoch, "index": index, "trainable": trainable,
                               "optimizer": optimizer.state_dict(), "scheduler": schedule, "rng": states,
                               "signature": signature})
    if world.world_size > 1:
        dist.barrier()


def accumulate(net, loader, plan: BatchPlan, cfg: LoopConfig, world: Dist) -> dict:
    """Load this rank's micro-batches of one step, agree with the other ranks on the rounds to skip, then
    forward and backward over the rest, gradients summed as (1/(R·K)) Σ ∇L_m over the R·K that ran.
    Returns the step's mean loss (NaN when nothing ran) and token count over all ranks, the micro-batches
    skipped, the failed (K, L) table and the longest wait for data of any rank (s)."""
    started = time.perf_counter()
    batches = [next(loader) for _ in range(plan.local_accum)]                 # None: nothing of it loaded
    rounds, failed, waited = agree(batches, time.perf_counter() - started, world, cfg.device)
    totals = torch.zeros(2, dtype=torch.float64)                              # Σ micro-batch losses, tokens
    for m in rounds:
        batch = {k: v.to(cfg.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                 for k, v in batches[m].items()}
        with (nullcontext() if m == rounds[-1] or world.world_size == 1 else net.no_sync()), \
                (torch.autocast("cuda", dtype=torch.bfloat16) if cfg.bf16 else nullcontext()):
            # Right padding needs no attention mask: causal attention never lets a real token see the
            # padding after it, and padded positions carry no label (−100).
            _, loss = net(batch["input_ids"], batch["labels"], video_slots=batch["video_slots"],
                          videos=batch["videos"], features=batch["features"])
        (loss / len(rounds)).backward()                                        # DDP all-reduces on the last
        totals += torch.tensor([loss.item(), batch["attention_mask"].sum().item()], dtype=torch.float64)
    totals = all_ranks(totals, world, cfg.device).sum(0)
    ran = len(rounds) * world.world_size
    return {"loss": totals[0].item() / ran if ran else math.nan, "tokens": int(totals[1].item()),
            "skipped": plan.grad_accum - ran, "failed": failed, "data_wait": waited}


def fit(model, dataset, pad_id: int, cfg: LoopConfig, world: Dist = Dist(), resume: bool = False) -> dict:
    """Train `model`'s trainable parameters on `dataset` (a ConversationDataset); see the module docstring.

    Writes cfg.out/log.jsonl (one line per optimiser step), cfg.out/last.pt (every `save_every` steps and
    at the end). A non-finite loss or gradient stops with a TrainError, leaving last.pt as it was; a step
    of which nothing could be loaded changes nothing (its loss is NaN). Returns {"step", "total_steps",
    "loss", "skipped"} (skipped: micro-batches of this run).
    """
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    optimizer = make_optimizer(named, cfg.lr, cfg.weight_decay)
    plan = BatchPlan(len(dataset), cfg.batch_size, cfg.grad_accum, world.world_size, world.rank, cfg.seed)
    total = plan.steps_per_epoch * cfg.epochs
    stop = min(total, cfg.max_steps) if cfg.max_steps is not None else total
    schedule = {"peak": cfg.lr, "warmup": cfg.warmup_steps, "total": total, "final_ratio": 0.1}
    ckpt, log = cfg.out / "last.pt", cfg.out / "log.jsonl"
    if resume:
        step = restore(ckpt, model, optimizer, plan, cfg.signature, world)
        if world.main:
            _truncate_log(log, step)
    else:
        if ckpt.exists():
            raise TrainError(f"{ckpt}: a run is already here; pass --resume to continue it, or choose another --out")
        step, seed = 0, cfg.seed + world.rank                                 # dropout differs per rank
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        if world.main:
            log.unlink(missing_ok=True)
    net = wrap_ddp(model, world, cfg.device, cfg.find_unused_parameters)       # DDP holds the trainable tensors
    loader = plan_loader(dataset, plan, step, stop, functools.partial(collate, pad_id=pad_id), cfg.num_workers,
                         cfg.seed, pin_memory=cfg.device.startswith("cuda"))
    bar = tqdm(total=stop, initial=step, desc="train", disable=not (cfg.progress and world.main), dynamic_ncols=True)
    started, seen_tokens, loss, skipped = time.time(), 0, float("nan"), 0
    model.train()
    while step < stop:
        lr, step_started = lr_at(step, cfg.lr, cfg.warmup_steps, total), time.time()
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = accumulate(net, loader, plan, cfg, world)
        loss = out["loss"]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf).item()
        if out["skipped"] < plan.grad_accum and not (math.isfinite(loss) and math.isfinite(grad_norm)):
            bar.close()
            kept = f"{ckpt} (step {load_checkpoint(ckpt)['step']})" if ckpt.exists() else "none written yet"
            raise TrainError(f"{cfg.out}: loss {loss}, gradient norm {grad_norm} at step {step + 1}; stopped. "
                             f"Last good checkpoint: {kept}. Try a lower --lr or --grad-clip")
        optimizer.step()                                                       # no gradient at all: no change
        optimizer.zero_grad(set_to_none=True)
        step, seen_tokens, elapsed = step + 1, seen_tokens + out["tokens"], time.time() - started
        skipped += out["skipped"]
        if out["skipped"] and world.main:
            bar.write(skip_note(step, out["failed"]), file=sys.stderr)
        if world.main:
            with log.open("a") as f:
                f.write(json.dumps({"step": step, "epoch": plan.position(step - 1)[0], "loss": loss, "lr": lr,
                                    "grad_norm": grad_norm, "tokens": out["tokens"], "skipped": out["skipped"],
                                    "data_wait": round(out["data_wait"], 4), "elapsed_s": round(elapsed, 3)}) + "\n")
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{seen_tokens / max(elapsed, 1e-9):.0f}",
                        data_wait=f"{out['data_wait'] / max(time.time() - step_started, 1e-9):.0%}", refresh=False)
        bar.update(1)
        if step % cfg.save_every == 0 or step == stop:
            save_state(ckpt, step, model, optimizer, plan, schedule, cfg.signature, world)
    bar.close()
    return {"step": step, "total_steps": total, "loss": loss, "skipped": skipped}
