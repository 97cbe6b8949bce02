"""safetensors (and PyTorch `.bin`) checkpoints, read and written in a streaming way, with strict checks.

Loading official weights into our hand-written modules (`weights.py` holds the key tables) is the same
recipe for every model:
  1. build the module on the `meta` device (shapes only, no memory);
  2. list the checkpoint's tensors (one file, a directory, or shards + `model.safetensors.index.json`;
     or the same as PyTorch `.bin` files, `pytorch_model.bin` / shards + `pytorch_model.bin.index.json`):
     `find_tensors`;
  3. rename each official key to ours with a plain table; check names, shapes and dtypes *before*
     reading any data, and raise one `CheckpointError` that lists every problem: `load_checkpoint`;
  4. stream the tensors one at a time, straight into the requested dtype and onto the requested device
     (a GPU: one tensor at a time passes through host memory), and assign them.
So a 7B checkpoint is never held twice, and a bad file never yields a half-initialised model. Writing
(`write_checkpoint`) streams too, one tensor at a time, into a temp folder moved in when complete.

A `.bin` file is a pickle, and unpickling runs code: it is only ever opened with
`torch.load(weights_only=True, mmap=True)` (tensors and plain containers, nothing else; the data stays
in the file, memory-mapped), and one that needs anything more is refused (`_bin_state`). Where a
directory holds both, safetensors wins.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from safetensors import safe_open
from torch import nn

FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
BIN_INDEX_NAME = "pytorch_model.bin.index.json"
BIN_SINGLE_NAME = "pytorch_model.bin"
REMAP_BYTES = 16 * 2**20        # a .bin's mapping is dropped and reopened before this many bytes are read through it,
REMAP_FRACTION = 64             # or 1/64 of the file if that is more (each reopening re-reads its pickle: ~60 ms at 7B)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and every offending key."""


def shorten(names: list[str], limit: int = 12) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def state_problems(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> list[str]:
    """Why `state` cannot load strictly in place of `expected` — ["missing: …", "unexpected: …",
    "wrong shape: k (a) != (b)"] — or [] when every key is there, with its shape, and nothing else."""
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
             for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape]
    return [f"{label}: {shorten(names)}" for label, names in
            [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)] if names]


# --- 1. where are the tensors? --------------------------------------------------------------------

