"""The ``binding`` evaluation task (CONTRACT.md): geometry-aware retrieval on Shapes (METHODS.md §2).

Two parts, both searched through the product's query pipeline (``sharpclip.query``: an
:class:`~sharpclip.query.gallery.ArrayGallery` in memory, :func:`~sharpclip.query.pipeline.run_query`
per query), so the benchmark measures what ``sharpclip search --rerank parts --steer`` does:

- **Binding.** ``size`` two-object scenes of the held-out test split (``layout="varied"`` by
  default: positions anywhere, several scales; ``"fixed"``: the training layout, objects at +-0.25
  along one axis). Each scene is drawn with two different colours and at least one object of a
  :data:`~sharpclip.data.shapes.CONFUSABLE` shape. Gallery: every scene, its binding-swapped twin
  (the colours exchanged, otherwise pixel-identical) and its shape confuser (one object's shape
  replaced by its look-alike), 3 x ``size`` images. Query: one caption of the scene. Relevant:
  the gallery images whose labels have everything the caption names
  (:func:`~sharpclip.eval.retrieval.matches`; the twin and the confuser do not).
  ``binding_accuracy``: share of queries whose scene ranks above its twin.
- **Confusion.** ``confusion_size`` single-object scenes of a confusable shape, each beside its
  confuser (the same scene, rendered from the same jitter, in the look-alike shape: same colour,
  fill and size). Query: the object's phrase with the shape named by its label ("a red striped
  pentagon", "a small red pentagon with dots"). ``confusion@10``: share of the top 10 showing the
  query shape's look-alike (lower is better); ``confusion_recall@10`` and ``confusion_map`` with
  relevant = the scenes that have the named shape, colour, fill (and size).

Methods: ``plain`` (cosine), ``parts`` (part re-ranking over the region grid's crops, §2a),
``steer`` (local steering, §2b), ``parts+steer``, and ``parts (oracle objects)`` (regions = the
whole image + a window around each object's labelled box: the paper's annotated parts).

Rankings: every method's ranking starts with what the pipeline returns -- the plan without the
re-ranker asked for its top :data:`RANK_DEPTH` (plain or steered cosine), and for a re-ranking
method the re-ranked shortlist of K put in front of them (what paging past the shortlist would
show); the rest of the gallery follows by plain cosine, so mAP and binding accuracy are defined
for every query. (Asking the pipeline for the whole gallery costs a per-hit ``why`` for every item:
~36 ms per steered query at 3,600 items.) ``below_depth`` in the diagnostics is the share of
queries whose scene the pipeline did not return.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
from PIL import Image

from sharpclip.data import shapes
from sharpclip.data.regions import (
    DEFAULT_GRID,
    RegionGrid,
    border_colour,
    crop_padded,
    region_crops,
)
from sharpclip.eval import retrieval
from sharpclip.eval.metrics import (
    binding_accuracy,
    mean_average_precision,
    ndcg_at_k,
    rank_order,
    ranked_scores,
    recall_at_k,
)
from sharpclip.methods.parts import PartsConfig, query_parts
from sharpclip.methods.steering import (
    SteerConfig,
    binding_swap,
    confusers,
    find_attributes,
    swap_value,
)

DEFAULT_SIZE = 1200
"""Binding scenes (queries) at the default size; the confusion part adds ``2 * size // 3``."""


@dataclass(frozen=True)
class OracleConfig:
    """How ``parts (oracle objects)`` crops an object from its labelled box.

    ``window``: the crop is a square around the box (plus 2 pixels), at least this share of the
    image side (0: as tight as the box allows). ``frame``: False -- the crop is padded to a square
    and, like every region, resized to the model's input, so a small window enlarges the object;
    True -- the window stays where it is on a frame of the image's size painted with the border
    colour, so the object keeps its size and place (the rest of the scene is blanked out).
    """

    window: float = 0.5
    frame: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.window <= 1.0:
            raise ValueError(f"oracle window must be in [0, 1] (got {self.window!r})")


# The defaults of this benchmark, chosen by the sweep on seed 0 (docs/methods/geometry-eval.md):
# regions that keep the objects' scale (halves, padded to a square) beat the 2x2/3x3 windows
# (the product's earlier grid), which the model sees enlarged; K = 300 because plain cosine ranks the scene
# low (plain R@10 ~ 0.41 on the varied layout); structure off; steering at the paper's values.
DEFAULT_REGION_GRID = "whole+halves"
DEFAULT_PARTS = PartsConfig(shortlist=300, lam=0.85, structure=0.0)
DEFAULT_STEER = SteerConfig(m=20, beta=0.2, binding_swap=True)
DEFAULT_ORACLE = OracleConfig(window=0.0, frame=True)
METHODS = ("plain", "parts", "steer", "parts+steer", "parts (oracle objects)")
SWEEP_GRIDS = ("whole+2x2+3x3", "whole+halves", "whole+halves+2x2", "whole+2x2", "whole+3x3",
               "whole+halves+2x2+3x3")
