"""`omniway generate` and `pipelines.generate.Assistant` on an instruct-shaped output written here (a random
model, a real sentencepiece tokenizer): media through the stages' code, the prompt through the chat
template, the answer through cached generation; export keeps the instruct files."""

from __future__ import annotations

import contextlib
import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from pipelines import cli


@pytest.fixture(scope="module")
def instruct_dir(tmp_path_factory):
    import sentencepiece as spm
    from safetensors.torch import save_file

    from model import ModelConfig, save_checkpoint
    from tasks.instruct import InstructModel

    root = tmp_path_factory.mktemp("gen")
    lines = ["USER: what shape is it? ASSISTANT: a red circle", "USER: what does the audio say? ASSISTANT: hello there",
             "a blue square"] * 20
    writer = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=writer, vocab_size=60,
                                   model_type="bpe", pad_id=0, unk_id=1, bos_id=2, eos_id=3,
                                   user_defined_symbols=["<mask>", "<image>", "<audio>", "<text>"],
                                   hard_vocab_limit=False, minloglevel=2)
    (root / "text.model").write_bytes(writer.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=writer.getvalue())
    torch.manual_seed(0)
    config = ModelConfig.from_size("debug", text={"vocab_size": sp.get_piece_size()})
    model = InstructModel(config)
    save_checkpoint(str(root / "model.safetensors"), model.backbone, config)
    save_file({k: v.contiguous() for k, v in model.lm.state_dict().items()}, str(root / "lm_head.safetensors"))
    ids = {"pad": 0, "unk": 1, "bos": 2, "eos": 3}
    (root / "instruct.json").write_text(json.dumps({"model_config": config.to_dict(), "template": None,
                                                    "tokenizer": {"ids": ids}, "image_resolution": 48}))
    Image.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(root / "shape.png")
    t = np.arange(8000) / 16000
    sf.write(root / "say.wav", (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    return root


def cli_run(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(list(args))
    return code, out.getvalue(), err.getvalue()


def test_assistant_builds_inputs_as_training_did(instruct_dir):
    from pipelines.generate import Assistant

    bot = Assistant.load(str(instruct_dir))
    x = bot.inputs("what shape is it?", image=str(instruct_dir / "shape.png"), audio=str(instruct_dir / "say.wav"))
    assert x["pixels"].shape == (1, 3, 32, 32)  # shards' 48 px resized to the debug model's 32
    assert float(x["pixels"].min()) >= -1.0 and float(x["pixels"].max()) <= 1.0
    assert x["fbank"].shape[0] == 1 and x["fbank"].shape[2] == 128 and int(x["fbank_frames"][0]) > 0
    ids = x["text_ids"][0].tolist()
    image_id, audio_id = bot.sp.piece_to_id("<image>"), bot.sp.piece_to_id("<audio>")
    assert ids[0] == 2 and image_id in ids and audio_id in ids
    assert bot.sp.decode(ids[1:]).startswith("USER:") and bot.sp.decode(ids[1:]).rstrip().endswith("ASSISTANT:")
    greedy = bot.answer("what shape is it?", image=str(instruct_dir / "shape.png"), max_new_tokens=6)
    assert greedy == bot.answer("what shape is it?", image=str(instruct_dir / "shape.png"), max_new_tokens=6)
    assert isinstance(greedy, str)


def test_generate_command(instruct_dir, tmp_path):
    code, out, err = cli_run("generate", str(instruct_dir), "what shape is it?", "--image",
                             str(instruct_dir / "shape.png"), "--max-new-tokens", "5", "--num-beams", "2")
    assert code == 0, err
    assert out.endswith("\n") and len(out.splitlines()) == 1
    code, _, err = cli_run("generate", str(tmp_path), "hi")
    assert code == 1 and "not an instruct output (missing model.safetensors" in err
    # export --format omniway keeps what generation needs; the exported directory answers the same
    code, _, err = cli_run("export", str(instruct_dir), "--out", str(tmp_path / "exported"))
    assert code == 0, err
    assert {"model.safetensors", "lm_head.safetensors", "instruct.json", "text.model"} <= set(
        os.listdir(tmp_path / "exported"))
    a = cli_run("generate", str(instruct_dir), "hello", "--max-new-tokens", "4")
    b = cli_run("generate", str(tmp_path / "exported"), "hello", "--max-new-tokens", "4")
    assert a[0] == b[0] == 0 and a[1] == b[1]


def test_generate_command_samples_with_a_seed(instruct_dir):
    args = ("generate", str(instruct_dir), "what shape is it?", "--max-new-tokens", "6")
    greedy = cli_run(*args)
    a = cli_run(*args, "--do-sample", "--temperature", "3.0", "--seed", "5")
    b = cli_run(*args, "--do-sample", "--temperature", "3.0", "--seed", "5")
    assert greedy[0] == a[0] == b[0] == 0, (a[2], b[2])
    assert a[1] == b[1]  # one seed, one answer
    # flat sampling over a 60-piece vocabulary: some seed of a few leaves the greedy answer
    others = {cli_run(*args, "--do-sample", "--temperature", "3.0", "--seed", str(s))[1] for s in range(4)}
    assert others - {greedy[1]}, others
    # a nucleus too small for a second token is greedy
    nucleus = cli_run(*args, "--do-sample", "--top-p", "1e-6", "--seed", "1")
    assert nucleus[0] == 0 and nucleus[1] == greedy[1]
    code, _, err = cli_run(*args, "--do-sample", "--top-p", "0")
    assert code == 2 and "--top-p in (0, 1]" in err
    code, _, err = cli_run(*args, "--do-sample", "--num-beams", "2")
    assert code == 1 and "beam search with sampling" in err


def test_history_prompt_is_the_training_conversation_and_the_evaluate_worker_agrees(instruct_dir):
    from pipelines.evaluation.workers import GenerateWorker
    from pipelines.generate import Assistant
    from pipelines.manifest import Manifest

    bot = Assistant.load(str(instruct_dir))
    image = str(instruct_dir / "shape.png")
    history = [("what shape is it?", "a red circle")]
    x = bot.inputs("what colour is it?", image=image, history=history)
    # the ids are the training conversation's before the last answer; its first answer starts the causal part
    turns = [("user", "<image>\nwhat shape is it?"), ("assistant", "a red circle"), ("user", "what colour is it?"),
             ("assistant", "red")]
    enc = bot.template.encode(turns, bot.sp.encode, bos_id=2, eos_id=3)
    last = max(i for i, m in enumerate(enc.loss_mask) if not m) + 1
    assert x["text_ids"][0].tolist() == enc.ids[:last]
    assert x["text_causal_start"].tolist() == [enc.response_start] and enc.response_start < last
    assert "text_causal_start" not in bot.inputs("what shape is it?", image=image)  # one turn: bidirectional
    with pytest.raises(ValueError, match=r"history\[0\]: expected a \(user, assistant\) pair"):
        bot.inputs("q", history=[("only a question",)])
    answer = bot.answer("what colour is it?", image=image, history=history, max_new_tokens=5)
    bidirectional = bot.generate({k: v for k, v in x.items() if k != "text_causal_start"}, max_new_tokens=5)[0]
    assert answer != bidirectional  # this model answers differently without the causal part: the check bites
    # the evaluate stage's worker, on the stored row of the same conversation, prompts the same way
    worker = GenerateWorker({"kind": "instruct", "manifest": Manifest(dir=str(instruct_dir), data={})},
                            {"max_new_tokens": 5}, resolution=48, ids=bot.ids)
    from pipelines.data.image import image_pixels, normalize_image
    from pipelines.stages.corpus import ImageLimits

    pixels = image_pixels(normalize_image((instruct_dir / "shape.png").read_bytes(), ImageLimits(), "png"), 48)
    batch = {"sample_id": np.asarray(["two-turns"], dtype=object), "modalities": [["text", "image"]],
             "text_ids": [np.asarray(enc.ids)], "loss_mask": [np.asarray(enc.loss_mask)],
             "pixels": [pixels.tobytes()]}
    assert worker(batch)["prediction"].tolist() == [answer]
