"""Answering with an instruction-tuned model: the Python entry point and `omniway generate`.

    from pipelines.generate import Assistant
    bot = Assistant.load(".omniway/storage/demo/instruct/<key>")   # an instruct output, or its omniway export
    bot.answer("what shape is in the image?", image="shape.png")     # -> "circle"
    bot.answer("and its colour?", image="shape.png", history=[("what shape is in the image?", "circle")])

Media go through the stages' own code (validated as the corpus stage does, featurized as the shards stage
does, collated as in training), the prompt through the chat template the model was tuned with, and the
answer through `model.generation.generate` (greedy by default; sampling and beams by keyword).
"""

from __future__ import annotations

import json
import os
from typing import Sequence


class Assistant:
    """A loaded instruction-tuned model.

    Args:
        model: the ``tasks.instruct.InstructModel`` (eval mode).
        tokenizer: the sentencepiece processor the model was tuned with.
        settings: the output's ``instruct.json`` (template, tokenizer ids, image resolution).
    """

    def __init__(self, model, tokenizer, settings: dict):
        from tasks.chat import ChatTemplate

        self.model, self.sp, self.settings = model.eval(), tokenizer, settings
        self.template = ChatTemplate(**(settings.get("template") or {}))
        self.ids = settings["tokenizer"]["ids"]

    @classmethod
    def load(cls, directory: str) -> "Assistant":
        """From a directory holding ``model.safetensors``, ``lm_head.safetensors``, ``instruct.json`` and
        ``text.model`` (an instruct stage output, or ``omniway export --format omniway`` of one)."""
        import sentencepiece as spm
        from safetensors.torch import load_file

        from model import load_checkpoint
        from tasks.instruct import InstructModel

        missing = [n for n in ("model.safetensors", "lm_head.safetensors", "instruct.json", "text.model")
                   if not os.path.exists(os.path.join(directory, n))]
        if missing:
            raise FileNotFoundError(f"{directory}: not an instruct output (missing {', '.join(missing)})")
        backbone = load_checkpoint(os.path.join(directory, "model.safetensors"))
        model = InstructModel(backbone.config)
        model.backbone.load_state_dict(backbone.state_dict(), strict=True)
        model.lm.load_state_dict(load_file(os.path.join(directory, "lm_head.safetensors")), strict=True)
        with open(os.path.join(directory, "instruct.json")) as f:
            settings = json.load(f)
        return cls(model, spm.SentencePieceProcessor(model_file=os.path.join(directory, "text.model")), settings)

    def batch_spec(self):
        """The ``tasks.BatchSpec`` turning stored rows (and media given here) into this model's inputs."""
        from tasks import BatchSpec

        return BatchSpec.for_model(self.model.backbone.config, self.settings["image_resolution"], self.ids)

    def inputs(self, prompt: str, image: str | bytes | None = None, audio: str | bytes | None = None,
               history: Sequence[tuple[str, str]] = ()) -> dict:
        """The model's inputs for one question: media as in training, the chat template's prompt ids.

        Args:
            prompt: the question (the last user turn).
            image / audio: a path or the file's bytes; its placeholder (``<image>`` / ``<audio>``) goes at
                the start of the conversation's first user turn, unless a turn already holds it.
            history: earlier turns of the conversation, oldest first, as (user, assistant) text pairs. The
                prompt is then the whole conversation formatted as in training, and
                ``text_causal_start`` (1,) marks its first answer: the earlier answers and what follows
                them attend causally, as they did in training (``model.generation.prefill``).
        """
        import numpy as np
        import torch

        from pipelines.data.audio import load_audio_16k, normalize_audio
        from pipelines.data.fbank import fbank_bytes
        from pipelines.data.image import image_pixels, normalize_image
        from pipelines.stages.corpus import AudioLimits, ImageLimits
        from tasks import Collator, get_recipe

        from tasks.chat import PLACEHOLDERS

        collator = Collator(self.batch_spec(), get_recipe("omni"))
        out: dict = {}
        users = [str(prompt)]
        answers: list[str] = []
        for i, pair in enumerate(history or ()):
            if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(t, str) for t in pair):
                raise ValueError(f"history[{i}]: expected a (user, assistant) pair of texts, got {pair!r}")
            users.insert(len(answers), pair[0])
            answers.append(pair[1])

        def place(modality: str) -> None:  # media placeholder at the start of the first user turn
            if not any(PLACEHOLDERS[modality] in u for u in users):
                users[0] = PLACEHOLDERS[modality] + "\n" + users[0]

        if audio is not None:
            data = open(audio, "rb").read() if isinstance(audio, str) else audio
            ext = os.path.splitext(audio)[1].lstrip(".") if isinstance(audio, str) else ""
            fbank, frames = fbank_bytes(load_audio_16k(normalize_audio(data, AudioLimits(), ext)))
            out.update(collator._audio([fbank], np.asarray([frames])))
            place("audio")
        if image is not None:
            data = open(image, "rb").read() if isinstance(image, str) else image
            ext = os.path.splitext(image)[1].lstrip(".") if isinstance(image, str) else ""
            pixels = image_pixels(normalize_image(data, ImageLimits(), ext), int(self.settings["image_resolution"]))
            out["pixels"] = collator._pixels([pixels.tobytes()])
            place("image")
        turns = [t for u, a in zip(users, answers) for t in (("user", u), ("assistant", a))] + [("user", users[-1])]
        ids, causal_start = self.template.encode_prompt(turns, self.sp.encode, bos_id=self.ids["bos"],
                                                        eos_id=self.ids["eos"])
        out["text_ids"] = torch.tensor([ids], dtype=torch.long)
        if causal_start is not None:  # earlier answers in the prompt: attended causally, as in training
            out["text_causal_start"] = torch.tensor([causal_start], dtype=torch.long)
        return out

    def answer(self, prompt: str, image: str | bytes | None = None, audio: str | bytes | None = None,
               max_new_tokens: int = 32, history: Sequence[tuple[str, str]] = (), **generate_kwargs) -> str:
        """The model's answer to ``prompt`` about ``image`` and / or ``audio`` (paths or bytes).

        Args:
            history: earlier (user, assistant) turns of the conversation, oldest first (see ``inputs``);
                e.g. ``bot.answer("and its colour?", image="shape.png", history=[("what shape?", "circle")])``.
            generate_kwargs: ``model.generation.generate``'s decoding options (``do_sample``,
                ``temperature``, ``top_p``, ``generator``, ``num_beams``, ...).
        """
        return self.generate(self.inputs(prompt, image, audio, history), max_new_tokens, **generate_kwargs)[0]

    def generate(self, inputs: dict, max_new_tokens: int = 32, **generate_kwargs) -> list[str]:
        """Answers to a batch of prompts: ``inputs`` as ``inputs`` makes them (media tensors, prompt
        ``text_ids`` right-padded with ``text_padding_mask``, ``text_causal_start`` (B,) for multi-turn
        prompts); at most the positions the model has left."""
        from model.generation import generate

        c = self.model.backbone.config
        room = c.text.max_positions - c.position_offset - inputs["text_ids"].shape[1] + 1
        out = generate(self.model.backbone, self.model.logits, inputs, max_new_tokens=max(1, min(max_new_tokens, room)),
                       eos_id=self.ids["eos"], pad_id=self.ids["pad"], **generate_kwargs)
        answers = []
        for row, n in zip(out.tokens.tolist(), out.lengths.tolist()):
            answers.append(self.sp.decode([t for t in row[:int(n)] if t != self.ids["eos"]]))
        return answers
