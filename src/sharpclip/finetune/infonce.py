"""Symmetric InfoNCE with a learnable temperature (METHODS.md §4b, Re-A; also ``train base``).

``logits = exp(t) * image . text^T`` with ``t`` the model's ``logit_scale``, clamped at ln 100 (no
gradient beyond it, as CLIP). Each row's target is uniform over its positives (the identity when
every pair is distinct); the loss is the mean of the text->image and image->text cross-entropies.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

MAX_LOGIT_SCALE = math.log(100.0)


def multi_positive_loss(logits_per_text: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """Symmetric cross-entropy of (T, I) logits where a caption may have several positive images
    (and an image several captions): each row's target is uniform over its positives."""
    targets = positives.float()
    text_loss = -(targets / targets.sum(1, keepdim=True) * F.log_softmax(logits_per_text, 1)).sum(1)
    image_loss = -(targets.T / targets.sum(0)[:, None] * F.log_softmax(logits_per_text.T, 1)).sum(1)
    return (text_loss.mean() + image_loss.mean()) / 2


def symmetric_infonce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                      positives: torch.Tensor | None = None) -> torch.Tensor:
    """InfoNCE between row-aligned ``image`` and ``text`` features (B, d), temperature
    ``exp(logit_scale)`` clamped at 100; ``positives`` (B, B) defaults to the identity."""
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    scale = logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()
    if positives is None:
        positives = torch.eye(len(image), dtype=torch.bool, device=image.device)
    return multi_positive_loss(scale * text @ image.T, positives)
