"""`omniway export --format webdataset`: a corpus or shards stage output -> webdataset tar shards.

Layout (img2dataset's, which open_clip and webdataset's `WebDataset` read): `<out>/<split>/NNNNN.tar`,
**one tar per part file** of the stage output, in the manifest's order (`train/part-00003.parquet` ->
`train/00003.tar`), so a tar holds the stage's `rows_per_file` samples (the last one of a split may hold
fewer). A split without rows gets no tar. Tars are written with webdataset's `TarWriter` with a fixed mtime:
the same output exports to the same bytes.

Sample keys are digits, img2dataset style: the tar's number, then the row's number in that part, both
zero-padded (`000030007` = tar 00003, row 0007; the row width fits the largest part). Unique within a
split. Sample ids cannot be keys: webdataset cuts a member name at the first dot of its base name and
treats `/` as directories, and ids hold both (`wds/00000.tar/s1`, `jsonl/train.jsonl:x1`,
`tree/a.txt#2`); each sample's `<key>.json` keeps the id.

Members of one sample (absent fields write no member):
    corpus  <key>.jpg | .png    the image bytes as stored (validated JPEG, or PNG)
            <key>.flac | .wav   the audio bytes as stored (16 kHz mono)
            <key>.txt           the text, UTF-8
            <key>.cls           the label, decimal
            <key>.json          {sample_id, source, split, modalities, label, content_hash}
    shards  <key>.png           `pixels` (uint8 3×R×R, R = the shards' image_resolution) as an R×R RGB PNG
            <key>.txt           `text_ids` decoded with the shards' sentencepiece model, when its
                                text-tokenizer output is found beside the shards (same storage and
                                pipeline, matching sha256); the text as the model sees it (cut to
                                max_text_tokens). Otherwise no .txt, and a note says why.
            <key>.fbank.npy     `fbank` as a float16 (frames, 128) .npy array
            <key>.cls           the label
            <key>.json          {sample_id, split, modalities, label, text_ids} (+ image_tokens when present)

The stage output is read only through its manifest; every part file is checked against the sha256 the
manifest lists before a row of it is written.
"""

from __future__ import annotations

import hashlib
import io
import json
import os

from pipelines.data import schema
from pipelines.export import ExportError, ExportResult
from pipelines.manifest import Manifest

KINDS = ("corpus", "shards")


def export_webdataset(output_dir: str, storage_root: str | None, out: str) -> ExportResult:
    """Write a committed corpus or shards stage output as webdataset tars under ``out``.

    Args:
        output_dir: the stage output directory (inside ``storage_root`` when that is given).
        storage_root: the storage root the output belongs to (from a pipeline file), or None for a local
            output directory given directly.
        out: a new or empty directory.
    Raises:
        ExportError: no manifest, a stage kind other than corpus / shards, an unknown schema version, a
            non-empty ``out``, or a part file that does not match its manifest.
    """
    manifest = _load_manifest(output_dir, storage_root)
    if os.path.exists(out) and not os.path.isdir(out):
        raise ExportError(f"--out {out}: a file; --format webdataset writes a directory of tars")
    if os.path.isdir(out) and os.listdir(out):
        raise ExportError(f"--out {out}: not empty; give a new or empty directory (tars from an earlier "
                          "export would mix with these)")
    try:
        if manifest.kind == "corpus":
            schema.check_corpus(manifest, "export")
        else:
            schema.check_shards(manifest)
    except schema.UnknownSchemaVersion as e:
        raise ExportError(f"{output_dir}: {e}") from e
    if manifest.kind == "corpus":
        to_sample, notes = _corpus_sample, []
    else:
        to_sample, notes = _shards_writer(manifest)
    files: list[str] = []
    for split in schema.SPLITS:
        parts = [e for e in manifest.files
                 if e["path"].startswith(f"{split}/") and e["path"].endswith(".parquet")]
        row_width = max(4, len(str(max([e.get("rows") or 0 for e in parts] + [1]) - 1)))
        tar_width = max(5, len(str(len(parts) - 1)))
        samples = 0
        for t, entry in enumerate(parts):
            dest = os.path.join(out, split, f"{t:0{tar_width}d}.tar")
            samples += _write_tar(manifest, entry, dest, lambda row, r, t=t: (
                f"{t:0{tar_width}d}{r:0{row_width}d}", to_sample(row)))
            files.append(dest)
        notes.append(f"{split}: {samples} samples in {len(parts)} tars")
    return ExportResult(files, output_dir, notes)


def _load_manifest(output_dir: str, storage_root: str | None) -> Manifest:
    from pipelines.storage import MANIFEST_NAME, Storage

    if storage_root is None:
        if not os.path.isdir(output_dir):
            raise ExportError(f"{output_dir}: no such directory (give a corpus or shards stage output "
                              "directory, or PIPELINE.yaml --stage NAME)")
        output_dir = os.path.abspath(output_dir)
    data = Storage(storage_root or os.path.dirname(output_dir)).read_manifest(output_dir)
    if data is None:
        raise ExportError(f"{output_dir}: no {MANIFEST_NAME}: --format webdataset reads a committed "
                          f"{' or '.join(KINDS)} stage output")
    if data.get("kind") not in KINDS:
        raise ExportError(f"stage {data.get('stage')!r} is of kind {data.get('kind')!r}: --format webdataset "
                          f"takes {' and '.join(KINDS)} outputs (--format omniway and beit3 take pretrain "
                          "outputs)")
    if storage_root is None:
        # <root>/<pipeline>/<stage>/<key>: the root, where the shards' tokenizer output lives too
        up = output_dir
        for name in (data.get("key"), data.get("stage"), data.get("pipeline")):
            up = os.path.dirname(up) if up and os.path.basename(up) == name else ""
        storage_root = up or os.path.dirname(output_dir)
    return Manifest(dir=output_dir, data=data, storage_uri=storage_root)


