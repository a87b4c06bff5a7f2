"""Config dataclasses of the `corpus`, `text-tokenizer` and `shards` stage kinds.

Plain dataclasses with defaults, loaded strictly from a pipeline's `with:` mapping.
Kept import-light: the planner imports them on every run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

SourceFormat = Literal["webdataset", "jsonl", "csv", "parquet", "text",
                       "tuxpaint", "asterisk", "digits"]


@dataclass
class SourceConfig:
    """One named input of a corpus stage.

    Args:
        name: the `source` value of its samples and the prefix of their sample ids.
        format: webdataset (tar shards), jsonl / csv (index files with relative media
            paths), parquet (binary or `{bytes, path}` columns), text (a tree of text
            files), or a demo corpus: tuxpaint, asterisk, digits.
        path: a file, a directory (searched recursively) or a glob. For tuxpaint the
            stamps root, for asterisk the sounds directory; unused for digits.
        extensions: file name endings to read under a directory (defaults per format).
        text_field / image_field / audio_field / label_field / id_field: column or key
            names in index files, Parquet and webdataset json. For webdataset,
            text_field names a key of the `.json` member used when no `.txt` exists.
        text_unit: text format only: one document per `file`, `paragraph` or `line`.
        require: modalities a record must have; a record lacking one is rejected
            as `missing_member` (e.g. `[image, text]` for caption pairs).
        transcripts: asterisk only: the `key: text` transcript file (gz or plain).
        caption_template: digits only: `{label}` is replaced by the digit.
        limit: at most this many records from this source (0 = all), taken in the
            reader's deterministic order; records past it are not read.
        max_files: at most this many input files (0 = all), in sorted order.
        files_per_unit: how many input files one Ray task reads.
    """

    name: str = ""
    format: SourceFormat = "text"
    path: str = ""
    extensions: list[str] = field(default_factory=list)
    text_field: str = "text"
    image_field: str = "image"
    audio_field: str = "audio"
    label_field: str = "label"
    id_field: str = ""
    text_unit: Literal["file", "paragraph", "line"] = "file"
    require: list[str] = field(default_factory=list)
    transcripts: str = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
    caption_template: str = "a handwritten digit {label}"
    limit: int = 0
    max_files: int = 0
    files_per_unit: int = 64


@dataclass
class TextLimits:
    """Args:
        min_chars: shorter text (after NFC + trim) is rejected as empty_text when 0 chars, too_short otherwise.
        max_chars: longer text is rejected as too_long.
    """

    min_chars: int = 1
    max_chars: int = 20_000


@dataclass
class ImageLimits:
    """Args:
        min_side: an image whose shorter side is below this is rejected as too_small.
        max_side: a longer side above this is downscaled to it (keeping aspect).
        max_pixels: the header's width × height above this is a decompression bomb;
            checked before any pixel is decoded.
        max_bytes: encoded images larger than this are rejected as too_large.
    """

    min_side: int = 8
    max_side: int = 1024
    max_pixels: int = 40_000_000
    max_bytes: int = 20_000_000


@dataclass
class AudioLimits:
    """Args:
        sample_rate: output rate (Hz); input is resampled with soxr.
        min_seconds / max_seconds: duration bounds (too_short / too_long).
        max_bytes: encoded audio larger than this is rejected as too_large.
        format: how accepted audio is stored: FLAC (PCM16 inside) or PCM16 WAV.
    """

    sample_rate: int = 16_000
    min_seconds: float = 0.1
    max_seconds: float = 30.0
    max_bytes: int = 50_000_000
    format: Literal["flac", "wav"] = "flac"


@dataclass
class CorpusConfig:
    """Config of the `corpus` kind.

    Args:
        sources: the named inputs (at least one).
        val_fraction: share of samples put in `val`, by a hash of sample_id.
        rows_per_file: rows per output Parquet file.
        num_workers: Ray tasks decoding and validating in parallel (1 CPU each).
        batch_size: records per map_batches call.
        text / image / audio: per-modality validation limits.
        dedup: drop exact duplicates (same normalised content) after the first.
        plot_samples: images in the sample grid artifact (0 = none).
    """

    sources: list[SourceConfig] = field(default_factory=list)
    val_fraction: float = 0.05
    rows_per_file: int = 1024
    num_workers: int = 2
    batch_size: int = 32
    text: TextLimits = field(default_factory=TextLimits)
    image: ImageLimits = field(default_factory=ImageLimits)
    audio: AudioLimits = field(default_factory=AudioLimits)
    dedup: bool = True
    plot_samples: int = 16


@dataclass
class TextTokenizerConfig:
    """Config of the `text-tokenizer` kind.

    Args:
        vocab_size: sentencepiece vocabulary size (including special tokens).
        model_type: sentencepiece model type; BPE by default.
        character_coverage: share of characters the vocabulary must cover.
        seed: sentencepiece's random generator seed (training is deterministic for a seed).
        max_sentences: at most this many training lines (0 = all), taken in corpus order.
        max_sentence_chars: longer lines are cut before training.
        special_tokens: user-defined pieces with fixed ids right after pad/unk/bos/eos
            (mask token, modality placeholders).
        model_path: adopt this existing `.model` instead of training (validated).
        pad_piece / bos_piece / eos_piece / unk_piece: the control pieces; an adopted
            model must define them (or the alternatives in `aliases`).
        num_threads: sentencepiece trainer threads.
    """

    vocab_size: int = 8000
    model_type: Literal["bpe", "unigram"] = "bpe"
    character_coverage: float = 0.9995
    seed: int = 0
    max_sentences: int = 2_000_000
    max_sentence_chars: int = 4192
    special_tokens: list[str] = field(default_factory=lambda: ["<mask>", "<image>", "<audio>",
                                                                 "<text>"])
    model_path: Optional[str] = None
    pad_piece: str = "<pad>"
    unk_piece: str = "<unk>"
    bos_piece: str = "<s>"
    eos_piece: str = "</s>"
    num_threads: int = 2


@dataclass
class ShardsConfig:
    """Config of the `shards` kind.

    Args:
        rows_per_file: rows per shard file (fixed; the last file of a split may be short).
        image_resolution: R of the C×R×R pixels (shorter side resized to R, centre crop).
        max_text_tokens: token ids per sample at most, bos and eos included.
        num_workers: Ray tasks featurizing in parallel (1 CPU each; a worker process
            loads the tokenizers once and keeps them for its later tasks).
        batch_size: samples per Featurizer.rows call (and per visual tokenizer forward).
        plot_samples: spectrograms in the log-mel artifact (0 = none).
    """

    rows_per_file: int = 1024
    image_resolution: int = 224
    max_text_tokens: int = 256
    num_workers: int = 2
    batch_size: int = 32
    plot_samples: int = 6
