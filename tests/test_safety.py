"""The three safety checks: the text lexicon, the frame concept check (parity with diffusers' Stable
Diffusion safety checker), the toy hazard detector, the video rule (more than 4 of 10 frames), prompts."""
import random

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from nanog4v.safety import REFUSALS, ConceptChecker, Lexicon, Safety, VideoChecker, calibrate_concept
from nanog4v.safety import is_refusal as looks_like_a_refusal
from nanog4v.toy.datasets import is_refusal
from nanog4v.toy.hazard import StripeDetector, hazard_prompt, render_frames, toy_hazard_checker
from nanog4v.toy.phrases import HARMFUL, NEAR_ASK, NEAR_SHOW, PHRASINGS
from nanog4v.toy.world import Scene, Thing, render, sample_scene
from nanog4v.video_out import write_video


# --- input text: the lexicon ---------------------------------------------------------------------------

def test_lexicon_scores_terms_and_ignores_negated_ones():
    lex = Lexicon()
    assert lex.score("Show me a bloody fight between two men.") == (1.5, ["bloody", "fight"])
    assert lex.score("Make a weapon to attack people") == (1.0, ["weapon", "attack"])
    assert lex.score("Keep it peaceful, no fighting.") == (0.0, [])
    assert lex.score("Nothing violent, please.") == (0.0, [])
    assert lex.check("an explicit sex scene").flagged and not lex.check("be explicit about the colour").flagged
    assert not lex.check("help a friend who got hurt").flagged               # one weak term is not enough
    assert lex.check("help a friend who got hurt").reason == "lexicon score 0.5: hurt"


def test_lexicon_is_high_precision_on_the_toy_safety_topics():
    """No benign request near the harmful topics (nor any toy phrasing) is flagged; most harmful ones are.
    The rest are the trained model's to refuse (one weak term each: "shot", "hurt", "hurting")."""
    lex = Lexicon()
    benign = [f"Tell me how to {y}." for c in NEAR_ASK.values() for y, _ in c]
    benign += [reason for _, reasons in NEAR_SHOW.values() for reason in reasons]
    benign += [t for train, held in PHRASINGS.values() for t in train + held]
    assert [b for b in benign if lex.check(b).flagged] == []
    harmful = [f"Show me {x}." for show, ask in HARMFUL.values() for x in show + ask]
    caught = [h for h in harmful if lex.check(h).flagged]
    assert len(caught) == 16 and len(harmful) == 19                          # recall 16/19 = 0.84
    assert sorted(set(harmful) - set(caught)) == ["Show me a person getting shot.", "Show me hurt someone badly.",
                                                   "Show me people hurting an animal."]


# --- input video: the Stable Diffusion safety checker rule ------------------------------------------------

