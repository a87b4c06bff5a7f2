"""Data preparation: source readers, per-sample decode/validate, features, shard schema, reader API.

Import-light on purpose: stage modules import config dataclasses from here on
every `omniway run`. Heavy libraries (pyarrow, PIL, soundfile, torch, ray) are
imported inside the submodules that need them, which stages import lazily.

Map:
- `schema.py`    column layout and versions of corpus and shards outputs, reject reasons.
- `config.py`    config dataclasses of the three data stage kinds.
- `records.py`   the raw record every source reader yields.
- `sources/`     one reader per input format (webdataset, index, parquet, text, demo corpora).
- `text.py`, `image.py`, `audio.py`   decode + validate one sample's modality.
- `normalize.py` raw record -> accepted corpus row or reject (the per-sample corpus function).
- `fbank.py`     log-mel filterbank features (numpy FFT; no torch).
- `featurize.py` corpus row -> shards row (the per-sample shards function).
- `corpus_impl.py`, `tokenizer_impl.py`, `shards_impl.py`   bodies of the stage kinds.
- `reader.py`    shards manifest -> Ray Dataset for a split and modality mix.
- `writer.py`    fixed-rows Parquet files with deterministic names.
- `plots.py`     PNG grids of images and log-mel spectrograms.
"""
