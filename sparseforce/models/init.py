"""The initialization every model here is built with, as the official FORCE code does it."""
from __future__ import annotations

import torch.nn as nn

__all__ = ["kaiming_init_", "kaiming_reset"]


def kaiming_init_(model: nn.Module) -> nn.Module:
    """Initialise as the official FORCE code does.

    Pruning-at-init scores (SNIP/GraSP/FORCE saliencies) depend on the weight
    scale, so the init must match the paper's for sparsity results to be
    comparable: Kaiming-normal fan_in/relu on *every* conv and linear weight
    (including the classifier, unlike torchvision's default uniform Linear init).
    """
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm)):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def kaiming_reset(model: nn.Module) -> None:
    """Draw the weights again from this model's initialization (``kaiming_init_``); what
    :func:`sparseforce.ablations.reinit` calls after the layers' own ``reset_parameters``."""
    kaiming_init_(model)
