"""Adversarial attacks: ``attack(model, x, y) -> x_adv``.

Every attack is an ``Attack``: keyword-only constructor arguments, ``name``, a ``repr`` of its
hyperparameters, and ``attack(model, x, y) -> x_adv``, computed on the model in eval mode (dropout off,
BatchNorm on its running statistics) with gradients with respect to the inputs only; the model's mode,
its BatchNorm statistics and the caller's tensors are left as they were, also inside
``torch.no_grad()``. ``BallAttack`` adds the ball (``norm``, ``eps``), the input range (``clip``) and an
optional ``torch.Generator`` for the random draws.

- ``PGD`` / ``PGDL2`` / ``PGDLinf``: projected gradient ascent (Madry et al., ICLR 2018);
- ``APGD``: Auto-PGD with the CE, DLR or targeted DLR loss (Croce & Hein, ICML 2020);
- ``Square``: gradient-free random search (Andriushchenko, Croce, Flammarion and Hein, ECCV 2020);
- ``WorstCase`` / ``worst_case``: the per-example worst case over attacks; ``strong``: APGD-CE + APGD-T
  (+ Square), as AutoAttack.
"""

from ..deprecation import moved_names
from .apgd import APGD, dlr_loss, targeted_dlr_loss
from .base import BALLS, NORMS, Attack, AttackFn, Ball, BallAttack, L2Ball, LinfBall
from .composite import WorstCase, strong, worst_case
from .pgd import PGD, PGDL2, PGDLinf
from .square import Square

# moved in 0.2 (importable from here, with a DeprecationWarning, until 0.3)
__getattr__ = moved_names(__name__, {"margin": "kernel_reg.tensors"})

__all__ = [
    "APGD", "BALLS", "NORMS", "PGD", "PGDL2", "PGDLinf", "Attack", "AttackFn", "Ball", "BallAttack", "L2Ball",
    "LinfBall", "Square", "WorstCase", "dlr_loss", "strong", "targeted_dlr_loss", "worst_case",
]  # fmt: skip
