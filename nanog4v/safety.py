"""Safety (paper §3.5): refuse politely instead of producing harmful content.

The paper's argument: a refusal is a *sentence* ("I'm sorry, but I can't help with that"), not a black
video — the assistant stays in the conversation. Three checks, each reported with its stage (the names
are the `refusal_stage` values of chat.py's `--json`, docs/design.md):

1. **input-text** — the user's words. The main check is the trained model itself: stage 2 trains on
   safety dialogues whose answers are polite refusals (a reply that reads as one — `is_refusal`, or
   the detector the assistant is given for a model trained on other refusals — has stage "model"). In front of it sits a light, switchable pre-check, `Lexicon`: weighted terms, a
   request is flagged when its score reaches 1.0. Strong terms ("naked", "stabbed", "bloody") weigh 1,
   words that are often benign ("fight", "hurt", "attack") weigh ½, so one of them alone never
   refuses ("help a friend who got hurt"), and a term right after a negation ("nothing violent") does
   not count. It is deliberately high-precision and low-recall: the model catches the rest.
2. **input-video** — the frames of an attached video, in the style of the Stable Diffusion safety
   checker (`ConceptChecker`): each frame's image embedding e is compared with K concept embeddings
   c_k by cosine, score_k = round(cos(e, c_k) − w_k, 3) (+0.01 once a "special care" concept fired),
   and a frame is flagged when any score is > 0. As in the official GPT4Video code, 10 frames are
   sampled and the video is flagged when more than 4 of them are (`VideoChecker`).
   - 7b: the official `CompVis/stable-diffusion-safety-checker` directory (CLIP ViT-L/14, its
     projection and 17 + 3 concept embeddings), loaded by `ConceptChecker.from_pretrained`.
   - nano: one concept calibrated from examples (`calibrate_concept`) under the nano ViT — the toy
     world's hazard sign, built in `nanog4v.toy.hazard` and handed in as the frame checker.
3. **output-prompt** — every `<video>` prompt the model wrote is checked before any generator runs
   (the lexicon, which is always on here, plus any concept check the generator needs, e.g. the toy
   world's hazard sign for its renderer); a flagged prompt is never generated.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from .safetensors_io import CheckpointError, find_tensors, load_checkpoint, read_config, read_tensors
from .video import sample_frames
from .vision import VisionTransformer, preprocess
from .weights import CLIP_VISION_DEFAULTS, rename_clip_vision

STAGES = ("input-text", "input-video", "model", "output-prompt")
REFUSALS = {  # what the assistant says when a check (not the model) refuses
    "input-text": "I'm sorry, but I can't help with that request.",
    "input-video": "I'm sorry, but this video seems to show something unsafe, so I can't help with it.",
    "output-prompt": "I'm sorry, but I can't show that video.",
}


@dataclass
class Verdict:
    """The outcome of one check: which stage, whether it flagged, and why (for the log)."""
    stage: str
    flagged: bool
    reason: str = ""

    def __str__(self) -> str:
        return f"safety[{self.stage}]: {'flagged' if self.flagged else 'ok'}" + (f" ({self.reason})" if self.reason else "")


# --- 1. text: the lexicon ------------------------------------------------------------------------------

LEXICON = {  # regular expression over lower-cased text -> weight; a request is flagged at a score of 1.0
    # sexual content
    r"naked": 1.0, r"nude\w*": 1.0, r"porn\w*": 1.0, r"sex": 1.0, r"sexual\w*": 1.0, r"explicit\w*": 0.5,
    # graphic violence
    r"bloody": 1.0, r"stab\w*": 1.0, r"tortur\w*": 1.0, r"murder\w*": 1.0, r"behead\w*": 1.0, r"gore": 1.0,
    r"beat(?:en)? up": 1.0, r"massacre\w*": 1.0,
    # often benign alone
    r"kill\w*": 0.5, r"weapons?": 0.5, r"attack\w*": 0.5, r"violen\w*": 0.5, r"fight\w*": 0.5, r"hurt\w*": 0.5,
    r"shoot\w*": 0.5, r"shot": 0.5, r"blood": 0.5, r"guns?": 0.5,
}
NEGATIONS = ("no", "not", "nothing", "without", "never", "don't", "avoid")


class Lexicon:
    """Weighted terms with a threshold (module docstring, check 1). `score(text)` -> (score, terms)."""

    def __init__(self, terms: dict[str, float] = LEXICON, threshold: float = 1.0, negations=NEGATIONS):
        self.terms = [(re.compile(rf"\b{t}\b"), t, w) for t, w in terms.items()]
        self.threshold, self.negations = threshold, set(negations)

    def score(self, text: str) -> tuple[float, list[str]]:
        text = text.lower().replace("\u2019", "'")
        total, hits = 0.0, []
        for pattern, term, weight in self.terms:
            for m in pattern.finditer(text):
                before = re.findall(r"[a-z']+", text[:m.start()])[-2:]     # the two words before the term
                if not self.negations.intersection(before):
                    total, hits = total + weight, hits + [m.group()]
        return total, hits

    def check(self, text: str, stage: str = "input-text") -> Verdict:
        score, hits = self.score(text)
        return Verdict(stage, score >= self.threshold, f"lexicon score {score:g}: {', '.join(hits)}" if hits else "")


# --- 2. frames: concept embeddings, and the toy stripe detector ----------------------------------------

class ConceptChecker:
    """The Stable Diffusion safety checker's rule on image embeddings (module docstring, check 2).

    `embed(frames uint8 (T, H, W, 3)) -> (T, D)` image embeddings; concepts (K, D) with thresholds (K,);
    optional special-care concepts (K', D) with thresholds (K',): when one fires, `adjustment` (0.01) is
    added to every concept score, making the check stricter for that image.
    """

    def __init__(self, embed: Callable[[np.ndarray], torch.Tensor], concepts: torch.Tensor, weights: torch.Tensor,
                 special: torch.Tensor | None = None, special_weights: torch.Tensor | None = None,
                 adjustment: float = 0.01, name: str = "concepts"):
        self.embed, self.name, self.adjustment = embed, name, adjustment
        self.concepts, self.weights = concepts.float(), weights.float()
        d = concepts.shape[1]
        self.special = special.float() if special is not None else torch.zeros(0, d)
        self.special_weights = special_weights.float() if special_weights is not None else torch.zeros(0)

    @torch.no_grad()
    def scores(self, embeds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """embeds (T, D) -> (flags (T,) bool, concept scores (T, K)), the official rounding included."""
        e = F.normalize(embeds.float().cpu(), dim=-1)                                      # (T, D)
        special = torch.round(e @ F.normalize(self.special, dim=-1).T - self.special_weights, decimals=3)  # (T, K')
        adjust = (special > 0).any(dim=1, keepdim=True).float() * self.adjustment         # (T, 1)
        concept = torch.round(e @ F.normalize(self.concepts, dim=-1).T - self.weights + adjust, decimals=3)  # (T, K)
        return (concept > 0).any(dim=1), concept

    def __call__(self, frames: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """frames uint8 (T, H, W, 3) -> (flags (T,), scores (T, K))."""
        return self.scores(self.embed(frames))

    @classmethod
    def from_pretrained(cls, path: str | Path, device="cpu", dtype=torch.float32) -> "ConceptChecker":
        """A `StableDiffusionSafetyChecker` directory (config.json + model.safetensors, or the hub's
        pytorch_model.bin; docs/formats.md): CLIP's vision tower, `visual_projection` (no bias),
        `concept_embeds` (17, P) and `special_care_embeds` (3, P) with their `*_weights` thresholds. Keys
        may carry transformers 4.x's doubled `vision_model.vision_model.` prefix or 5.x's single one."""
        from .config import VisionConfig
        hf = read_config(path)
        if hf is None or "vision_config" not in hf:
            raise CheckpointError(f"{path}: no CLIPConfig config.json with a vision_config (not a safety checker)")
        v = {**CLIP_VISION_DEFAULTS, **hf["vision_config"]}
        cfg = VisionConfig(image_size=v["image_size"], patch_size=v["patch_size"], dim=v["hidden_size"],
                           n_layers=v["num_hidden_layers"], n_heads=v["num_attention_heads"],
                           mlp_dim=v["intermediate_size"], norm_eps=v["layer_norm_eps"], act=v["hidden_act"],
                           in_channels=v["num_channels"])
        extra = ("visual_projection.weight", "concept_embeds", "concept_embeds_weights", "special_care_embeds",
                 "special_care_embeds_weights")

        def rename(key: str) -> str | None:
            if key in extra:
                return None
            return rename_clip_vision(key.replace("vision_model.vision_model.", "vision_model.", 1))

        with torch.device("meta"):
            vit = VisionTransformer(cfg)
        vit = load_checkpoint(vit, path, rename, dtype).to(device)
        sources = find_tensors(path)
        missing = [k for k in extra if k not in sources]
        if missing:
            raise CheckpointError(f"{path}: not a safety checker: missing {', '.join(missing)}")
        tensors = {k: t.float() for k, t in read_tensors(sources, extra).items()}
        projection = tensors["visual_projection.weight"].to(device, dtype)                 # (P, D)

        @torch.no_grad()
        def embed(frames: np.ndarray) -> torch.Tensor:
            pixels = preprocess(frames, cfg.image_size).to(device, dtype)                  # (T, 3, S, S)
            pooled = vit.ln_post(vit(pixels)[:, 0])                                        # (T, D) CLIP's pooler_output
            return pooled @ projection.T                                                   # (T, P)

        return cls(embed, tensors["concept_embeds"], tensors["concept_embeds_weights"],
                   tensors["special_care_embeds"], tensors["special_care_embeds_weights"], name=f"safety checker {path}")


def vit_embedder(vit: VisionTransformer, device="cpu") -> Callable[[np.ndarray], torch.Tensor]:
    """frames uint8 (T, H, W, 3) -> CLIP image embeddings ln_post([CLS]) (T, D) of our ViT."""
    @torch.no_grad()
    def embed(frames: np.ndarray) -> torch.Tensor:
        dtype = next(vit.parameters()).dtype
        pixels = preprocess(frames, vit.cfg.image_size).to(device, dtype)                  # (T, 3, S, S)
        cls = vit(pixels)[:, 0]                                                            # (T, D)
        return (cls if vit.cfg.post_layernorm_all_tokens else vit.ln_post(cls)).float()
    return embed


def calibrate_concept(embed, hazard_frames: np.ndarray, safe_frames: np.ndarray) -> tuple[torch.Tensor, float]:
    """One concept from examples: c = mean of the normalised hazard-frame embeddings; its threshold w
    is halfway between the mean cosine of hazard frames and of safe frames to c."""
    pos, neg = F.normalize(embed(hazard_frames), dim=-1), F.normalize(embed(safe_frames), dim=-1)
    concept = F.normalize(pos.mean(0), dim=0)                                              # (D,)
    return concept, ((pos @ concept).mean() + (neg @ concept).mean()).item() / 2


class VideoChecker:
    """A frame checker applied to `num_frames` uniformly sampled frames; the video is flagged when more
    than `max_flagged` of them are (the official code: more than 4 of 10)."""

    def __init__(self, frame_checker, num_frames: int = 10, max_flagged: int = 4):
        self.frame_checker, self.num_frames, self.max_flagged = frame_checker, num_frames, max_flagged

    def check_frames(self, frames: np.ndarray) -> Verdict:
        flags, _ = self.frame_checker(frames)
        k = int(flags.sum())
        name = getattr(self.frame_checker, "name", type(self.frame_checker).__name__)
        return Verdict("input-video", k > self.max_flagged, f"{k}/{len(flags)} frames flagged by the {name}")

    def check(self, path) -> Verdict:
        return self.check_frames(sample_frames(path, self.num_frames))


# --- all three ----------------------------------------------------------------------------------------

@dataclass
class Safety:
    """The checks chat.py runs. `lexicon=None` turns the input-text pre-check off; `video=None` the
    input-video check; `prompt_lexicon` and `prompt_concepts` make the output-prompt check.
    `prompt_concepts(prompt)` returns a reason when the generator must not render the prompt (None:
    fine) — e.g. `nanog4v.toy.hazard.hazard_prompt` for the toy renderer."""
    lexicon: Lexicon | None = field(default_factory=Lexicon)
    video: VideoChecker | None = None
    prompt_lexicon: Lexicon | None = field(default_factory=Lexicon)
    prompt_concepts: Callable[[str], str | None] | None = None

    def check_text(self, text: str) -> Verdict:
        return self.lexicon.check(text) if self.lexicon is not None else Verdict("input-text", False, "pre-check off")

    def check_video(self, path) -> Verdict:
        return self.video.check(path) if self.video is not None else Verdict("input-video", False, "check off")

    def check_prompt(self, prompt: str) -> Verdict:
        reason = self.prompt_concepts(prompt) if self.prompt_concepts is not None else None
        if reason:
            return Verdict("output-prompt", True, reason)
        if self.prompt_lexicon is not None:
            return self.prompt_lexicon.check(prompt, stage="output-prompt")
        return Verdict("output-prompt", False)


# --- the model's own refusals ----------------------------------------------------------------------------

REFUSAL_PHRASES = ("i'm sorry, but", "i am sorry, but", "i can't help", "i cannot help", "i can't assist",
                   "i cannot assist", "i can't provide", "i cannot provide", "i can't show", "i cannot show",
                   "i can't create", "i cannot create", "i'm not able to", "i am not able to", "i'm unable to",
                   "i am unable to", "i won't be able to", "i must decline", "as an ai language model")


def is_refusal(text: str, phrases=REFUSAL_PHRASES) -> bool:
    """Whether a reply reads as a refusal: it holds one of the phrases instruction-tuned LLaMAs refuse
    with ("I'm sorry, but I can't help with that."). The default detector of the assistant; a model
    trained on other refusals brings its own (the toy world's: `nanog4v.toy.datasets.is_refusal`)."""
    text = text.lower().replace("\u2019", "'")
    return any(p in text for p in phrases)
