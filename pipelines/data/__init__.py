"""Data preparation: source readers, per-sample decode/validate, features, shard schema, reader API.

The stage kinds themselves (config, registration, body) are `pipelines/stages/<kind>.py`;
this package holds what their bodies call. Heavy libraries (pyarrow, PIL, soundfile, torch, ray) are
imported inside the submodules that need them, which stages import lazily.

Map:
- `schema.py`    column layout and versions of corpus and shards outputs, reject reasons.
- `records.py`   the raw record every source reader yields.
- `sources/`     one reader per input format (webdataset, index, parquet, text, demo corpora).
- `text.py`, `image.py`, `audio.py`   decode + validate one sample's modality.
- `normalize.py` raw record -> accepted corpus row or reject (the per-sample corpus function).
- `fbank.py`     log-mel filterbank features (numpy FFT; no torch).
- `featurize.py` corpus row -> shards row (the per-sample shards function).
- `ingest.py`    the corpus stage's Ray tasks: source units -> result rows, in order; the split.
- `sentencepiece_model.py`  training text, training and checks of the text tokenizer.
- `shards_plan.py`, `shards_task.py`, `shards_build.py`  the shards stage: planning the parts, the
                 Ray task that featurizes and writes them, the stage process's side.
- `reader.py`    shards manifest -> Ray Dataset for a split and modality mix.
- `writer.py`    fixed-rows Parquet files with deterministic names.
- `plots.py`     PNG grids of images and log-mel spectrograms.
"""
