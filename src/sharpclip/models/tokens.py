"""Token-level outputs of the towers' last layer, for the methods that need them (METHODS.md §2-3).

- Image: token states after the final norm (CLIP: ``post_layernorm`` applied to every token;
  SigLIP: the vision tower's ``post_layernorm`` output), and the last layer's head-averaged
  attention from the CLS token to each patch. SigLIP has no CLS token: its row is the mean over
  all query tokens of the attention each patch receives (documented stand-in).
- Text: token states after the final layer norm, the EOT index the model pools at (CLIP: first
  EOS, or the legacy argmax of ids when ``eos_token_id == 2``; SigLIP: the last position), and the
  head-averaged attention row of that token.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TokenOutput:
    """Last-layer token states (B, T, width), attention row (B, T') and pooling/grid info."""

    states: np.ndarray
    attention: np.ndarray
    grid: tuple[int, int] | None = None
    eot_index: np.ndarray | None = None


def image_tokens(model, pixels) -> TokenOutput:
    """Vision tower token states and CLS->patch attention for preprocessed pixels (B, 3, H, W)."""
    vision = model.model.vision_model
    out = vision(pixel_values=pixels, output_attentions=True)
    states = vision.post_layernorm(out.last_hidden_state)
    attention = out.attentions[-1].mean(dim=1)  # (B, T, T), heads averaged
    if model.model_type == "clip":
        row = attention[:, 0, 1:]
        patches = states.shape[1] - 1
    else:
        row = attention.mean(dim=1)
        patches = states.shape[1]
    side = round(patches ** 0.5)
    return TokenOutput(states.float().cpu().numpy(), row.float().cpu().numpy(), grid=(side, side))


def eot_positions(model, input_ids) -> np.ndarray:
    """Index of the token each text is pooled at, as the checkpoint's own text tower does."""
    if model.model_type == "siglip":
        return np.full(input_ids.shape[0], input_ids.shape[1] - 1)
    eos = model.model.config.text_config.eos_token_id
    if eos == 2:  # transformers' legacy CLIP rule: the highest id is the EOT token
        return input_ids.argmax(dim=-1).cpu().numpy()
    return (input_ids == eos).int().argmax(dim=-1).cpu().numpy()


def text_tokens(model, texts: list[str]) -> TokenOutput:
    """Text tower token states (after the final norm) and the EOT token's attention row."""
    tokens = {k: v.to(model.device) for k, v in model.tokenize(texts).items()}
    if model.model_type == "siglip":
        tokens.pop("attention_mask", None)
    out = model.model.text_model(**tokens, output_attentions=True)
    eot = eot_positions(model, tokens["input_ids"])
    attention = out.attentions[-1].mean(dim=1)
    row = attention[np.arange(len(texts)), eot]
    return TokenOutput(out.last_hidden_state.float().cpu().numpy(), row.float().cpu().numpy(),
                       eot_index=eot)
