"""Implementation of the `visual-tokenizer` stage kind (VQ-KD, BEiT v2). Light: import submodules."""
