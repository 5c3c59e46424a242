"""Lower bounds of the RKHS norm of a classifier, used as penalties (Bietti, Mialon, Chen and Mairal, "A Kernel
Perspective for Regularizing Deep Neural Networks", ICML 2019), and the loss-gradient and VAT baselines.

Every penalty is a callable ``penalty(model, x, y) -> scalar tensor``, already multiplied by its
weight, to be added to the task loss; gradients flow to the model's parameters. f denotes the model
(inputs -> logits of k classes, k read from the output), f_j its j-th logit, x_i the i-th example.

Supremum penalties (||grad f||^2, ||f||_delta^2, ||f||_tau^2, ||D_tau f||^2) work in two passes: a
search without a parameter graph finds, for each class j, the maximising example; the penalty is then
recomputed, with its graph, on those k examples only. The argmax is a constant, so this is the exact
gradient of the definition, at a fraction of the cost of a graph through the whole search.

Per-example input gradients are gradients of a sum over the batch, which is exact when examples do
not interact (no BatchNorm in train mode). Penalties run the model in the caller's train/eval mode and
leave BatchNorm running statistics unchanged.

The penalties live in ``base`` (the contract, the supremum base), ``gradient``, ``perturbation`` and
``deformation``; their names are all here.
"""

from .base import METHODS, FirstExamples, Penalty, SupremumPenalty, class_input_gradients, finite_difference
from .deformation import DeformationStabilityPenalty, TangentGradientPenalty
from .gradient import GradientPenalty, LossGradientPenalty
from .perturbation import AdversarialPerturbationPenalty, VATPenalty

__all__ = [
    "AdversarialPerturbationPenalty", "DeformationStabilityPenalty", "FirstExamples", "GradientPenalty",
    "LossGradientPenalty", "Penalty", "SupremumPenalty", "TangentGradientPenalty", "VATPenalty",
    "class_input_gradients", "finite_difference", "METHODS",
]  # fmt: skip
