"""Recipe presets: which objectives run, their weights, mask ratios and the batch mix.

A recipe is plain data. ``RECIPES`` holds the presets; ``Recipe.merged(**overrides)`` changes any field
(the pretrain stage exposes them as config). Group names (the batch mix keys) are the sample kinds in
``GROUPS``: each maps to the shard modalities a sample of that kind has, exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

# Sample kind -> shard modalities (exact set).
GROUPS: dict[str, tuple[str, ...]] = {
    "text": ("text",),
    "image": ("image",),
    "audio": ("audio",),
    "image_text": ("image", "text"),
    "audio_text": ("audio", "text"),
    "image_audio": ("image", "audio"),
    "triplet": ("image", "text", "audio"),
}
# Data (corpus, shards, groups) calls the image modality "image", the model (ModelConfig.vision, its
# adapters, experts and checkpoints, torchscale's layout) "vision": this is the one mapping between them.
MODEL_MODALITY = {"image": "vision", "text": "text", "audio": "audio"}
MODALITY_DECODERS = ("mlm", "causal")  # Recipe.modality_decoder
OBJECTIVES = ("mlm", "mim", "mam", "contrast", "denoise", "modality", "match")


def group_of(modalities) -> str | None:
    """Group name of a sample with these shard modalities (None if it fits none)."""
    wanted = frozenset(modalities)
    for name, mods in GROUPS.items():
        if frozenset(mods) == wanted:
            return name
    return None


@dataclass
class ImageAugment:
    """Augmentation of training images (``tasks.augment``); validation and evaluation never augment.
    Defaults: BEiT's pretraining transforms (the list BEiT-3 names), off unless enabled.

    Args:
        enabled: augment the training images. With visual tokens as the MIM target, the pretrain stage
            then needs the visual-tokenizer stage as an input: the tokens of each augmented view are
            computed in the training worker (BEiT v2), not read from the shards.
        crop_scale: [min, max] area fraction of the random resized crop (BEiT: 0.08, 1.0).
        crop_ratio: [min, max] aspect ratio (width / height) of the crop (BEiT: 3/4, 4/3).
        hflip: probability of a horizontal flip (BEiT: 0.5).
        brightness: colour jitter: brightness factor drawn from [1 - b, 1 + b] (BEiT: 0.4).
        contrast: the same for contrast (BEiT: 0.4).
        saturation: the same for saturation (BEiT: 0.4).
    """

    enabled: bool = False
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [3 / 4, 4 / 3])
    hflip: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4

    def __post_init__(self) -> None:
        for name, lo_min, hi_max in (("crop_scale", 0.0, 1.0), ("crop_ratio", 0.0, float("inf"))):
            v = getattr(self, name)
            if len(v) != 2 or not lo_min < v[0] <= v[1] <= hi_max:
                raise ValueError(f"augment.{name}: expected [min, max] with {lo_min} < min <= max <= {hi_max}, "
                                 f"got {v}")
        if not 0.0 <= self.hflip <= 1.0:
            raise ValueError(f"augment.hflip: a probability in [0, 1], got {self.hflip}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name}: must be >= 0, got {getattr(self, name)}")


@dataclass
class Recipe:
    """What pretraining learns.

    Args:
        weights: objective -> loss weight; objectives absent (or 0) do not run. Names: mlm, mim, mam
            (masked audio), contrast (cross-modal), denoise (intra-modal denoising contrast), modality
            (OPT's modality level: the text of pairs / triplets reconstructed from the other modalities, one
            of which a triplet may drop; see ``modality_decoder``), match (sample level: image-text style
            matching of pairs with hard negatives, OPT's 5-way match state of triplets).
        denoise_weights: per-modality factor of the denoising loss, by model modality name (`vision`,
            `text`, `audio`; ONE-PEACE: text 0.5, vision 1.0).
        text_mask: masked fraction of text in text-only samples (BEiT-3: 0.15).
        text_mask_joint: masked fraction of text when paired with another modality (BEiT-3: 0.5).
        image_mask: block-wise masked fraction of patches in image-only samples (BEiT-3: 0.4).
        image_mask_joint: the same in samples with other modalities.
        audio_mask: masked fraction of audio patches (ONE-PEACE: 0.55).
        audio_span: audio mask block length in patches (ONE-PEACE: 5).
        audio_contrast_weight: weight of OPT's contrastive term inside masked audio modeling.
        denoise_temperature: token InfoNCE temperature (ONE-PEACE: 0.4).
        modality_prob: share of each pair / triplet batch that the modality-level task reconstructs
            (at least one sample per group and step).
        modality_decoder: how the modality-level task reconstructs the text: ``mlm`` (the whole text
            masked, every token predicted by the MLM head at once, OPT's masked reconstruction) or
            ``causal`` (the text is the response under the prefix-LM mask, media bidirectional and text
            causal, next-token cross-entropy through the LM head: CoCa's captioning loss, OPT's text
            decoding; the LM head is tied to the text embedding as the instruct stage's is).
        augment: training-image augmentation (``ImageAugment``).
        mix: group -> share of each step's samples (see GROUPS); groups the data lacks are dropped.
    """

    weights: dict[str, float] = field(default_factory=dict)
    denoise_weights: dict[str, float] = field(default_factory=lambda: {"text": 1.0, "vision": 1.0, "audio": 1.0})
    text_mask: float = 0.15
    text_mask_joint: float = 0.5
    image_mask: float = 0.4
    image_mask_joint: float = 0.4
    audio_mask: float = 0.55
    audio_span: int = 5
    audio_contrast_weight: float = 0.1
    denoise_temperature: float = 0.4
    modality_prob: float = 0.25
    modality_decoder: str = "mlm"
    augment: ImageAugment = field(default_factory=ImageAugment)
    mix: dict[str, float] = field(default_factory=lambda: {"text": 1.0, "image": 1.0, "image_text": 1.0})

    def __post_init__(self) -> None:
        unknown = set(self.weights) - set(OBJECTIVES)
        if unknown:
            raise ValueError(f"unknown objectives {sorted(unknown)}; known: {OBJECTIVES}")
        bad = set(self.mix) - set(GROUPS)
        if bad:
            raise ValueError(f"unknown mix groups {sorted(bad)}; known: {sorted(GROUPS)}")
        bad = set(self.denoise_weights) - set(MODEL_MODALITY.values())
        if bad:
            raise ValueError(f"unknown denoise_weights modalities {sorted(bad)}; known (the model's names): "
                             f"{sorted(MODEL_MODALITY.values())}")
        if not 0.0 <= self.modality_prob <= 1.0:
            raise ValueError(f"modality_prob: a probability in [0, 1], got {self.modality_prob}")
        if self.modality_decoder not in MODALITY_DECODERS:
            raise ValueError(f"modality_decoder: one of {MODALITY_DECODERS}, got {self.modality_decoder!r}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("a recipe needs at least one objective with a positive weight")

    def uses(self, objective: str) -> bool:
        return self.weights.get(objective, 0.0) > 0

    def merged(self, **overrides) -> "Recipe":
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


_ALL_MIX = {"text": 1.0, "image": 1.0, "audio": 1.0, "image_text": 1.0, "audio_text": 1.0,
            "image_audio": 1.0, "triplet": 1.0}

RECIPES: dict[str, Recipe] = {
    # BEiT-3: masked data modeling only; equal images / texts / pairs per batch.
    "beit3": Recipe(weights={"mlm": 1.0, "mim": 1.0, "mam": 1.0},
                    mix={"text": 1.0, "image": 1.0, "image_text": 1.0}),
    # ONE-PEACE: cross-modal contrast + intra-modal denoising, its mask ratios and loss weights.
    "one-peace": Recipe(weights={"contrast": 1.0, "denoise": 1.0},
                        denoise_weights={"text": 0.5, "vision": 1.0, "audio": 1.0},
                        text_mask=0.15, text_mask_joint=0.4, image_mask=0.75, image_mask_joint=0.6875,
                        audio_mask=0.55, audio_span=5,
                        mix={"image_text": 1.0, "audio_text": 1.0, "text": 0.5, "image": 0.5}),
    # Everything, over every kind of sample.
    "omni": Recipe(weights={"mlm": 1.0, "mim": 1.0, "mam": 1.0, "contrast": 1.0, "denoise": 0.5},
                   denoise_weights={"text": 0.5, "vision": 1.0, "audio": 1.0}, mix=dict(_ALL_MIX)),
    # OPT's three levels: token (MLM, MIM, masked audio), modality (text reconstructed from the other
    # modalities) and sample (matching), equal weights, over every kind of sample.
    "opt": Recipe(weights={"mlm": 1.0, "mim": 1.0, "mam": 1.0, "modality": 1.0, "match": 1.0},
                  mix=dict(_ALL_MIX)),
}


def get_recipe(name: str, **overrides) -> Recipe:
    if name not in RECIPES:
        raise KeyError(f"unknown recipe {name!r}; known: {sorted(RECIPES)}")
    return RECIPES[name].merged(**overrides)


def group_batch_sizes(mix: dict[str, float], batch_size: int, available: set[str] | None = None) -> dict[str, int]:
    """Split ``batch_size`` samples among the groups by their mix share (largest remainder), keeping only
    groups with a positive share that are ``available``; every kept group gets at least one sample.

    Raises:
        ValueError: when no group is left, or there are more groups than samples.
    """
    shares = {g: float(w) for g, w in mix.items() if w > 0 and (available is None or g in available)}
    if not shares:
        raise ValueError(f"no group of the mix {mix} has data (available: {sorted(available or [])})")
    if len(shares) > batch_size:
        raise ValueError(f"batch size {batch_size} is smaller than the {len(shares)} groups of the mix")
    total = sum(shares.values())
    exact = {g: batch_size * w / total for g, w in shares.items()}
    sizes = {g: max(1, int(v)) for g, v in exact.items()}
    order = sorted(shares, key=lambda g: exact[g] - int(exact[g]), reverse=True)
    i = 0
    while sum(sizes.values()) < batch_size:
        sizes[order[i % len(order)]] += 1
        i += 1
    while sum(sizes.values()) > batch_size:  # the max(1, .) floor overshot: take from the largest
        g = max(sizes, key=sizes.get)
        sizes[g] -= 1
    return {g: sizes[g] for g in GROUPS if g in sizes}
