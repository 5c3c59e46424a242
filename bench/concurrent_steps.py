"""Seconds per training step of one run's setup on random data, timed at the same moment as other
processes so that several can be measured sharing one GPU (what a sweep of runs at once sees).

    START=$(( $(date +%s) + 25 ))   # every process times its steps from this moment on
    for b in 128 512; do START=$START python bench/concurrent_steps.py b$b normalization=orthogonal \
        optimizer=adam lr=0.001 ce_scale=10 lipschitz_margin=0.7 batch_size=$b & done; wait
    START=$START python bench/concurrent_steps.py deel torchlip lipschitz_margin=0.7 batch_size=512 ...

Arguments: a name, then ``key=value`` overrides of the fmnist_vgg5 preset with ``model=lipnet`` (or
``torchlip`` first: the deel-torchlip layers of scripts/torchlip_baseline.py, same loss). Environment:
DEV (default cuda), STEPS (timed steps, default 40), START (a Unix time to wait for after 5 warm-up
steps). Prints one JSON line: name, median seconds per step, batch size.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from kernel_reg.app.builders import build_model
from kernel_reg.app.config import parse_value, preset_config
from kernel_reg.app.training import build_optimizer, build_regularizers, step


def main() -> None:
    device = torch.device(os.environ.get("DEV", "cuda"))
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    name, rest = sys.argv[1], sys.argv[2:]
    deel = rest[:1] == ["torchlip"]
    overrides = {k: parse_value(k, v) for k, v in (a.split("=", 1) for a in rest[deel:])}
    config = preset_config("fmnist_vgg5", name=name, model="lipnet", device=device.type, **overrides)
    shape = (1, 28, 28)
    x = torch.rand(config.batch_size, *shape, device=device)
    y = torch.randint(0, 10, (config.batch_size,), device=device)
    if deel:
        sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
        from torchlip_baseline import torchlip_lipnet

        model = torchlip_lipnet(config.width).to(device)
        optimizer = build_optimizer(config, model)
        shift = math.sqrt(2.0) * config.lipschitz_margin * (1 - F.one_hot(y, 10).float())

        def one() -> None:
            loss = F.cross_entropy(config.ce_scale * (model(x) + shift), y) / config.ce_scale
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    else:
        model = build_model(config, device, shape)
        optimizer = build_optimizer(config, model)
        regs = build_regularizers(config, input_shape=shape)

        def one() -> None:
            step(model, x, y, regs, optimizer)

    for _ in range(5):  # warm-up, then wait for the others so that all time their steps at once
        one()
    sync()
    time.sleep(max(0.0, float(os.environ.get("START", 0)) - time.time()))
    times = []
    for _ in range(int(os.environ.get("STEPS", 40))):
        sync()
        began = time.perf_counter()
        one()
        sync()
        times.append(time.perf_counter() - began)
    print(json.dumps({"name": name, "seconds": statistics.median(times), "batch_size": config.batch_size}))


if __name__ == "__main__":
    main()
