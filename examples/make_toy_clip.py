"""Writes examples/toy_clip.mp4: a toy-world clip (docs/design.md) that ships with the repository, so the
README's main command has a video the nano model understands on a fresh clone:

    python -m examples.make_toy_clip

The scene: a large red circle on the left moves right and a small yellow square on the right grows, on
a navy background — colour–shape pairs the nano model saw in training (none of the held-out pairs of
the seed-0 world). Rendered by the toy world's own renderer at 128 px, 24 frames at 8 fps (3 s).
"""
from pathlib import Path

from nanog4v.toy.world import Scene, Thing, caption, render
from nanog4v.video_out import write_video

SCENE = Scene((Thing("circle", "red", "large", "left", "moves right"),
               Thing("square", "yellow", "small", "right", "grows")), "navy")

if __name__ == "__main__":
    frames = render(SCENE, num_frames=24, size=128)                    # (24, 128, 128, 3) uint8
    out = write_video(Path(__file__).parent / "toy_clip.mp4", frames, 8)
    print(f"wrote {out}: {caption(SCENE)}")
