"""Conversation records for the `instructions` stage: the formats users bring, and OFA-style task prompts
over a corpus.

Every reader yields the same record, one conversation:

    {"source", "key", "turns": [[role, text], ...], "images": [path or bytes], "audios": [path or bytes],
     "task", "split" (or None: by a hash of the sample id)}

Formats:
- `llava`: LLaVA's conversation JSON, a list of `{"id", "image": "rel/path", "conversations":
  [{"from": "human" | "gpt", "value": "<image>\\n..."}]}` (`image` optional, or a list).
- `messages`: OpenAI-style JSONL, one `{"messages": [{"role", "content"}], "images": [...], "audios": [...]}`
  per line (LLaMA-Factory's layout). `content` is a string or OpenAI's list of parts: `{"type": "text",
  "text"}` parts joined by newlines, an `image` / `image_url` part the `<image>` placeholder at its place,
  an `audio` / `input_audio` part `<audio>` (the files themselves come from `images` / `audios`); any other
  part type is `unsupported_format`, any other content `read_error`.
- `easy-vqa`: the `easy-vqa` package's shapes and questions, converted to the same conversations (its
  train split -> train, its test split -> val).
Media paths are relative to the file that names them; a path that climbs out of it is refused later
(`unsafe_path`), as in the corpus stage.
"""

from __future__ import annotations

import json
import os
import random
from typing import Iterator

from tasks.chat import PLACEHOLDERS, ConversationError


def _record(source: str, key: str, turns, images=(), audios=(), task: str = "conversation",
            split: str | None = None, base: str = "") -> dict:
    def where(items):
        items = [items] if isinstance(items, (str, bytes)) else list(items or [])
        return [os.path.join(base, p) if isinstance(p, str) and base and not os.path.isabs(p) else p
                for p in items]

    return {"source": source, "key": str(key), "turns": [[str(r), t] for r, t in turns],
            "images": where(images), "audios": where(audios), "task": task, "split": split,
            "base": base, "reason": "", "detail": ""}


def _bad(source: str, key: str, reason: str, detail: str) -> dict:
    rec = _record(source, key, [])
    rec.update(reason=reason, detail=detail[:300])
    return rec


def read_llava(source: str, path: str) -> Iterator[dict]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        with open(path, encoding="utf-8") as f:
            items = json.load(f)
    except (OSError, ValueError) as e:
        yield _bad(source, os.path.basename(path), "read_error", f"{type(e).__name__}: {e}")
        return
    if not isinstance(items, list):
        yield _bad(source, os.path.basename(path), "read_error", "expected a JSON list of conversations")
        return
    for i, item in enumerate(items):
        key = str(item.get("id", i)) if isinstance(item, dict) else str(i)
        if not isinstance(item, dict) or not isinstance(item.get("conversations"), list):
            yield _bad(source, key, "read_error", "an item needs a `conversations` list")
            continue
        try:
            turns = [(t["from"], t["value"]) for t in item["conversations"]]
        except (TypeError, KeyError) as e:
            yield _bad(source, key, "read_error", f"a turn needs `from` and `value`: {e!r}")
            continue
        yield _record(source, key, turns, item.get("image") or [], item.get("audio") or [], base=base)


# OpenAI content part types -> the modality whose placeholder they stand for ("text" parts give their text)
_PART_MODALITIES = {"image": "image", "image_url": "image", "audio": "audio", "input_audio": "audio"}


