"""DCC's text side over a model (METHODS.md §3b): which tokens of a query are *general* (much
attended by the EOT token and frequent in a reference corpus), and the query re-encoded with them
masked. Wires ``models.calibrated`` (the tower) to ``methods.calibration`` (the maths)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sharpclip.methods.calibration import (
    DCCConfig,
    general_positions,
    mask_positions,
    token_generality,
)


def reference_corpus(concepts=None, captions=None) -> list[str]:
    """The texts token generality is counted over: a captions file (one per line) when given,
    else every prompt of the concept vocabulary."""
    if captions is not None:
        from pathlib import Path

        lines = [line.strip() for line in Path(captions).read_text(encoding="utf-8").splitlines()]
        texts = [line for line in lines if line]
        if not texts:
            raise ValueError(f"{captions}: no captions in it (one per line)")
        return texts
    from sharpclip.concepts import load_vocabulary

    vocabulary = load_vocabulary(concepts)
    return [p for name in vocabulary.conditions for p in vocabulary.prompts(name)]


class DiscriminativeText:
    """``texts -> (u_disc, masked tokens)`` for one model and reference corpus, memoised."""

    def __init__(self, model, corpus: Sequence[str], config: DCCConfig | None = None):
        self.model = model
        self.config = config or DCCConfig()
        special = set(model.tokenizer.all_special_ids)
        ids = model.tokenize(list(corpus))["input_ids"].tolist()
        self.generality = token_generality(ids, ignore=special)
        pad = model.tokenizer.pad_token_id
        self.pad_id = model.tokenizer.eos_token_id if pad is None else pad
        self._memo: dict[str, tuple[np.ndarray, list[str]]] = {}

    def __call__(self, texts: Sequence[str]) -> tuple[np.ndarray, list[list[str]]]:
        from sharpclip.models.calibrated import encode_token_ids, text_tokens_for_dcc

        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            tokens = text_tokens_for_dcc(self.model, missing)
            masked_ids, masked_words = [], []
            for i in range(len(missing)):
                at = general_positions(tokens.attention[i], tokens.input_ids[i], tokens.content[i],
                                       self.generality, self.config.fraction)
                masked_ids.append(mask_positions(tokens.input_ids[i], at, self.pad_id))
                masked_words.append(self.model.tokenizer.convert_ids_to_tokens(
                    tokens.input_ids[i][at].tolist()))
            vectors = encode_token_ids(self.model, np.stack(masked_ids), tokens.attention_mask,
                                       tokens.eot)
            self._memo.update(zip(missing, zip(vectors, masked_words)))
        found = [self._memo[t] for t in texts]
        return np.stack([v for v, _ in found]), [w for _, w in found]
