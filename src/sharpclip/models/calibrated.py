"""Running the towers for calibration (METHODS.md §3): the pooling query's attention over the
patches, the pooling re-run with a bias on that query's logits (CVE), and text encodings from
token ids pooled at a given position (DCC's masked re-encoding).

CLIP: the pooling query is the CLS token of the last vision block; the re-run applies the bias to
the CLS row of that block's attention logits. The other rows do not feed the CLS output, so the
re-run computes the last block for the CLS token alone (its query against every key and value),
a small fraction of one block. SigLIP has no CLS token; its image embedding comes from an
attention-pooling head whose learned probe attends over the patches: there the bias goes on the
probe's logits and the head runs again (our extension of the method to SigLIP).

With a zero bias every function reproduces the checkpoint's own embedding (tested to 1e-5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sharpclip.models.tokens import eot_positions


@dataclass
class PoolingInputs:
    """What the pooling step sees: its input states (a torch tensor), the head-averaged
    attention of the pooling query over the patches (B, P), the patch grid, and how many non-patch
    keys precede the patches (CLIP's CLS: 1, SigLIP: 0). For CLIP also the last block's CLS
    query, keys and values (per head), which every re-run reuses."""

    hidden: object
    attention: np.ndarray
    grid: tuple[int, int]
    leading_keys: int
    qkv: tuple | None = None


def pooling_inputs(model, pixels) -> PoolingInputs:
    """The pooling step's inputs for preprocessed pixels (B, 3, H, W, a torch tensor)."""
    import torch

    vision = model.model.vision_model
    with torch.inference_mode():
        if model.model_type == "clip":
            hidden = vision.pre_layrnorm(vision.embeddings(pixels))
            for layer in vision.encoder.layers[:-1]:
                hidden = layer(hidden, None)
            last = vision.encoder.layers[-1]
            attn = last.self_attn
            x = last.layer_norm1(hidden)
            b, t, _ = x.shape
            q = attn.q_proj(x[:, :1]).view(b, 1, attn.num_heads, attn.head_dim).transpose(1, 2)
            k = attn.k_proj(x).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
            v = attn.v_proj(x).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
            qkv = (q, k, v)
            weights = torch.softmax((q @ k.transpose(-1, -2)) * attn.scale, dim=-1, dtype=torch.float32)
            attention = weights.mean(dim=1)[:, 0, 1:]
            leading = 1
        else:
            hidden = vision(pixel_values=pixels).last_hidden_state  # after post_layernorm
            head = vision.head
            probe = head.probe.repeat(hidden.shape[0], 1, 1)
            _, weights = head.attention(probe, hidden, hidden, need_weights=True,
                                        average_attn_weights=True)
            attention = weights[:, 0]
            leading, qkv = 0, None
    patches = attention.shape[1]
    side = round(patches ** 0.5)
    return PoolingInputs(hidden, attention.float().cpu().numpy(), (side, patches // side), leading,
                         qkv)


def rerun_pooling(model, inputs: PoolingInputs, bias: np.ndarray) -> np.ndarray:
    """Unit image embeddings (B, d) with ``bias`` (B, leading_keys + P) added to the pooling
    query's attention logits, then the checkpoint's own final norm and projection."""
    import torch

    vision = model.model.vision_model
    hidden = inputs.hidden
    bias_t = torch.as_tensor(bias, dtype=hidden.dtype, device=hidden.device)
    with torch.inference_mode():
        if model.model_type == "clip":  # the last block for the CLS token alone
            last = vision.encoder.layers[-1]
            attn = last.self_attn
            b = hidden.shape[0]
            q, k, v = inputs.qkv
            logits = (q @ k.transpose(-1, -2)) * attn.scale + bias_t[:, None, None, :]
            weights = torch.softmax(logits, dim=-1, dtype=torch.float32).to(q.dtype)
            mixed = (weights @ v).transpose(1, 2).reshape(b, 1, -1)
            cls = hidden[:, :1] + attn.out_proj(mixed)
            cls = cls + last.mlp(last.layer_norm2(cls))
            features = model.model.visual_projection(vision.post_layernorm(cls[:, 0]))
        else:
            head = vision.head
            b = hidden.shape[0]
            probe = head.probe.repeat(b, 1, 1)
            heads = head.attention.num_heads
            mask = bias_t[:, None, :].repeat_interleave(heads, dim=0)  # (B * heads, 1, T)
            pooled = head.attention(probe, hidden, hidden, attn_mask=mask, need_weights=False)[0]
            pooled = pooled + head.mlp(head.layernorm(pooled))
            features = pooled[:, 0]
        return model._normalise(features)


@dataclass
class TextTokens:
    """A batch of texts as the checkpoint's processor tokenizes them, with the pooled position,
    the EOT token's head-averaged last-layer attention (B, T) and the content-token mask."""

    input_ids: np.ndarray
    attention_mask: np.ndarray | None
    eot: np.ndarray
    attention: np.ndarray
    content: np.ndarray


def text_tokens_for_dcc(model, texts: list[str]) -> TextTokens:
    """Tokenize ``texts`` and read the EOT attention row of the text tower's last layer."""
    import torch

    tokens = {k: v.to(model.device) for k, v in model.tokenize(texts).items()}
    mask = tokens.pop("attention_mask", None)
    if model.model_type == "siglip":
        mask = None  # SigLIP is trained without one
    with torch.inference_mode():
        out = model.model.text_model(input_ids=tokens["input_ids"], attention_mask=mask,
                                     output_attentions=True)
    ids = tokens["input_ids"].cpu().numpy()
    eot = eot_positions(model, tokens["input_ids"])
    attention = out.attentions[-1].mean(dim=1)[np.arange(len(texts)), eot].float().cpu().numpy()
    special = list(model.tokenizer.all_special_ids)
    content = ~np.isin(ids, special)
    if mask is not None:
        content &= mask.cpu().numpy().astype(bool)
    return TextTokens(ids, None if mask is None else mask.cpu().numpy(), eot, attention, content)


def encode_token_ids(model, input_ids: np.ndarray, attention_mask: np.ndarray | None,
                     eot: np.ndarray) -> np.ndarray:
    """Unit text embeddings of token ids, pooled at ``eot`` (the original texts' pooled
    positions, so masking a token with a pad that equals EOS cannot move the pooling)."""
    import torch

    ids = torch.as_tensor(input_ids, device=model.device)
    mask = None if attention_mask is None else torch.as_tensor(attention_mask, device=model.device)
    with torch.inference_mode():
        states = model.model.text_model(input_ids=ids, attention_mask=mask).last_hidden_state
        pooled = states[torch.arange(len(ids)), torch.as_tensor(eot)]
        if model.model_type == "clip":
            features = model.model.text_projection(pooled)
        else:
            features = model.model.text_model.head(pooled)
        return model._normalise(features)
