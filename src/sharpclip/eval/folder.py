"""``sharpclip eval folder DIR``: one or several models on a user's own labelled folder
(subfolders = classes, as for ``sharpclip finetune``; optional ``--captions FILE`` of
``IMAGE<TAB>CAPTION`` lines). Metrics (METHODS.md §4, "Evaluation"):

- ``i2i_map``: image-to-image mAP, all against all, the query itself excluded;
- ``knn_accuracy``: leave-one-out k-NN accuracy, k = 21, votes weighted ``exp(sim / 0.1)``;
- ``zeroshot_accuracy``: "a photo of a {class}" with the folder names as class names;
- ``image_retrieval_recall@5``: text -> image R@5, when captions pair with images (a caption is
  relevant to every image it is paired with).

Models are compared side by side: ``results.json`` holds one entry per model under ``methods``,
``results.md`` one column per model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import numpy as np

from sharpclip.eval.metrics import knn_accuracy, leave_one_out_map, recall_at_k

ZEROSHOT_TEMPLATE = "a photo of a {}"
METRICS = ("i2i_map", "knn_accuracy", "zeroshot_accuracy", "image_retrieval_recall@5")


def encode_set(model, training, batch_size: int = 64) -> np.ndarray:
    """Unit image embeddings (N, d) of every image of a training set, decoded batch by batch."""
    parts = [model.encode_images([training.image(i) for i in range(start, min(start + batch_size,
                                                                        len(training.images)))])
             for start in range(0, len(training.images), batch_size)]
    return np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)


def caption_relevance(pairs: Sequence[tuple[int, str]], n_images: int) -> tuple[list[str], np.ndarray]:
    """The distinct captions of ``pairs`` and their (Q, N) relevance: the images each is paired with."""
    captions = list(dict.fromkeys(caption for _, caption in pairs))
    row = {caption: i for i, caption in enumerate(captions)}
    relevant = np.zeros((len(captions), n_images), bool)
    for image, caption in pairs:
        relevant[row[caption], image] = True
    return captions, relevant


def model_metrics(model, training, embeddings: np.ndarray | None = None,
                  queries: tuple[list[str], np.ndarray] | None = None) -> dict[str, float]:
    """The four metrics of one model on a labelled set (``queries``: captions and their relevance
    for R@5; default from the set's image-caption pairs; none, no R@5)."""
    images = encode_set(model, training) if embeddings is None else embeddings
    labels = np.asarray(training.labels)
    out = {"i2i_map": leave_one_out_map(images, labels),
           "knn_accuracy": knn_accuracy(images, labels, k=21, temperature=0.1)}
    classes = model.encode_texts([ZEROSHOT_TEMPLATE.format(n) for n in training.class_names])
    out["zeroshot_accuracy"] = float(np.mean((images @ classes.T).argmax(axis=1) == labels))
    if queries is None and training.pairs:
        queries = caption_relevance(training.pairs, len(training.images))
    if queries is not None:
        texts, relevant = queries
        keep = relevant.any(axis=1)
        scores = model.encode_texts([t for t, k in zip(texts, keep) if k]) @ images.T
        out["image_retrieval_recall@5"] = recall_at_k(scores, relevant[keep], [5])[5]
    return out


def run_folder(data, models: Sequence[str], captions=None,
               load: Callable | None = None) -> dict:
    """Evaluate every model spec in ``models`` on the folder ``data``; the results.json document."""
    from sharpclip.finetune.data import load_training_set

    if load is None:
        from sharpclip.models.loader import load_model as load
    training = load_training_set(data, captions, hold_side=None)
    methods, fingerprints, timing = {}, {}, {}
    for spec in models:
        start = time.perf_counter()
        model = load(spec)
        methods[spec] = model_metrics(model, training)
        fingerprints[spec] = model.fingerprint
        timing[spec] = round(time.perf_counter() - start, 2)
    return {"task": "folder", "data": str(data), "model": fingerprints,
            "size": len(training.images), "classes": len(training.class_names),
            "captions": len(training.pairs), "skipped": len(training.skipped),
            "methods": methods, "timing_s": timing}


def to_markdown(result: dict) -> str:
    """One row per metric, one column per model (or method), side by side."""
    names = list(result["methods"])
    metrics = [m for m in METRICS if any(m in result["methods"][n] for n in names)]
    header = f"task `{result['task']}`, {result['size']} images"
    if "classes" in result:
        header += f" in {result['classes']} classes"
    lines = [header, "", "| metric | " + " | ".join(f"`{n}`" for n in names) + " |",
             "|---" * (len(names) + 1) + "|"]
    for metric in metrics:
        cells = [f"{result['methods'][n][metric]:.3f}" if metric in result["methods"][n] else "-"
                 for n in names]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
