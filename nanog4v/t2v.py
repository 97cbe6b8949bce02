"""The text-to-video gallery (paper §3.4): what turns a `<video> prompt </video>` into frames.

GPT4Video never generates pixels itself. The LLM writes a text prompt between video tags, and any
text-to-video model renders it: the paper uses ZeroScope and argues that the generator can be
swapped without retraining (the "gallery"). Here every generator has one small interface,

    generate(prompt: str, num_frames: int, seed: int | None) -> uint8 (T, H, W, 3) RGB frames
    fps: float                                     (how fast the frames are meant to be played)

and `save(generator, prompt, path, ...)` writes the result as an H.264 mp4 with `video_out.write_video`
(atomic: a failure leaves no half-written file). A generator is picked by name from a *gallery*,
`load_generator(kind, path, gallery=...)`: a dict from names to loaders `(path, device, **options) ->
generator`. `GALLERY` holds the one this module provides; the toy world adds its own renderer
(`nanog4v.toy.generator.GALLERY`), and any other model plugs in the same way:

- **`zeroscope`**: a diffusers text-to-video pipeline loaded from a *local* directory in the
  `cerspense/zeroscope_v2_576w` layout (`model_index.json`, `unet/`, `vae/`, `text_encoder/`,
  `tokenizer/`, `scheduler/`; docs/formats.md). `DiffusionPipeline.from_pretrained` picks the
  pipeline class named in `model_index.json`, so any other diffusers text-to-video pipeline directory
  works through the same entry. Defaults are ZeroScope's: 576×320, 24 frames, 40 steps, guidance 9,
  8 fps. fp16 on CUDA, fp32 elsewhere (half-precision convolutions on a CPU are slow or missing);
  `cpu_offload` (weights wait in RAM, each sub-model visits the GPU in turn) and `vae_slicing`
  (decode frame by frame) trade speed for GPU memory. The pipeline's frames are normalised by
  `frames_to_uint8`, which accepts every shape diffusers has returned over the versions.
- **`toy`** (in `nanog4v.toy.generator`): the toy world's renderer, the nano preset's generator.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np

from .video_out import write_video


class T2VError(Exception):
    """A generator that cannot be loaded or run. The message is one line: "{path}: {problem}"."""


# --- normalising frames -------------------------------------------------------------------------------

def frames_to_uint8(frames) -> np.ndarray:
    """Whatever a diffusers video pipeline returned → uint8 (T, H, W, 3).

    Accepted (docs/formats.md): a pipeline output with `.frames`; a float array in [0, 1] of shape
    (B, T, H, W, 3) (≥ 0.25, `output_type="np"`; the first video of the batch is taken) or (T, H, W, 3);
    a torch tensor with channels first (B, T, 3, H, W) or last; a list of uint8 (H, W, 3) arrays (≤ 0.24,
    no batch axis); a list of PIL images, or a list of such lists (`output_type="pil"`).
    """
    frames = getattr(frames, "frames", frames)
    if isinstance(frames, (list, tuple)):
        if len(frames) == 0:
            raise ValueError("frames_to_uint8: no frames")
        if isinstance(frames[0], (list, tuple)):                  # batched lists: the first video
            frames = frames[0]
        frames = np.stack([np.asarray(f.convert("RGB")) if hasattr(f, "convert") else _numpy(f)
                           for f in frames])                       # (T, H, W, 3) or (T, 3, H, W)
    array = _numpy(frames)
    if array.ndim == 5:                                            # (B, T, ...): the first video
        array = array[0]
    if array.ndim != 4:
        raise ValueError(f"frames_to_uint8: expected video frames, got shape {array.shape}")
    if array.shape[-1] not in (1, 3, 4) and array.shape[1] in (1, 3, 4):
        array = array.transpose(0, 2, 3, 1)                        # (T, 3, H, W) -> (T, H, W, 3)
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)                       # grey -> RGB
    array = array[..., :3]                                         # drop alpha
    if array.dtype != np.uint8:
        array = np.round(np.clip(array.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    return np.ascontiguousarray(array)                             # (T, H, W, 3)


def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):                                       # a torch tensor
        x = x.detach().float().cpu().numpy()
    return np.asarray(x)


# --- the generators ----------------------------------------------------------------------------------

class DiffusersGenerator:
    """A diffusers text-to-video pipeline from a local directory (ZeroScope by default; see the docstring)."""
    name = "zeroscope"

    def __init__(self, path: str | Path, device: str = "cpu", *, width: int = 576, height: int = 320,
                 default_frames: int = 24, steps: int = 40, guidance: float = 9.0, fps: float = 8.0,
                 cpu_offload: bool = False, vae_slicing: bool = False, dtype=None):
        import torch
        self.path = Path(path)
        self.device, self.width, self.height = str(device), width, height
        self.default_frames, self.steps, self.guidance, self.fps = default_frames, steps, guidance, fps
        self.dtype = dtype or (torch.float16 if self.device.startswith("cuda") else torch.float32)
        check_pipeline_dir(self.path)
        self.pipe = self._load(cpu_offload, vae_slicing)
        self._accepts = set(inspect.signature(self.pipe.__call__).parameters)

    def _load(self, cpu_offload: bool, vae_slicing: bool):
        from diffusers import DiffusionPipeline
        from diffusers.utils import logging as dlog
        level = dlog.get_verbosity()
        dlog.set_verbosity_error()                       # the pipeline's deprecation notice, progress bars
        try:
            pipe = DiffusionPipeline.from_pretrained(str(self.path), torch_dtype=self.dtype, local_files_only=True)
        except Exception as e:                           # missing sub-folder, bad weights, unknown class
            raise T2VError(f"{self.path}: cannot load the pipeline ({_first_line(e)})") from None
        finally:
            dlog.set_verbosity(level)
        pipe.set_progress_bar_config(disable=True)
        if cpu_offload:
            pipe.enable_model_cpu_offload(device=self.device)   # moves each part to the device when used
        else:
            pipe.to(self.device)
        if vae_slicing:
            pipe.vae.enable_slicing()
        return pipe

    def generate(self, prompt: str, num_frames: int | None = None, seed: int | None = None) -> np.ndarray:
        import torch
        wanted = dict(prompt=prompt, num_frames=num_frames or self.default_frames, height=self.height,
                      width=self.width, num_inference_steps=self.steps, guidance_scale=self.guidance,
                      output_type="np", generator=None if seed is None else torch.Generator("cpu").manual_seed(seed))
        kwargs = {k: v for k, v in wanted.items() if k in self._accepts}   # pipelines differ in what they take
        try:
            with torch.inference_mode():
                out = self.pipe(**kwargs)
        except Exception as e:
            raise T2VError(f"{self.path}: generation failed ({_first_line(e)})") from None
        return frames_to_uint8(out)                                     # (T, H, W, 3)


def check_pipeline_dir(path: str | Path) -> dict:
    """The parsed `model_index.json` of a diffusers pipeline directory, or a T2VError saying what is wrong
    (cheap: nothing is loaded)."""
    path = Path(path)
    if not path.is_dir():
        raise T2VError(f"{path}: no such directory (a diffusers text-to-video pipeline such as "
                       "cerspense/zeroscope_v2_576w; see weights/README.md)")
    index = path / "model_index.json"
    if not index.is_file():
        raise T2VError(f"{path}: not a diffusers pipeline directory (no model_index.json)")
    try:
        meta = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise T2VError(f"{index}: not valid JSON ({e})") from None
    absent = [name for name, spec in meta.items() if isinstance(spec, list) and spec[0] and not (path / name).is_dir()]
    if absent:
        raise T2VError(f"{path}: sub-folders missing: {', '.join(absent)}")
    return meta


def _first_line(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def load_diffusers(path: str | Path | None, device: str = "cpu", **options) -> DiffusersGenerator:
    if path is None:
        raise T2VError("--t2v-path: the zeroscope generator needs a local pipeline directory")
    return DiffusersGenerator(path, device, **options)


GALLERY = {"zeroscope": load_diffusers}      # name -> loader (path, device, **options) -> generator


def load_generator(kind: str, path: str | Path | None = None, device: str = "cpu", *, gallery: dict = GALLERY,
                   **options):
    """The generator called `kind` in `gallery` (default: this module's, "zeroscope"), loaded from `path`."""
    if kind not in gallery:
        raise T2VError(f"--t2v {kind}: unknown generator; choose one of {sorted(gallery)}")
    return gallery[kind](path, device, **options)


def save(generator, prompt: str, path: str | Path, num_frames: int | None = None,
         seed: int | None = None) -> Path:
    """Generate `prompt` and write it to `path` as an mp4 (atomically, at the generator's fps)."""
    frames = generator.generate(prompt, num_frames, seed)
    try:
        return write_video(path, frames, generator.fps)
    except (ValueError, OSError) as e:
        raise T2VError(f"{path}: cannot write the video ({_first_line(e)})") from None