def find_tensors(path: str | Path) -> dict[str, Path]:
    """Map every tensor name of a checkpoint to the file that holds it.

    `path` may be a `.safetensors` or `.bin` file, or a directory with `model.safetensors`, or with
    sharded `model-0000k-of-0000n.safetensors` files and `model.safetensors.index.json`; failing those,
    the same in PyTorch's format: `pytorch_model.bin`, or `pytorch_model-0000k-of-0000n.bin` shards
    and `pytorch_model.bin.index.json` (safetensors wins where a directory has both).
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        return {key: path for key in _keys_of(path)}
    if (path / INDEX_NAME).is_file():
        return _from_index(path / INDEX_NAME)
    if (path / SINGLE_NAME).is_file():
        return {key: path / SINGLE_NAME for key in _keys_of(path / SINGLE_NAME)}
    others = sorted(p.name for p in path.glob("*.safetensors"))
    if len(others) == 1:  # e.g. a single file saved under another name
        return {key: path / others[0] for key in _keys_of(path / others[0])}
    if (path / BIN_INDEX_NAME).is_file():
        return _from_index(path / BIN_INDEX_NAME)
    if (path / BIN_SINGLE_NAME).is_file():
        return {key: path / BIN_SINGLE_NAME for key in _keys_of(path / BIN_SINGLE_NAME)}
    raise CheckpointError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME} (nor {BIN_SINGLE_NAME} or "
                          f"{BIN_INDEX_NAME}) in this directory")


def _from_index(index: Path) -> dict[str, Path]:
    """{key: shard} from an index's `weight_map`, checked: every shard it names exists and holds the
    keys the index assigns to it."""
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
        files = {name: index.parent / name for name in set(weight_map.values())}
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{index}: not a checkpoint index ({type(e).__name__}: {e})") from None
    absent = sorted(str(f) for f in files.values() if not f.is_file())
    if absent:
        raise CheckpointError(f"{index}: shard files missing: {shorten(absent)}")
    found: dict[str, Path] = {}
    for f in sorted(files.values()):
        for key in _keys_of(f):
            found[key] = f
    listed_not_found = sorted(k for k in weight_map if found.get(k) != files[weight_map[k]])
    if listed_not_found:
        raise CheckpointError(f"{index}: keys not in the shard the index names: {shorten(listed_not_found)}")
    return found


def _keys_of(file: Path) -> list[str]:
    if file.suffix == ".bin":
        return list(_bin_state(file))
    if file.suffix != ".safetensors":
        raise CheckpointError(f"{file}: not a .safetensors or .bin file")
    try:
        with safe_open(str(file), framework="pt") as f:
            return list(f.keys())
    except Exception as e:  # safetensors raises its own error types for truncated/garbage headers
        raise CheckpointError(f"{file}: not a readable safetensors file ({_first_line(e)})") from None


def _bin_state(file: Path) -> dict[str, torch.Tensor]:
    """A `.bin` state dict as tensors memory-mapped from the file (no tensor data is read), through
    `torch.load(weights_only=True, mmap=True)` only: a pickle that needs any global beyond tensors and
    plain containers (a custom class, a function) is refused, never run. It must be a flat
    {name: tensor} dict in torch.save's zip format (torch >= 1.6; the legacy format cannot be mapped)."""
    if not zipfile.is_zipfile(file):
        with open(file, "rb") as f:
            zip_start = f.read(4) == b"PK\x03\x04"
        raise CheckpointError(f"{file}: truncated or damaged (a zip file without its central directory)" if zip_start
                              else f"{file}: not a PyTorch checkpoint in torch.save's zip format (a legacy or "
                              "other pickle is not read)")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"GLOBAL (\S+)", str(e))
        raise CheckpointError(f"{file}: refused: its pickle needs more than tensors and plain containers"
                              f"{f' ({needs.group(1)})' if needs else ''}, and .bin files are only read with "
                              "torch.load(weights_only=True)") from None
    except Exception as e:  # a damaged zip, a missing record
        raise CheckpointError(f"{file}: not a readable PyTorch checkpoint ({_first_line(e)})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: not a state dict (a pickled {type(state).__name__})")
    not_tensors = [f"{k!r} ({type(v).__name__})" for k, v in state.items()
                   if not (isinstance(k, str) and isinstance(v, torch.Tensor))]
    if not_tensors:
        raise CheckpointError(f"{file}: not a flat state dict of tensors: {shorten(not_tensors)}")
    return state


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def read_config(path: str | Path) -> dict | None:
    """`config.json` next to (or inside) a checkpoint path, or None when there is none."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    cfg = (path if path.is_dir() else path.parent) / "config.json"
    if not cfg.is_file():
        return None
    try:
        return json.loads(cfg.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg}: not valid JSON ({e})") from None


# --- 2. check, then stream --------------------------------------------------------------------------

ST_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
             "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8, "BOOL": torch.bool}


def _read_tensors(file: Path, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) for `keys` of one checkpoint file, each in a fresh buffer of its own."""
    yield from (_read_bin if file.suffix == ".bin" else _read_safetensors)(file, keys)


def _read_bin(file: Path, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) for `keys` of one `.bin` file, each copied out of torch.load's memory map into
    a fresh buffer of its own. The mapped pages a copy reads stay resident, and count in the process's
    memory, for as long as the mapping lives (any tensor of it keeps it alive): so the mapping is dropped
    and reopened before `REMAP_BYTES` have been read through it, a large tensor being copied in slices of
    rows with reopenings between them. Resident memory thus stays within REMAP_BYTES (or 1/REMAP_FRACTION of
    the file) of the bytes handed out, not twice them (the safetensors route reads with `readinto` and needs
    no such care). A 14.3 GB checkpoint is so mapped 64 times, not 850 (76 s -> see bench/RESULTS.md)."""
    state, piece, since_open = _bin_state(file), None, 0
    limit = max(REMAP_BYTES, file.stat().st_size // REMAP_FRACTION)
    for key in keys:
        out = torch.empty(state[key].shape, dtype=state[key].dtype)          # contiguous
        rows = torch.atleast_1d(out)                                         # a scalar as one row
        row_bytes = rows[0].nbytes if len(rows) else 0
        step = max(1, limit // max(1, row_bytes))                            # rows per slice
        for i in range(0, len(rows), step):
            n = min(step, len(rows) - i) * row_bytes
            if since_open and since_open + n > limit:
                state = piece = None                                         # unmaps the file ...
                state, since_open = _bin_state(file), 0                      # ... and maps it afresh
            piece = torch.atleast_1d(state[key])[i:i + step]
            rows[i:i + step].copy_(piece)
            since_open += n
        yield key, out


def _read_safetensors(file: Path, keys: Iterable[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (key, tensor) for `keys` of one safetensors file, one tensor in memory at a time: plain
    `seek` + `readinto` at the header's offsets into a fresh buffer per tensor. (`safe_open` mmaps the
    whole file: its tensors are views of a mapping that stays alive, and once touched resident, while
    any one of them lives; older versions copied out of it, counting pages twice.)"""
    header = _header(file)
    with open(file, "rb", buffering=0) as f:
        data_start = 8 + int.from_bytes(f.read(8), "little")
        for key in keys:
            info = header[key]
            begin, end = info["data_offsets"]
            raw = torch.empty(end - begin, dtype=torch.uint8)                # the tensor's bytes
            view, done = memoryview(raw.numpy()), 0
            f.seek(data_start + begin)
            while done < len(view):                                          # reads stop at ~2 GiB
                n = f.readinto(view[done:])
                if not n:
                    raise CheckpointError(f"{file}: truncated while reading {key}")
                done += n
            yield key, raw.view(ST_DTYPES[info["dtype"]]).reshape(info["shape"])


