"""Data construction (§3.4): TF-IDF, retrieval of related captions, prompts, writers, tag checks."""
import dataclasses
import io
import json
import math
import re

import numpy as np
import pytest
import torch

from conftest import train_tiny_tokenizer
from nanog4v import datagen
from nanog4v.config import preset
from nanog4v.datagen import (Caption, DialogueError, OpenAIChatWriter, TemplateWriter, TfidfEmbedder,
                             build_dialogues, multi_video_prompt, parse_dialogue, read_captions,
                             single_video_prompt, top_k_related, video_tags)
from nanog4v.llama import LLaMA
from nanog4v.llm_writer import CHAT_TEMPLATES, LocalLlamaWriter
from nanog4v.readers import read_records
from nanog4v.weights import save_llama

COLOURS = ["red", "blue", "green", "yellow"]
SHAPES = ["circle", "square", "triangle"]
MOTIONS = ["moves left", "moves right", "spins", "grows"]
TOY = [Caption(f"v{i:03d}", f"a {c} {s} {m}") for i, (c, s, m) in
       enumerate((c, s, m) for c in COLOURS for s in SHAPES for m in MOTIONS)]   # 48 distinct captions


def test_tfidf_cosine_by_hand():
    docs = ["red circle", "red square", "blue square square"]
    e = TfidfEmbedder()(docs)
    # n = 3; df: red 2, square 2, circle 1, blue 1; idf = ln((1+n)/(1+df)) + 1
    a, b = math.log(4 / 3) + 1, math.log(4 / 2) + 1           # idf of a df-2 term, of a df-1 term
    cos01 = (a * a) / (math.hypot(a, b) * math.hypot(a, a))  # share "red"
    cos12 = (a * 2 * a) / (math.hypot(a, a) * math.hypot(b, 2 * a))  # share "square" (tf 1 and 2)
    sims = e @ e.T
    assert sims[0, 1] == pytest.approx(cos01, abs=1e-6) and cos01 == pytest.approx(0.42804, abs=1e-5)
    assert sims[1, 2] == pytest.approx(cos12, abs=1e-6) and cos12 == pytest.approx(0.59086, abs=1e-5)
    assert sims[0, 2] == pytest.approx(0.0, abs=1e-7)
    assert np.allclose(np.diag(sims), 1.0, atol=1e-6)


def test_top_k_matches_brute_force_and_excludes_self():
    emb = np.random.default_rng(0).normal(size=(40, 16))
    top = top_k_related(emb, k=10, chunk=7)                   # chunks must not matter
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    sims = unit @ unit.T
    np.fill_diagonal(sims, -np.inf)
    assert top.shape == (40, 10)
    assert np.array_equal(top, np.argsort(-sims, axis=1, kind="stable")[:, :10])
    assert not (top == np.arange(40)[:, None]).any()


def test_top_k_excludes_same_text_and_pads():
    texts = ["a red circle", "a red circle", "a red square", "a blue square"]
    groups = np.unique(texts, return_inverse=True)[1]
    top = top_k_related(TfidfEmbedder()(texts), k=4, groups=groups)
    assert top[0].tolist() == [2, 3, -1, -1]                  # not itself, not its twin (row 1)
    assert top[1].tolist() == [2, 3, -1, -1]
    assert top[2].tolist() == [3, 0, 1, -1]                   # "square" outweighs "red"; tie 0/1 by index


def test_build_is_deterministic_with_seed_and_pairs_related_captions():
    writer = TemplateWriter(seed=0)
    run = lambda seed: build_dialogues(TOY, writer, n_single=5, n_multi=20, seed=seed)
    (r1, s1), (r2, _), (r3, _) = run(0), run(0), run(1)
    assert r1 == r2 and not s1 and len(r1) == 25
    assert r1 != r3
    texts = [c.caption for c in TOY]
    top = top_k_related(TfidfEmbedder()(texts), k=10)
    multi = [r for r in r1 if r["kind"] == "multi"]
    assert {len(r["sources"]) for r in multi} == {2, 3}       # one or two related captions
    for r in multi:
        anchor, *related = [texts.index(s["caption"]) for s in r["sources"]]
        assert set(related) <= set(top[anchor].tolist()) and anchor not in related


def test_prompts_contain_the_captions_and_the_tag_format():
    p = single_video_prompt("a red circle moves left")
    assert "Video 1: a red circle moves left" in p and "<video>" in p and "</video>" in p
    caps = ["a red circle spins", "a blue circle spins", "a red square spins"]
    p = multi_video_prompt(caps)
    assert datagen.captions_in_prompt(p) == caps
    assert all(f"<video{k}>" in p and f"</video{k}>" in p for k in (1, 2, 3))


