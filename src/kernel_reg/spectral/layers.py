"""The layers the spectral constraint and penalty act on, and their weights as matrices W_mat (out, -1)."""

from __future__ import annotations

import torch
from torch import nn

# the layers whose W_mat the spectral constraint and penalty act on
SPECTRAL_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


Layer = nn.Linear | nn.Conv1d | nn.Conv2d | nn.Conv3d


def spectral_layers(model: nn.Module) -> list[tuple[str, Layer]]:
    """The (name, module) pairs whose weights the spectral constraint and penalty act on.

    Args:
        model: any module.

    Returns:
        Its Linear and Conv1d/2d/3d submodules with their names, in ``named_modules`` order (the model
        itself included when it is such a layer).
    """
    return [(name, m) for name, m in model.named_modules() if isinstance(m, SPECTRAL_LAYERS)]


def weight_matrix(layer: Layer) -> torch.Tensor:
    """W_mat: the weight reshaped to (out, -1), a view with its graph.

    sigma_max(W_mat) is the quantity the constraint and penalty control; for a convolution it is not the
    layer's operator norm (see ``operator_norm`` and ``conv_operator_norm_upper_bound``).

    Shape:
        Output: (out, in) for Linear, (out, in / groups * prod(kernel_size)) for a convolution.
    """
    return layer.weight.reshape(layer.weight.shape[0], -1)


def _gram(mat: torch.Tensor) -> torch.Tensor:
    """W W^T or W^T W, whichever is smaller: its eigenvalues are the squared singular values of W."""
    return mat @ mat.T if mat.shape[0] <= mat.shape[1] else mat.T @ mat
