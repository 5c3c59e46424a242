"""Certify a trained model: a guaranteed l2 Lipschitz bound and the certified robust accuracy it gives.

Loads a published 1-Lipschitz network from the model index (its weights checked against the index's
sha256; run from a clone of the repository, which holds results/), bounds its Lipschitz constant with the
Gram iteration (a guarantee, not an estimate), and counts the test images whose prediction provably cannot
change within each l2 radius: f_y - f_j > K[y, j] eps for every other class j.

    python examples/certify_published_model.py
    python examples/certify_published_model.py --model certified/fmnist_vgg5/lipnet_m0.7 --n-test 200
"""

from __future__ import annotations

import argparse

import torch

from kernel_reg import lipschitz
from kernel_reg.app import zoo
from kernel_reg.app.data import load_dataset


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="certified/fmnist_vgg5_h100/orth_m1.0_b512_e36", help="`kernel-reg models`")
    parser.add_argument("--n-test", type=int, default=2000, help="embedded test images (at most 2000)")
    parser.add_argument("--eps", type=float, nargs="+", default=[0.1, 0.25, 0.5])
    args = parser.parse_args()

    model = zoo.load(args.model)  # eval mode, on the CPU
    _, _, test_x, test_y = load_dataset("fashion-mnist", "embedded").arrays
    x = torch.tensor(test_x[: args.n_test], dtype=torch.float32) / 255
    y = torch.tensor(test_y[: args.n_test])

    lip, pairwise = lipschitz.lipschitz_bounds(model, input_shape=(1, 28, 28))  # L, and K per pair of classes
    clean = (model(x).argmax(1) == y).float().mean().item()
    print(f"{args.model}: L <= {lip:.4f}; clean accuracy {100 * clean:.1f}% on {len(x)} images")
    for eps in args.eps:
        certified = lipschitz.certified_accuracy(model, x, y, eps=eps, lipschitz=pairwise)
        print(f"  certified at l2 radius {eps}: {100 * certified:.1f}%")


if __name__ == "__main__":
    main()