_ALL_LEVELS = "whole+halves+2x2+3x3"
RANK_DEPTH = 500
"""Hits asked of the pipeline per query (at least K); the rest of the gallery by plain cosine."""


@dataclass
class Part:
    """One part of the benchmark: a gallery of rendered scenes and the queries over it.

    ``truth[q]``: the gallery index of query q's own scene; ``twin[q]``: its binding twin (-1 in
    the confusion part); ``look_alike[q]``: the shape that counts as a confusion (confusion part)."""

    name: str
    images: list[Image.Image]
    specs: list[shapes.SceneSpec]
    boxes: list[list[shapes.Box]]
    queries: list[str]
    truth: np.ndarray
    twin: np.ndarray
    relevant: np.ndarray
    look_alike: list[str] = field(default_factory=list)


def _draw_binding_spec(rng: np.random.Generator, test_fraction: float) -> shapes.SceneSpec:
    while True:
        spec = shapes.random_spec(rng, "pair")
        a, b = spec.objects
        if (a.colour != b.colour and shapes.confusable_objects(spec)
                and shapes.spec_split(spec, test_fraction) == "test"):
            return spec


def _relevance(queries: Sequence[str], query_specs: Sequence[shapes.SceneSpec],
               gallery: Sequence[shapes.SceneSpec]) -> np.ndarray:
    keys = [s.key() for s in gallery]
    unique = {k: s for k, s in zip(keys, gallery)}
    out = np.zeros((len(queries), len(gallery)), bool)
    for q, (text, spec) in enumerate(zip(queries, query_specs)):
        named = retrieval.named_attributes(text, spec)
        hit = {k for k, s in unique.items() if retrieval.matches(named, s)}
        out[q] = [k in hit for k in keys]
    return out


def binding_part(seed: int, size: int, layout: str = "varied", image_size: int = 64,
                 test_fraction: float = 0.2) -> Part:
    """The binding part's scenes: gallery = [scene, twin, confuser] x ``size`` (in that order)."""
    rng = np.random.default_rng(seed)
    images, specs, boxes, queries, query_specs = [], [], [], [], []
    for _ in range(size):
        spec = _draw_binding_spec(rng, test_fraction)
        index = int(rng.choice(shapes.confusable_objects(spec)))
        render_seed = int(rng.integers(2**32))
        for variant in (spec, shapes.binding_twin(spec), shapes.shape_confuser(spec, index)):
            image, drawn = shapes.render_with_boxes(variant, image_size,
                                                    np.random.default_rng(render_seed), layout)
            images.append(image)
            specs.append(variant)
            boxes.append(drawn)
        queries.append(shapes.captions(spec, rng, n=1)[0])
        query_specs.append(spec)
    truth = 3 * np.arange(size)
    return Part("binding", images, specs, boxes, queries, truth, truth + 1,
                _relevance(queries, query_specs, specs))


def confusion_part(seed: int, size: int, image_size: int = 64,
                   test_fraction: float = 0.2) -> Part:
    """The confusion part: gallery = [scene, confuser] x ``size``; single objects of a
    confusable shape (count 1), queries naming the shape by its label."""
    rng = np.random.default_rng([seed, 1])
    images, specs, boxes, queries, query_specs, look_alike = [], [], [], [], [], []
    confusable = tuple(shapes.CONFUSABLE)
    while len(queries) < size:
        spec = shapes.random_spec(rng, "single", max_count=1)
        obj = replace(spec.objects[0], shape=confusable[rng.integers(len(confusable))])
        spec = replace(spec, objects=(obj,))
        if shapes.spec_split(spec, test_fraction) != "test":
            continue
        render_seed = int(rng.integers(2**32))
        for variant in (spec, shapes.shape_confuser(spec)):
            image, drawn = shapes.render_with_boxes(variant, image_size,
                                                    np.random.default_rng(render_seed))
            images.append(image)
            specs.append(variant)
            boxes.append(drawn)
        queries.append(shapes.object_phrase(obj, rng, with_size=bool(rng.random() < 0.5),
                                            shape_synonyms=False))
        query_specs.append(spec)
        look_alike.append(shapes.CONFUSABLE[obj.shape])
    truth = 2 * np.arange(size)
    return Part("confusion", images, specs, boxes, queries, truth, np.full(size, -1),
                _relevance(queries, query_specs, specs), look_alike)


