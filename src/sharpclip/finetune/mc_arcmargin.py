"""MC-ArcMargin: ArcFace's margin against captions, with several positive captions per image
(METHODS.md §4c, MCIP).

Each image ``i`` of a batch brings up to ``P`` pseudo-captions (ids ``caption_ids[i]``, ``-1`` for
padding). Every image is scored against every real caption of the batch; caption ``(j, p)`` is a
positive of image ``i`` when its id is one of ``i``'s own ids (so a caption two images share is
positive for both). With ``cos`` the image-caption cosines::

    logit[i, (j, p)] = s * phi(cos)   for i's positives (phi as in ArcFace, margin m)
                     = s * cos        for the other real captions
                     = -inf           for padding

and the target is ``1 / n_i`` on each of ``i``'s ``n_i`` positives. The loss is the mean over the
images that have at least one pseudo-caption of ``-sum(target * log_softmax(logit))``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sharpclip.finetune.arcface import margin_cosine


def caption_positives(caption_ids: torch.Tensor) -> torch.Tensor:
    """(B, B*P) bool: caption ``(j, p)`` is one of image ``i``'s own captions (padding never)."""
    flat = caption_ids.reshape(-1)
    same = caption_ids[:, :, None] == flat[None, None, :]  # (B, P, B*P)
    own_real = caption_ids[:, :, None] >= 0
    return (same & own_real).any(dim=1) & (flat >= 0)[None, :]


def mc_arcmargin_loss(image: torch.Tensor, captions: torch.Tensor, caption_ids: torch.Tensor,
                      scale: float = 30.0, margin: float = 0.1) -> torch.Tensor:
    """The MC-ArcMargin loss of unit ``image`` (B, d) features against the batch's pseudo-captions
    ``captions`` (B, P, d, unit rows) with ``caption_ids`` (B, P), ``-1`` marking padding."""
    batch, per_image, dim = captions.shape
    cos = F.normalize(image.float(), dim=-1) @ F.normalize(captions.float(), dim=-1).reshape(
        batch * per_image, dim).T
    positives = caption_positives(caption_ids)
    real = (caption_ids.reshape(-1) >= 0)[None, :]
    logits = scale * torch.where(positives, margin_cosine(cos, margin), cos)
    logits = logits.masked_fill(~real, float("-inf"))
    counts = positives.sum(dim=1)
    rows = counts > 0
    if not bool(rows.any()):
        return image.sum() * 0.0  # no image of this batch has a pseudo-caption
    target = positives[rows].float() / counts[rows, None]
    log_prob = F.log_softmax(logits[rows], dim=1).masked_fill(~real, 0.0)
    return -(target * log_prob).sum(dim=1).mean()