def load_checkpoint(module: nn.Module, path: str | Path, rename: Callable[[str], str | None],
                    dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> nn.Module:
    """Strictly load the checkpoint at `path` into `module` (built on the meta device), its tensors in
    `dtype` on `device`.

    `rename(official_key)` returns our parameter name, or None for a key that is deliberately
    ignored (e.g. `text_model.*` when loading only CLIP's vision tower). Every parameter and
    persistent buffer of `module` must be provided exactly once, with the right shape, by a
    floating-point tensor; otherwise one `CheckpointError` lists the missing, unexpected,
    wrong-shape and wrong-dtype keys. Non-persistent buffers (e.g. RoPE tables) are rebuilt after
    loading by each submodule's `init_buffers()` method. A shape that differs from ours only by leading
    1s (mPLUG-Owl's (1, 1, D) [CLS] token for our (D,)) is the same tensor, and is reshaped.
    """
    sources = find_tensors(path)
    where = Path(path)
    wanted = module.state_dict(keep_vars=True)              # our name -> meta tensor (shape only)
    plan: dict[Path, list[tuple[str, str]]] = {}            # file -> [(official key, our name)]
    taken: dict[str, str] = {}
    unexpected, wrong_shape, wrong_dtype, duplicate = [], [], [], []
    shapes_dtypes = _shapes_and_dtypes(sources)
    for key, file in sources.items():
        ours = rename(key)
        if ours is None:
            continue
        if ours not in wanted:
            unexpected.append(key)
            continue
        if ours in taken:
            duplicate.append(f"{key} (also {taken[ours]})")
            continue
        shape, st_dtype = shapes_dtypes[key]
        if _squeezed(shape) != _squeezed(wanted[ours].shape):
            wrong_shape.append(f"{key} {tuple(shape)} != {tuple(wanted[ours].shape)}")
        elif st_dtype not in FLOAT_DTYPES:
            wrong_dtype.append(f"{key} ({st_dtype})")
        taken[ours] = key
        plan.setdefault(file, []).append((key, ours))
    missing = sorted(n for n in wanted if n not in taken)
    problems = [f"{label}: {shorten(sorted(names))}" for label, names in
                [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape),
                 ("wrong dtype", wrong_dtype), ("duplicate", duplicate)] if names]
    if problems:
        raise CheckpointError(f"{where}: cannot load into {type(module).__name__}: " + "; ".join(problems))

    for file, pairs in plan.items():
        ours_of = dict(pairs)
        try:
            for key, tensor in _read_tensors(file, ours_of):
                _assign(module, ours_of[key], tensor.to(device, dtype).reshape(wanted[ours_of[key]].shape))
        except CheckpointError:
            raise
        except Exception as e:  # truncated data, I/O errors
            raise CheckpointError(f"{file}: failed while reading tensors ({_first_line(e)})") from None
    for sub in module.modules():
        if hasattr(sub, "init_buffers"):
            sub.init_buffers()
    still_meta = [n for n, t in list(module.named_parameters()) + list(module.named_buffers())
                  if t.is_meta]
    if still_meta:
        raise CheckpointError(f"{where}: not initialised after loading: {shorten(still_meta)}")
    return module.eval()


def _squeezed(shape) -> tuple[int, ...]:
    """A shape without its leading 1s: (1, 1, 1024) -> (1024,)."""
    shape = tuple(shape)
    while len(shape) > 1 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _shapes_and_dtypes(sources: dict[str, Path]) -> dict[str, tuple[list[int], str]]:
    """Shapes and dtypes (safetensors' names: "F32", "BF16", ...) straight from the safetensors headers
    or the `.bin` pickles (no tensor data is read)."""
    out: dict[str, tuple[list[int], str]] = {}
    st_name = {v: k for k, v in ST_DTYPES.items()}
    for file, keys in _by_file(sources, sources).items():
        if file.suffix == ".bin":
            state = _bin_state(file)
            for key in keys:
                out[key] = (list(state[key].shape), st_name.get(state[key].dtype, str(state[key].dtype)))
        else:
            header = _header(file)
            for key in keys:
                out[key] = (header[key]["shape"], header[key]["dtype"])
    return out