def oracle_box(box: shapes.Box, image_size: int, window: float = 0.5,
               margin: int = 2) -> tuple[int, int, int, int]:
    """A square window (x0, y0, x1, y1) around an object's box: the box plus ``margin`` pixels,
    widened to at least ``window`` x the image side, centred on the object, shifted into the frame."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0) + 2 * margin
    side = int(min(image_size, max(side, round(window * image_size))))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left = int(np.clip(round(cx - side / 2), 0, image_size - side))
    top = int(np.clip(round(cy - side / 2), 0, image_size - side))
    return left, top, left + side, top + side


def oracle_crops(image: Image.Image, boxes: Sequence[shapes.Box], oracle: OracleConfig,
                 fill: tuple[int, int, int] | None = None) -> tuple[list[Image.Image], list]:
    """(crops, their pixel boxes) of an image's labelled objects, as ``oracle`` says."""
    fill = border_colour(image) if fill is None else fill
    windows = [oracle_box(b, image.width, oracle.window) for b in boxes]
    if not oracle.frame:
        return [crop_padded(image, w, fill) for w in windows], windows
    crops = []
    for window in windows:
        canvas = Image.new("RGB", image.size, fill)
        canvas.paste(image.crop(window), window[:2])
        crops.append(canvas)
    return crops, windows


@dataclass
class Encoded:
    """Embeddings of a part's gallery: whole images (N, d); every region of ``levels`` per image
    (N, R, d) with its pixel boxes (R, 4); the oracle object windows (flat, with owners)."""

    whole: np.ndarray
    image_size: int
    levels: str
    grid_vectors: np.ndarray
    grid_boxes: np.ndarray
    oracle_vectors: np.ndarray
    oracle_owner: np.ndarray
    oracle_boxes: np.ndarray

    def grid_regions(self, grid: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, owner, boxes) of the sub-grid ``grid`` (levels among the encoded ones)."""
        columns = _level_columns(self.levels, grid)
        n, _, d = self.grid_vectors.shape
        vectors = self.grid_vectors[:, columns].reshape(-1, d)
        owner = np.repeat(np.arange(n), len(columns))
        return vectors, owner, np.tile(self.grid_boxes[columns], (n, 1))

    def oracle_regions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(vectors, owner, boxes): the whole image first, then each object's window."""
        n, size = len(self.whole), self.image_size
        vectors = np.concatenate([self.whole, self.oracle_vectors])
        owner = np.concatenate([np.arange(n), self.oracle_owner])
        boxes = np.concatenate([np.tile([0, 0, size, size], (n, 1)), self.oracle_boxes])
        order = np.argsort(owner, kind="stable")
        return vectors[order], owner[order], boxes[order]


def _level_columns(levels: str, grid: str) -> list[int]:
    have = levels.split("+")
    want = RegionGrid(grid).spec.split("+")
    missing = [w for w in want if w not in have]
    if missing:
        raise ValueError(f"grid {grid!r}: level(s) {', '.join(missing)} not encoded ({levels})")
    starts = np.cumsum([0] + [len(RegionGrid(level)) for level in have])
    return [c for w in want for c in range(starts[have.index(w)], starts[have.index(w) + 1])]


def encode_part(model, part: Part, levels: str = DEFAULT_GRID,
                oracle: OracleConfig = DEFAULT_ORACLE, regions: bool = True,
                chunk: int = 256) -> Encoded:
    """Encode a part's gallery: the crops of ``levels`` (the whole image taken from the ``whole``
    level when there is one) and the oracle windows, ``chunk`` images' crops per encoder call.
    ``regions=False``: the whole images only (regions are then computed if a query asks, see
    :class:`OnDemandRegions`)."""
    size = part.images[0].width
    if not regions:
        empty = np.zeros((0, 4), np.int64)
        return Encoded(model.encode_images(part.images), size, "", None, empty, None, None, None)
    grid = RegionGrid(levels)
    grid_boxes = grid.boxes(size, size)
    with_whole = "whole" in levels.split("+")
    grid_out, oracle_out, oracle_windows = [], [], []
    for start in range(0, len(part.images), chunk):
        crops, counts = [], []
        for image, drawn in zip(part.images[start:start + chunk], part.boxes[start:start + chunk]):
            fill = border_colour(image)
            crops += [crop_padded(image, box, fill) for box in grid_boxes]
            objects, windows = oracle_crops(image, drawn, oracle, fill)
            crops += objects
            oracle_windows.append(windows)
            if not with_whole:
                crops.append(image)
            counts.append(len(windows))
        vectors = model.encode_images(crops)
        at = 0
        for count in counts:
            grid_out.append(vectors[at:at + len(grid_boxes)])
            at += len(grid_boxes)
            oracle_out.append(vectors[at:at + count])
            at += count
            if not with_whole:
                grid_out[-1] = np.concatenate([grid_out[-1], vectors[at:at + 1]])
                at += 1
    grid_vectors = np.stack(grid_out)
    if with_whole:
        whole = grid_vectors[:, _level_columns(levels, "whole")[0]]
    else:
        whole, grid_vectors = grid_vectors[:, -1], grid_vectors[:, :-1]
    return Encoded(
        whole=np.ascontiguousarray(whole), image_size=size, levels=grid.spec,
        grid_vectors=grid_vectors, grid_boxes=grid_boxes,
        oracle_vectors=np.concatenate(oracle_out),
        oracle_owner=np.repeat(np.arange(len(oracle_windows)), [len(w) for w in oracle_windows]),
        oracle_boxes=np.array([b for w in oracle_windows for b in w], np.int64).reshape(-1, 4))


