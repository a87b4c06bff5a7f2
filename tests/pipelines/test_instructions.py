"""The `instructions` stage on fixtures written here: LLaVA JSON and messages JSONL (multi-turn, image,
audio, text-only), easy-vqa through the same conversation path, task prompts over a corpus; every reject
reason; the accounting invariant; ids, loss mask and causal start consistent with the chat template."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
from PIL import Image

import pipelines.stages  # noqa: F401  (registers the kinds)
from pipelines.data import schema
from pipelines.execute import execute_stage
from pipelines.manifest import Manifest
from pipelines.stages.corpus import CorpusConfig, SourceConfig
from pipelines.stages.instructions import ConversationSource, InstructionsConfig
from pipelines.stages.text_tokenizer import TextTokenizerConfig
from pipelines.storage import Storage

WORDS = "the quick brown fox jumps over a lazy dog while seven red birds sing softly".split()


def png(seed: int, size=(40, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def wav(seconds: float = 0.5) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    buf = io.BytesIO()
    sf.write(buf, (0.3 * np.sin(2 * np.pi * 300 * t)).astype(np.float32), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def run(storage, stage, kind, cfg, inputs, key):
    data = execute_stage(pipeline="t", stage=stage, kind=kind, key=key, config=cfg, config_dict={}, inputs=inputs,
                         storage=storage)
    return Manifest(dir=storage.output_dir("t", stage, key), data=data, storage_uri=storage.root)


def write_fixtures(root) -> tuple[str, str]:
    (root / "media").mkdir()
    for i in range(3):
        (root / "media" / f"{i}.png").write_bytes(png(i))
    (root / "media" / "clip.wav").write_bytes(wav())
    (root / "media" / "broken.png").write_bytes(b"\x89PNG not really")
    (root.parent / "outside.png").write_bytes(png(9))
    llava = [
        {"id": "two-turns", "image": "media/0.png", "conversations": [
            {"from": "human", "value": "<image>\nwhat is this?"}, {"from": "gpt", "value": "random noise"},
            {"from": "human", "value": "what colour?"}, {"from": "gpt", "value": "many colours"}]},
        {"id": "text-only", "conversations": [
            {"from": "human", "value": "say the lazy dog"}, {"from": "gpt", "value": "the lazy dog"}]},
        {"id": "no-placeholder", "image": "media/1.png", "conversations": [
            {"from": "human", "value": "what is this?"}, {"from": "gpt", "value": "noise"}]},
        {"id": "robot", "conversations": [{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}]},
        {"id": "silent", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": " "}]},
        {"id": "twice", "conversations": [{"from": "human", "value": "a"}, {"from": "human", "value": "b"},
                                          {"from": "gpt", "value": "c"}]},
        {"id": "long", "conversations": [{"from": "human", "value": " ".join(WORDS * 12)},
                                         {"from": "gpt", "value": "ok"}]},
        {"id": "broken", "image": "media/broken.png", "conversations": [
            {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]},
        {"id": "gone", "image": "media/none.png", "conversations": [
            {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]},
        {"id": "escape", "image": "../outside.png", "conversations": [
            {"from": "human", "value": "<image> what?"}, {"from": "gpt", "value": "x"}]},
    ]
    (root / "llava.json").write_text(json.dumps(llava))
    messages = [
        {"messages": [{"role": "system", "content": "answer briefly"},
                      {"role": "user", "content": "<audio>\nwhat do you hear?"},
                      {"role": "assistant", "content": "a tone"}], "audios": ["media/clip.wav"]},
        {"id": "both", "messages": [{"role": "user", "content": "<image><audio> match?"},
                                    {"role": "assistant", "content": "yes"}],
         "images": ["media/2.png"], "audios": ["media/clip.wav"]},
        {"messages": [{"role": "user", "content": "<image> <image> two?"}, {"role": "assistant", "content": "no"}],
         "images": ["media/0.png", "media/1.png"]},
    ]
    # OpenAI's content parts: text joined, media parts their placeholders in place, anything else refused
    parts = [
        {"id": "parts", "messages": [
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what is it?"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "random"}, {"type": "text", "text": "noise"}]}],
         "images": ["media/1.png"]},
        {"id": "parts-url-audio", "messages": [
            {"role": "user", "content": [{"type": "text", "text": "do"},
                                         {"type": "image_url", "image_url": {"url": "media/2.png"}},
                                         {"type": "text", "text": "and"},
                                         {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
                                         {"type": "text", "text": "match?"}]},
            {"role": "assistant", "content": "yes"}], "images": ["media/2.png"], "audios": ["media/clip.wav"]},
        {"id": "video-part", "messages": [
            {"role": "user", "content": [{"type": "video", "video": "clip.mp4"}, {"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": "x"}]},
        {"id": "dict-content", "messages": [{"role": "user", "content": {"text": "hi"}},
                                            {"role": "assistant", "content": "x"}]},
    ]
    (root / "chat.jsonl").write_text("\n".join(json.dumps(m) for m in messages) + "\n{not json\n"
                                     + "\n".join(json.dumps(m) for m in parts) + "\n")
    return str(root / "llava.json"), str(root / "chat.jsonl")


@pytest.fixture(scope="module")
def built(tmp_path_factory, local_ray_module):
    root = tmp_path_factory.mktemp("instr") / "data"
    root.mkdir()
    llava, chat = write_fixtures(root)
    corpus_dir = root / "corpus"
    corpus_dir.mkdir()
    rows = []
    for i in range(8):
        (corpus_dir / f"{i}.png").write_bytes(png(20 + i))
        rows.append({"image": f"{i}.png", "text": " ".join(WORDS[i:i + 5]), "label": i % 3})
    rows.append({"text": " ".join(WORDS[:8])})
    # audio + text: a read transcript in `pics`, a spoken description in `talk` (a spoken-caption source)
    (corpus_dir / "read.wav").write_bytes(wav(0.3))
    (corpus_dir / "told.wav").write_bytes(wav(0.4))
    rows.append({"audio": "read.wav", "text": "seven red birds"})
    (corpus_dir / "index.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    (corpus_dir / "talk.jsonl").write_text(json.dumps({"audio": "told.wav", "text": "a dog on a lazy day"}))
    storage = Storage(str(root.parent / "store"))
    corpus = run(storage, "corpus", "corpus", CorpusConfig(
        sources=[SourceConfig(name="pics", format="jsonl", path=str(corpus_dir / "index.jsonl")),
                 SourceConfig(name="talk", format="jsonl", path=str(corpus_dir / "talk.jsonl"))],
        val_fraction=0.0, rows_per_file=16), {}, "c")
    tok = run(storage, "tok", "text-tokenizer", TextTokenizerConfig(vocab_size=120, seed=0), {"corpus": corpus}, "t")
    cfg = InstructionsConfig(
        sources=[ConversationSource(name="llava", format="llava", path=llava),
                 ConversationSource(name="chat", format="messages", path=chat),
                 ConversationSource(name="vqa", format="easy-vqa", limit=6)],
        max_text_tokens=160, image_resolution=16, rows_per_file=8, records_per_task=4, val_fraction=0.0)
    cfg.tasks.label_questions = {"pics": "which class is it?"}
    cfg.tasks.spoken_caption_sources = ["talk"]
    inputs = {"tok": tok, "corpus": corpus}
    out = run(storage, "instructions", "instructions", cfg, inputs, "i")
    return out, tok, (storage, cfg, inputs)


def table(m: Manifest, prefix: str):
    import pyarrow as pa

    parts = [pq.read_table(m.path(f["path"])) for f in m.files if f["path"].startswith(prefix)]
    return pa.concat_tables(parts).to_pylist() if parts else []


def test_every_reject_reason_and_the_accounting(built):
    m, _, _ = built
    rejects = {r["key"]: r["reason"] for r in table(m, "rejects/")}
    assert rejects == {
        "llava/no-placeholder": "placeholder_mismatch", "llava/robot": "unknown_role",
        "llava/silent": "empty_response", "llava/twice": "turns_not_alternating",
        "llava/long": "no_supervised_tokens", "llava/broken": "corrupt_image",
        "llava/gone": "missing_member", "llava/escape": "unsafe_path",
        "chat/chat.jsonl:3": "unsupported_format", "chat/chat.jsonl:4": "read_error",
        "chat/video-part": "unsupported_format", "chat/dict-content": "read_error",
    }
    counts = m.extra["counts"]
    assert counts["read"] == counts["accepted"] + counts["rejected"]
    assert counts["rejected"] == len(rejects)
    assert set(schema.INSTRUCTION_REJECT_REASONS) <= set(rejects.values())


def test_rows_hold_media_features_and_a_consistent_mask(built):
    m, tok, _ = built
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=tok.path("text.model"))
    rows = {r["sample_id"]: r for r in table(m, "train/") + table(m, "val/")}
    two = rows["llava/two-turns"]
    assert two["modalities"] == ["text", "image"] and len(two["pixels"]) == 3 * 16 * 16
    assert two["fbank"] is None and two["image_tokens"] is None  # no visual tokenizer input
    assert len(two["loss_mask"]) == len(two["text_ids"]) <= 160
    assert two["text_ids"][0] == sp.bos_id()
    # the supervised tokens are the two answers, each with its eos, and nothing else
    ids, mask = two["text_ids"], two["loss_mask"]
    spans, cur = [], []
    for i, flag in zip(ids, mask):
        if flag:
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    spans.append(cur) if cur else None
    assert [sp.decode(s[:-1]) for s in spans] == ["random noise", "many colours"]
    assert all(s[-1] == sp.eos_id() for s in spans)
    assert not mask[two["causal_start"] - 1] and mask[two["causal_start"]]
    # validation's reference is the first answer only (the one generated from the first prompt)
    from pipelines.train.instruct_task import first_answer_stop

    stop = first_answer_stop(mask, two["causal_start"])
    assert sp.decode(ids[two["causal_start"]:stop - 1]) == "random noise" and ids[stop - 1] == sp.eos_id()
    assert (two["prompt"], two["answer"]) == ("what colour?", "many colours")
    audio = rows["chat/chat.jsonl:1"]
    assert audio["modalities"] == ["text", "audio"] and audio["fbank_frames"] > 0
    assert len(audio["fbank"]) == audio["fbank_frames"] * 128 * 2
    assert rows["chat/both"]["modalities"] == ["text", "image", "audio"]
    assert rows["llava/text-only"]["modalities"] == ["text"]


def test_messages_content_parts_become_text_and_placeholders(built):
    m, _, _ = built
    rows = {r["sample_id"]: r for r in table(m, "train/") + table(m, "val/")}
    parts = rows["chat/parts"]
    assert (parts["prompt"], parts["answer"]) == ("<image>\nwhat is it?", "random\nnoise")
    assert parts["modalities"] == ["text", "image"]
    both = rows["chat/parts-url-audio"]
    assert both["prompt"] == "do\n<image>\nand\n<audio>\nmatch?" and both["modalities"] == ["text", "image", "audio"]
    details = {r["key"]: r["detail"] for r in table(m, "rejects/")}
    assert "type 'video'" in details["chat/video-part"] and "{'text'" not in details["chat/dict-content"]
    assert "content is dict" in details["chat/dict-content"]


def test_easy_vqa_and_corpus_tasks_go_through_the_same_path(built):
    m, _, _ = built
    rows = table(m, "train/") + table(m, "val/")
    vqa = [r for r in rows if r["source"] == "vqa"]
    assert len(vqa) == 12 and {r["split"] for r in vqa} == {"train", "val"}  # 6 per easy-vqa split
    import easy_vqa

    questions, answers, _ = easy_vqa.get_train_questions()
    first = next(r for r in vqa if r["sample_id"] == "vqa/train/0")
    assert first["answer"] == answers[0] and questions[0] in first["prompt"]
    tasks = m.extra["rows_per_task"]
    assert tasks["caption"] == 8 and tasks["label"] == 8 and tasks["match"] == 8
    assert tasks["match_negative"] == 8 and tasks["infill"] == 1
    assert tasks["transcribe"] == 1 and tasks["spoken_caption"] == 1
    templates = InstructionsConfig().tasks
    transcribe = next(r for r in rows if r["task"] == "transcribe")
    assert (transcribe["prompt"], transcribe["answer"]) == ("<audio>\n" + templates.transcribe, "seven red birds")
    spoken = next(r for r in rows if r["task"] == "spoken_caption")
    assert (spoken["prompt"], spoken["answer"]) == ("<audio>\n" + templates.spoken_caption, "a dog on a lazy day")
    for r in (transcribe, spoken):
        assert r["modalities"] == ["text", "audio"] and r["fbank_frames"] > 0 and r["pixels"] is None
    label = next(r for r in rows if r["task"] == "label")
    assert label["prompt"].endswith("which class is it?") and label["answer"] in ("0", "1", "2")
    negative = [r for r in rows if r["task"] == "match_negative"]
    assert all(r["answer"] == "no" for r in negative)


def test_same_inputs_give_the_same_bytes(built):
    m, _, (storage, cfg, inputs) = built
    # a rerun (another key) writes the same files: records, their order and the negatives are deterministic
    again = run(storage, "instructions", "instructions", cfg, inputs, "i2")
    assert {f["path"]: f["sha256"] for f in again.files} == {f["path"]: f["sha256"] for f in m.files}
