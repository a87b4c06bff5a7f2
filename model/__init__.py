"""omniway.model: the multiway transformer in pure PyTorch (imports torch, numpy, safetensors only).

Public API (stable)::

    from model import ModelConfig, MultiwayModel, Layout

    config = ModelConfig.from_size("debug", expert_policy="ffn", fusion_layers=1)   # sizes: SIZES
    model = config.build()                                  # == MultiwayModel(config)
    out = model({
        "pixels": pixels,                       # (B, 3, H, W) float
        "pixel_mask": mask,                     # (B, N_patches) bool, optional: MIM mask token
        "text_ids": ids,                        # (B, L) int64
        "text_padding_mask": pad,               # (B, L) bool, True = padding, optional
        "text_causal_start": start,             # (B,) int64, optional: prefix-LM over text
        "fbank": fbank,                         # (B, T, 128) float log-mel
        "fbank_frames": frames,                 # (B,) int valid frames, optional
        "fbank_mask": amask,                    # (B, N_audio_patches) bool, optional
    })                                          # any non-empty subset of modalities
    out.hidden            # (B, T, C) whole sequence, segments in config.modalities order
    out.tokens["text"]    # (B, L, C) per-modality token features
    out.pooled["vision"]  # (B, C) CLS (first token) per modality
    out.padding["text"]   # (B, L) bool or None
    out.layout            # Layout: segments (modality, start, length)

Classes and functions:
    ModelConfig(dim, layers, heads, ffn_dim, modalities, expert_policy, fusion_layers, subln, layer_scale,
                drop_path, rel_pos_buckets, max_rel_pos, norm_eps, position_offset, fused_qkv,
                checkpoint_activations, vision: VisionConfig, text: TextConfig, audio: AudioConfig)
        .from_size(name, **overrides) / .build() / .to_dict() / .from_dict(d) / .to_json() / .from_json(s)
    SIZES, register_size(name, config)          named sizes: debug, base, large, giant
    EXPERT_POLICIES                             "all" (released BEiT-3), "ffn" (paper BEiT-3, ONE-PEACE),
                                                "kv" (mPLUG-Owl2)
    MultiwayModel(config).forward(inputs) -> ModelOutput; .embed(inputs) -> (x, layout, padding);
        .encoder: MultiwayEncoder(x, layout, attn_mask) (usable with Layout.interleaved)
        .text_embedding (nn.Embedding the MLM head ties to)
    Layout.contiguous([(modality, length), ...]) / Layout.interleaved(token_modality (B, T), names)
    register_modality(name, factory(config) -> ModalityAdapter), ModalityAdapter, AdapterOutput
    heads: MLMHead(dim, vocab)(x, embedding_weight), MIMHead(dim, codebook_size), AudioRegressionHead(dim,
        n_mels, patch_frames), ContrastiveHead(dim, embed_dim, modalities)(pooled) + .logit_scale(),
        ITMHead(dim), LMHead(dim, vocab)
    checkpoints: save_checkpoint(path, model), load_checkpoint(path, model=None), read_checkpoint(path),
        load_state_dict_strict(model, sd), CheckpointKeyError (lists missing / unexpected / mismatched keys)
    interop: model.interop.beit3 -- beit3_config, beit3_to_omniway, omniway_to_beit3, load_beit3
    generation: model.generation -- generate(model, head, inputs, max_new_tokens=, eos_id=, ...) (greedy,
        sampling, beam search with a KV cache), prefill, decode_step
    ops.Linear: nn.Linear with an fp32-BLAS bf16 path on CPUs without bf16 GEMM (same state-dict keys)

``model.config`` (and ``ModelConfig``, ``SIZES`` through this package) imports no torch; the rest does.
Inside the encoder activations are sequence-first (T, B, C) so modality segments are contiguous; every
public input and output above is batch-first.
"""

from .lazy_exports import lazy_exports

# Names -> the submodule defining them, imported on first use (PEP 562): `model.config`,
# `model.vqkd_config` and `model.typed_config` need only the standard library, so the pipeline
# planner reads model settings without paying for torch; any other name imports torch with its module.
_EXPORTS = {
    "checkpoint": ("CheckpointKeyError", "load_checkpoint", "load_state_dict_strict", "read_checkpoint",
                   "save_checkpoint"),
    "config": ("EXPERT_POLICIES", "SIZES", "AudioConfig", "ModelConfig", "TextConfig", "VisionConfig",
               "register_size"),
    "typed_config": ("ConfigError",),
    "heads": ("AudioRegressionHead", "ContrastiveHead", "ITMHead", "LMHead", "MIMHead", "MLMHead"),
    "layout": ("Layout", "Segment"),
    "modalities": ("AdapterOutput", "ModalityAdapter", "register_modality", "registered_modalities"),
    "encoder": ("MultiwayEncoder",),
    "network": ("ModelOutput", "MultiwayModel"),
}
__getattr__, __dir__, __all__ = lazy_exports(__name__, globals(), _EXPORTS)
