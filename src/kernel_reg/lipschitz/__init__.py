"""Everything about Lipschitz constants: guaranteed bounds per layer and for a network, bounds per pair of
classes, certified robustness, and the layers and losses that keep networks Lipschitz-constrained.

    layer_bounds    one layer's operator norm: Gram iteration (Linear, Conv2d), exact (CayleyConv2d), rules
    network         the network: guaranteed product bound, differentiable estimate, lower bound
    pairwise        K[i, j] for each pair of classes
    certificates    certified radius and certified accuracy
    orthogonal      CayleyConv2d, an orthogonal circular convolution
    normalization   weights divided by their operator norm in the forward pass; orthogonalize_
    activations     MaxMin
    margin          the Lipschitz-margin loss
"""

# the order matters: spectral needs layer_bounds and network; normalization and margin need spectral.power
from .activations import MaxMin
from .certificates import certified_accuracy, certified_radius
from .layer_bounds import (
    LINEAR_LAYERS,
    conv_operator_norm_upper_bound,
    gram_iteration_bound,
    layer_upper_bound,
    operator_norm,
)
from .margin import LipschitzMargin
from .network import Bound, LipschitzBounded, compose_bound, input_shapes, lipschitz_lower_bound, lipschitz_upper_bound
from .normalization import OperatorNormalization, normalize_, orthogonalize_, renormalize_
from .orthogonal import CayleyConv2d
from .pairwise import linear_head, lipschitz_bounds, pair_constants, pairwise_lipschitz

__all__ = [
    "LINEAR_LAYERS", "Bound", "CayleyConv2d", "LipschitzBounded", "LipschitzMargin", "MaxMin", "OperatorNormalization",
    "certified_accuracy", "certified_radius", "compose_bound", "conv_operator_norm_upper_bound",
    "gram_iteration_bound", "input_shapes", "layer_upper_bound", "linear_head", "lipschitz_bounds",
    "lipschitz_lower_bound", "lipschitz_upper_bound", "normalize_", "operator_norm", "orthogonalize_",
    "pair_constants", "pairwise_lipschitz", "renormalize_",
]  # fmt: skip
