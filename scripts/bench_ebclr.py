"""EBCLR step cost against its arithmetic floor, measured side by side in one run.

One EBCLR step runs the encoder on two views, on the SGLD chains once per SGLD step (forward + input gradient), and
once more on the final samples. Its floor is therefore

    floor = (2 + sgld_steps + 1) * t_pass

where ``t_pass`` is one single-view forward + backward (parameter gradients) of the batch on the same backbone; with
10 SGLD steps that is 13 passes. The script times ``t_pass`` and the EBCLR step (``training_step`` + ``backward``,
no optimiser step in either) alternately, takes the median of several repeats after a warm-up, and prints a
markdown table with both wall-clock and process CPU time (the sum over threads; steadier when other processes
load the machine). An SGLD step needs only the input gradient, not the weight gradients, so a ratio below 1 is possible.
CPU timings are noisy when other processes share the machine; the table reports what was measured.

    python scripts/bench_ebclr.py --quick        # < 1 minute
    python scripts/bench_ebclr.py --batch 128 256 --repeats 7
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from hf_hybridcl import HybridCLConfig
from hf_hybridcl.methods.ebclr import EBCLR
from hf_hybridcl.recipes import DEFAULT_RECIPE

BACKBONES = {
    # the digits recipes' ViT (the default model section): 16x16 grayscale, 4x4 patches, embed 64, depth 2
    "digits-vit": dict(DEFAULT_RECIPE["model"]),
    # the CIFAR-10 recipe's ViT-Tiny with 4x4 patches on 32x32 RGB
    "cifar-vit-tiny": {
        "backbone": "vit_tiny_patch16_224",
        "backbone_kwargs": {"patch_size": 4, "embed_dim": 192, "depth": 12, "num_heads": 3, "mlp_ratio": 4.0},
        "image_size": 32, "num_channels": 3, "proj_hidden_dim": 512, "proj_output_dim": 128,
    },
}


def build_config(name: str) -> HybridCLConfig:
    model = {k: v for k, v in BACKBONES[name].items() if v is not None}
    return HybridCLConfig(**model)


def time_call(fn) -> tuple[float, float]:
    """Wall-clock and process CPU seconds of one call (CPU time is less sensitive to other processes' load)."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - wall, time.process_time() - cpu


def bench(backbone: str, batch: int, sgld_steps: int, repeats: int, warmup: int) -> dict:
    torch.manual_seed(0)
    config = build_config(backbone)
    method = EBCLR(config, {"sgld_steps": sgld_steps, "buffer_size": max(4 * batch, 1024)})
    method.train()
    shape = (batch, config.num_channels, config.image_size, config.image_size)
    views = [torch.rand(shape) * 2 - 1 for _ in range(2)]
    data = {"views": views, "labels": torch.zeros(batch, dtype=torch.long), "index": torch.arange(batch)}
    model = method.model

    def single_pass():
        model.zero_grad(set_to_none=True)
        out = model(views[0]).projection
        out.float().pow(2).sum().backward()

    def ebclr_step():
        method.zero_grad(set_to_none=True)
        loss, _ = method.training_step(data)
        loss.backward()

    passes, steps = [], []
    for _ in range(warmup):
        single_pass()
        ebclr_step()
    for _ in range(repeats):  # alternate so both see the same machine load
        passes.append(time_call(single_pass))
        steps.append(time_call(ebclr_step))
    n_pass = 2 + sgld_steps + 1
    row = {"batch": batch, "backbone": backbone, "sgld_steps": sgld_steps}
    for i, clock in enumerate(("wall", "cpu")):
        t_pass = statistics.median(p[i] for p in passes)
        t_step = statistics.median(s[i] for s in steps)
        row[clock] = {"pass_ms": 1e3 * t_pass, "floor_ms": 1e3 * n_pass * t_pass, "step_ms": 1e3 * t_step,
                      "ratio": t_step / (n_pass * t_pass)}
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", nargs="+", default=["digits-vit"], choices=sorted(BACKBONES))
    parser.add_argument("--batch", nargs="+", type=int, default=[128])
    parser.add_argument("--sgld-steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--quick", action="store_true", help="digits ViT, batch 64, 3 repeats (under a minute)")
    args = parser.parse_args(argv)
    if args.quick:
        args.backbone, args.batch, args.repeats, args.warmup = ["digits-vit"], [64], 3, 1
    torch.set_num_threads(args.threads)
    rows = [bench(b, n, args.sgld_steps, args.repeats, args.warmup) for b in args.backbone for n in args.batch]
    print(f"torch {torch.__version__}, {args.threads} threads, median of {args.repeats} after {args.warmup} warm-up\n")
    print("| batch | backbone | SGLD steps | clock | pass ms | floor ms | EBCLR step ms | ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        for clock in ("wall", "cpu"):
            c = r[clock]
            print(f"| {r['batch']} | {r['backbone']} | {r['sgld_steps']} | {clock} | {c['pass_ms']:.1f} | "
                  f"{c['floor_ms']:.1f} | {c['step_ms']:.1f} | {c['ratio']:.2f} |")


if __name__ == "__main__":
    main()
