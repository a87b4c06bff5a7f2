"""What the `visual-tokenizer` stage (`pipelines/stages/visual_tokenizer.py`) calls: its image dataset
(`data.py`), its `TrainTask` (`task.py`), the encoder the shards stage loads (`encoder.py`), its plot."""
