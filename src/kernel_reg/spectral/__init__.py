"""The upper bound of the RKHS norm: spectral norms of the layers (Bietti, Mialon, Chen and Mairal, ICML 2019).

W_mat denotes a Conv/Linear weight reshaped to (out, -1); BatchNorm weights and biases are never touched.

    layers       the layers acted on and their W_mat
    power        operator norms by persistent power iteration
    projection   clip the singular values at tau (``project_``), the decaying radius (``tau_schedule``),
                 ``Projection`` (the constraint as training applies it)
    penalty      lmbda * sum_layers sigma_max(W_mat)^2 (``SpectralNormPenalty``)

Guaranteed Lipschitz bounds, certificates and the layers held at norm 1 are in ``kernel_reg.lipschitz``.
"""

from .. import lipschitz as _lipschitz  # noqa: F401  (initialised first: see kernel_reg.lipschitz)
from ..deprecation import moved_names
from .layers import SPECTRAL_LAYERS, Layer, spectral_layers, weight_matrix
from .penalty import SpectralNormPenalty
from .power import OperatorNorms, operator_layers
from .projection import NORMS, Projection, clip_singular_values, project_, tau_schedule

# moved to kernel_reg.lipschitz in 0.2 (importable from here, with a DeprecationWarning, until 0.3)
__getattr__ = moved_names(
    __name__,
    dict.fromkeys(
        ("LipschitzBounded", "certified_accuracy", "certified_radius", "conv_operator_norm_upper_bound",
         "gram_iteration_bound", "lipschitz_upper_bound", "operator_norm", "OperatorNormalization", "normalize_",
         "renormalize_", "orthogonalize_"),
        "kernel_reg.lipschitz",
    ),
)  # fmt: skip

__all__ = [
    "NORMS", "SPECTRAL_LAYERS", "Layer", "OperatorNorms", "Projection", "SpectralNormPenalty", "clip_singular_values",
    "operator_layers", "project_", "spectral_layers", "tau_schedule", "weight_matrix",
]  # fmt: skip
