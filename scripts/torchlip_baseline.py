"""Issue 14's established-library baseline: ``models.lipnet``'s layout (the same circular 3x3 convolutions,
MaxMin, pixel-unshuffle and linear head, no biases) built from deel-torchlip's 1-Lipschitz layers
(SpectralConv2d / SpectralLinear: power iteration and Bjorck orthonormalisation of the reshaped kernel,
times deel's convolution coefficient), trained with the data, optimizer, schedule and Lipschitz-margin
loss of a kernel-reg run, CE(s (z + sqrt(2) eps (1 - onehot(y))), y) / s with L = 1 (deel's guarantee).
The trained layers are exported to plain ones and written as a kernel-reg run folder (config.json of a
plain lipnet, weights.pt), so that ``kernel-reg evaluate`` and scripts/certified_table.py judge it with
the same code as the project's models.

    pip install deel-torchlip==1.0.5
    python scripts/torchlip_baseline.py --name torchlip_m0.7 --num-epochs 20 --lipschitz-margin 0.7 --ce-scale 10
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch
import torch.nn.functional as F
from deel import torchlip
from torch import nn

from kernel_reg import models
from kernel_reg.app.builders import load_splits, resolve_device
from kernel_reg.app.config import preset_config
from kernel_reg.app.data import NUM_CLASSES, batches
from kernel_reg.app.rundir import WEIGHTS, Checkpoint, atomic_torch_save, atomic_write_text, run_path, write_config
from kernel_reg.app.training import build_optimizer


def torchlip_lipnet(width: int, num_classes: int = 10) -> nn.Sequential:
    """``models.lipnet(width=width)`` with every Conv2d / Linear a deel-torchlip 1-Lipschitz layer, at the
    same indices (its exported state dict loads into ``models.lipnet``)."""

    def conv(c_in: int, c_out: int) -> nn.Module:
        return torchlip.SpectralConv2d(c_in, c_out, 3, padding=1, padding_mode="circular", bias=False)

    reference = models.lipnet(num_classes, width)
    layers = list(reference)
    for index, layer in enumerate(layers):
        if isinstance(layer, nn.Conv2d):
            layers[index] = conv(layer.in_channels, layer.out_channels)
        elif isinstance(layer, nn.Linear):
            layers[index] = torchlip.SpectralLinear(layer.in_features, layer.out_features, bias=False)
    return nn.Sequential(*layers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--root", default="runs")
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--num-epochs", type=int, default=20)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--optimizer", default="sgd")
    parser.add_argument("--sched-step", type=int, default=10)
    parser.add_argument("--lipschitz-margin", type=float, default=0.7)
    parser.add_argument("--ce-scale", type=float, default=10.0)
    parser.add_argument("--n-train", type=int, default=None)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--n-val", type=int, default=0, help="validation examples carved from the training pool")
    parser.add_argument("--shuf-seed", type=int, default=0, help="which examples: RandomState(42 + shuf_seed)")
    parser.add_argument("--batch-size", type=int, default=128)
    args = parser.parse_args()
    # the kernel-reg run this one mirrors (a plain lipnet: the exported weights are plain layers)
    config = preset_config(
        "fmnist_vgg5", name=args.name, root=args.root, model="lipnet", width=args.width, num_epochs=args.num_epochs,
        lr=args.lr, optimizer=args.optimizer, sched_step=args.sched_step, lipschitz_margin=args.lipschitz_margin,
        ce_scale=args.ce_scale, n_train=args.n_train, data_dir=args.data_dir, seed=args.seed,
        n_val=args.n_val, shuf_seed=args.shuf_seed,
        batch_size=args.batch_size,
        eval_delta=args.num_epochs,
    )  # fmt: skip
    device = resolve_device(args.device)
    splits = load_splits(config, device)
    torch.manual_seed(config.seed)
    model = torchlip_lipnet(config.width, NUM_CLASSES).to(device)
    optimizer = build_optimizer(config, model)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, config.sched_step, config.sched_gamma)
    generator = torch.Generator().manual_seed(config.seed)
    shift = math.sqrt(2.0) * config.lipschitz_margin
    began = time.perf_counter()
    n = splits.train_x.shape[0]
    for epoch in range(config.num_epochs):
        model.train()
        total = 0.0
        for x, y in batches(splits.train_x, splits.train_y, config.batch_size, generator):
            logits = model(x) + shift * (1 - F.one_hot(y, NUM_CLASSES).to(x.dtype))
            loss = F.cross_entropy(config.ce_scale * logits, y) / config.ce_scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(y)
        scheduler.step()
        print(f"epoch {epoch}, train_loss {total / n:.4f}, {time.perf_counter() - began:.0f}s", flush=True)
    model.eval()
    plain = torchlip.vanilla_model(model)
    lipnet = models.lipnet(NUM_CLASSES, config.width).to(device)
    lipnet.load_state_dict(plain.state_dict())  # the same layout: the keys match
    with torch.no_grad():
        agree = torch.allclose(lipnet(splits.test_x[:512]), model(splits.test_x[:512]), atol=1e-5)
    if not agree:
        raise SystemExit("the exported plain lipnet does not compute the deel-torchlip model's logits")
    run_dir = run_path(config)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_config(run_dir, config)
    weights = Checkpoint(model={k: v.cpu() for k, v in lipnet.state_dict().items()}, epoch=config.num_epochs - 1)
    atomic_torch_save(weights.published(unfinished=None), run_dir / WEIGHTS)
    note = {"trained_with": "deel-torchlip 1.0.5 SpectralConv2d / SpectralLinear (scripts/torchlip_baseline.py)",
            "train_seconds": round(time.perf_counter() - began, 1)}  # fmt: skip
    atomic_write_text(run_dir / "torchlip.json", json.dumps(note, indent=2))
    print(f"wrote {run_dir / WEIGHTS}")


if __name__ == "__main__":
    main()
