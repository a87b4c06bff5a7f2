"""The `instructions` stage's Ray task: conversation records -> instruction rows or rejects.

Per record: the turn structure and the placeholders are checked, the media are read (paths relative to
their file), decoded and validated by the corpus stage's own code (`normalize_image`, `normalize_audio`:
the same reject reasons), featurized as the shards stage does (`Featurizer`: pixels at the model
resolution, visual tokens, log-mel), and the conversation is formatted and tokenized by the one
`tasks.chat.ChatTemplate` in the same pass that writes its loss mask.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterator

from pipelines.data import schema

_STATE: dict = {}  # per worker process: the featurizer and template of the current stage (see worker_state)


def worker_state(spm_model: bytes, cfg, visual_manifest):
    """(Featurizer, ChatTemplate) for these arguments, built once per process (the tokenizers load once)."""
    key = (hashlib.sha256(spm_model).hexdigest(), repr(cfg),
           None if visual_manifest is None else visual_manifest.fingerprint)
    if _STATE.get("key") != key:
        from pipelines.data.featurize import Featurizer, load_visual_encoder
        from pipelines.stages.shards import ShardsConfig

        visual = load_visual_encoder(visual_manifest) if visual_manifest is not None else None
        media_cfg = ShardsConfig(image_resolution=cfg.image_resolution, max_text_tokens=cfg.max_text_tokens,
                                 batch_size=cfg.batch_size)
        _STATE.clear()
        _STATE.update(key=key, featurizer=Featurizer(spm_model, media_cfg, visual),
                      template=cfg.template)
    return _STATE["featurizer"], _STATE["template"]


def _reject(rec: dict, reason: str, detail: str) -> dict:
    return {**_empty(rec), "reason": reason, "detail": detail[:300]}


def _empty(rec: dict) -> dict:
    return {"sample_id": f"{rec['source']}/{rec['key']}", "split": rec.get("split") or "", "source": rec["source"],
            "task": rec.get("task") or "", "modalities": [], "text_ids": None, "loss_mask": None,
            "causal_start": None, "pixels": None, "image_tokens": None, "fbank": None, "fbank_frames": None,
            "prompt": None, "answer": None, "reason": "", "detail": ""}


def _media_bytes(item, base: str) -> bytes:
    """A media entry: bytes as they are, or a path relative to `base` (refused when it climbs out)."""
    from pipelines.data.sources import unsafe_relpath
    from pipelines.data.text import Rejected

    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    path = str(item)
    rel = os.path.relpath(path, base) if base and os.path.isabs(path) else path
    if base and unsafe_relpath(rel):
        raise Rejected("unsafe_path", f"{rel!r} leaves {os.path.basename(base)!r}")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise Rejected("missing_member", f"{os.path.basename(path)}: {type(e).__name__}") from None


def _ext(item) -> str:
    """A media path's extension (the corpus stage's checks take it); '' for bytes."""
    return os.path.splitext(item)[1].lstrip(".").lower() if isinstance(item, str) else ""


def process(records: list[dict], featurizer, template, cfg) -> list[dict]:
    """Records -> result rows (`schema.instructions_result_schema`), accepted rows with reason ''."""
    from pipelines.data.audio import normalize_audio
    from pipelines.data.image import normalize_image
    from pipelines.data.text import Rejected
    from tasks.chat import ConversationError, count_placeholders, normalize_turns

    out, staged = [], []
    for rec in records:
        if rec.get("reason"):
            out.append(_reject(rec, rec["reason"], rec.get("detail", "")))
            continue
        try:
            turns = normalize_turns([tuple(t) for t in rec["turns"]])
            counts = count_placeholders(turns)
            for modality, files in (("image", rec["images"]), ("audio", rec["audios"])):
                if counts[modality] != len(files):
                    raise ConversationError("placeholder_mismatch", f"{counts[modality]} <{modality}> "
                                            f"placeholder(s), {len(files)} {modality} file(s)")
                if len(files) > 1:  # the multiway sequence has one segment per modality
                    raise ConversationError("unsupported_format", f"{len(files)} {modality} files in one sample")
            image = normalize_image(_media_bytes(rec["images"][0], rec["base"]), cfg.image,
                                    _ext(rec["images"][0])) if rec["images"] else None
            audio = normalize_audio(_media_bytes(rec["audios"][0], rec["base"]), cfg.audio,
                                    _ext(rec["audios"][0])) if rec["audios"] else None
            enc = template.encode(turns, featurizer.sp.encode, bos_id=featurizer.bos, eos_id=featurizer.eos,
                                  max_tokens=cfg.max_text_tokens)
        except (ConversationError, Rejected) as e:
            out.append(_reject(rec, e.reason, e.detail))
            continue
        row = _empty(rec)
        row.update(modalities=[m for m, v in (("text", 1), ("image", image), ("audio", audio)) if v is not None],
                   text_ids=enc.ids, loss_mask=enc.loss_mask, causal_start=enc.response_start,
                   prompt=enc.prompt, answer=enc.answer)
        out.append(row)
        staged.append({"sample_id": row["sample_id"], "split": "", "modalities": row["modalities"], "text": None,
                       "image": image, "audio": audio, "label": None, "_row": row})
    for i in range(0, len(staged), cfg.batch_size):  # media features in batches (visual tokenizer forwards)
        chunk = staged[i:i + cfg.batch_size]
        for s, feats in zip(chunk, featurizer.rows(chunk)):
            s["_row"].update({k: feats[k] for k in ("pixels", "image_tokens", "fbank", "fbank_frames")})
    return out


def instruction_task(batch, *, spm_model: bytes, cfg, visual_manifest=None, corpus_storage: str = "") -> Iterator:
    """Ray Data task: work units (JSON: {"records": [...]} or {"corpus": {path, row_group}}) -> result tables."""
    import pyarrow as pa

    featurizer, template = worker_state(spm_model, cfg, visual_manifest)
    sch = schema.instructions_result_schema()
    for unit_json in batch.column("unit").to_pylist():
        unit = json.loads(unit_json)
        if "corpus" in unit:
            records = list(_corpus_records(unit["corpus"], corpus_storage, cfg))
        else:
            records = unit["records"]
        if records:
            yield pa.Table.from_pylist(process(records, featurizer, template, cfg), schema=sch)


def _corpus_records(where: dict, storage_uri: str, cfg) -> Iterator[dict]:
    import pyarrow.parquet as pq

    from pipelines.data.conversations import corpus_task_records
    from pipelines.storage import Storage

    with Storage(storage_uri).open_input(where["path"]) as f:
        rows = pq.ParquetFile(f).read_row_group(where["row_group"]).to_pylist()
    yield from corpus_task_records(rows, cfg.tasks, cfg.seed)