@pytest.mark.parametrize("caps", [["a red circle moves left"], ["a red circle spins", "a blue circle spins"],
                                  ["a red circle spins", "a blue circle spins", "a red square grows"]])
def test_template_writer_closes_every_tag(caps):
    prompt = single_video_prompt(caps[0]) if len(caps) == 1 else multi_video_prompt(caps)
    for seed in range(10):
        text = TemplateWriter(seed).write(prompt)
        turns = parse_dialogue(text, len(caps))
        shown = [t for turn in turns if turn["from"] == "ai" for t in video_tags(turn["value"], len(caps))]
        assert shown == [(k, c) for k, c in enumerate(caps, 1)]   # each video once, in order, verbatim
        n_open = len(re.findall(r"<video\d*>", text))
        assert n_open == len(re.findall(r"</video\d*>", text)) == len(caps)
    assert TemplateWriter(3).write(prompt) == TemplateWriter(3).write(prompt)


@pytest.mark.parametrize("text, n, reason", [
    ("Human: hi\nAI: <video> a cat", 1, "never closed"),
    ("Human: hi\nAI: <video1> a cat </video1>", 1, "1-video dialogue"),
    ("Human: hi\nAI: <video> a cat </video>", 2, "2-video dialogue"),
    ("Human: hi\nAI: <video1> a </video2> <video2> b </video2>", 2, "unbalanced"),
    ("Human: hi\nAI: <video1> a </video1> <video3> b </video3>", 2, "only 2 videos"),
    ("Human: hi\nAI: <video1> a </video1>", 2, "never shown: [2]"),
    ("Human: <video> a cat </video>\nAI: ok <video> a cat </video>", 1, "human turn"),
    ("Human: hi\nAI: <video>  </video>", 1, "empty prompt"),
    ("AI: <video> a cat </video>", 1, "starting with the human"),
    ("Human: hi\nHuman: hi\nAI: <video> a cat </video>", 1, "alternate"),
])
def test_bad_dialogues_are_rejected_with_a_reason(text, n, reason):
    with pytest.raises(DialogueError, match=re.escape(reason)):
        parse_dialogue(text, n)


def test_parse_keeps_multiline_turns():
    turns = parse_dialogue("Human: show me\nAI: Sure.\n<video> a dog runs </video>\nEnjoy!", 1)
    assert turns == [{"from": "human", "value": "show me"},
                     {"from": "ai", "value": "Sure.\n<video> a dog runs </video>\nEnjoy!"}]


def test_bad_writer_output_is_skipped_and_counted():
    class Broken:
        def __init__(self, reply):
            self.reply = reply

        def write(self, prompt):
            return self.reply
    records, skipped = build_dialogues(TOY, Broken("Human: hi\nAI: <video> unclosed"), n_single=3, n_multi=0)
    assert records == [] and skipped == {"tag for video 1 never closed": 3}
    records, skipped = build_dialogues(TOY, Broken("AI: hello"), n_single=3, n_multi=2)
    assert records == [] and skipped == {"not a dialogue starting with the human": 5}


def test_openai_writer_request(monkeypatch):
    seen = {}

    def fake_urlopen(request, timeout):
        seen.update(url=request.full_url, auth=request.get_header("Authorization"),
                    body=json.loads(request.data))
        reply = {"choices": [{"message": {"content": "Human: hi\nAI: <video> a cat </video>"}}]}
        return io.BytesIO(json.dumps(reply).encode())

    monkeypatch.setattr(datagen.urllib.request, "urlopen", fake_urlopen)
    text = OpenAIChatWriter("gpt-4", api_key="k", base_url="http://localhost:1/v1/").write("PROMPT")
    assert text.endswith("</video>") and seen["url"] == "http://localhost:1/v1/chat/completions"
    assert seen["auth"] == "Bearer k" and seen["body"]["messages"] == [{"role": "user", "content": "PROMPT"}]
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(RuntimeError, match="datagen.py: no API key"):
        OpenAIChatWriter().write("PROMPT")


