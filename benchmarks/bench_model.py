"""Forward + backward throughput of omniway's multiway transformer against torchscale 0.3.0's BEiT-3.

Same run, same weights (torchscale's, loaded through model.interop.beit3), same inputs: the released BEiT-3
layout (``all`` policy), 768 wide, 4 layers, a batch of 224 px images + 64 text tokens, fp32 and bf16
autocast. Also reports achieved FLOP/s against a matmul peak measured in this script (MFU).

    python benchmarks/bench_model.py                 # CPU defaults: a few minutes on 2 cores
    python benchmarks/bench_model.py --device cuda   # GPU: bigger batch, bf16 throughput and MFU

Needs torchscale 0.3.0 + fairscale 0.4.0 (``pip install --no-deps torchscale==0.3.0 fairscale==0.4.0``);
timm is replaced by a one-function shim (torchscale only uses ``timm.models.layers.drop_path``).
Prints the fp32 ratio, then as the last line ``omniway_over_torchscale: <ratio>`` for bf16.
"""

from __future__ import annotations

import argparse
import sys
import time
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model import ModelConfig, MultiwayModel  # noqa: E402
from model.interop.beit3 import load_beit3  # noqa: E402


def _install_timm_shim() -> None:
    try:
        import timm.models.layers  # noqa: F401
        return
    except Exception:
        pass

    def drop_path(x, drop_prob=0.0, training=False):
        if drop_prob == 0.0 or not training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1 - drop_prob)
        return x * keep / (1 - drop_prob)

    timm, models, layers = (types.ModuleType(n) for n in ("timm", "timm.models", "timm.models.layers"))
    layers.drop_path = drop_path
    timm.models, models.layers = models, layers
    sys.modules.update({"timm": timm, "timm.models": models, "timm.models.layers": layers})


def build_models(args, device):
    _install_timm_shim()
    from torchscale.architecture.config import EncoderConfig
    from torchscale.model.BEiT3 import BEiT3

    torch.manual_seed(0)
    ts_args = EncoderConfig(
        encoder_embed_dim=args.dim, encoder_attention_heads=args.dim // 64, encoder_ffn_embed_dim=4 * args.dim,
        encoder_layers=args.layers, vocab_size=args.vocab, img_size=args.img, patch_size=16, multiway=True,
        layernorm_embedding=False, normalize_output=True, no_output_layer=True,
    )
    ref = BEiT3(ts_args).to(device).train()
    config = ModelConfig.from_dict({
        "dim": args.dim, "layers": args.layers, "heads": args.dim // 64, "ffn_dim": 4 * args.dim,
        "modalities": ["vision", "text"], "expert_policy": "all",
        "vision": {"img_size": args.img, "patch_size": 16}, "text": {"vocab_size": args.vocab, "max_positions": 1024},
    })
    ours = MultiwayModel(config)
    load_beit3(ours, {k: v.cpu() for k, v in ref.state_dict().items()})
    return ref, ours.to(device).train(), config


def step_fns(ref, ours, pixels, ids, pad):
    def run_ref():
        out = ref(textual_tokens=ids, visual_tokens=pixels, text_padding_position=pad)["encoder_out"]
        out.float().pow(2).mean().backward()

    def run_ours():
        out = ours({"pixels": pixels, "text_ids": ids, "text_padding_mask": pad}).hidden
        out.float().pow(2).mean().backward()

    return {"torchscale": run_ref, "omniway": run_ours}


def flops_per_step(config: ModelConfig, batch: int, n_img: int, n_text: int) -> float:
    """Model FLOPs of one forward + backward (3x forward): every matmul a token passes through, plus the
    attention score and value products; the patch embedding counted as a matmul per patch."""
    C, F, L = config.dim, config.ffn_dim, config.layers
    T = n_img + n_text
    per_token_layer = 2 * (4 * C * C + 2 * C * F) + 2 * 2 * T * C  # projections + FFN + QK^T and AV
    patch = 2 * 3 * 16 * 16 * C * (n_img - 1)
    return 3.0 * batch * (T * L * per_token_layer + patch)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device, dtype, seconds: float) -> float:
    """FLOP/s of a large GEMM in ``dtype`` through ``F.linear`` (x @ W^T, the layout of every model matmul),
    under autocast for bf16 as the models run. On a CPU without bf16 instructions this is PyTorch's bf16
    fallback GEMM, which is what torchscale gets there."""
    m, k, n = (2048, 1024, 4096) if device.type == "cpu" else (8192, 8192, 8192)
    x = torch.randn(m, k, device=device)
    w = torch.randn(n, k, device=device)
    ctx = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(device.type, enabled=False)
    with ctx:
        torch.nn.functional.linear(x, w)
        sync(device)
        reps, start = 0, time.perf_counter()
        while True:
            torch.nn.functional.linear(x, w)
            reps += 1
            sync(device)
            if time.perf_counter() - start > seconds:
                break
    return 2 * m * k * n * reps / (time.perf_counter() - start)


