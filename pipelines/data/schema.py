"""The one place that defines what corpus, shards and instructions outputs hold, and their versions.

Corpus output (`schema_version` = CORPUS_SCHEMA_VERSION), files
`train/part-NNNNN.parquet`, `val/part-NNNNN.parquet`, `rejects/part-NNNNN.parquet`:

| column      | type          | meaning |
| ----------- | ------------- | ------- |
| sample_id   | string        | `<source>/<key>`, stable across runs |
| source      | string        | the source's name in the stage config |
| split       | string        | `train` or `val`, from a hash of sample_id |
| modalities  | list<string>  | subset of text, image, audio, in that order |
| text        | string?       | NFC, trimmed, length-bounded |
| image       | binary?       | validated JPEG (kept as is) or PNG (re-encoded: RGB, EXIF-upright, alpha on white) |
| audio       | binary?       | 16 kHz mono FLAC (or PCM16 WAV), duration-bounded |
| label       | int32?        | class label when the source has one |
| content_hash| string        | sha256 of the normalised content; exact duplicates share it |

Rejects: source, key, reason (one of REJECT_REASONS), detail (all string).

Shards output (`schema_version` = SHARDS_SCHEMA_VERSION), files
`<split>/part-NNNNN.parquet`, a fixed number of rows per file (the last may be short):

| column       | type          | meaning |
| ------------ | ------------- | ------- |
| sample_id    | string        | as in the corpus |
| split        | string        | train / val |
| modalities   | list<string>  | as in the corpus |
| text_ids     | list<int32>?  | sentencepiece ids, `bos ... eos`, at most max_text_tokens |
| pixels       | binary?       | uint8, C×H×W = 3×R×R (R = image_resolution), row-major |
| image_tokens | list<int16>?  | one visual token id per patch, when a visual tokenizer is an input |
| fbank        | binary?       | float16 little-endian, frames×mels (mels = 128), row-major |
| fbank_frames | int32?        | number of frames of `fbank` |
| label        | int32?        | as in the corpus |

Instructions output (`schema_version` = INSTRUCTIONS_SCHEMA_VERSION), files `<split>/part-NNNNN.parquet`
and `rejects/part-NNNNN.parquet` (as the corpus's, reasons from INSTRUCTION_REJECT_REASONS):

| column       | type          | meaning |
| ------------ | ------------- | ------- |
| sample_id    | string        | `<source>/<key>` |
| split        | string        | train / val |
| source, task | string        | the source's name; `conversation`, `vqa`, `caption`, `label`, `match`, ... |
| modalities   | list<string>  | text, then image and / or audio |
| text_ids     | list<int32>   | the whole formatted conversation (`tasks.chat.ChatTemplate`), bos first |
| loss_mask    | list<bool>    | per id: an assistant token or its eos (what the loss is on) |
| causal_start | int32         | index of the first assistant token (the prefix-LM's causal start) |
| pixels, image_tokens, fbank, fbank_frames | | as in the shards |
| prompt, answer | string      | the last user turn's text, the last assistant turn's (the reference) |
"""

from __future__ import annotations

CORPUS_SCHEMA_VERSION = "omniway.corpus/1"
SHARDS_SCHEMA_VERSION = "omniway.shards/1"
INSTRUCTIONS_SCHEMA_VERSION = "omniway.instructions/1"
# Versions the reader API knows how to read.
KNOWN_SHARDS_VERSIONS = (SHARDS_SCHEMA_VERSION,)

MODALITIES = ("text", "image", "audio")
SPLITS = ("train", "val")

# Every reason a record can be quarantined for. Tests cover each one.
REJECT_REASONS = (
    "corrupt_image",       # undecodable or truncated image bytes
    "decompression_bomb",  # header claims more pixels than max_pixels
    "undecodable_audio",   # soundfile cannot read it
    "empty_audio",         # zero samples, or all-silent by construction of the file
    "unsupported_format",  # a media type or container omniway does not read
    "empty_text",          # nothing left after NFC + trim
    "non_utf8_text",       # text bytes that are not UTF-8
    "too_large",           # encoded bytes over a limit
    "too_small",           # image side under min_side
    "too_long",            # text over max_chars, audio over max_seconds
    "too_short",           # text under min_chars, audio under min_seconds
    "unsafe_path",         # tar member / index path absolute or with `..`
    "split_sample",        # webdataset members of one key not adjacent in the tar
    "missing_member",      # a required modality / referenced file absent
    "empty_sample",        # no modality at all
    "read_error",          # the container itself is unreadable (detail says why)
)


