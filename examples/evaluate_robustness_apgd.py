"""Evaluate a model's robustness with APGD: AutoAttack's standard attacks APGD-CE and APGD-T.

Loads a published adversarially trained network from the model index (run from a clone of the repository),
attacks the embedded Fashion-MNIST test images with APGD-CE then APGD-T with 9 target classes, each on the
images still classified correctly, and prints the clean and robust accuracies and which attack broke what.

    python examples/evaluate_robustness_apgd.py
    python examples/evaluate_robustness_apgd.py --eps 0.5 1 2 --n-test 100 --steps 20
"""

from __future__ import annotations

import argparse

import torch

from kernel_reg import attacks
from kernel_reg.app import zoo
from kernel_reg.app.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="robustness_fit/fmnist_vgg5/pgd-l2_epsilon1_s0", help="`kernel-reg models`")
    parser.add_argument("--eps", type=float, nargs="+", default=[1.0], help="l2 radii")
    parser.add_argument("--n-test", type=int, default=500, help="embedded test images (at most 2000)")
    parser.add_argument("--steps", type=int, default=100, help="APGD iterations per run")
    args = parser.parse_args()

    model = zoo.load(args.model)
    _, _, test_x, test_y = load_dataset("fashion-mnist", "embedded").arrays
    x = torch.tensor(test_x[: args.n_test], dtype=torch.float32) / 255
    y = torch.tensor(test_y[: args.n_test])
    with torch.no_grad():
        print(f"{args.model}: clean accuracy {100 * (model(x).argmax(1) == y).float().mean():.1f}% on {len(x)} images")
    for eps in args.eps:
        generator = torch.Generator().manual_seed(0)  # repeatable, and the global RNG is left alone
        members = attacks.strong(norm="l2", eps=eps, steps=args.steps, n_target_classes=9, generator=generator)
        x_adv, broken = attacks.worst_case(model, members.attacks, x, y)  # per image, the first that breaks it
        assert ((x_adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()  # every point in the ball
        with torch.no_grad():
            robust = (model(x_adv).argmax(1) == y).float().mean().item()
        print(f"  l2 radius {eps}: robust accuracy {100 * robust:.1f}%; broken first by {broken}")


if __name__ == "__main__":
    main()
