"""ArcFace with learnable class proxies (METHODS.md §4a, GPR-FT).

With unit features ``f`` and unit proxies ``w_c``, ``cos_c = f . w_c``. For the true class ``y``::

    phi = cos(theta_y + m)              if cos_y > cos(pi - m)
    phi = cos_y - m * sin(pi - m)       otherwise (keeps phi decreasing in theta past pi - m)

The logits are ``s * phi`` for ``y`` and ``s * cos_c`` for every other class; the loss is their
cross-entropy. With ``m = 0`` this is a softmax over ``s * cos``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def margin_cosine(cos: torch.Tensor, margin: float) -> torch.Tensor:
    """``cos(theta + m)`` where ``theta + m`` stays below pi, else the linear continuation
    ``cos - m sin(pi - m)`` (the ``phi`` of the module docstring), elementwise."""
    sin = torch.sqrt((1.0 - cos * cos).clamp(min=0.0))
    shifted = cos * math.cos(margin) - sin * math.sin(margin)
    return torch.where(cos > math.cos(math.pi - margin), shifted,
                       cos - margin * math.sin(math.pi - margin))


def arcface_logits(cos: torch.Tensor, labels: torch.Tensor, scale: float,
                   margin: float) -> torch.Tensor:
    """(B, C) logits: ``s * phi`` at each row's label, ``s * cos`` elsewhere."""
    true = F.one_hot(labels, cos.shape[1]).bool()
    return scale * torch.where(true, margin_cosine(cos, margin), cos)


class ArcFaceHead(torch.nn.Module):
    """Learnable class proxies ``W (C x d)`` and the ArcFace loss over them."""

    def __init__(self, proxies: torch.Tensor, scale: float = 30.0, margin: float = 0.1):
        super().__init__()
        self.proxies = torch.nn.Parameter(proxies.clone().float())
        self.scale = scale
        self.margin = margin

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Mean ArcFace cross-entropy of ``features`` (B, d) against ``labels`` (B,)."""
        cos = F.normalize(features.float(), dim=-1) @ F.normalize(self.proxies, dim=-1).T
        return F.cross_entropy(arcface_logits(cos, labels, self.scale, self.margin), labels)
