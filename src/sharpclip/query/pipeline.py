"""The query pipeline: encode the query -> rewrite (steering) -> candidates (a shortlist of K when
a re-ranker follows; from the calibrated vectors when calibrating) -> refine (calibration's DCC,
then part re-ranking, which fuses with the score before it) -> the top ``k`` hits, each with its
``why``.

The one place that wires a gallery (``query.gallery``: a collection on disk or arrays in memory)
to the methods (``methods/``: pure array maths). Each stage is a small frozen object with one
method over arrays; :func:`run_query` records the time each took (``timing_ms``) and what it
changed (``why``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sharpclip.methods.calibration import DCCConfig, dcc_scores
from sharpclip.methods.parts import PartsConfig, query_parts, rerank_parts
from sharpclip.methods.steering import Attribute, SteerConfig, steer_query
from sharpclip.query.gallery import Gallery


class QueryError(ValueError):
    """A query the pipeline cannot run as asked; the message says what to change."""


class TextEncoder:
    """``encode_texts`` of a model, memoised per string (a query's parts and contrastive texts
    recur across queries of one run). ``model`` is a model, or a function of no arguments that
    returns one, called on first use: a query that encodes no text never loads the model."""

    def __init__(self, model, limit: int = 100_000):
        self._model = model
        self._memo: dict[str, np.ndarray] = {}
        self._limit = limit

    @property
    def model(self):
        """The model (loaded now if it was given as a function)."""
        if not hasattr(self._model, "encode_texts"):
            self._model = self._model()
        return self._model

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        missing = list(dict.fromkeys(t for t in texts if t not in self._memo))
        if missing:
            if len(self._memo) + len(missing) > self._limit:
                self._memo.clear()
            self._memo.update(zip(missing, self.model.encode_texts(missing)))
        if not texts:
            return np.zeros((0, self.model.dim), np.float32)
        return np.stack([self._memo[t] for t in texts])


@dataclass(frozen=True)
class QueryPlan:
    """What to search for and how. Exactly one of ``text``, ``image`` (a PIL image) or
    ``vector`` (an item's stored vector, for "more like this") is the query."""

    text: str | None = None
    image: object = None
    vector: np.ndarray | None = field(default=None, compare=False)
    k: int = 20
    condition: str | None = None
    exact: bool | None = None
    steer: SteerConfig | None = None
    steer_attributes: tuple[tuple[str, str], ...] = ()  # given (condition, value); else found
    rerank: PartsConfig | None = None
    calibrate: DCCConfig | None = None

    def __post_init__(self) -> None:
        given = sum(x is not None for x in (self.text, self.image, self.vector))
        if given != 1:
            raise QueryError("give exactly one of a text, an image or an indexed item as the query")
        if not isinstance(self.k, int) or self.k < 1:
            raise QueryError(f"k must be a whole number >= 1 (got {self.k!r})")
        if self.text is not None and not any(c.isalnum() for c in self.text):
            raise QueryError(f"the text query {self.text!r} has no words: type what to look for")
        if self.text is None and (self.steer is not None or self.rerank is not None
                                  or self.calibrate is not None):
            raise QueryError("--steer, --rerank parts and --calibrate work on text queries; give "
                             "the query as text")
        if self.condition is not None and self.text is not None:
            raise QueryError("--condition compares images: use it with --image or --like")

    @property
    def shortlist(self) -> int:
        """How many candidates the candidates stage fetches: K when a re-ranker follows."""
        wanted = [r.shortlist for r in (self.rerank, self.calibrate) if r is not None]
        return max([self.k, *wanted])


@dataclass
class Candidates:
    """The candidates so far: item ids and scores (descending) and per-candidate explanations."""

    ids: np.ndarray
    scores: np.ndarray
    why: list[dict]

    def top(self, k: int) -> Candidates:
        order = np.lexsort((self.ids, -self.scores))[:k]
        return Candidates(self.ids[order], self.scores[order], [self.why[i] for i in order])


@dataclass
class QueryResult:
    """The top ``k``: ids, scores, per-hit ``why``, the plan's own details and stage timings."""

    ids: np.ndarray
    scores: np.ndarray
    why: list[dict]
    details: dict = field(default_factory=dict)
    timing_ms: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Steer:
    """Rewrite stage: steer the query toward its controlled attributes (METHODS.md §2b)."""

    config: SteerConfig
    attributes: tuple[tuple[str, str], ...] = ()

    def rewrite(self, text: str, query: np.ndarray, gallery: Gallery, encode: Callable,
                values: Mapping[str, Sequence[str]]) -> tuple[np.ndarray, dict]:
        given = None
        if self.attributes:
            given = [_given_attribute(text, condition, value) for condition, value in self.attributes]

        def knn(vector: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
            ids = gallery.nearest(vector, m)[1]
            return ids, gallery.vectors(ids)

        steering = steer_query(text, query, values, encode, knn, self.config, attributes=given)
        if not steering.details:
            known = ", ".join(f"{c} ({', '.join(list(v)[:3])}, ...)" for c, v in values.items())
            raise QueryError(f"--steer: the query {text!r} names no known attribute value; name "
                             f"one with --steer CONDITION=VALUE (conditions: {known})")
        return steering.vector, {"beta": self.config.beta, "m": self.config.m,
                                 "attributes": steering.details}


def _given_attribute(text: str, condition: str, value: str) -> Attribute:
    at = text.lower().find(value.lower())
    return Attribute(condition, value, at, at + len(value)) if at >= 0 else \
        Attribute(condition, value, -1, -1)


@dataclass(frozen=True)
class PartRerank:
    """Refine stage: re-rank the shortlist by Hungarian part matching (METHODS.md §2a)."""

    config: PartsConfig

    def refine(self, text: str, candidates: Candidates, gallery: Gallery,
               encode: Callable) -> tuple[Candidates, dict]:
        phrases = query_parts(text)
        if len(phrases) < 2:  # one part: nothing to bind, the plain order stands
            return candidates, {"parts": phrases, "skipped": "the query names fewer than two parts"}
        regions, owner, boxes = gallery.regions(candidates.ids)
        scored = rerank_parts(candidates.scores, encode(phrases), regions, owner, self.config)
        starts = np.searchsorted(owner, np.arange(len(candidates.ids)))
        why = []
        for c, previous in enumerate(candidates.why):
            matches = []
            for p, phrase in enumerate(phrases):
                region = int(scored.assignment[c, p])
                box = boxes[starts[c] + region].tolist() if region >= 0 else None
                matches.append({"phrase": phrase, "box": box, "cos": round(float(scored.cosines[c, p]), 6)})
            why.append({**previous, "parts": {"score": float(scored.scores[c]),
                                              "alignment": float(scored.alignment[c]),
                                              "structure": float(scored.structure[c]),
                                              "matches": matches}})
        refined = Candidates(candidates.ids, scored.scores.astype(np.float64), why)
        return refined, {"parts": phrases, "shortlist": len(candidates.ids),
                         "lam": self.config.lam, "structure": self.config.structure}


@dataclass(frozen=True)
class Calibrate:
    """Refine stage: DCC's fused re-ranking of the shortlist against the calibrated vectors
    (METHODS.md §3b); the query's general tokens are masked by ``discriminative``."""

    config: DCCConfig

    def refine(self, text: str, query: np.ndarray, candidates: Candidates, gallery: Gallery,
               discriminative: Callable) -> tuple[Candidates, dict]:
        disc, masked = discriminative([text])
        v_hat = gallery.vectors(candidates.ids, "calibrated")
        scores = dcc_scores(query, disc[0], v_hat, self.config.lam)
        plain, discriminating = v_hat @ query, v_hat @ disc[0]
        why = [{**w, "calibrate": {"score": round(float(f), 6), "query": round(float(a), 6),
                                   "discriminative": round(float(b), 6)}}
               for w, f, a, b in zip(candidates.why, scores, plain, discriminating)]
        return Candidates(candidates.ids, scores, why), {"masked_tokens": masked[0],
                                                        "lam": self.config.lam}


def run_query(plan: QueryPlan, gallery: Gallery, encode: Callable[[Sequence[str]], np.ndarray],
              values: Mapping[str, Sequence[str]] | None = None,
              encode_image: Callable | None = None,
              discriminative: Callable | None = None) -> QueryResult:
    """Run ``plan`` over ``gallery``: the stages of the module docstring, in order.

    ``encode`` maps texts to unit vectors (a :class:`TextEncoder`); ``encode_image`` a PIL image to
    one; ``values`` is the concept vocabulary's ``{condition: values}`` (needed by steering);
    ``discriminative`` maps texts to DCC's masked re-encodings (needed by calibration).
    """
    timing: dict[str, float] = {}
    details: dict = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timing[name] = (now - clock) * 1e3
        clock = now

    if plan.text is not None:
        query = encode([plan.text])[0]
    elif plan.image is not None:
        if encode_image is None:
            raise QueryError("an image query needs an image encoder")
        query = encode_image(plan.image)
    else:
        query = np.asarray(plan.vector, dtype=np.float32)
    lap("encode")
    if plan.steer is not None:
        query, details["steer"] = Steer(plan.steer, plan.steer_attributes).rewrite(
            plan.text, query, gallery, encode, values or {})
        lap("steer")
    vector_set = "calibrated" if plan.calibrate is not None else "image"
    scores, ids = gallery.nearest(query, plan.shortlist, condition=plan.condition, exact=plan.exact,
                                  vector_set=vector_set)
    if plan.steer is not None:  # the steered score, and what steered it
        used = [(d["condition"], d["value"], d["confuser"]) for d in details["steer"]["attributes"]
                if d.get("used")]
        why = [{"steer": {"score": round(s, 6), "beta": plan.steer.beta,
                          "attributes": [list(u) for u in used]}} for s in scores.tolist()]
    else:
        stage = ("condition" if plan.condition is not None
                 else "calibrated" if plan.calibrate is not None else "plain")
        why = [{stage: round(s, 6)} for s in scores.tolist()]
    candidates = Candidates(ids, scores.astype(np.float64), why)
    lap("candidates")
    if plan.calibrate is not None and len(candidates.ids):
        if discriminative is None:
            raise QueryError("calibration needs DCC's text encoder (a DiscriminativeText)")
        candidates, details["calibrate"] = Calibrate(plan.calibrate).refine(
            plan.text, query, candidates, gallery, discriminative)
        lap("calibrate")
    if plan.rerank is not None and len(candidates.ids):
        candidates, details["parts"] = PartRerank(plan.rerank).refine(plan.text, candidates,
                                                                      gallery, encode)
        lap("parts")
    hits = candidates.top(plan.k)
    return QueryResult(hits.ids, hits.scores, hits.why, details, timing)
