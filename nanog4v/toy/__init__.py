"""The toy wing: everything that exists only because no official weights or data can be downloaded.

The paper's model lives in `nanog4v/` and never imports this package; the toy parts plug into it
from the outside (chat.py, train.py and the evaluation hand them in).

    world.py           scenes of 1–3 shapes, the renderer, captions and the parser that inverts them
    phrases.py         the phrasings of every question, request and answer (some held out)
    datasets.py        the data sets in the paper's formats: the records of every split
    worlddir.py        a world on disk: write_world, read_world, its layout, python -m nanog4v.toy
    stage0.py          stage 0: tokenizer and LLaMA pretrained on the toy text (the stand-in for LLaMA-7B)
    stage0_reading.py  stage 0's reading practice: wider-world scenes asked in wider words
    stage0_vision.py   stage 0: the ViT pretrained on the toy clips (the stand-in for CLIP ViT-L/14)
    hazard.py          the toy safety checks: the hazard sign in frames and in <video> prompts
    generator.py       the toy renderer as a text-to-video model (the stand-in for ZeroScope)
    recipe.py          `train.py --stage 0|all`: world, stage 0, features, stages 1 and 2 in one command
    __main__.py        python -m nanog4v.toy --out DIR: write a world
"""
