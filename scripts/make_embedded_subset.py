"""Write the Fashion-MNIST subset shipped inside the package (kernel_reg/data/fashion-mnist-subset).

    python scripts/make_embedded_subset.py [/usr/share/datasets/fashion-mnist]

A training pool of 4,000 images and a test set of 2,000, drawn without replacement by
numpy's RandomState(0) from the full training and test sets, in the original IDX format.
"""

import sys
from pathlib import Path

import numpy as np

from kernel_reg.app.data import EMBEDDED_FASHION_MNIST, IDX_FILES, load_idx_dataset, write_idx

POOL, TEST = 4000, 2000


def main() -> None:
    source = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    train_x, train_y, test_x, test_y = load_idx_dataset("fashion-mnist", source)
    rng = np.random.RandomState(0)
    pool = rng.choice(len(train_x), POOL, replace=False)
    test = rng.choice(len(test_x), TEST, replace=False)
    out = Path(EMBEDDED_FASHION_MNIST)
    out.mkdir(parents=True, exist_ok=True)
    for key, array in {
        "train_images": train_x[pool, 0],
        "train_labels": train_y[pool],
        "test_images": test_x[test, 0],
        "test_labels": test_y[test],
    }.items():
        write_idx(out / (IDX_FILES[key] + ".gz"), array)
    print(f"wrote {out}: pool {POOL}, test {TEST}")


if __name__ == "__main__":
    main()