class OnDemandRegions:
    """A gallery (the :class:`~sharpclip.query.gallery.Gallery` interface) over whole-image
    vectors whose region vectors are encoded the first time the pipeline asks for an item's
    (then kept), like a collection indexed without ``--regions``. The confusion part's queries
    name one object, so the parts stage skips them and its regions are normally never needed.

    ``crops(item)``: that item's region crops and their pixel boxes, in part order."""

    def __init__(self, whole: np.ndarray,
                 crops: Callable[[int], tuple[list[Image.Image], np.ndarray]],
                 encode_images: Callable):
        from sharpclip.query.gallery import ArrayGallery

        self._inner = ArrayGallery(whole)
        self.dim = self._inner.dim
        self._crops, self._encode = crops, encode_images
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    @property
    def computed(self) -> int:
        """Items whose regions were encoded on demand."""
        return len(self._cache)

    def nearest(self, query, k, *args, **kwargs):
        return self._inner.nearest(query, k, *args, **kwargs)

    def vectors(self, ids, *args, **kwargs):
        return self._inner.vectors(ids, *args, **kwargs)

    def regions(self, ids):
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        missing = [int(i) for i in dict.fromkeys(ids.tolist()) if int(i) not in self._cache]
        if missing:
            crops, owners = [], []
            for item in missing:
                images, boxes = self._crops(item)
                crops += images
                owners.append((item, np.asarray(boxes, np.int64).reshape(-1, 4)))
            vectors, at = self._encode(crops), 0
            for item, boxes in owners:
                self._cache[item] = (vectors[at:at + len(boxes)], boxes)
                at += len(boxes)
        parts = [self._cache[int(i)] for i in ids]
        owner = np.repeat(np.arange(len(ids)), [len(p[1]) for p in parts])
        if not parts:
            return np.zeros((0, self.dim), np.float32), owner, np.zeros((0, 4), np.int64)
        return (np.concatenate([p[0] for p in parts]), owner,
                np.concatenate([p[1] for p in parts]))


def vocabulary_values(vocabulary=None) -> dict[str, list[str]]:
    """``{condition: values}`` of the concept vocabulary (built-in by default)."""
    from sharpclip.concepts import load_vocabulary

    return (vocabulary or load_vocabulary()).values()


def steering_texts(text: str, values: Mapping[str, Sequence[str]],
                   config: SteerConfig) -> list[str]:
    """The texts :func:`~sharpclip.methods.steering.steer_query` encodes for ``text`` (its
    contrastive queries), so they can be encoded in a few large batches first."""
    out = [swap_value(text, a, option) for a in find_attributes(text, values)
           for option in confusers(a, values)]
    swapped = binding_swap(text, values) if config.binding_swap else None
    return out + ([swapped] if swapped else [])


@dataclass(frozen=True)
class MethodSpec:
    """One method: which stages the query plan turns on, and whose regions it matches."""

    rerank: bool
    steer: bool
    regions: str = "grid"  # or "oracle"


METHOD_SPECS = {
    "plain": MethodSpec(False, False),
    "parts": MethodSpec(True, False),
    "steer": MethodSpec(False, True),
    "parts+steer": MethodSpec(True, True),
    "parts (oracle objects)": MethodSpec(True, False, "oracle"),
}