def _read_verified(manifest: Manifest, entry: dict) -> bytes:
    try:
        with manifest.open(entry["path"]) as f:
            data = f.read()
    except OSError as e:
        raise ExportError(f"{manifest.dir}/{entry['path']}: a file its manifest lists cannot be read ({e}); "
                          "rerun the stage with --force") from None
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        raise ExportError(f"{manifest.dir}/{entry['path']} does not match the sha256 its manifest lists: the "
                          "output was modified or copied incompletely; rerun the stage with --force")
    return data


def _write_tar(manifest: Manifest, entry: dict, dest: str, sample) -> int:
    """One part file -> one tar at ``dest`` (written beside it, renamed into place). ``sample(row, r)``
    gives (key, {extension: bytes}). Returns the number of samples."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from webdataset import TarWriter

    part = pq.ParquetFile(pa.BufferReader(_read_verified(manifest, entry)))
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    tmp = f"{dest}.tmp-{os.getpid()}"
    r = 0
    try:
        with open(tmp, "wb") as f:
            writer = TarWriter(f, encoder=False, mtime=0)  # bytes in, bytes out; fixed mtime: reproducible
            for batch in part.iter_batches(batch_size=256):  # a part's rows a batch at a time
                for row in batch.to_pylist():
                    key, members = sample(row, r)
                    writer.write({"__key__": key, **members})
                    r += 1
            writer.close()
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return r


def _media_ext(data: bytes, sample_id: str, what: str) -> str:
    if what == "image":
        if data.startswith(b"\xff\xd8\xff"):
            return "jpg"
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return "png"
    else:
        if data.startswith(b"fLaC"):
            return "flac"
        if data[:4] == b"RIFF" and data[8:12] == b"WAVE":
            return "wav"
    raise ExportError(f"sample {sample_id!r}: its {what} is neither of the formats the corpus stores "
                      f"({'JPEG, PNG' if what == 'image' else 'FLAC, WAV'}); rerun the corpus stage")


def _corpus_sample(row: dict) -> dict[str, bytes]:
    members: dict[str, bytes] = {}
    if row["image"] is not None:
        members[_media_ext(row["image"], row["sample_id"], "image")] = row["image"]
    if row["audio"] is not None:
        members[_media_ext(row["audio"], row["sample_id"], "audio")] = row["audio"]
    if row["text"] is not None:
        members["txt"] = row["text"].encode("utf-8")
    if row["label"] is not None:
        members["cls"] = str(row["label"]).encode()
    members["json"] = _json({k: row[k] for k in ("sample_id", "source", "split", "modalities", "label",
                                                 "content_hash")})
    return members


def _shards_writer(manifest: Manifest):
    """(row -> members, notes) for a shards output."""
    import numpy as np

    resolution = manifest.extra.get("image_resolution")
    sp, notes = _text_tokenizer(manifest)

    def members_of(row: dict) -> dict[str, bytes]:
        members: dict[str, bytes] = {}
        if row["pixels"] is not None:
            members["png"] = _png(row["pixels"], resolution, row["sample_id"])
        if row["text_ids"] is not None and sp is not None:
            members["txt"] = sp.decode(row["text_ids"]).encode("utf-8")
        if row["fbank"] is not None:
            feats = np.frombuffer(row["fbank"], dtype="<f2").reshape(row["fbank_frames"], schema.FBANK_MELS)
            buf = io.BytesIO()
            np.save(buf, feats)
            members["fbank.npy"] = buf.getvalue()
        if row["label"] is not None:
            members["cls"] = str(row["label"]).encode()
        meta = {k: row[k] for k in ("sample_id", "split", "modalities", "label", "text_ids")}
        if row["image_tokens"] is not None:
            meta["image_tokens"] = row["image_tokens"]
        members["json"] = _json(meta)
        return members

    return members_of, notes


def _png(pixels: bytes, resolution, sample_id: str) -> bytes:
    from pipelines.data.image import pixels_png

    if not resolution or len(pixels) != 3 * resolution * resolution:
        raise ExportError(f"sample {sample_id!r}: {len(pixels)} pixel bytes do not make 3×{resolution}×"
                          f"{resolution} (the manifest's image_resolution)")
    return pixels_png(pixels, resolution)


def _text_tokenizer(manifest: Manifest):
    """(SentencePieceProcessor or None, notes): the text-tokenizer output the shards were built with,
    found under the same storage and pipeline by the stage name and sha256 the shards manifest records."""
    info = (manifest.extra.get("tokenizers") or {}).get("text") or {}
    stage, sha, pipeline = info.get("stage"), info.get("sha256"), manifest.data.get("pipeline")
    why = "the shards manifest does not name its text tokenizer"
    if stage and sha and pipeline:
        store = manifest.storage
        why = f"no output of stage {stage!r} with the tokenizer's sha256 under {store.uri_root}"
        for key in store.list_keys(pipeline, stage):
            tok_dir = store.output_dir(pipeline, stage, key)
            data = store.read_manifest(tok_dir) or {}
            tok = (data.get("extra") or {}).get("tokenizer") or {}
            if tok.get("sha256") != sha or not tok.get("model"):
                continue
            with Manifest(dir=tok_dir, data=data, storage_uri=manifest.storage_uri).open(tok["model"]) as f:
                model = f.read()
            if hashlib.sha256(model).hexdigest() != sha:
                continue
            import sentencepiece as spm

            return spm.SentencePieceProcessor(model_proto=model), []
    return None, [f"text written as token ids only (in <key>.json), no <key>.txt: {why}"]


def _json(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False, sort_keys=True).encode("utf-8")
