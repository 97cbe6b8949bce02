"""Cache the frozen ViT's output once per video, so that stage 1 never decodes a video or runs the ViT again.

    python -m nanog4v.features --vision DIR --data FILE ... --out DIR [--frames T] [--preset nano]

In stage 1 the ViT is frozen (paper §3.3): for a given video, F_v = ViT(frames) (T, 1+P, D) is the same
in every epoch. Decoding the clip and running ViT-L/14 on T frames costs far more than the abstractor
that learns on top, so we compute F_v once, store it (`data.save_features`: one safetensors file per
video, named by the video's stem, in the ViT's dtype) and train with `train.py --features-dir DIR`,
which feeds the abstractor from these files. The frames are sampled and preprocessed exactly as the
pixel path does (`video.sample_frames`, `vision.preprocess`), so the loss is the same either way.

Videos already cached are skipped (the command can be re-run after an interruption, or with more
data files); `--force` recomputes them. A video that does not decode is skipped and counted; the
training set then counts it as "features missing".
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from einops import rearrange
from tqdm.auto import tqdm

from .config import PRESETS, preset
from .data import DataError, feature_file, save_features
from .readers import read_records
from .trainer import TrainError
from .video import VideoError, sample_frames
from .vision import preprocess
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


@torch.inference_mode()
def cache_features(vision, videos: list[str], out: Path, num_frames: int, *, batch_size: int = 8,
                   device="cpu", force: bool = False, progress: bool = True) -> dict:
    """Run `vision` on T frames of every video and save F_v (T, 1+P, D). Returns counts
    {"written", "cached", "failed"}."""
    size = vision.cfg.image_size
    todo = [v for v in videos if force or not feature_file(out, v).is_file()]
    counts = {"written": 0, "cached": len(videos) - len(todo), "failed": 0}
    bar = tqdm(total=len(todo), desc="features", disable=not progress, dynamic_ncols=True)
    for i in range(0, len(todo), batch_size):
        names, pixels = [], []
        for v in todo[i:i + batch_size]:
            try:
                pixels.append(preprocess(sample_frames(v, num_frames), size))        # (T, 3, S, S)
                names.append(v)
            except VideoError as e:
                counts["failed"] += 1
                if counts["failed"] <= 5:
                    print(f"skipped {e}", file=sys.stderr)
        if pixels:
            frames = rearrange(torch.stack(pixels), "b t c h w -> (b t) c h w")    # (B*T, 3, S, S)
            dtype = next(vision.parameters()).dtype
            features = vision(frames.to(device, dtype))                              # (B*T, 1+P, D)
            features = rearrange(features, "(b t) p d -> b t p d", t=num_frames)      # (B, T, 1+P, D)
            for v, f in zip(names, features):
                save_features(out, v, f)
            counts["written"] += len(names)
        bar.update(len(todo[i:i + batch_size]))
    bar.close()
    return counts


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
    p.add_argument("--force", action="store_true", help="recompute features that are already cached")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    frames = args.frames or preset(args.preset).num_frames
    dtype = getattr(torch, args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32"))
    try:
        if not args.vision.exists():                         # (load_vision would only miss its config.json)
            raise TrainError(f"{args.vision}: no such file or directory")
        vision = load_vision(args.vision, dtype=dtype).to(args.device)
        records = read_records(args.data, args.video_root, log=(lambda *a: None) if args.quiet else print)
        counts = cache_features(vision, unique_videos(records), args.out, frames, batch_size=args.batch_size,
                                device=args.device, force=args.force, progress=not args.quiet)
    except (TrainError, DataError, CheckpointError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.quiet:
        print(f"{args.out}: {counts['written']} written, {counts['cached']} already cached, "
              f"{counts['failed']} failed ({frames} frames per video)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