def _steer_details(details: list[dict]) -> dict:
    used = [d for d in details if d.get("used")]
    swap = [d for d in details if d.get("condition") == "binding"]
    shape = [d for d in details if d.get("condition") == "shape"]
    return {"directions": len(used), "none": not used, "swap_found": bool(swap),
            "swap_used": any(d.get("used") for d in swap), "shape_found": bool(shape),
            "shape_used": any(d.get("used") for d in shape),
            "overlap": float(np.mean([d.get("overlap", 0) for d in details])) if details else 0.0}


def run_method(part: Part, gallery, encode: Callable, values: Mapping[str, Sequence[str]],
               plain: np.ndarray, spec: MethodSpec, parts: PartsConfig,
               steer: SteerConfig) -> tuple[dict, dict]:
    """Every query of ``part`` through :func:`~sharpclip.query.pipeline.run_query` (rankings as
    in the module docstring); returns (metrics, diagnostics)."""
    from sharpclip.query.pipeline import QueryError, QueryPlan, run_query

    depth = min(len(part.images), max(RANK_DEPTH, parts.shortlist))
    scores = np.empty(part.relevant.shape, np.float64)
    steered, stage_ms, refused, below = [], {}, 0, 0

    def search(plan):
        nonlocal refused
        try:
            return run_query(plan, gallery, encode, values)
        except QueryError:  # steering found no attribute value in the query: search unsteered
            refused += 1
            return run_query(replace(plan, steer=None), gallery, encode, values)

    for q, text in enumerate(part.queries):
        steering = steer if spec.steer else None
        result = search(QueryPlan(text=text, k=depth, steer=steering))
        order = np.asarray(result.ids)
        if spec.rerank:
            result = search(QueryPlan(text=text, k=parts.shortlist, rerank=parts, steer=steering))
            top = np.asarray(result.ids)
            order = np.concatenate([top, order[~np.isin(order, top)]])
        below += int(part.truth[q] not in set(order.tolist()))
        scores[q] = ranked_scores(order, plain[q])
        for stage, ms in result.timing_ms.items():
            stage_ms[stage] = stage_ms.get(stage, 0.0) + ms
        if spec.steer:
            steered.append(_steer_details(result.details.get("steer", {}).get("attributes", [])))
    metrics = part_metrics(part, scores)
    diagnostics = {"ms_per_query": {k: round(v / len(part.queries), 3)
                                    for k, v in stage_ms.items()},
                   "below_depth": below / len(part.queries)}
    if steered:
        diagnostics["steer"] = {
            "no_direction": float(np.mean([s["none"] for s in steered])),
            "directions_mean": float(np.mean([s["directions"] for s in steered])),
            "overlap_mean": float(np.mean([s["overlap"] for s in steered])),
            "binding_swap_found": float(np.mean([s["swap_found"] for s in steered])),
            "binding_swap_used": float(np.mean([s["swap_used"] for s in steered])),
            "shape_found": float(np.mean([s["shape_found"] for s in steered])),
            "shape_used": float(np.mean([s["shape_used"] for s in steered])),
            "refused": refused / len(part.queries),
        }
    return metrics, diagnostics


def part_metrics(part: Part, scores: np.ndarray) -> dict[str, float]:
    """The part's metrics from full-gallery scores (Q, N)."""
    if part.name == "binding":
        recall = recall_at_k(scores, part.relevant, (1, 10))
        rows = np.arange(len(part.queries))
        return {"recall@1": recall[1], "recall@10": recall[10],
                "map": mean_average_precision(scores, part.relevant),
                "ndcg@10": ndcg_at_k(scores, part.relevant, 10),
                "binding_accuracy": binding_accuracy(scores[rows, part.truth],
                                                     scores[rows, part.twin])}
    top = rank_order(scores)[:, :10]
    gallery_shapes = np.array([s.objects[0].shape for s in part.specs])
    confused = gallery_shapes[top] == np.array(part.look_alike)[:, None]
    return {"confusion@10": float(confused.mean()),
            "confusion_recall@10": recall_at_k(scores, part.relevant, (10,))[10],
            "confusion_map": mean_average_precision(scores, part.relevant)}


def _galleries(encoded: Encoded, grid: str, part: Part, encode_images: Callable,
               oracle: OracleConfig) -> dict:
    from sharpclip.query.gallery import ArrayGallery

    if encoded.grid_vectors is not None:
        return {"grid": ArrayGallery(encoded.whole, regions=encoded.grid_regions(grid)),
                "oracle": ArrayGallery(encoded.whole, regions=encoded.oracle_regions())}
    n, grid = encoded.image_size, RegionGrid(grid)

    def grid_crops(item: int):
        return region_crops(part.images[item], grid), grid.boxes(n, n)

    def oracle_regions(item: int):
        crops, windows = oracle_crops(part.images[item], part.boxes[item], oracle)
        return [part.images[item], *crops], np.array([(0, 0, n, n), *windows])

    return {"grid": OnDemandRegions(encoded.whole, grid_crops, encode_images),
            "oracle": OnDemandRegions(encoded.whole, oracle_regions, encode_images)}