def _by_file(sources: dict[str, Path], keys: Iterable[str]) -> dict[Path, list[str]]:
    by_file: dict[Path, list[str]] = {}
    for key in keys:
        by_file.setdefault(sources[key], []).append(key)
    return by_file


def read_tensors(sources: dict[str, Path], keys: Iterable[str]) -> dict[str, torch.Tensor]:
    """The tensors `keys` of a `find_tensors` map, read whole (for the few small tensors a loader keeps
    beside its module, e.g. a safety checker's concept embeddings)."""
    return {key: t for file, names in _by_file(sources, keys).items() for key, t in _read_tensors(file, names)}


def _header(file: Path) -> dict:
    """The JSON header of a safetensors file: {key: {"dtype", "shape", "data_offsets"}}."""
    with open(file, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise CheckpointError(f"{file}: truncated (no safetensors header)")
        n = int.from_bytes(raw, "little")
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    size = file.stat().st_size
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if 8 + n + end > size:
        raise CheckpointError(f"{file}: truncated ({size} bytes, header promises {8 + n + end})")
    return header


def _assign(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
    """Replace the (meta) parameter or buffer `name` of `module` by `tensor`."""
    owner_name, _, leaf = name.rpartition(".")
    owner = module.get_submodule(owner_name) if owner_name else module
    if leaf in owner._parameters:
        old = owner._parameters[leaf]
        owner._parameters[leaf] = nn.Parameter(tensor, requires_grad=old.requires_grad)
    else:
        owner._buffers[leaf] = tensor


def write_checkpoint(path: str | Path, config: dict, specs: dict[str, tuple[tuple, torch.dtype]],
                     tensor_of: Callable[[str], torch.Tensor], max_shard_size: int | str = "5GB") -> Path:
    """config.json + model.safetensors, or shards + index when over `max_shard_size` ("200KB", "5GB",
    bytes). `tensor_of(key)` gives one tensor at a time (random weights need little RAM). All files
    go to a temp dir inside `path`, moved in when complete: a failure never leaves a half checkpoint."""
    unit = {"KB": 10**3, "MB": 10**6, "GB": 10**9}.get(str(max_shard_size)[-2:].upper())  # like transformers
    limit = int(float(str(max_shard_size)[:-2]) * unit) if unit else int(max_shard_size)
    nbytes = {k: math.prod(shape) * dt.itemsize for k, (shape, dt) in specs.items()}
    shards = [[]]                             # greedy: open a new shard when the next tensor overflows
    for key in specs:
        if shards[-1] and sum(nbytes[k] for k in shards[-1]) + nbytes[key] > limit:
            shards.append([])
        shards[-1].append(key)
    n, path = len(shards), Path(path)
    names = [SINGLE_NAME] if n == 1 else [f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=path))
    try:
        for name, keys in zip(names, shards):
            _write_safetensors(tmp / name, {k: specs[k] for k in keys}, tensor_of)
        if n > 1:
            weight_map = {k: name for name, keys in zip(names, shards) for k in keys}
            (tmp / INDEX_NAME).write_text(json.dumps(
                {"metadata": {"total_size": sum(nbytes.values())}, "weight_map": weight_map}, indent=2))
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        for stale in [*path.glob("model*.safetensors"), path / INDEX_NAME]:   # an earlier save's files
            stale.unlink(missing_ok=True)
        for f in sorted(tmp.iterdir(), key=lambda f: f.name == "config.json"):  # config.json last
            os.replace(f, path / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _write_safetensors(file: Path, specs: dict, tensor_of: Callable[[str], torch.Tensor]) -> None:
    """safetensors by hand: 8-byte header length, JSON header, raw little-endian bytes, streamed one
    tensor at a time (the library's `save_file` first serialises them all into one blob)."""
    header, offset, st_name = {"__metadata__": {"format": "pt"}}, 0, {v: k for k, v in ST_DTYPES.items()}
    for key, (shape, dt) in specs.items():
        n = math.prod(shape) * dt.itemsize
        header[key] = {"dtype": st_name[dt], "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)                               # tensor data starts 8-byte aligned
    with open(file, "wb") as f:
        f.write(len(raw).to_bytes(8, "little") + raw)
        for key, (shape, dt) in specs.items():
            t = tensor_of(key).detach().to("cpu", dt).contiguous().reshape(math.prod(shape))
            f.write(t.view(torch.uint8).numpy())
