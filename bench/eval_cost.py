"""What one call of each evaluation attack of the suite (``kernel_reg.app.suite.EVAL_ATTACKS``) costs, as a
multiple of one gradient pass (forward and input backward) of the same batch.

    python bench/eval_cost.py                          # VGG-5 (1x28x28), every attack of the suite, l2
    python bench/eval_cost.py --model vgg11 --norm linf --steps 20 --repeats 5

The attacks are the suite's own, built by ``suite.build_eval_attack`` from ``EvalSettings`` (a new entry of
the registry is timed without an edit here). Batch of 128 random inputs in [0, 1], each labelled with the
untrained model's own prediction, so that every example starts correctly classified and the attacks spend
their budget; median of ``--repeats`` calls after one warm-up call. The floor counts gradient passes G:
``steps * restarts`` per gradient attack (times the target classes for APGD-T), ``queries`` forward passes
(about G/3 each) for Square.
"""

from __future__ import annotations

import argparse
import json
import platform

import torch
import torch.nn.functional as F
from monitor_cost import median_seconds  # bench/: the script's own folder is on the path

from kernel_reg import models
from kernel_reg.app.suite import EVAL_ATTACKS, EvalSettings, build_eval_attack

MODELS = {"vgg5": (models.vgg5_stable, (1, 28, 28)), "vgg11": (models.vgg11, (3, 32, 32))}


def gradient_pass(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    x = x.detach().requires_grad_(True)
    torch.autograd.grad(F.cross_entropy(model(x), y), x)


def floor(settings: EvalSettings) -> float:
    """The gradient passes the settings' attacks need at least, as the module docstring counts them."""
    total = 0.0
    for member in settings.members():
        if member == "square":
            total += settings.queries / 3
        else:
            targets = settings.n_target_classes if member == "apgd-t" else 1
            total += settings.steps * settings.restarts * targets
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(MODELS), default="vgg5")
    parser.add_argument("--norm", choices=("l2", "linf"), default="l2")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    args = parser.parse_args()
    torch.manual_seed(0)
    build, shape = MODELS[args.model]
    model = build().eval().requires_grad_(False)
    x = torch.rand(128, *shape)
    with torch.no_grad():
        y = model(x).argmax(1)
    eps = 0.5 if args.norm == "l2" else 8 / 255
    one = median_seconds(lambda: gradient_pass(model, x, y), max(args.repeats, 5))
    print(f"{args.model}, {args.norm} eps {eps:.4g}, batch 128, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}; gradient pass G = {one:.4f} s")  # fmt: skip
    print("| attack | s/call | ratio to G | floor (G) |\n|---|---|---|---|")
    rows = []
    for name in EVAL_ATTACKS:
        settings = EvalSettings(attacks=(name,), steps=args.steps, queries=args.queries)
        attack = build_eval_attack(args.norm, eps, settings, 1, torch.Generator().manual_seed(0))
        seconds = median_seconds(lambda attack=attack: attack(model, x, y), args.repeats)
        least = floor(settings)
        rows.append({"attack": name, "seconds": seconds, "ratio": seconds / one, "floor": least})
        print(f"| {name} | {seconds:.3f} | {seconds / one:.1f}x | {least:.0f} |", flush=True)
    if args.json:
        with open(args.json, "w") as file:
            json.dump({"model": args.model, "norm": args.norm, "gradient_pass": one, "rows": rows}, file, indent=1)


if __name__ == "__main__":
    main()