def _prefetch(encode: Callable, texts: Sequence[str], values, steer: SteerConfig,
              with_parts: bool = True, with_steer: bool = True) -> None:
    wanted = list(texts)
    for text in texts:
        if with_parts:
            wanted += query_parts(text)
        if with_steer:
            wanted += steering_texts(text, values, steer)
    encode(list(dict.fromkeys(wanted)))


def _text_cosines(part: Part, encode: Callable, values) -> dict[str, float]:
    """Mean cosine between each query and its binding swap / shape-swapped text (the text
    tower's view of what steering has to push apart)."""
    pairs = []
    for text in part.queries:
        if part.name == "binding":
            other = binding_swap(text, values)
        else:
            shape = next((a for a in find_attributes(text, values) if a.condition == "shape"), None)
            other = swap_value(text, shape, shapes.CONFUSABLE[shape.value]) if shape else None
        if other:
            pairs.append((text, other))
    if not pairs:
        return {}
    a = encode([p[0] for p in pairs])
    b = encode([p[1] for p in pairs])
    key = "caption_vs_binding_swap" if part.name == "binding" else "query_vs_look_alike"
    return {key: float(np.mean(np.sum(a * b, axis=1))), f"{key}_pairs": len(pairs)}


@dataclass
class Prepared:
    """Scenes and embeddings of both parts (so a sweep encodes once)."""

    parts: dict[str, Part]
    encoded: dict[str, Encoded]
    plain: dict[str, np.ndarray]
    timing: dict[str, float]
    encode_images: Callable
    oracle: OracleConfig


def prepare(model, encode: Callable, seed: int, size: int, layout: str, levels: str,
            confusion_size: int, oracle: OracleConfig) -> Prepared:
    """Generate both parts, encode their galleries (``levels``) and queries."""
    image_size = model.preprocess.crop_hw[0]
    timing = {}
    start = time.perf_counter()
    parts = {"binding": binding_part(seed, size, layout, image_size),
             "confusion": confusion_part(seed, confusion_size, image_size)}
    timing["generate"] = time.perf_counter() - start
    start = time.perf_counter()
    encoded = {"binding": encode_part(model, parts["binding"], levels, oracle),
               "confusion": encode_part(model, parts["confusion"], regions=False)}
    timing["encode_images"] = time.perf_counter() - start
    plain = {name: encode(part.queries) @ encoded[name].whole.T for name, part in parts.items()}
    return Prepared(parts, encoded, plain, timing, model.encode_images, oracle)


def evaluate(prepared: Prepared, encode: Callable, values, grid: str, parts: PartsConfig,
             steer: SteerConfig,
             methods: Sequence[str] = METHODS) -> tuple[dict, dict, dict]:
    """Run ``methods`` over both parts; returns (methods' metrics, diagnostics, timing_s)."""
    out, diagnostics, timing = {}, {}, {}
    galleries = {name: _galleries(enc, grid, prepared.parts[name], prepared.encode_images,
                                  prepared.oracle)
                 for name, enc in prepared.encoded.items()}
    for method in methods:
        spec = METHOD_SPECS[method]
        start = time.perf_counter()
        out[method], diagnostics[method] = {}, {}
        for name, part in prepared.parts.items():
            metrics, diag = run_method(part, galleries[name][spec.regions], encode, values,
                                       prepared.plain[name], spec, parts, steer)
            out[method].update(metrics)
            gallery = galleries[name][spec.regions]
            if isinstance(gallery, OnDemandRegions):
                diag["regions_encoded_on_demand"] = gallery.computed
            diagnostics[method][name] = diag
        timing[method] = time.perf_counter() - start
    return out, diagnostics, timing


