"""Retrieval metrics (pure functions) and evaluation runners."""

from sharpclip.eval.metrics import (
    average_precision,
    binding_accuracy,
    mean_average_precision,
    mean_inverse_negative_penalty,
    ndcg_at_k,
    rank_order,
    recall_at_k,
)

__all__ = [
    "average_precision",
    "binding_accuracy",
    "mean_average_precision",
    "mean_inverse_negative_penalty",
    "ndcg_at_k",
    "rank_order",
    "recall_at_k",
]
