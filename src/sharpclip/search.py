"""``Collection.search``: a text, image or indexed-item query over a collection, through the query
pipeline (``query/pipeline.py``), with the methods switched on as options."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from sharpclip.methods.calibration import DCCConfig
from sharpclip.methods.parts import PartsConfig
from sharpclip.methods.steering import SteerConfig, parse_steer
from sharpclip.query.gallery import CollectionGallery
from sharpclip.query.pipeline import QueryPlan, TextEncoder, run_query

RERANKERS = ("parts",)


@dataclass(frozen=True)
class Hit:
    """One search result: the file, its final score, its item id, and per-stage explanations."""

    path: str
    score: float
    id: int
    why: dict = field(default_factory=dict, compare=False)


@dataclass
class SearchResult:
    """Hits in descending score, what was asked, and where the time went."""

    hits: list[Hit]
    query: dict
    timing_ms: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        """The ``--json`` document of CONTRACT.md."""
        return {"hits": [{"path": h.path, "score": round(h.score, 6), "id": h.id, "why": h.why}
                         for h in self.hits],
                "query": self.query, "timing_ms": {k: round(v, 3) for k, v in self.timing_ms.items()}}


_DISCRIMINATIVE: dict[tuple, object] = {}


def _discriminative(model, corpus: list[str], config: DCCConfig):
    """DCC's text side for (model, corpus, config), built once per process: counting token
    generality tokenizes the whole corpus (~0.15 s for the vocabulary's prompts)."""
    from sharpclip.concepts import prompt_set_hash
    from sharpclip.query.calibration import DiscriminativeText

    key = (model.fingerprint, prompt_set_hash(corpus), config)
    if key not in _DISCRIMINATIVE:
        if len(_DISCRIMINATIVE) > 8:
            _DISCRIMINATIVE.clear()
        _DISCRIMINATIVE[key] = DiscriminativeText(model, corpus, config)
    return _DISCRIMINATIVE[key]


def _rerank_config(rerank, shortlist: int | None) -> PartsConfig | None:
    if rerank is None or rerank is False:
        return None
    if isinstance(rerank, PartsConfig):
        config = rerank
    elif rerank == "parts":
        config = PartsConfig()
    else:
        raise ValueError(f"unknown re-ranker {rerank!r}; choose one of {', '.join(RERANKERS)}")
    if shortlist is not None:
        config = replace(config, shortlist=shortlist)
    return config


def _steer_plan(steer, values) -> tuple[SteerConfig | None, tuple[tuple[str, str], ...]]:
    if steer is None or steer is False:
        return None, ()
    if isinstance(steer, SteerConfig):
        return steer, ()
    if steer is True:
        return SteerConfig(), ()
    given = tuple(parse_steer(part.strip(), values) for part in str(steer).split(",") if part.strip())
    return SteerConfig(), given


def search(coll, text: str | None = None, image=None, like=None, k: int = 20,
           exact: bool | None = None, condition: str | None = None,
           concepts: str | os.PathLike | None = None, rerank=None, steer=None,
           shortlist: int | None = None, calibrate=None,
           captions: str | os.PathLike | None = None) -> SearchResult:
    """Top-``k`` live items for a text, an image (file or PIL) or an indexed item (``like``).

    ``condition`` (image queries) compares images only in that condition (METHODS.md §1);
    ``rerank="parts"`` re-ranks a shortlist of ``shortlist`` (default 300) by part matching
    (§2a); ``steer`` True (attributes found in the text), ``"colour=red"`` or a SteerConfig
    steers a text query (§2b). ``calibrate`` True (or a DCCConfig) searches the calibrated
    vectors and re-ranks the shortlist by DCC (§3), with token generality counted over
    ``captions`` (a file, one per line) or the concept vocabulary's prompts. ``exact`` True forces
    the exact scan.
    """
    with coll.reading():  # one snapshot per vector set for the whole query
        return _search(coll, text, image, like, k, exact, condition, concepts, rerank, steer,
                       shortlist, calibrate, captions)


def _search(coll, text, image, like, k, exact, condition, concepts, rerank, steer, shortlist,
            calibrate, captions) -> SearchResult:
    values = {}
    if steer not in (None, False):
        from sharpclip.concepts import load_vocabulary

        values = load_vocabulary(concepts).values()
    steer_config, attributes = _steer_plan(steer, values)
    described: dict = {}
    vector = None
    gallery = CollectionGallery(coll, concepts=concepts)
    if like is not None:
        found = coll.live_item(os.fspath(like))  # a path as stored: no catalog query
        if found is None:
            item = coll.item(like)  # a path given another way, or not a live item
            if item is None or item.status != "ok":
                raise ValueError(f"{like} is not an indexed item of {coll.path}; "
                                 "index it first or query with --image FILE")
            found, like = (item.id, item.row), item.path
        vector = gallery.item_vector(*found)
        described["like"] = os.fspath(like)
    elif image is not None:
        from sharpclip.data.imagefiles import load_rgb

        if isinstance(image, (str, os.PathLike)):
            path = Path(image).expanduser()
            described["image"] = str(path)
            image = load_rgb(path)
        else:
            described["image"] = "<in-memory image>"
    else:
        described["text"] = text
    dcc = None
    if calibrate not in (None, False):
        dcc = calibrate if isinstance(calibrate, DCCConfig) else DCCConfig()
        if shortlist is not None:
            dcc = replace(dcc, shortlist=shortlist)
        coll.snapshot("calibrated")  # no calibrated set: one line with the fix
    plan = QueryPlan(text=text, image=image, vector=vector, k=k, condition=condition, exact=exact,
                     steer=steer_config, steer_attributes=attributes,
                     rerank=_rerank_config(rerank, shortlist), calibrate=dcc)
    discriminative = None
    if dcc is not None:
        from sharpclip.query.calibration import reference_corpus

        discriminative = _discriminative(coll.model, reference_corpus(concepts, captions), dcc)
    result = run_query(plan, gallery, TextEncoder(lambda: coll.model), values,
                       encode_image=lambda im: coll.model.encode_images([im])[0],
                       discriminative=discriminative)
    if condition is not None:
        described["condition"] = condition
    else:
        described["mode"] = coll.backend.answered_by
    described.update(result.details)
    if plan.rerank is not None and gallery.computed_on_demand:
        described["regions_computed"] = gallery.computed_on_demand
    paths = coll.paths_by_id(result.ids.tolist())
    hits = [Hit(paths[i], s, i, w)
            for i, s, w in zip(result.ids.tolist(), result.scores.tolist(), result.why) if i in paths]
    return SearchResult(hits, {**described, "k": k}, result.timing_ms)

