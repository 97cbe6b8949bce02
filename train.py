"""Train GPT4Video: stage 0 (nano's frozen parts), stage 1 (video-text alignment), stage 2 (LoRA)."""
import sys

if __name__ == "__main__":
    print("error: train.py: not implemented yet (see the trained-recipe issue)", file=sys.stderr)
    sys.exit(2)
