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
