"""Cache the frozen ViT's output once per video, so that stage 1 never decodes a video or runs the ViT again.

    python -m nanog4v.features --vision DIR --data FILE ... --out DIR [--frames T] [--preset nano]
    torchrun --nproc_per_node=8 -m nanog4v.features ...   # the clips shared out over 8 GPUs

In stage 1 the ViT is frozen (paper §3.3): for a given video, F_v = ViT(frames) (T, 1+P, D) is the same
in every epoch. Decoding the clip and running ViT-L/14 on T frames costs far more than the abstractor
that learns on top, so we compute F_v once, store it (`data.save_features`: one safetensors file per
video, named by the video's stem, in the ViT's dtype) and train with `train.py --features-dir DIR`,
which feeds the abstractor from these files. The frames are sampled and preprocessed exactly as the
pixel path does (`data.video_pixels`), so the loss is the same either way.

Videos already cached are skipped (the command can be re-run after an interruption, or with more
data files); `--force` recomputes them. A video that does not decode is skipped and counted; the
training set then counts it as "features missing". The clips are shared out over torchrun's processes
(process r takes every K-th clip from the r-th on, `distributed.shard`, on GPU LOCAL_RANK), and each
process's clips are decoded by --num-workers DataLoader processes while its ViT runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from einops import rearrange
from tqdm.auto import tqdm

from .cli import number_flag_problem
from .config import PRESETS, preset
from .data import DataError, feature_file, save_features, video_pixels
from .distributed import DistributedError, all_ranks, default_num_workers, init_distributed, shard
from .readers import read_records
from .trainer import TrainError
from .video import VideoError
from .weights import CheckpointError, load_vision


def unique_videos(records: list[dict]) -> list[str]:
    """Every video the records use, once, in order of first use. Two different videos with the same
    file stem would share a features file: that is an error."""
    videos, by_stem = list(dict.fromkeys(v for r in records for v in r["videos"])), {}
    for v in videos:
        other = by_stem.setdefault(Path(v).stem, v)
        if other != v:
            raise TrainError(f"{v}: has the same file name stem as {other}; features are stored by stem, so "
                             "cache these data sets into different --out directories")
    return videos


class Clips(torch.utils.data.Dataset):
    """Clip i as the ViT's input: (its path, pixels (T, 3, S, S)), or (its path, why it does not decode)."""

    def __init__(self, videos: list[str], num_frames: int, size: int, frames: str = "clip"):
        self.videos, self.num_frames, self.size, self.frames = videos, num_frames, size, frames

    def __len__(self) -> int:
        return len(self.videos)

    def __getitem__(self, i: int) -> tuple[str, torch.Tensor | str]:
        try:
            return self.videos[i], video_pixels(self.videos[i], self.num_frames, self.size, self.frames)
        except VideoError as e:
            return self.videos[i], str(e)


@torch.inference_mode()
def cache_features(vision, videos: list[str], out: Path, num_frames: int, *, batch_size: int = 8,
                   device="cpu", force: bool = False, progress: bool = True, num_workers: int = 0,
                   frames: str = "clip") -> dict:
    """Run `vision` on T frames of every video and save F_v (T, 1+P, D); `num_workers` processes decode
    the clips (0: this one); `frames`: how they are sampled (`G4VConfig.frames`). Returns counts
    {"written", "cached", "failed"}."""
    todo = [v for v in videos if force or not feature_file(out, v).is_file()]
    counts = {"written": 0, "cached": len(videos) - len(todo), "failed": 0}
    bar = tqdm(total=len(todo), desc="features", disable=not progress, dynamic_ncols=True)
    clips = torch.utils.data.DataLoader(Clips(todo, num_frames, vision.cfg.image_size, frames),
                                        batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    for batch in clips:                                                      # [(path, pixels or the problem)]
        names, pixels = [v for v, x in batch if torch.is_tensor(x)], [x for _, x in batch if torch.is_tensor(x)]
        for problem in [x for _, x in batch if isinstance(x, str)]:
            counts["failed"] += 1
            if counts["failed"] <= 5:
                print(f"skipped {problem}", file=sys.stderr)
        if pixels:
            images = rearrange(torch.stack(pixels), "b t c h w -> (b t) c h w")    # (B*T, 3, S, S)
            dtype = next(vision.parameters()).dtype
            features = vision(images.to(device, dtype), num_frames=num_frames)     # (B*T, 1+P, D)
            features = rearrange(features, "(b t) p d -> b t p d", t=num_frames)      # (B, T, 1+P, D)
            for v, f in zip(names, features):
                save_features(out, v, f)
            counts["written"] += len(names)
        bar.update(len(batch))
    bar.close()
    return counts


NUMBER_FLAGS = {"frames": (1, None, True), "batch_size": (1, None, True), "num_workers": (0, None, True)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Cache frozen-ViT features of every video in the data files.")
    p.add_argument("--vision", required=True, type=Path, help="CLIP ViT: directory or .safetensors")
    p.add_argument("--data", required=True, nargs="+", type=Path, help="data files (any train.py format)")
    p.add_argument("--out", required=True, type=Path, help="features directory (train.py --features-dir)")
    p.add_argument("--preset", default="nano", choices=sorted(PRESETS), help="for the default --frames")
    p.add_argument("--frames", type=int, help="frames per video T (default: the preset's)")
    p.add_argument("--video-root", type=Path, help="resolve video paths here (default: each file's folder)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: bf16 on CUDA, else fp32")
    p.add_argument("--batch-size", type=int, default=8, help="videos per ViT forward")
    p.add_argument("--num-workers", type=int, help="processes decoding clips, per process (default: the CPUs "
                   "per process, at most 8)")
    p.add_argument("--force", action="store_true", help="recompute features that are already cached")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    try:
        problem = number_flag_problem(args, NUMBER_FLAGS)
        if problem:
            raise TrainError(problem)
        frames = args.frames or preset(args.preset).num_frames
        if not args.vision.exists():                         # (load_vision would only miss its config.json)
            raise TrainError(f"{args.vision}: no such file or directory")
        world = init_distributed(args.device)
        device = f"cuda:{world.local_rank}" if args.device == "cuda" and world.world_size > 1 else args.device
        quiet = args.quiet or not world.main
        vision = load_vision(args.vision, dtype=dtype, device=device)
        records = read_records(args.data, args.video_root, log=(lambda *a: None) if quiet else print)
        workers = args.num_workers if args.num_workers is not None else default_num_workers(True, world)
        counts = cache_features(vision, shard(unique_videos(records), world), args.out, frames,
                                batch_size=args.batch_size, device=device, force=args.force, progress=not quiet,
                                num_workers=workers, frames=preset(args.preset).frames)
        counts = dict(zip(counts, all_ranks(torch.tensor(list(counts.values())), world, device).sum(0).long().tolist()))
    except (TrainError, DistributedError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if not quiet:
        print(f"{args.out}: {counts['written']} written, {counts['cached']} already cached, "
              f"{counts['failed']} failed ({frames} frames per video)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
