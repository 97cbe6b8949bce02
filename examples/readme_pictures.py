"""Writes the README's pictures: the clip its main command asks about, and every video the model
showed back, each as a strip of frames, so a reader can check the answers against what is on screen:

    python -m examples.readme_pictures          # -> docs/readme_clip.png, docs/readme_video1.png, ...

It runs the README's main command itself (chat.py with the same --video and --prompt flags, --json, the
videos written to a temporary directory) and prints the transcript it drew the pictures from.
"""
import json
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

from nanog4v.video import sample_frames_and_times
from nanog4v.video_out import contact_sheet

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def main_command() -> list[str]:
    """The README's main command (the first set-up block, after its pip installs) as argv."""
    setup = (ROOT / "README.md").read_text().split("## Set-up on a fresh machine", 1)[1]
    block = setup.split("```bash\n", 1)[1].split("\n```", 1)[0]
    return shlex.split(block.rsplit("&& ", 1)[1])


if __name__ == "__main__":
    argv = main_command()
    clip = Path(argv[argv.index("--video") + 1])
    with tempfile.TemporaryDirectory() as out:
        run = subprocess.run([sys.executable, *argv[1:], "--json", "--out", out], cwd=ROOT, capture_output=True,
                             text=True, check=True)
        turns = [json.loads(line) for line in run.stdout.splitlines()]
        prompts = [argv[i + 1] for i, a in enumerate(argv) if a == "--prompt"]
        frames, times = sample_frames_and_times(ROOT / clip, 8)                  # (8, H, W, 3), seconds
        print("wrote", contact_sheet(frames, times, DOCS / "readme_clip.png", title=f"the clip asked about: {clip}",
                                     columns=8))
        k = 0
        for prompt, turn in zip(prompts, turns):
            print(f"you> {prompt}\ngpt4video> {turn['reply']}")
            for video, text in zip(turn["videos"], turn["prompts"]):
                k += 1
                png = contact_sheet(*sample_frames_and_times(video, 8), DOCS / f"readme_video{k}.png",
                                    title=f"the video it showed: '{text}'", columns=8)
                print("wrote", png)
