"""Cost of the EfficientNet-Lite teacher candidates on this CPU: why Lite0 at 128 px.

For each variant and input size: parameters, the seconds per image of one
training step (forward, backward, AdamW; batch 32) and the FP32 inference
cells/s (torch, batch 64), with the same thread count for all, in one run.

    .venv/bin/python benchmarks/lite_variants.py --threads 2 [--variants efficientnet_lite0,efficientnet_lite1]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from export.models.classifier import build_classifier


def seconds_per_image(fn, batch: int, rounds: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) / batch


def measure(variant: str, size: int, rounds: int) -> dict:
    model = build_classifier(variant, size, 8, "ccl")
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x_train, x_infer = torch.randn(32, 3, size, size), torch.randn(64, 3, size, size)

    def train_step():
        model.train()
        loss = model(x_train).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    @torch.no_grad()
    def infer():
        model.eval()
        model(x_infer)

    return {"variant": variant, "img_size": size, "parameters": sum(p.numel() for p in model.parameters()),
            "train_s_per_image": seconds_per_image(train_step, 32, rounds),
            "infer_cells_per_s": 1.0 / seconds_per_image(infer, 64, rounds)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--variants", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2")
    p.add_argument("--sizes", default="96,128,160")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = [measure(v, int(s), args.rounds) for v in args.variants.split(",") for s in args.sizes.split(",")]
    print("| variant | input | parameters | train s/image | FP32 cells/s |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['img_size']} | {r['parameters'] / 1e6:.2f} M | {r['train_s_per_image']:.4f} | "
              f"{r['infer_cells_per_s']:.0f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
