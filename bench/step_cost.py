"""What one regularized training step costs, as a multiple of a plain step.

    python bench/step_cost.py                       # VGG-11 (3x32x32) and VGG-5 (1x28x28), every regularizer
    python bench/step_cost.py --models vgg5 --configs plain grad-penalty --steps 7
    python bench/step_cost.py --models lipnet --configs plain lipschitz-margin normalization-operator \
        normalization-orthogonal orthogonal-margin  # the certified-robustness network (width 32)
    python bench/step_cost.py --agreement           # candidate pre-selection vs exact search, real data

Each configuration runs in its own process (2 warm-up steps, then the median of ``--steps`` timed steps
and the process's peak memory) on a batch of 128 random inputs in [0, 1], SGD with momentum 0.9. A step
is forward, loss, penalty, backward, optimizer step, and the projection after it where there is one.
The floor is what the arithmetic needs, in forward passes F (a plain step is about 3F; an input-only
backward pass is about F).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

from kernel_reg import lipschitz, models, penalties
from kernel_reg.app import regularizers
from kernel_reg.app.training import Regularizers, step
from kernel_reg.lipschitz import LipschitzMargin

K, STEPS = 10, 5  # classes; inner steps of ||f||_delta^2 and PGD

# row -> (regularizer of the registry, or None for a plain step; its hyperparameters beyond the registry's
# defaults; floor formula in F; floor ratio to 3F)
CONFIGS: dict[str, tuple[str | None, dict, str, float]] = {
    "plain": (None, {}, "3F", 1.0),
    "grad-penalty": ("gradient-penalty", {}, "3F + (1 + k)F", (3 + 1 + K) / 3),
    "grad-penalty-fd": ("gradient-penalty", {"method": "finite-difference"}, "3F + (1 + k)F", (3 + 1 + K) / 3),
    "adv-perturbation": (
        "adv-perturbation", {"epsilon": 1.0},
        "3F + (1 + k)F + k(2(s - 1) + 1)F", (3 + 1 + K + K * (2 * (STEPS - 1) + 1)) / 3,
    ),
    "adv-perturbation-m16": (
        "adv-perturbation", {"epsilon": 1.0, "candidates": 16},
        "3F + (1 + k)F + k(m/n)(2(s - 1) + 1)F", (3 + 1 + K + K * 16 / 128 * (2 * (STEPS - 1) + 1)) / 3,
    ),
    "loss-gradl2": ("loss-gradl2", {}, "3F + F + 2F (double backward, shared forward)", 6 / 3),
    "loss-gradl2-fd": ("loss-gradl2", {"method": "finite-difference"}, "3F + F + 3F (x + hd, shared forward)", 7 / 3),
    "pgd-l2": ("pgd-l2", {"epsilon": 1.0}, "3F + 2sF", (3 + 2 * STEPS) / 3),
    "pgd-linf": ("pgd-linf", {"epsilon": 8 / 255, "step_size": 2 / 255}, "3F + 2sF", (3 + 2 * STEPS) / 3),
    "vat": ("vat", {"epsilon": 1.0}, "3F + F + 2F + 2F", 8 / 3),
    "stability": ("stability", {"deformations": 4}, "3F + F + mF (m = 4 fields)", (3 + 1 + 4) / 3),
    "gradtangent": ("gradtangent", {"deformations": 4}, "3F + (1 + k)F", (3 + 1 + K) / 3),
    "gradtangent-fd": ("gradtangent", {"deformations": 4, "method": "finite-difference"}, "3F + (1 + k)F",
                       (3 + 1 + K) / 3),
    "project-sn": ("project-sn", {"tau": 1.0}, "3F + one eigh per layer", 1.0),
    "project-sn-operator": ("project-sn", {"tau": 1.0, "norm": "operator"}, "3F + 2 conv passes per layer", 1.0),
    "penalize-sn-pi": ("penalize-sn-pi", {}, "3F + 2 matvecs per layer", 1.0),
    "penalize-sn-svd": ("penalize-sn-svd", {}, "3F + one eigh per layer", 1.0),
}  # fmt: skip
# ||f||_delta^2 with k copies of the batch in one forward pass, against the chunked default
REPLICATED = "adv-perturbation-replicated"
# Lipschitz-margin training: the power iteration and product bound on top of a plain step; eps_train 0.05 (the
# cost does not depend on it; at 0.5 the untrained VGG-11, L in the hundreds, diverges on random labels)
MARGIN = "lipschitz-margin"
# a plain step on a model whose every Conv2d / Linear weight is divided by its operator norm (lipschitz.normalize_)
NORMALIZED = "normalization-operator"
# the same with orthogonal (Cayley) convolutions (lipschitz.orthogonalize_): circular convolutions, lipnet only
ORTHOGONAL = "normalization-orthogonal"
# the certified recipe's step: orthogonal convolutions and the Lipschitz margin (eps_train 0.7, L held constant)
CERTIFIED = "orthogonal-margin"
MODELS = {
    "vgg11": (models.vgg11, (3, 32, 32)),
    "vgg5": (models.vgg5_stable, (1, 28, 28)),
    "lipnet": (models.lipnet, (1, 28, 28)),
}


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _row_of(config_name: str) -> str:
    """The CONFIGS row whose regularizer and floor a variant row shares."""
    variants = (MARGIN, NORMALIZED, ORTHOGONAL, CERTIFIED)
    return {REPLICATED: "adv-perturbation", **dict.fromkeys(variants, "plain")}.get(config_name, config_name)


def run_child(model_name: str, config_name: str, steps: int, warmup: int, device: torch.device) -> dict:
    """Time one configuration in this process."""
    torch.manual_seed(0)
    build, shape = MODELS[model_name]
    model = build().to(device)
    if config_name == NORMALIZED:
        lipschitz.normalize_(model, shape)
    if config_name in (ORTHOGONAL, CERTIFIED):
        lipschitz.orthogonalize_(model, shape)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.rand(128, *shape, device=device)
    y = torch.randint(0, K, (128,), device=device)
    name, params = CONFIGS[_row_of(config_name)][:2]
    built = {}
    if config_name == REPLICATED:
        built[config_name] = penalties.AdversarialPerturbationPenalty(eps=1.0, steps=STEPS, chunk_size=K * 128)
    elif name is not None:
        built[name] = regularizers.build(name, {**regularizers.lookup(name).defaults(), **params}, input_shape=shape)
    regs = Regularizers.of(built)
    if config_name == MARGIN:
        regs.margin = LipschitzMargin(eps=0.05, input_shape=shape)
    if config_name == CERTIFIED:
        regs.margin = LipschitzMargin(eps=0.7, input_shape=shape, through_bound=False)

    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        began = time.perf_counter()
        step(model, x, y, regs, optimizer, epoch=1000)  # at epoch 1000 the projection radius has decayed to tau
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - began)
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_mb": peak_memory_mb(device)}


def trained_vgg5(device: torch.device, activation: str = "relu") -> tuple[torch.nn.Module, Any]:
    """A VGG-5 trained 3 epochs on 1000 embedded Fashion-MNIST images, and the data splits."""
    from kernel_reg.app.data import EMBEDDED, load_arrays, make_splits

    torch.manual_seed(0)
    splits = make_splits(load_arrays("fashion-mnist", EMBEDDED), 1000, 0, 0, device)
    model = models.vgg5_stable(activation=activation).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(3):
        for start in range(0, 1000, 128):
            loss = F.cross_entropy(model(splits.train_x[start : start + 128]), splits.train_y[start : start + 128])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return model, splits


def agreement(device: torch.device, batches: int = 10) -> list[dict]:
    """How often candidate pre-selection finds the exact search's maximiser, per class, on real data
    (``trained_vgg5``, test batches of 128)."""
    model, splits = trained_vgg5(device)
    rows = []
    for name, make in (
        ("adv-perturbation", lambda m: penalties.AdversarialPerturbationPenalty(eps=1.0, steps=STEPS, candidates=m)),
        ("stability", lambda m: penalties.DeformationStabilityPenalty(lmbda=1.0, deformations=4, candidates=m)),
    ):
        for m in (4, 16, 32):
            same, ratio, seconds = 0, [], [0.0, 0.0]
            for b in range(batches):
                x = splits.test_x[b * 128 : (b + 1) * 128]
                values = []
                for i, penalty in enumerate((make(None), make(m))):
                    torch.manual_seed(b)  # the same deformations for both
                    began = time.perf_counter()
                    values.append(penalty.class_terms(model, x).detach())
                    seconds[i] += time.perf_counter() - began
                same += int((values[0] == values[1]).sum())
                ratio.append(float(values[1].sum() / values[0].sum()))
            rows.append(
                dict(
                    penalty=name,
                    candidates=m,
                    same_maximiser=same / (batches * K),
                    value_ratio=statistics.mean(ratio),
                    speedup=seconds[0] / seconds[1],
                )
            )
    return rows


def _gradient_agreement(model: torch.nn.Module, splits: Any, name: str, h: float, batches: int) -> dict:
    """Over ``batches`` test batches of 128: the cosine (in float64) between the finite-difference and the
    exact parameter gradients of penalty ``name`` at step h (mean and worst), and their norm ratio."""
    params = {**regularizers.lookup(name).defaults(), "h": h}
    if name == "gradtangent":
        params["deformations"] = 4
    cosines, ratios = [], []
    for b in range(batches):
        x, y = splits.test_x[b * 128 : (b + 1) * 128], splits.test_y[b * 128 : (b + 1) * 128]
        grads = []
        for method in ("exact", "finite-difference"):
            penalty = regularizers.build(name, {**params, "method": method})
            torch.manual_seed(b)  # the same tangents for both
            model.zero_grad()
            penalty(model, x, y).backward()  # type: ignore[operator]
            grads.append(torch.cat([p.grad.double().flatten() for p in model.parameters() if p.grad is not None]))
        cosines.append(float(F.cosine_similarity(grads[0], grads[1], dim=0)))
        ratios.append(float(grads[1].norm() / grads[0].norm()))
    return dict(cosine=statistics.mean(cosines), worst=min(cosines), norm_ratio=statistics.mean(ratios))


def finite_difference_table(device: torch.device, batches: int = 5) -> list[dict]:
    """``_gradient_agreement`` of the input-gradient penalties per step h, on a trained VGG-5
    (``trained_vgg5``, float32 as in training) with ReLU and with the smooth ELU."""
    rows = []
    for activation in ("relu", "elu"):
        model, splits = trained_vgg5(device, activation)
        for name in ("loss-gradl2", "gradient-penalty", "gradtangent"):
            for h in (1e-3, 1e-2, 1e-1, 1.0, 3.0):
                agreement = _gradient_agreement(model, splits, name, h, batches)
                rows.append(dict(activation=activation, penalty=name, h=h, **agreement))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    rows = [*CONFIGS, REPLICATED, MARGIN, NORMALIZED, ORTHOGONAL, CERTIFIED]
    parser.add_argument("--configs", nargs="+", default=rows, choices=rows)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", help="also write the raw figures to this file")
    parser.add_argument("--agreement", action="store_true", help="measure candidate pre-selection on real data")
    parser.add_argument("--finite-differences", action="store_true",
                        help="cosine of finite-difference vs exact penalty gradients per h, on real data")  # fmt: skip
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "CONFIG"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    if args.child:
        print(json.dumps(run_child(*args.child, args.steps, args.warmup, device)))
        return
    if args.finite_differences:
        print("| activation | penalty | h | cosine (mean) | cosine (worst batch) | norm fd / exact |")
        print("|---|---|---|---|---|---|")
        for row in finite_difference_table(device):
            print(f"| {row['activation']} | {row['penalty']} | {row['h']:g} | {row['cosine']:.4f} | "
                  f"{row['worst']:.4f} | {row['norm_ratio']:.3f} |")  # fmt: skip
        return
    if args.agreement:
        print("| penalty | candidates m | same maximiser (per class) | value / exact | speed-up |")
        print("|---|---|---|---|---|")
        for row in agreement(device):
            print(
                f"| {row['penalty']} | {row['candidates']} | {100 * row['same_maximiser']:.0f}% | "
                f"{row['value_ratio']:.3f} | {row['speedup']:.1f}x |"
            )
        return

    machine = platform.processor() or platform.machine()
    print(f"device {device}, {args.threads} threads, torch {torch.__version__}, {machine}")
    print("| model | step | s/step | ratio | peak MB | floor | floor ratio |")
    print("|---|---|---|---|---|---|---|")
    results: dict = {}
    for model_name in args.models:
        plain = None
        for config_name in args.configs:
            if config_name in (ORTHOGONAL, CERTIFIED) and model_name != "lipnet":
                continue  # orthogonalize_ needs circular convolutions
            command = [sys.executable, __file__, "--child", model_name, config_name, "--steps", str(args.steps)]
            command += ["--warmup", str(args.warmup), "--threads", str(args.threads), "--device", args.device]
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
            figures = json.loads(out.strip().splitlines()[-1])
            results[f"{model_name}/{config_name}"] = figures
            plain = figures["seconds"] if config_name == "plain" else plain
            ratio = f"{figures['seconds'] / plain:.2f}x" if plain else "-"
            floor, floor_ratio = CONFIGS[_row_of(config_name)][2:]
            floor = {
                REPLICATED: "as above, k copies in one batch",
                MARGIN: "3F + 2 conv passes per layer",
                NORMALIZED: "3F + 1 conv pass per layer and read + 2 per power step",
                ORTHOGONAL: "3F in FFTs + 2 c x c solves per frequency and layer",
                CERTIFIED: "as above + 2 matvecs for the Linear layer",
            }.get(config_name, floor)
            print(
                f"| {model_name} | {config_name} | {figures['seconds']:.4g} | {ratio} | {figures['peak_mb']:.0f} | "
                f"{floor} | {floor_ratio:.2f}x |",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
