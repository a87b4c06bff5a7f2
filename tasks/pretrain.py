"""``PretrainModel``: the backbone plus the heads of the recipe's objectives, routing each sample group
of a mixed batch to the objectives that apply to it.

    model = PretrainModel(ModelConfig.from_size("debug"), get_recipe("omni"), mim_target="pixels")
    out = model({"image_text": tensors, "text": tensors, ...})   # tensors from batching.Collator
    out["loss"].backward()                                       # out["mlm/text"], out["contrast/image_text"], ...

Per group (``recipes.GROUPS``):
- masked pass (mlm / mim / mam / denoise): text ids replaced by ``mask_id`` where ``text_mask``, patches
  by the mask token where ``pixel_mask``, audio patches where ``fbank_mask``; one joint forward of all the
  group's modalities feeds MLM, MIM, masked audio modeling and the denoising student;
- teacher pass (denoise): the clean joint input under no-grad;
- unimodal passes (contrast, groups of two or three modalities): each modality alone, CLS -> projection.
- modality-level pass (modality, groups with text and more): the chosen rows' text with the other
  modalities (triplets: both, or one dropped, per step), reconstructed by the recipe's
  ``modality_decoder``: ``mlm``, the text wholly masked and the MLM head over it (OPT); ``causal``, the text
  as the response under the prefix-LM mask, next-token loss through the LM head (CoCa's captioning loss);
- matching pass (match, groups of two or three): pairs with hard negatives from the in-batch similarity,
  triplets in OPT's five match states (``tasks.matching``), first token of the fused sequence -> ITMHead.
Each objective's loss is averaged over the groups it applies to, then weighted by the recipe.
"""

from __future__ import annotations

import torch
from torch import nn

from model import ModelConfig

from .batching import TRIPLET_KEEP
from .matching import IGNORE, MatchClassification, hard_negatives, same_rows, triplet_labels, triplet_sources
from .objectives import (CrossModalContrast, DenoisingContrast, MaskedAudioModeling, MaskedImageModeling,
                         MaskedLanguageModeling)
from .recipes import GROUPS, MODEL_MODALITY, Recipe

_CONTENT = {"text": "text_ids", "image": "pixels", "audio": "fbank"}  # what says two rows hold the same thing

_INPUT_KEYS = {"text": ("text_ids", "text_padding_mask"), "image": ("pixels",), "audio": ("fbank", "fbank_frames")}


def unit_embedding(backbone: nn.Module, contrast: nn.Module | None, b: dict[str, torch.Tensor],
                   modality: str) -> torch.Tensor:
    """Unimodal clean pass of one shard modality (``text``, ``image``, ``audio``) -> (B, E) unit embedding:
    the contrast projection when there is one (``CrossModalContrast``), else the normalised CLS feature."""
    mm = MODEL_MODALITY[modality]
    pooled = backbone(PretrainModel._inputs(b, (modality,))).pooled[mm]  # (B, C)
    if contrast is not None and mm in contrast.head.proj:
        return contrast.embed({mm: pooled})[mm]
    return torch.nn.functional.normalize(pooled, dim=-1)