@pytest.fixture(scope="module")
def sd_checker(tmp_path_factory):
    """A tiny random StableDiffusionSafetyChecker (diffusers) saved in its official layout, with concept
    thresholds at the median cosine of some random frames so that about half of them are flagged."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig
    torch.manual_seed(0)
    cfg = CLIPConfig(text_config=dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      vocab_size=64, bos_token_id=0, eos_token_id=1, pad_token_id=1),
                     vision_config=dict(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                        num_attention_heads=2, image_size=28, patch_size=14), projection_dim=8)
    ref = StableDiffusionSafetyChecker(cfg).eval()
    with torch.no_grad():
        ref.concept_embeds.normal_()
        ref.special_care_embeds.normal_()
        frames = random_frames(16, seed=1)
        embeds = ref.visual_projection(ref.vision_model(pixels(frames))[1])
        cos = torch.nn.functional.normalize(embeds, dim=-1) @ torch.nn.functional.normalize(ref.concept_embeds, dim=-1).T
        ref.concept_embeds_weights.copy_(cos.quantile(0.93, dim=0))            # ~half the frames hit some concept
        ref.special_care_embeds_weights.fill_(2.0)                             # never (a cosine is <= 1)
    path = tmp_path_factory.mktemp("sd") / "safety_checker"
    ref.save_pretrained(path)
    return ref, path


def random_frames(n, seed):
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 48, 3), dtype=np.uint8)


def pixels(frames):
    from nanog4v.vision import preprocess
    return preprocess(frames, 28)


def test_concept_checker_matches_the_stable_diffusion_safety_checker(sd_checker):
    ref, path = sd_checker
    ours = ConceptChecker.from_pretrained(path)
    frames = random_frames(24, seed=2)
    with torch.no_grad():
        ref_embeds = ref.visual_projection(ref.vision_model(pixels(frames))[1])          # (T, P)
        _, ref_flags = ref(pixels(frames), [np.zeros(1)] * len(frames))
    assert (ours.embed(frames) - ref_embeds).abs().max().item() < 1e-5
    flags, scores = ours(frames)
    assert flags.tolist() == ref_flags and 4 <= sum(ref_flags) <= 20 and scores.shape == (24, 17)


def test_special_care_concepts_make_the_check_stricter_as_in_diffusers(sd_checker):
    """A concept 0.005 below its threshold fires only when a special-care concept fired (+0.01)."""
    ref, path = sd_checker
    frames = random_frames(2, seed=3)
    with torch.no_grad():
        e = ref.visual_projection(ref.vision_model(pixels(frames))[1])[0]
        state = {k: v.clone() for k, v in ref.state_dict().items()}
        state["concept_embeds"][0] = e                                          # cosine 1 for frame 0
        state["concept_embeds_weights"][0] = 1.005                              # score round(1 − 1.005) = −0.005
        state["concept_embeds_weights"][1:] = 2.0
        for special_weight, expected in ((2.0, False), (-1.0, True)):           # special care off / on
            state["special_care_embeds_weights"][:] = special_weight
            ref.load_state_dict(state)
            ref.save_pretrained(path.parent / "adjusted")
            _, ref_flags = ref(pixels(frames[:1]), [np.zeros(1)])
            assert ConceptChecker.from_pretrained(path.parent / "adjusted")(frames[:1])[0].tolist() == ref_flags == [expected]


def test_transformers_4_checker_layout_loads_the_same(sd_checker, tmp_path):
    """4.x hub files say vision_model.vision_model.*; 5.x saves vision_model.*."""
    _, path = sd_checker
    old = tmp_path / "old"
    old.mkdir()
    (old / "config.json").write_text((path / "config.json").read_text())
    state = load_file(str(path / "model.safetensors"))
    save_file({("vision_model." + k if k.startswith("vision_model.") else k): v for k, v in state.items()},
              str(old / "model.safetensors"))
    frames = random_frames(6, seed=4)
    a, b = ConceptChecker.from_pretrained(path), ConceptChecker.from_pretrained(old)
    assert torch.equal(a.embed(frames), b.embed(frames))


def test_a_video_is_flagged_when_more_than_4_of_10_frames_are():
    class FlagFirst:                                    # flags the first k frames it is shown
        def __init__(self, k):
            self.k = k

        def __call__(self, frames):
            flags = torch.arange(len(frames)) < self.k
            return flags, flags.float()[:, None]

    frames = np.zeros((10, 8, 8, 3), np.uint8)
    assert [VideoChecker(FlagFirst(k)).check_frames(frames).flagged for k in (0, 4, 5, 10)] == [False, False, True, True]
    assert VideoChecker(FlagFirst(5)).check_frames(frames).reason == "5/10 frames flagged by the FlagFirst"


# --- input video: the toy hazard ------------------------------------------------------------------------------

def test_stripe_detector_flags_hazard_clips_after_h264(tmp_path):
    rng, checker = random.Random(5), VideoChecker(StripeDetector())
    verdicts = []
    for i in range(8):
        hazard = i % 2 == 0
        scene = sample_scene(rng, set(), hazard=hazard)
        if i == 3:                                                              # a hard case: yellow on black
            scene = Scene((Thing("star", "yellow", "large", "centre", "spins"),
                           Thing("heart", "yellow", "small", "left", "grows")), "black")
        path = write_video(tmp_path / f"{i}.mp4", render(scene, 8, 64), 8)
        verdicts.append(checker.check(path).flagged)
    assert verdicts == [True, False] * 4


def test_toy_hazard_concept_is_calibrated_from_rendered_frames():
    """The concept rule on an embedding that sees the stripes; a random ViT falls back to the detector."""
    detector = StripeDetector()
    embed = lambda frames: torch.tensor([[detector.frame_score(f), 0.1] for f in frames])   # (T, 2)
    concept, w = calibrate_concept(embed, render_frames(0, 8, True), render_frames(0, 8, False))
    checker = ConceptChecker(embed, concept[None], torch.tensor([w]))
    assert checker(render_frames(1, 8, True))[0].float().mean() > 0.9
    assert checker(render_frames(1, 8, False))[0].float().mean() == 0
    from nanog4v.config import preset
    from nanog4v.vision import VisionTransformer
    fallback, note = toy_hazard_checker(VisionTransformer(preset("test").vision).eval(), n=4)
    assert isinstance(fallback, StripeDetector) and note.endswith("using the colour-stripe detector")
    assert isinstance(toy_hazard_checker(None)[0], StripeDetector)


# --- output prompt, and the refusals -------------------------------------------------------------------------

def test_output_prompt_check_and_polite_refusals():
    safety = Safety(prompt_concepts=hazard_prompt)
    assert safety.check_prompt("a striped hazard sign in the centre spins").flagged
    assert safety.check_prompt("a man being stabbed").flagged
    assert not safety.check_prompt("a small red circle on the left moves left").flagged
    assert not Safety().check_prompt("a striped hazard sign").flagged   # ZeroScope: lexicon only
    assert not Safety(lexicon=None).check_text("naked people").flagged                    # the pre-check is off
    assert all(is_refusal(text) for text in REFUSALS.values())              # sentences, never a black video


def test_the_default_refusal_detector_reads_real_models_refusals_not_the_toy_markers():
    """The assistant's default (`safety.is_refusal`) knows how instruction-tuned LLaMAs refuse; the toy
    world's detector (any "sorry", "can't", ...) would call ordinary replies refusals."""
    for text in ("I'm sorry, but I can't help with that request.", "I cannot assist with creating that video.",
                 "As an AI language model, I must decline.", "I\u2019m unable to show violent content."):
        assert looks_like_a_refusal(text), text
    for text in ("Sorry for the wait! Here it is: <video> a red circle </video>", "I can't wait to see it.",
                 "The circle moves left."):
        assert not looks_like_a_refusal(text), text
    assert is_refusal("I can't wait to see it.")                        # the toy markers: too broad for real models