def bench(fns, device, dtype, steps: int, warmup: int) -> dict[str, float]:
    """Best (minimum) seconds per step over ``steps``, as ``timeit`` advises: on a shared machine other
    processes only ever add time. The two models alternate so slow phases hit both alike."""
    ctx = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype != torch.float32 else (
        lambda: torch.autocast(device.type, enabled=False))
    times: dict[str, list[float]] = {k: [] for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            with ctx():
                fn()
            sync(device)
            if i >= warmup:
                times[name].append(time.perf_counter() - start)
    return {k: min(v) for k, v in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="default: 2 on CPU, 64 on GPU")
    p.add_argument("--steps", type=int, default=None,
                   help="timed steps per model (default: 20 on GPU; on CPU 6 fp32, 2 bf16)")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--img", type=int, default=224)
    p.add_argument("--text-len", type=int, default=64)
    p.add_argument("--vocab", type=int, default=64010)
    p.add_argument("--plain-bf16", action="store_true",
                   help="ablation: turn off omniway's fp32-BLAS bf16 Linear, leaving SDPA and routing as the only changes")
    p.add_argument("--dtypes", default=None, help="comma list of fp32,bf16 (default: both on CPU, bf16 on GPU)")
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    batch = args.batch or (64 if gpu else 2)
    warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    dtypes = (args.dtypes or ("bf16" if gpu else "fp32,bf16")).split(",")
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both sides

    if args.plain_bf16:
        from model import ops

        ops.cpu_has_native_bf16_gemm = lambda: True
    ref, ours, config = build_models(args, device)
    g = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, args.img, args.img, generator=g).to(device)
    ids = torch.randint(3, args.vocab, (batch, args.text_len), generator=g).to(device)
    pad = torch.zeros(batch, args.text_len, dtype=torch.bool)
    pad[:, args.text_len - args.text_len // 8 :] = True  # some padding, as real batches have
    pad = pad.to(device)
    n_img = (args.img // 16) ** 2 + 1
    tokens = batch * (n_img + args.text_len)
    flops = flops_per_step(config, batch, n_img, args.text_len)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}")
    print(f"config: all policy, dim {args.dim}, {args.layers} layers, batch {batch} x ({n_img} image + "
          f"{args.text_len} text) = {tokens} tokens/step, {flops / 1e9:.1f} GFLOP/step (fwd+bwd)")

    # same outputs before timing anything: the comparison is between equal computations
    with torch.no_grad():
        a = ref(textual_tokens=ids, visual_tokens=pixels, text_padding_position=pad)["encoder_out"]
        b = ours({"pixels": pixels, "text_ids": ids, "text_padding_mask": pad}).hidden
    print(f"max |omniway - torchscale| fp32 output: {(a - b).abs().max().item():.2e}")

    fns = step_fns(ref, ours, pixels, ids, pad)
    if not gpu:
        from model.ops import cpu_has_native_bf16_gemm

        if args.plain_bf16:
            print("ablation --plain-bf16: omniway's bf16 Linear uses PyTorch's own bf16 GEMM, like torchscale")
        print(f"CPU has native bf16 GEMM: {cpu_has_native_bf16_gemm()} (without it omniway's Linear runs bf16 "
              "products through the fp32 BLAS; torchscale gets PyTorch's bf16 fallback GEMM)")
    ratios = {}
    peaks = {}
    for name in dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[name]
        peaks[name] = matmul_peak(device, dtype, seconds=1.0 if not gpu else 2.0)
        if name == "bf16" and not gpu and "fp32" not in peaks:
            peaks["fp32"] = matmul_peak(device, torch.float32, seconds=1.0)
        steps = args.steps or (20 if gpu else {"fp32": 6, "bf16": 2}[name])
        t = bench(fns, device, dtype, steps, warmup)
        for model_name, sec in t.items():
            achieved = flops / sec
            line = (f"{name} {model_name:>10}: {sec * 1e3:8.1f} ms/step  {tokens / sec:9.1f} tokens/s  "
                    f"{achieved / 1e9:8.1f} GFLOP/s  MFU {achieved / peaks[name]:6.1%} of the measured {name} "
                    f"matmul peak ({peaks[name] / 1e9:.1f} GFLOP/s)")
            if name == "bf16" and not gpu and peaks["fp32"] > peaks["bf16"]:
                # without bf16 instructions the fp32 BLAS is the machine's real ceiling
                line += f", {achieved / peaks['fp32']:6.1%} of the fp32 one ({peaks['fp32'] / 1e9:.1f})"
            print(line)
        ratios[name] = t["torchscale"] / t["omniway"]
        print(f"{name} omniway_over_torchscale: {ratios[name]:.3f}")
    final = ratios.get("bf16", next(iter(ratios.values())))
    print(f"omniway_over_torchscale: {final:.3f}")


if __name__ == "__main__":
    main()