class UnknownSchemaVersion(ValueError):
    """A stage output in a schema this code does not read; the message says what to rebuild."""


def check_corpus(manifest, reader: str) -> None:
    """Refuse a corpus output of another schema version (``reader``: the stage reading it)."""
    if manifest.schema_version != CORPUS_SCHEMA_VERSION:
        raise UnknownSchemaVersion(
            f"{reader}: corpus {manifest.stage!r} has schema {manifest.schema_version!r}; this code reads "
            f"{CORPUS_SCHEMA_VERSION!r}. Rerun the corpus stage.")


def check_instructions(manifest, reader: str) -> None:
    """Refuse an instructions output of another schema version (``reader``: the stage reading it)."""
    if manifest.schema_version != INSTRUCTIONS_SCHEMA_VERSION:
        raise UnknownSchemaVersion(
            f"{reader}: {manifest.stage!r} has schema {manifest.schema_version!r}; this code reads "
            f"{INSTRUCTIONS_SCHEMA_VERSION!r}. Rerun that stage.")


def check_shards(manifest) -> None:
    """Refuse a shards output of a schema version the reader API does not know."""
    version = manifest.schema_version
    if version not in KNOWN_SHARDS_VERSIONS:
        raise UnknownSchemaVersion(
            f"shards {manifest.dir}: schema version {version!r} is not one this code reads "
            f"({', '.join(KNOWN_SHARDS_VERSIONS)}); rebuild the shards stage or upgrade")


# What an instruction record can be quarantined for beyond REJECT_REASONS (its media's reasons).
INSTRUCTION_REJECT_REASONS = (
    "placeholder_mismatch",   # <image> / <audio> placeholders != the record's media files
    "unknown_role",           # a turn's role is none of system / user / assistant (or LLaVA's human / gpt)
    "empty_response",         # an assistant turn without text
    "turns_not_alternating",  # not (system?) user, assistant, user, assistant, ... ending with assistant
    "no_supervised_tokens",   # nothing of any answer left after the cut to max_text_tokens
)


FBANK_MELS = 128
FBANK_SAMPLE_RATE = 16_000
FBANK_WIN = 400   # 25 ms at 16 kHz
FBANK_HOP = 160   # 10 ms at 16 kHz


def corpus_schema():
    import pyarrow as pa

    return pa.schema([
        ("sample_id", pa.string()),
        ("source", pa.string()),
        ("split", pa.string()),
        ("modalities", pa.list_(pa.string())),
        ("text", pa.string()),
        ("image", pa.binary()),
        ("audio", pa.binary()),
        ("label", pa.int32()),
        ("content_hash", pa.string()),
    ])


def rejects_schema():
    import pyarrow as pa

    return pa.schema([(name, pa.string()) for name in ("source", "key", "reason", "detail")])


def shards_schema():
    import pyarrow as pa

    return pa.schema([
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("modalities", pa.list_(pa.string())),
        ("text_ids", pa.list_(pa.int32())),
        ("pixels", pa.binary()),
        ("image_tokens", pa.list_(pa.int16())),
        ("fbank", pa.binary()),
        ("fbank_frames", pa.int32()),
        ("label", pa.int32()),
    ])


def instructions_schema():
    import pyarrow as pa

    return pa.schema([
        ("sample_id", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("task", pa.string()),
        ("modalities", pa.list_(pa.string())),
        ("text_ids", pa.list_(pa.int32())),
        ("loss_mask", pa.list_(pa.bool_())),
        ("causal_start", pa.int32()),
        ("pixels", pa.binary()),
        ("image_tokens", pa.list_(pa.int16())),
        ("fbank", pa.binary()),
        ("fbank_frames", pa.int32()),
        ("prompt", pa.string()),
        ("answer", pa.string()),
    ])


def instructions_result_schema():
    """An instruction row or a reject, as the stage's Ray tasks return them (reason '' = accepted)."""
    import pyarrow as pa

    sch = instructions_schema()
    return pa.schema([*sch, pa.field("reason", pa.string()), pa.field("detail", pa.string())])