def test_read_captions_and_cli(tmp_path, capsys):
    csv_path = tmp_path / "webvid.csv"   # WebVid's own column names
    csv_path.write_text("videoid,name,page_dir\n1,A red circle spins.,x\n2,,x\n3,a blue circle spins,x\n")
    assert read_captions(csv_path) == [Caption("1", "A red circle spins."),
                                       Caption("3", "a blue circle spins")]
    with pytest.raises(ValueError, match=r"webvid\.csv:3: no caption"):
        read_captions(csv_path, strict=True)
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text("\n".join(json.dumps({"id": c.id, "caption": c.caption}) for c in TOY[:12]))
    out = tmp_path / "dialogues.jsonl"
    args = ["--captions", str(jsonl), "--out", str(out), "--n-single", "4", "--n-multi", "4"]
    assert datagen.main(args) == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 8 and {r["kind"] for r in records} == {"single", "multi"}
    assert all(r["conversations"][0]["from"] == "human" for r in records)
    assert datagen.main(["--captions", str(tmp_path / "missing.csv"), "--out", str(out)]) == 2
    assert "missing.csv: no such caption table" in capsys.readouterr().err


def test_template_writer_puts_a_webvid_caption_in_a_sentence():
    text = TemplateWriter(0).write(single_video_prompt("A dog runs on the beach."))
    assert "<video> a dog runs on the beach </video>" in text
    text = TemplateWriter(0).write(single_video_prompt("UFO lands in a field"))
    assert "<video> UFO lands in a field </video>" in text


# --- the local writer: a chat LLaMA through our own load_llama / Tokenizer / generate ----------------

REPLY = "Human: Show me something calm.\nAI: Here you go: <video> a sleeping kitten </video>"


@pytest.fixture(scope="module")
def chat_tokenizer(tmp_path_factory):
    """Whole words and tags as single pieces, so that no piece of REPLY occurs twice."""
    lines = REPLY.split("\n") * 100 + single_video_prompt("a sleeping kitten").split("\n") * 5
    return train_tiny_tokenizer(tmp_path_factory.mktemp("chat") / "tokenizer.model", lines, hard_vocab_limit=False,
                                user_defined_symbols=["Human:", "AI:", "▁<video>", "▁</video>"])


def tiny_chat_llama(tokenizer, max_seq_len=1024):
    cfg = preset("test").llama
    return LLaMA(dataclasses.replace(cfg, vocab_size=tokenizer.vocab_size, max_seq_len=max_seq_len))


def rig_to_say(model, tokenizer, last_prompt_id: int, text: str):
    """Make greedy decoding after `last_prompt_id` write `text`, then </s>: every block's output projections
    are zeroed, so the last hidden state is the current token's embedding; each token of the chain gets a
    one-hot embedding (dim d), and the LM head maps that one-hot to the next token's id (logit √d vs 0)."""
    chain = [last_prompt_id] + tokenizer.encode(text) + [tokenizer.eos_id]
    assert len(set(chain[:-1])) == len(chain) - 1 <= model.cfg.dim, "every token once: the next one is a function of it"
    with torch.no_grad():
        for layer in model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        model.lm_head.weight.zero_()
        for slot, (token, following) in enumerate(zip(chain, chain[1:])):
            model.embed_tokens.weight[token] = torch.nn.functional.one_hot(torch.tensor(slot), model.cfg.dim)
            model.lm_head.weight[following, slot] = 1.0
    return model


def test_local_writer_chat_prompt(chat_tokenizer):
    model = tiny_chat_llama(chat_tokenizer)
    prompt = single_video_prompt("a sleeping kitten")
    llama2 = LocalLlamaWriter(model, chat_tokenizer)
    assert llama2.chat_ids(prompt) == [1] + chat_tokenizer.encode(f"[INST] {prompt.strip()} [/INST]")
    assert llama2.cfg.stop == ("[INST]",) and llama2.cfg.temperature == 0.7 and llama2.cfg.top_p == 0.9
    vicuna = LocalLlamaWriter(model, chat_tokenizer, "vicuna")
    assert chat_tokenizer.decode(vicuna.chat_ids(" hi ")) == CHAT_TEMPLATES["vicuna"].text.format(prompt="hi")
    assert vicuna.chat_ids(" hi ")[-1] == chat_tokenizer.encode("USER: hi ASSISTANT:")[-1]
    custom = LocalLlamaWriter(model, chat_tokenizer, "<<{prompt}>>")
    assert custom.chat_ids("hi") == [1] + chat_tokenizer.encode("<<hi>>") and custom.cfg.stop == ()
    with pytest.raises(ValueError, match="chat template 'chatml' is not one of"):
        LocalLlamaWriter(model, chat_tokenizer, "chatml")
    small = tiny_chat_llama(chat_tokenizer)
    small.cfg = dataclasses.replace(small.cfg, vocab_size=chat_tokenizer.vocab_size - 1)
    n = chat_tokenizer.vocab_size
    with pytest.raises(ValueError, match=f"has {n} pieces, but the model has only {n - 1} embeddings"):
        LocalLlamaWriter(small, chat_tokenizer)
    short = LocalLlamaWriter(tiny_chat_llama(chat_tokenizer, max_seq_len=256), chat_tokenizer)
    n = len(short.chat_ids(prompt))
    with pytest.raises(ValueError, match=f"the chat prompt is {n} tokens, the model's context only 256"):
        short.write(prompt)


