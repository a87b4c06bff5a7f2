"""Where the visual-tokenizer stage puts its files inside its output directory."""

WEIGHTS_REL = "tokenizer/visual_tokenizer.safetensors"
CONFIG_REL = "tokenizer/visual_tokenizer.json"
ENCODER_TARGET = "pipelines.visual_tokenizer.encoder:load_encoder"
KIND = "visual-tokenizer"