class PretrainModel(nn.Module):
    """Backbone + objective heads.

    Args:
        config: the backbone's ``ModelConfig``.
        recipe: objectives, weights and mask ratios.
        mim_target: ``"tokens"`` (visual-tokenizer codes, BEiT-3) or ``"pixels"`` (normalised patch pixels).
        codebook_size: visual codes, for the tokens target.
        embed_dim: contrastive embedding width (default: the model width).
        mask_id: the text ``<mask>`` id.
    """

    def __init__(self, config: ModelConfig, recipe: Recipe, *, mim_target: str = "pixels",
                 codebook_size: int = 8192, embed_dim: int | None = None, mask_id: int = 4):
        super().__init__()
        self.recipe, self.mask_id = recipe, mask_id
        self.backbone = config.build()
        dim = config.dim
        # heads only for the objectives the recipe runs: no idle parameters in the optimizer
        modality = recipe.uses("modality") and "text" in config.modalities
        causal = modality and recipe.modality_decoder == "causal"
        # the modality-level task reconstructs text through the MLM head too, unless it decodes causally
        if (recipe.uses("mlm") or (modality and not causal)) and "text" in config.modalities:
            self.mlm = MaskedLanguageModeling(dim, config.text.vocab_size, embedding=self.backbone.text_embedding)
        if causal:  # the LM head: the MLM head's form, tied to the text embedding (the instruct stage's)
            self.lm = MaskedLanguageModeling(dim, config.text.vocab_size, embedding=self.backbone.text_embedding)
        if recipe.uses("mim"):
            self.mim = MaskedImageModeling(dim, mim_target, codebook_size, config.vision.patch_size,
                                           config.vision.in_chans)
        if recipe.uses("mam"):
            self.mam = MaskedAudioModeling(dim, config.audio.n_mels, config.audio.patch_frames,
                                           recipe.audio_contrast_weight)
        if recipe.uses("contrast"):
            self.contrast = CrossModalContrast(dim, embed_dim or dim, tuple(config.modalities))
        if recipe.uses("denoise"):
            self.denoise = DenoisingContrast(recipe.denoise_temperature)
        if recipe.uses("match"):
            self.match = MatchClassification(dim, 2)  # pairs: match / no match
            if {"vision", "text", "audio"} <= set(config.modalities):
                self.triplet_match = MatchClassification(dim, 5)  # matching.TRIPLET_STATES

    def external_parameters(self) -> list[tuple[nn.Module, nn.Parameter]]:
        """(module, parameter) pairs ZeRO-3 must gather for ``module`` although ``module`` does not own the
        parameter (the loop passes them to ``deepspeed.zero.register_external_parameter``): the MLM head's
        output matrix is the text embedding (tied), gathered for the head's forward and backward; the LM
        head's likewise."""
        return [(getattr(self, name).head, self.backbone.text_embedding.weight) for name in ("mlm", "lm")
                if hasattr(self, name)]

    # -- helpers ---------------------------------------------------------------------------------------
    @staticmethod
    def _inputs(b: dict[str, torch.Tensor], mods) -> dict[str, torch.Tensor]:
        return {k: b[k] for m in mods for k in _INPUT_KEYS[m] if k in b}

    def _masked_inputs(self, b: dict[str, torch.Tensor], mods) -> dict[str, torch.Tensor]:
        x = self._inputs(b, mods)
        if "text" in mods:
            x["text_ids"] = b["text_ids"].masked_fill(b["text_mask"], self.mask_id)
        if "image" in mods:
            x["pixel_mask"] = b["pixel_mask"]
        if "audio" in mods:
            x["fbank_mask"] = b["fbank_mask"]
        return x

    @staticmethod
    def _patch_tokens(out, modality: str) -> torch.Tensor:
        t = out.tokens[modality]
        return t if modality == "text" else t[:, 1:]  # vision / audio: drop CLS -> (B, N, C)

    def embed(self, b: dict[str, torch.Tensor], modality: str) -> torch.Tensor:
        """Unimodal clean pass of one shard modality -> (B, E) unit embedding (``unit_embedding``)."""
        return unit_embedding(self.backbone, getattr(self, "contrast", None), b, modality)

    # -- training --------------------------------------------------------------------------------------
    def group_losses(self, group: str, b: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
        """objective -> its output dict, for one group's batch."""
        r, mods = self.recipe, GROUPS[group]
        res: dict[str, dict[str, torch.Tensor]] = {}
        mdm = [o for o, m in (("mlm", "text"), ("mim", "image"), ("mam", "audio")) if r.uses(o) and m in mods]
        if mdm or r.uses("denoise"):
            out = self.backbone(self._masked_inputs(b, mods))
            if "mlm" in mdm:
                res["mlm"] = self.mlm(out.tokens["text"], b["text_ids"], b["text_mask"])
            if "mim" in mdm:
                res["mim"] = self.mim(self._patch_tokens(out, MODEL_MODALITY["image"]), b["pixel_mask"], b["pixels"],
                                      b.get("image_tokens"))
            if "mam" in mdm:
                res["mam"] = self.mam(self._patch_tokens(out, "audio"), b["fbank_mask"], b["fbank"])
            if r.uses("denoise"):
                with torch.no_grad():
                    teacher = self.backbone(self._inputs(b, mods))
                losses, parts = [], {}
                masks = {"text": "text_mask", "image": "pixel_mask", "audio": "fbank_mask"}
                for m in mods:
                    mm = MODEL_MODALITY[m]
                    d = self.denoise(self._patch_tokens(out, mm), self._patch_tokens(teacher, mm), b[masks[m]])
                    w = r.denoise_weights.get(mm, 1.0)
                    losses.append(w * d["loss"])
                    parts[mm] = d["loss"].detach()
                res["denoise"] = {"loss": torch.stack(losses).sum(), **parts}
        pooled = None
        if r.uses("contrast") and len(mods) > 1:
            pooled = {MODEL_MODALITY[m]: self.backbone(self._inputs(b, (m,))).pooled[MODEL_MODALITY[m]]
                      for m in mods}
            res["contrast"] = self.contrast(pooled)
        if r.uses("modality") and "modality_rows" in b and (hasattr(self, "mlm") or hasattr(self, "lm")):
            res["modality"] = self._modality_level(b, mods)
        if r.uses("match") and len(mods) == 2 and "match_u" in b:
            res["match"] = self._pair_match(b, mods, pooled)
        if r.uses("match") and len(mods) == 3 and "match_state" in b and hasattr(self, "triplet_match"):
            res["match"] = self._triplet_match(b, mods)
        return res

    # -- OPT's modality level, sample-level matching ----------------------------------------------------
    def _modality_level(self, b: dict[str, torch.Tensor], mods) -> dict[str, torch.Tensor]:
        """The chosen rows' text reconstructed from the modalities kept beside it: wholly masked, through
        the MLM head; or (causal decoder) generated, every text token seeing the media and the text before
        it only (prefix-LM mask from the text's first token), next-token loss through the LM head."""
        rows, mask = b["modality_rows"], b["modality_mask"]  # (k,), (k, L)
        keep = TRIPLET_KEEP[int(b["modality_keep"])] if len(mods) == 3 else tuple(m for m in mods if m != "text")
        x = {k: v[rows] for k, v in self._inputs(b, ("text", *keep)).items()}
        ids = x["text_ids"]  # (k, L)
        if hasattr(self, "lm"):
            x["text_causal_start"] = torch.zeros(ids.shape[0], dtype=torch.long, device=ids.device)  # (k,)
            return self.lm.next_token(self.backbone(x).tokens["text"], ids, mask)
        x["text_ids"] = ids.masked_fill(mask, self.mask_id)
        out = self.backbone(x)
        return self.mlm(out.tokens["text"], ids, mask)

    @torch.no_grad()
    def _similarity(self, b: dict[str, torch.Tensor], mods, pooled) -> torch.Tensor:
        """(B, B) in-batch similarity of the pair's first modality to its second: the contrast embeddings
        when the recipe trains them, else normalised CLS features of no-grad unimodal passes."""
        a, c = (MODEL_MODALITY[m] for m in mods)
        if pooled is not None:
            emb = self.contrast.embed({k: v.detach() for k, v in pooled.items()})
        else:
            emb = {MODEL_MODALITY[m]: self.embed(b, m) for m in mods}
        return emb[a].float() @ emb[c].float().t()

    def _fused_match(self, head: nn.Module, b: dict[str, torch.Tensor], sources: dict[str, torch.Tensor],
                     labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """One fused pass over sequences whose modality m comes from rows ``sources[m]`` -> match loss."""
        x = {}
        for m, idx in sources.items():
            x.update({k: v[idx] for k, v in self._inputs(b, (m,)).items()})
        out = self.backbone(x)
        return head(out.hidden[:, 0], labels)  # first token of the fused sequence (B', C)

    def _pair_match(self, b: dict[str, torch.Tensor], mods, pooled) -> dict[str, torch.Tensor]:
        """B positives + B sequences with the second modality swapped + B with the first swapped."""
        a, c = mods
        sim = self._similarity(b, mods, pooled)  # (B, B)
        B = sim.shape[0]
        rows = torch.arange(B, device=sim.device)
        eye = torch.eye(B, dtype=torch.bool, device=sim.device)
        u = b["match_u"]  # (B, 2)
        neg_c, ok_c = hard_negatives(sim, ~eye & ~same_rows(b[_CONTENT[c]]), u[:, 0])  # a partner for each a_i
        neg_a, ok_a = hard_negatives(sim.t(), ~eye & ~same_rows(b[_CONTENT[a]]), u[:, 1])  # for each c_i
        zeros = torch.zeros(B, dtype=torch.long, device=sim.device)
        labels = torch.cat([zeros + 1, zeros.masked_fill(~ok_c, IGNORE), zeros.masked_fill(~ok_a, IGNORE)])
        sources = {a: torch.cat([rows, rows, neg_a]), c: torch.cat([rows, neg_c, rows])}
        return self._fused_match(self.match, b, sources, labels)

    def _triplet_match(self, b: dict[str, torch.Tensor], mods) -> dict[str, torch.Tensor]:
        sources = triplet_sources(b["match_state"], b["match_partner"])
        labels = triplet_labels(b["match_state"], sources, b["text_ids"])
        return self._fused_match(self.triplet_match, b, {m: sources[m] for m in mods}, labels)

    def forward(self, batch: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        """batch: group -> tensors (groups in ``GROUPS`` order on every rank). Returns ``loss`` and detached
        parts ``<objective>/<group>`` (loss) and ``<objective>/<group>/<part>`` (diagnostics)."""
        per_objective: dict[str, list[torch.Tensor]] = {}
        parts: dict[str, torch.Tensor] = {}
        for group in [g for g in GROUPS if g in batch]:
            for objective, res in self.group_losses(group, batch[group]).items():
                per_objective.setdefault(objective, []).append(res["loss"])
                parts[f"{objective}/{group}"] = res["loss"].detach()
                for k, v in res.items():
                    if k not in ("loss", "count"):
                        parts[f"{objective}/{group}/{k}"] = v.detach()
        if not per_objective:
            raise ValueError(f"no objective of the recipe applies to the groups {sorted(batch)}")
        total = 0.0
        for objective, losses in per_objective.items():
            mean = torch.stack(losses).mean()
            parts[objective] = mean.detach()
            total = total + self.recipe.weights[objective] * mean
        return {"loss": total, **parts}

    # -- validation ------------------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self, group: str, b: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Per-batch validation outputs: ``emb/<modality>`` (B, E) for groups of several modalities,
        ``mlm_correct`` / ``mlm_count`` / ``mim_correct`` / ``mim_count`` from the masked pass, and with the
        recipe's matching (draws from ``Collator.add_masks``) ``match_correct`` / ``match_count`` (pairs: the
        B positives and their hard negatives each way, binary) and ``triplet_match_correct`` /
        ``triplet_match_count`` (triplets, the five match states)."""
        mods = GROUPS[group]
        out: dict[str, torch.Tensor] = {}
        if len(mods) > 1:
            for m in mods:
                out[f"emb/{m}"] = self.embed(b, m).float()
        has_mlm, has_mim = hasattr(self, "mlm") and "text" in mods, hasattr(self, "mim") and "image" in mods
        if has_mlm or has_mim:
            o = self.backbone(self._masked_inputs(b, mods))
            if has_mlm:
                r = self.mlm(o.tokens["text"], b["text_ids"], b["text_mask"])
                out["mlm_correct"], out["mlm_count"] = r["acc"] * r["count"], r["count"]
            if has_mim and self.mim.target == "tokens":
                r = self.mim(self._patch_tokens(o, MODEL_MODALITY["image"]), b["pixel_mask"], b["pixels"], b.get("image_tokens"))
                out["mim_correct"], out["mim_count"] = r["acc"] * r["count"], r["count"]
        r = None
        if hasattr(self, "match") and len(mods) == 2 and "match_u" in b:
            kind, r = "match", self._pair_match(b, mods, None)
        if hasattr(self, "triplet_match") and len(mods) == 3 and "match_state" in b:
            kind, r = "triplet_match", self._triplet_match(b, mods)
        if r is not None:
            out[f"{kind}_correct"], out[f"{kind}_count"] = r["acc"] * r["count"], r["count"]
        return out