def test_local_writer_dialogues_pass_the_stage2_reader(chat_tokenizer, tmp_path, capsys):
    """A LLaMA saved in HF's layout, rigged so that greedy decoding writes REPLY: loaded back, the writer
    returns exactly REPLY, build_dialogues parses it as it does the API writer's, and read_records accepts
    the file that datagen's command line writes."""
    last = LocalLlamaWriter(tiny_chat_llama(chat_tokenizer), chat_tokenizer).chat_ids("x")[-1]   # "]" of [/INST]
    save_llama(rig_to_say(tiny_chat_llama(chat_tokenizer), chat_tokenizer, last, REPLY), tmp_path / "llm")
    (tmp_path / "llm" / "tokenizer.model").write_bytes(chat_tokenizer.path.read_bytes())
    writer = LocalLlamaWriter.from_pretrained(tmp_path / "llm", temperature=0)
    assert writer.write(single_video_prompt("a sleeping kitten")) == REPLY
    records, skipped = build_dialogues(TOY, writer, n_single=1, n_multi=1)
    [(reason, count)] = skipped.items()                                  # REPLY shows one video, not 2 or 3
    assert re.fullmatch(r"tag <video> in a [23]-video dialogue", reason) and count == 1
    assert records[0]["conversations"] == [{"from": "human", "value": "Show me something calm."},
                                           {"from": "ai", "value": "Here you go: <video> a sleeping kitten </video>"}]
    captions, out = tmp_path / "caps.jsonl", tmp_path / "dialogues.jsonl"
    captions.write_text("".join(json.dumps({"id": c.id, "caption": c.caption}) + "\n" for c in TOY[:12]))
    args = ["--captions", str(captions), "--out", str(out), "--n-single", "2", "--n-multi", "1",
            "--writer", "local", "--llm", str(tmp_path / "llm"), "--temperature", "0"]
    assert datagen.main(args) == 0
    assert re.fullmatch(rf"{re.escape(str(out))}: 2 dialogues, 1 skipped {{'tag <video> in a [23]-video dialogue': 1}}\n",
                        capsys.readouterr().out)
    assert read_records([out], log=lambda line: None) == [
        {"videos": [], "id": f"single-00000{i}", "source": f"{out}:{i + 1}",
         "turns": [{"from": "human", "value": "Show me something calm."},
                   {"from": "ai", "value": "Here you go: <video> a sleeping kitten </video>"}]} for i in (0, 1)]
    assert datagen.main([*args[:6], "--writer", "local", "--llm", str(tmp_path / "absent")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'absent'}: no such file or directory\n"
    assert datagen.main([*args, "--tokenizer", str(tmp_path / "none.model")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'none.model'}: no such tokenizer file\n"
    with pytest.raises(SystemExit):
        datagen.main([*args[:6], "--writer", "local"])
    assert "--writer local needs --llm DIR" in capsys.readouterr().err


def test_local_writer_samples_with_a_seed_per_prompt(chat_tokenizer):
    """A random tiny LLaMA writes gibberish, but the same (seed, prompt) gives the same text in any order."""
    model = tiny_chat_llama(chat_tokenizer)
    p1, p2 = single_video_prompt("a sleeping kitten"), single_video_prompt("a red circle spins")
    writer = lambda seed: LocalLlamaWriter(model, chat_tokenizer, temperature=1.0, top_p=1.0, max_new_tokens=12,
                                           seed=seed)
    a1, a2 = writer(0).write(p1), writer(0).write(p2)
    w = writer(0)
    assert (w.write(p2), w.write(p1)) == (a2, a1)
    assert a1 != a2 and writer(1).write(p1) != a1
    assert len(chat_tokenizer.encode(a1)) >= 6                              # sampled text, not an early </s>
