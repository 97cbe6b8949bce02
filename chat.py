"""Talk to GPT4Video about a video, and get videos back."""
import sys

if __name__ == "__main__":
    print("error: chat.py: not implemented yet (see the chat issue); "
          "for now try: python -m nanog4v.video CLIP --frames 8 --out sheet.png", file=sys.stderr)
    sys.exit(2)
