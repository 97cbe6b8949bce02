"""GPT4Video wired together: the splice, Eq. 5, the two training stages, save/load of the trainable parts."""
import pytest
import torch
import transformers

from nanog4v.config import preset
from nanog4v.data import IGNORE, collate, encode_conversation
from nanog4v.model import GPT4Video, lm_loss, splice_video
from nanog4v.weights import CheckpointError, load_gpt4video, save_llama

CFG = preset("test")
N = CFG.abstractor.num_queries
S = CFG.vision.image_size


@pytest.fixture
def tokenizer(tiny_tokenizer):
    return tiny_tokenizer


def batch_of(tokenizer, conversations, videos_per_conv):
    """Encode conversations and attach random pixel videos (V, T, 3, S, S) to each example."""
    examples = []
    for conv, v in zip(conversations, videos_per_conv):
        enc = encode_conversation(tokenizer, conv, num_video_tokens=N)
        enc["videos"] = torch.randn(v, CFG.num_frames, 3, S, S) if v else None
        examples.append(enc)
    return collate(examples, tokenizer.pad_id)


def one_video(question, answer):
    return {"videos": ["a.mp4"], "turns": [{"from": "human", "video": 0},
                                          {"from": "human", "value": question},
                                          {"from": "ai", "value": answer}]}


def two_videos():
    return {"videos": ["a.mp4", "b.mp4"], "turns": [
        {"from": "human", "video": 0}, {"from": "human", "video": 1},
        {"from": "human", "value": "what is the colour of it"}, {"from": "ai", "value": "red then blue."}]}


def test_splice_puts_each_video_at_its_slot_and_leaves_text_alone():
    embeds = torch.randn(2, 20, 8)
    videos = torch.randn(3, 4, 8)
    out = splice_video(embeds, videos, [(0, 2, 1), (1, 5, 0), (1, 12, 2)])
    assert torch.equal(out[0, 2:6], videos[1])
    assert torch.equal(out[1, 5:9], videos[0])
    assert torch.equal(out[1, 12:16], videos[2])
    text = torch.ones(2, 20, dtype=torch.bool)
    text[0, 2:6] = text[1, 5:9] = text[1, 12:16] = False
    assert torch.equal(out[text], embeds[text])
    with pytest.raises(ValueError, match="does not fit"):
        splice_video(embeds, videos, [(0, 18, 0)])


def test_forward_splices_projected_video_features(tokenizer):
    model = GPT4Video(CFG).eval()
    batch = batch_of(tokenizer, [two_videos(), one_video("what is it", "a square.")], [2, 1])
    seen = {}
    model.llm.register_forward_pre_hook(lambda m, a, kw: seen.update(embeds=kw["embeds"]), with_kwargs=True)
    with torch.no_grad():
        logits, loss = model(batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"],
                             video_slots=batch["video_slots"], videos=batch["videos"])
        video_tokens = model.encode_video(batch["videos"])                   # (3, N, d)
        text = model.llm.embed_tokens(batch["input_ids"])
    assert video_tokens.shape == (3, N, CFG.llama.dim)
    assert logits.shape == (*batch["input_ids"].shape, CFG.llama.vocab_size)
    assert [k for _, _, k in batch["video_slots"]] == [0, 1, 2]
    is_text = torch.ones(batch["input_ids"].shape, dtype=torch.bool)
    for row, start, k in batch["video_slots"]:
        assert torch.allclose(seen["embeds"][row, start:start + N], video_tokens[k], atol=1e-6)
        is_text[row, start:start + N] = False
    assert torch.equal(seen["embeds"][is_text], text[is_text])
    assert torch.isfinite(loss)


def test_loss_is_eq5_over_the_ai_tokens_only():
    logits = torch.randn(1, 6, 11)
    labels = torch.tensor([[IGNORE, IGNORE, 4, 7, IGNORE, 2]])
    expected = -(torch.log_softmax(logits[0, 1], -1)[4] + torch.log_softmax(logits[0, 2], -1)[7]
                 + torch.log_softmax(logits[0, 4], -1)[2]) / 3
    assert torch.allclose(lm_loss(logits, labels), expected, atol=1e-6)


def test_sequence_longer_than_the_context_is_refused():
    model = GPT4Video(CFG)
    with pytest.raises(ValueError, match="exceeds max_seq_len"):
        model(torch.zeros(1, CFG.llama.max_seq_len + 1, dtype=torch.long))


@pytest.mark.parametrize("stage", [1, 2])
def test_a_training_step_lowers_the_loss_and_touches_only_its_stage(tokenizer, stage):
    torch.manual_seed(0)
    model = GPT4Video(CFG)
    if stage == 1:
        batch = batch_of(tokenizer, [one_video("what is it", "a red circle."),
                                     one_video("what is the colour", "blue.")], [1, 1])
    else:  # stage 2 is text only
        batch = batch_of(tokenizer, [{"videos": [], "turns": [
            {"from": "human", "value": "show a red circle"},
            {"from": "ai", "value": "here: <video> a red circle moves left </video>"}]}], [0])
    params = model.set_stage(stage)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("abstractor.") if stage == 1 else "lora_" in n for n in trainable)
    assert stage == 1 or model.has_lora
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW(params, lr=1e-2)
    model.train()

    def loss():
        return model(batch["input_ids"], batch["labels"], attention_mask=batch["attention_mask"],
                     video_slots=batch["video_slots"], videos=batch["videos"])[1]

    first = loss()
    first.backward()
    opt.step()
    with torch.no_grad():
        model.eval()
        after = loss()
    assert after < first.detach()
    for name, p in model.named_parameters():
        changed = not torch.equal(p, before[name])
        assert changed == (name in trainable), name


def test_save_and_load_the_trainable_parts(tokenizer, tmp_path):
    torch.manual_seed(0)
    model = GPT4Video(CFG)
    save_llama(model.llm, tmp_path / "llama")      # the frozen base weights (save_llama refuses unmerged LoRA)
    model.set_stage(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    # the frozen parts in their official layouts
    v = CFG.vision
    hf_vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
        hidden_size=v.dim, num_hidden_layers=v.n_layers, num_attention_heads=v.n_heads,
        intermediate_size=v.mlp_dim, image_size=v.image_size, patch_size=v.patch_size, hidden_act="quick_gelu"))
    hf_vision.save_pretrained(tmp_path / "vit", safe_serialization=True)
    from nanog4v.weights import load_vision
    model.vision = load_vision(tmp_path / "vit")
    model.save_pretrained(tmp_path / "g4v")

    loaded = load_gpt4video(tmp_path / "g4v", vision_path=tmp_path / "vit", llama_path=tmp_path / "llama")
    batch = batch_of(tokenizer, [one_video("what is it", "a red circle.")], [1])
    model.eval()
    with torch.no_grad():
        a = model(batch["input_ids"], video_slots=batch["video_slots"], videos=batch["videos"])[0]
        b = loaded(batch["input_ids"], video_slots=batch["video_slots"], videos=batch["videos"])[0]
    assert torch.allclose(a, b, atol=1e-5), (a - b).abs().max()

    (tmp_path / "g4v" / "gpt4video.safetensors").unlink()
    with pytest.raises(CheckpointError, match="gpt4video.safetensors"):
        load_gpt4video(tmp_path / "g4v", vision_path=tmp_path / "vit", llama_path=tmp_path / "llama")