def _content_text(content, where: str) -> str | None:
    """A message's `content` -> its text: a string (or null) as it is, a list of parts joined in order."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ConversationError("read_error", f"{where}: content is {type(content).__name__}; expected a string or a "
                                        "list of parts")

    texts = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind in _PART_MODALITIES:
            texts.append(PLACEHOLDERS[_PART_MODALITIES[kind]])
        elif isinstance(kind, str) and kind != "text":
            raise ConversationError("unsupported_format", f"{where}, part {j + 1}: type {kind!r} (known: text, "
                                                    f"{', '.join(_PART_MODALITIES)})")
        else:
            raise ConversationError("read_error", f"{where}, part {j + 1}: expected {{\"type\": \"text\", \"text\": "
                                            f"str}} or a media part, got {json.dumps(part)[:80]}")
    return "\n".join(texts)


def read_messages(source: str, path: str) -> Iterator[dict]:
    base = os.path.dirname(os.path.abspath(path))
    try:
        lines = open(path, encoding="utf-8").read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        yield _bad(source, os.path.basename(path), "read_error", f"{type(e).__name__}: {e}")
        return
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        key = f"{os.path.basename(path)}:{i + 1}"
        try:
            item = json.loads(line)
            turns = [(m["role"], _content_text(m["content"], f"line {i + 1}, message {n + 1}"))
                     for n, m in enumerate(item["messages"])]
        except ConversationError as e:  # the line parsed: its own id names the reject
            yield _bad(source, str(item.get("id", key)), e.reason, e.detail)
            continue
        except (ValueError, TypeError, KeyError) as e:
            yield _bad(source, key, "read_error", f"line {i + 1}: {type(e).__name__}: {e}")
            continue
        yield _record(source, str(item.get("id", key)), turns, item.get("images") or [], item.get("audios") or [],
                      base=base)


def read_easy_vqa(source: str, prompt: str, limit: int = 0) -> Iterator[dict]:
    """easy-vqa's question-answer pairs as one-turn conversations (`prompt` formats the question)."""
    import easy_vqa

    for split, out_split, questions, paths in (
            ("train", "train", easy_vqa.get_train_questions, easy_vqa.get_train_image_paths),
            ("test", "val", easy_vqa.get_test_questions, easy_vqa.get_test_image_paths)):
        qs, answers, image_ids = questions()
        images = paths()
        n = len(qs) if not limit else min(limit, len(qs))
        for i in range(n):
            text = "<image>\n" + prompt.format(question=qs[i])
            yield _record(source, f"{split}/{i}", [("user", text), ("assistant", answers[i])],
                          [images[image_ids[i]]], task="vqa", split=out_split)


def corpus_task_records(rows: list[dict], templates, seed: int) -> Iterator[dict]:
    """OFA-style task prompts over corpus rows (one corpus row group): each row gives the tasks its
    modalities allow (see `TaskTemplates`). Negatives for matching come from the same rows, drawn with a
    generator seeded by (seed, the first row's id), so the output is the same on every run."""
    rng = random.Random(f"{seed}/{rows[0]['sample_id'] if rows else ''}")
    captions = [r for r in rows if r["image"] is not None and r["text"]]
    for r in rows:
        mods, sid, split, src = set(r["modalities"]), r["sample_id"], r["split"], r["source"]
        text = r["text"] or ""

        def rec(task, prompt, answer, images=(), audios=()):
            return _record("corpus", f"{task}/{sid}", [("user", prompt), ("assistant", answer)], images, audios,
                           task=task, split=split)

        if "image" in mods and text and templates.caption:
            yield rec("caption", "<image>\n" + templates.caption, text, [r["image"]])
            if templates.match and len(captions) > 1:
                yield rec("match", "<image>\n" + templates.match.format(text=text), templates.yes, [r["image"]])
                other = rng.choice([c for c in captions if c["text"] != text] or captions)
                if other["text"] != text:
                    yield rec("match_negative", "<image>\n" + templates.match.format(text=other["text"]),
                              templates.no, [r["image"]])
        if "image" in mods and r["label"] is not None and src in templates.label_questions:
            yield rec("label", "<image>\n" + templates.label_questions[src], str(r["label"]), [r["image"]])
        if "audio" in mods and text:
            prompt = templates.spoken_caption if src in templates.spoken_caption_sources else templates.transcribe
            if prompt:
                task = "spoken_caption" if src in templates.spoken_caption_sources else "transcribe"
                yield rec(task, "<audio>\n" + prompt, text, audios=[r["audio"]])
        if mods == {"text"} and templates.infill:
            words = text.split()
            if 4 <= len(words) <= templates.infill_max_words:
                n = max(1, int(len(words) * templates.infill_ratio))
                at = rng.randrange(0, len(words) - n + 1)
                masked = " ".join(words[:at] + ["<mask>"] + words[at + n:])
                yield rec("infill", templates.infill.format(text=masked), text)
