"""How many CPU threads bitwise reproduction needs: trains the same short run (PGD-l2 + projection on
Fashion-MNIST, as the robustness study) twice at each thread count, in fresh processes, and compares the
final weights bit for bit (and by their largest difference).

    python scripts/thread_reproducibility.py [--threads 1 2] [--n-train 2000] [--num-epochs 2]
"""

from __future__ import annotations

import argparse
import itertools
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from kernel_reg.app.rundir import read_checkpoint


def train(root: Path, threads: int, args: argparse.Namespace) -> dict[str, torch.Tensor]:
    """The last weights of one run trained in a new process on ``threads`` threads."""
    command = [
        sys.executable, "-m", "kernel_reg", "train", "--experiment", "fmnist_vgg5",
        "--reg", "pgd-l2", "--reg", "project-sn", "--epsilon", "1", "--tau", "1.5",
        "--n-train", str(args.n_train), "--num-epochs", str(args.num_epochs), "--width", "16",
        "--eval-delta", str(args.num_epochs), "--root", str(root), "--name", "run",
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    subprocess.run(command, check=True, env=environment, stdout=subprocess.DEVNULL)
    (run_dir,) = {p.parent for p in root.rglob("checkpoint.pt")}
    return read_checkpoint(run_dir).model


def largest_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--num-epochs", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        runs = {
            (threads, repeat): train(Path(folder) / f"t{threads}_{repeat}", threads, args)
            for threads in args.threads
            for repeat in (0, 1)
        }
    print("| run A | run B | bitwise equal | largest weight difference |\n|---|---|---|---|")
    for (key_a, a), (key_b, b) in itertools.combinations(runs.items(), 2):
        equal = all(torch.equal(a[k], b[k]) for k in a)
        print(f"| {key_a[0]} threads #{key_a[1]} | {key_b[0]} threads #{key_b[1]} | {equal} | "
              f"{largest_difference(a, b):.3g} |")  # fmt: skip


if __name__ == "__main__":
    main()