def run_binding(model, seed: int = 0, size: int = DEFAULT_SIZE, layout: str = "varied",
                grid: str = DEFAULT_REGION_GRID, parts: PartsConfig = DEFAULT_PARTS,
                steer: SteerConfig = DEFAULT_STEER, confusion_size: int | None = None,
                oracle: OracleConfig = DEFAULT_ORACLE,
                methods: Sequence[str] = METHODS, vocabulary=None) -> dict:
    """Generate, encode and search both parts with every method; returns the results.json
    document (CONTRACT.md schema, plus ``diagnostics``)."""
    from sharpclip.query.pipeline import TextEncoder

    if layout not in shapes.LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(shapes.LAYOUTS)}")
    unknown = [m for m in methods if m not in METHOD_SPECS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {', '.join(METHODS)}")
    confusion_size = max(1, 2 * size // 3) if confusion_size is None else confusion_size
    values = vocabulary_values(vocabulary)
    encode = TextEncoder(model)
    grid = RegionGrid(grid).spec
    prepared = prepare(model, encode, seed, size, layout, grid, confusion_size, oracle)
    start = time.perf_counter()
    texts = [t for part in prepared.parts.values() for t in part.queries]
    _prefetch(encode, texts, values, steer)
    prepared.timing["encode_texts"] = time.perf_counter() - start
    metrics, diagnostics, timing = evaluate(prepared, encode, values, grid, parts, steer,
                                            methods)
    diagnostics["text_cosine"] = {
        **_text_cosines(prepared.parts["binding"], encode, values),
        **_text_cosines(prepared.parts["confusion"], encode, values)}
    binding, confusion = prepared.parts["binding"], prepared.parts["confusion"]
    params = {
        "data": {"layout": layout, "binding_queries": len(binding.queries),
                 "binding_gallery": len(binding.images),
                 "confusion_queries": len(confusion.queries),
                 "confusion_gallery": len(confusion.images),
                 "image_size": binding.images[0].width, "split": "test",
                 "relevant_per_query": round(float(binding.relevant.sum(1).mean()), 3),
                 "confusion_relevant_per_query": round(float(confusion.relevant.sum(1).mean()), 3)},
        "grid": grid, "regions_per_image": len(RegionGrid(grid)),
        "parts": asdict(parts), "steer": asdict(steer), "oracle": asdict(oracle),
        "rank_depth": max(RANK_DEPTH, parts.shortlist),
    }
    return {"task": "binding", "model": model.fingerprint, "seed": seed, "size": size,
            "layout": layout, "methods": metrics, "params": params, "diagnostics": diagnostics,
            "timing_s": {k: round(v, 2) for k, v in {**prepared.timing, **timing}.items()}}


COLUMNS = ("recall@1", "recall@10", "map", "ndcg@10", "binding_accuracy", "confusion@10",
           "confusion_recall@10", "confusion_map")


def to_markdown(result: dict) -> str:
    """A Markdown table: one row per method, one column per metric."""
    data = result["params"]["data"]
    lines = [(f"task `{result['task']}`, model `{result['model']}`, seed {result['seed']}, "
              f"size {result['size']}, layout `{result['layout']}` ({data['binding_queries']} "
              f"binding queries over {data['binding_gallery']} images, "
              f"{data['confusion_queries']} confusion queries over {data['confusion_gallery']})"),
             "", "| method | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for method, metrics in result["methods"].items():
        cells = " | ".join(f"{metrics[c]:.3f}" if c in metrics else "-" for c in COLUMNS)
        lines.append(f"| {method} | {cells} |")
    p = result["params"]
    lines += ["", (f"grid `{p['grid']}`, parts K={p['parts']['shortlist']} "
                   f"lam={p['parts']['lam']} g={p['parts']['structure']}, steer "
                   f"m={p['steer']['m']} beta={p['steer']['beta']} "
                   f"binding_swap={str(p['steer']['binding_swap']).lower()}, oracle window "
                   f"{p['oracle']['window']} frame={str(p['oracle']['frame']).lower()}; "
                   "confusion@10: lower is better")]
    return "\n".join(lines) + "\n"


def write_results(result: dict, out) -> None:
    """Write ``results.json`` and ``results.md`` (this task's table) into ``out``."""
    retrieval.write_results(result, out, to_markdown(result))


# --- the sweep (seed 0 only: the defaults' evidence) -------------------------------------------

def sweep(model, seed: int = 0, size: int = DEFAULT_SIZE, layout: str = "varied",
          grids: Sequence[str] = SWEEP_GRIDS, lams: Sequence[float] = (0.5, 0.7, 0.85, 1.0),
          shortlists: Sequence[int] = (50, 100, 200, 300, 500),
          structures: Sequence[float] = (0.0, 0.3),
          betas: Sequence[float] = (0.05, 0.1, 0.2, 0.4), ms: Sequence[int] = (5, 10, 20, 50),
          oracles: Sequence[OracleConfig] = (DEFAULT_ORACLE, OracleConfig(0.25, frame=True),
                                             OracleConfig(0.0), OracleConfig(0.5)),
          base_grid: str = DEFAULT_REGION_GRID, base_parts: PartsConfig = DEFAULT_PARTS,
          base_steer: SteerConfig = DEFAULT_STEER,
          joint: Sequence[tuple] = ((DEFAULT_PARTS, replace(DEFAULT_STEER, beta=0.1)),),
          confusion_size: int | None = None,
          log: Callable[[str], None] | None = None) -> list[dict]:
    """One-at-a-time sweep around ``base_*`` (the grid, lam, K, g for ``parts``; beta, m and the
    binding swap for ``steer``; the oracle crops), then ``joint`` settings of ``parts+steer``
    (``(PartsConfig, SteerConfig)`` pairs, on ``base_grid``). Returns one row per setting
    (method, setting, metrics). Images are encoded once for every grid level, oracle crops once
    per oracle setting."""
    from sharpclip.query.pipeline import TextEncoder

    confusion_size = max(1, 2 * size // 3) if confusion_size is None else confusion_size
    values = vocabulary_values()
    encode = TextEncoder(model)
    prepared = prepare(model, encode, seed, size, layout, _ALL_LEVELS, confusion_size,
                       oracles[0] if oracles else DEFAULT_ORACLE)
    texts = [t for part in prepared.parts.values() for t in part.queries]
    steer_configs = [replace(base_steer, beta=b) for b in betas] + \
        [replace(base_steer, m=m) for m in ms]
    _prefetch(encode, texts, values, base_steer)
    rows = []

    def record(method, setting, grid, parts, steer, prep=prepared):
        metrics, diag, timing = evaluate(prep, encode, values, grid, parts, steer,
                                         methods=(method,))
        row = {"method": method, "setting": setting, **metrics[method],
               "seconds": round(timing[method], 1)}
        steer_diag = diag[method]["binding"].get("steer")
        if steer_diag:
            row["no_direction"] = steer_diag["no_direction"]
        rows.append(row)
        if log:
            log(_row_text(row))

    record("plain", "-", base_grid, base_parts, base_steer)
    for grid in grids:
        record("parts", f"grid={grid}", grid, base_parts, base_steer)
    for lam in lams:
        record("parts", f"lam={lam}", base_grid, replace(base_parts, lam=lam), base_steer)
    for k in shortlists:
        record("parts", f"K={k}", base_grid, replace(base_parts, shortlist=k), base_steer)
    for g in structures:
        record("parts", f"g={g}", base_grid, replace(base_parts, structure=g), base_steer)
    for config in steer_configs:
        record("steer", f"beta={config.beta} m={config.m}", base_grid, base_parts, config)
    record("steer", "binding_swap=false", base_grid, base_parts,
           replace(base_steer, binding_swap=False))
    for parts, steer in ((base_parts, base_steer), *joint):
        record("parts+steer", f"lam={parts.lam} K={parts.shortlist} g={parts.structure} "
               f"beta={steer.beta} m={steer.m}", base_grid, parts, steer)
    for i, oracle in enumerate(oracles):
        prep = prepared
        if i:
            encoded = {**prepared.encoded, "binding": replace(
                prepared.encoded["binding"], **_oracle_fields(model, prepared.parts["binding"],
                                                              oracle))}
            prep = replace(prepared, encoded=encoded, oracle=oracle)
        record("parts (oracle objects)", f"window={oracle.window} frame={oracle.frame}",
               base_grid, base_parts, base_steer, prep)
    return rows


def _oracle_fields(model, part: Part, oracle: OracleConfig) -> dict:
    crops, windows = [], []
    for image, boxes in zip(part.images, part.boxes):
        objects, placed = oracle_crops(image, boxes, oracle)
        crops += objects
        windows.append(placed)
    return {"oracle_vectors": model.encode_images(crops),
            "oracle_owner": np.repeat(np.arange(len(windows)), [len(w) for w in windows]),
            "oracle_boxes": np.array([b for w in windows for b in w], np.int64).reshape(-1, 4)}


SWEEP_COLUMNS = ("recall@1", "recall@10", "map", "binding_accuracy", "confusion@10",
                 "confusion_recall@10")


def _row_text(row: dict) -> str:
    cells = " | ".join(f"{row[c]:.3f}" for c in SWEEP_COLUMNS)
    extra = f" | {row['no_direction']:.3f}" if "no_direction" in row else " | -"
    return f"| {row['method']} | {row['setting']} | {cells}{extra} | {row['seconds']} |"


def sweep_table(rows: Sequence[dict]) -> str:
    """The sweep as a Markdown table."""
    header = "| method | setting | " + " | ".join(SWEEP_COLUMNS) + " | no direction | s |"
    return "\n".join([header, "|---" * (len(SWEEP_COLUMNS) + 4) + "|",
                      *(_row_text(r) for r in rows)]) + "\n"
