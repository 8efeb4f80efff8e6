"""Shapes: a deterministic, seeded generator of labelled scenes (ARCHITECTURE.md, "Benchmarks").

A scene *specification* holds the discrete labels (shape, colour, size, fill, count, position,
background, and for two-object scenes the spatial relation). Rendering adds continuous jitter
(position, rotation, scale, shade, noise) drawn from the scene's own seeded generator, so the same
specification can be rendered many times (the ``identity`` kind). Train and test splits are
separated by a hash of the specification, so they never share one.

Pair scenes have two *layouts*: ``fixed`` (the two objects at +-0.25 of the frame along the
relation's axis, the training distribution) and ``varied`` (positions anywhere in the frame and a
wider range of scales, the relation still true and the objects apart). For the binding benchmark
(METHODS.md section 2) a scene has hard negatives rendered from the same jitter: its
*binding-swapped twin* (:func:`binding_twin`, the two objects' colours exchanged) and its *shape
confuser* (:func:`shape_confuser`, one object's shape replaced by :data:`CONFUSABLE`'s look-alike).
Rendering consumes the generator identically whatever the colours and shapes, so a scene and its
twin rendered from equally seeded generators differ only in the objects' colours, and a confuser
only in the one object's outline. :func:`render_with_boxes` also returns each object's pixel box.
"""

from __future__ import annotations

import json
import math
import zlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sharpclip.concepts.vocabulary import with_article

SHAPES = ("circle", "square", "triangle", "pentagon", "hexagon", "star", "diamond", "cross")
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 215, 20),
    "orange": (245, 130, 10),
    "purple": (130, 40, 170),
    "pink": (245, 120, 190),
    "cyan": (20, 200, 210),
}
SIZES = ("small", "large")
FILLS = ("solid", "striped", "dotted", "outline")
BACKGROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)}
POSITIONS = ("left", "center", "right")
RELATIONS = ("left of", "right of", "above", "below")
KINDS = ("single", "pair", "identity")
SPLITS = ("train", "test", "all")
LAYOUTS = ("fixed", "varied")
# The look-alike of each shape the bundled model confuses (its model card: circles are called
# pentagons and hexagons, pentagons hexagons); triangle, star and cross have none.
CONFUSABLE = {"pentagon": "hexagon", "hexagon": "pentagon", "circle": "pentagon",
              "square": "diamond", "diamond": "square"}

Box = tuple[int, int, int, int]

_SYNONYMS = {
    "circle": ("circle", "round disc"),
    "square": ("square", "box"),
    "triangle": ("triangle", "three-sided shape"),
    "pentagon": ("pentagon", "five-sided polygon"),
    "hexagon": ("hexagon", "six-sided polygon"),
    "star": ("star", "five-pointed star"),
    "diamond": ("diamond", "rhombus"),
    "cross": ("cross", "plus sign"),
    "solid": ("solid", "filled"),
    "striped": ("striped", "stripy"),
    "dotted": ("dotted", "spotted"),
    "outline": ("outlined", "hollow"),
}
FILL_PHRASE = {"solid": "solid", "striped": "with stripes", "dotted": "with dots",
                "outline": "drawn as an outline"}
_NUMBERS = ("one", "two", "three", "four")


@dataclass(frozen=True)
class ShapeObject:
    """The discrete labels of one object (all copies of a counted object share them)."""

    shape: str
    colour: str
    size: str
    fill: str


@dataclass(frozen=True)
class SceneSpec:
    """The labels of a scene; ``relation`` relates objects[0] to objects[1] in ``pair`` scenes."""

    objects: tuple[ShapeObject, ...]
    count: int = 1
    position: str = "center"
    background: str = "white"
    relation: str | None = None

    def key(self) -> str:
        """A canonical string identifying the specification (used for splits and identities)."""
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class ShapesConfig:
    """What to generate. ``image_size`` in pixels; ``views`` renderings per identity; ``layout``
    places pair scenes' objects (``fixed`` or ``varied``, see the module docstring; single-object
    scenes keep theirs, which their ``position`` label fixes)."""

    kind: str = "single"
    size: int = 1000
    seed: int = 0
    split: str = "all"
    image_size: int = 64
    views: int = 4
    max_count: int = 4
    test_fraction: float = 0.2
    layout: str = "fixed"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown kind {self.kind!r}; choose one of {', '.join(KINDS)}")
        if self.layout not in LAYOUTS:
            raise ValueError(f"unknown layout {self.layout!r}; choose one of {', '.join(LAYOUTS)}")
        if self.split not in SPLITS:
            raise ValueError(f"unknown split {self.split!r}; choose one of {', '.join(SPLITS)}")
        if self.size < 1 or self.image_size < 16 or not 1 <= self.max_count <= 4:
            raise ValueError(
                "size must be >= 1, image_size >= 16 and max_count in 1..4 "
                f"(got {self.size}, {self.image_size}, {self.max_count})"
            )


@dataclass
class ShapesSample:
    """One rendered scene: the image (RGB), its labels and captions."""

    image: Image.Image
    spec: SceneSpec
    identity: int
    captions: list[str] = field(default_factory=list)

    def labels(self) -> dict:
        """Flat JSON-ready labels (per-object labels under ``objects``)."""
        return {"identity": self.identity, **asdict(self.spec), "captions": self.captions}


def spec_split(spec: SceneSpec, test_fraction: float = 0.2) -> str:
    """``test`` or ``train``, a pure function of the specification (splits never share one)."""
    bucket = zlib.crc32(spec.key().encode()) % 10_000
    return "test" if bucket < test_fraction * 10_000 else "train"


def _random_object(rng: np.random.Generator) -> ShapeObject:
    return ShapeObject(
        shape=SHAPES[rng.integers(len(SHAPES))],
        colour=list(COLOURS)[rng.integers(len(COLOURS))],
        size=SIZES[rng.integers(len(SIZES))],
        fill=FILLS[rng.integers(len(FILLS))],
    )


def random_spec(rng: np.random.Generator, kind: str, max_count: int = 4) -> SceneSpec:
    """Draw a scene specification of the given kind."""
    background = list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    if kind == "pair":
        first = _random_object(rng)
        second = _random_object(rng)
        while (second.shape, second.colour) == (first.shape, first.colour):
            second = _random_object(rng)
        relation = RELATIONS[rng.integers(len(RELATIONS))]
        return SceneSpec((first, second), background=background, relation=relation)
    count = int(rng.integers(1, max_count + 1))
    position = POSITIONS[rng.integers(len(POSITIONS))] if count == 1 else "center"
    return SceneSpec((_random_object(rng),), count=count, position=position, background=background)


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "star":
        pts = [(r if i % 2 == 0 else 0.45 * r, -math.pi / 2 + i * math.pi / 5) for i in range(10)]
    elif shape == "cross":
        a, b = r, 0.38 * r
        corners = [(b, a), (b, b), (a, b), (a, -b), (b, -b), (b, -a),
                   (-b, -a), (-b, -b), (-a, -b), (-a, b), (-b, b), (-b, a)]
        pts = [(math.hypot(x, y), math.atan2(y, x)) for x, y in corners]
    else:
        sides = {"triangle": 3, "square": 4, "diamond": 4, "pentagon": 5, "hexagon": 6,
                 "circle": 32}[shape]
        start = {"square": math.pi / 4, "diamond": 0.0}.get(shape, -math.pi / 2)
        scale = {"diamond": (0.7, 1.0)}.get(shape, (1.0, 1.0))
        pts = []
        for i in range(sides):
            t = start + 2 * math.pi * i / sides
            x, y = scale[0] * math.cos(t), scale[1] * math.sin(t)
            pts.append((r * math.hypot(x, y), math.atan2(y, x)))
    return [(cx + rad * math.cos(t + angle), cy + rad * math.sin(t + angle)) for rad, t in pts]


def _pattern(fill: str, n: int, phase: int) -> np.ndarray:
    yy, xx = np.mgrid[0:n, 0:n]
    if fill == "striped":
        return ((xx + yy + phase) // 3) % 2 == 0
    if fill == "dotted":
        return ((xx + phase) % 4 < 2) & ((yy + phase) % 4 < 2)
    return np.ones((n, n), bool)


def _jitter_colour(rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    return np.clip(np.array(rgb) * rng.uniform(0.85, 1.1) + rng.normal(0, 8, 3), 0, 255)


def _draw_object(canvas: np.ndarray, obj: ShapeObject, cx: float, cy: float, r: float,
                 rng: np.random.Generator) -> Box:
    """Draw one object; returns the box (x0, y0, x1, y1, ends exclusive) of its drawn pixels.

    The draws from ``rng`` (rotation, pattern phase, shade) do not depend on the shape or colour.
    """
    n = canvas.shape[0]
    mask_img = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask_img)
    poly = _polygon(obj.shape, cx, cy, r, rng.uniform(-0.15, 0.15))
    if obj.fill == "outline":
        draw.polygon(poly, outline=255, width=max(2, n // 32))
        mask = np.asarray(mask_img) > 0
    else:
        draw.polygon(poly, fill=255)
        mask = (np.asarray(mask_img) > 0) & _pattern(obj.fill, n, int(rng.integers(4)))
        if obj.fill != "solid":  # keep the silhouette readable: a thin solid rim
            rim = Image.new("L", (n, n), 0)
            ImageDraw.Draw(rim).polygon(poly, outline=255, width=1)
            mask |= np.asarray(rim) > 0
    canvas[mask] = _jitter_colour(COLOURS[obj.colour], rng)
    ys, xs = np.nonzero(mask)
    if not len(xs):  # nothing inside the frame: an empty box at the clipped centre
        x, y = int(np.clip(cx, 0, n - 1)), int(np.clip(cy, 0, n - 1))
        return (x, y, x + 1, y + 1)
    return (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)


_OBJ_SCALE = {"small": 0.11, "large": 0.19}
_VARIED_SCALE = (0.75, 1.15)  # x the fixed layout's pair radius; small and large stay apart
_EXTENT = 1.1  # a polygon reaches at most 1.07 r (the cross's corners); plus the outline pixel
_AXIS = {"left of": (0, False), "right of": (0, True), "above": (1, False), "below": (1, True)}


def _varied_pair_centres(spec: SceneSpec, n: int,
                         rng: np.random.Generator) -> list[tuple[float, float, float]]:
    """(cx, cy, radius) of a pair scene's two objects in the ``varied`` layout.

    Radii vary by ``_VARIED_SCALE``; along the relation's axis the two objects' extents are
    disjoint, with at least ``0.03 n`` between them (so "left of" means the first object lies
    wholly left of the second), and the pair sits anywhere that keeps both inside the frame; across
    that axis each object is placed anywhere independently. Seven draws, whatever the objects.
    """
    pad, gap = 1.0, 0.03 * n
    radii = [_OBJ_SCALE[o.size] * n * 0.85 * rng.uniform(*_VARIED_SCALE) for o in spec.objects]
    extents = [_EXTENT * r + 1.0 for r in radii]
    axis, first_is_high = _AXIS[spec.relation]
    lo, hi = (1, 0) if first_is_high else (0, 1)
    slack = max(0.0, n - 2 * pad - 2 * (extents[0] + extents[1]) - gap)
    a, b = rng.uniform(0, slack, 2)
    if a + b > slack:  # uniform over the triangle a + b <= slack
        a, b = slack - a, slack - b
    along = [0.0, 0.0]
    along[lo] = pad + extents[lo] + a
    along[hi] = along[lo] + extents[lo] + extents[hi] + gap + b
    across = [rng.uniform(pad + e, n - pad - e) for e in extents]
    out = []
    for i in range(2):
        cx, cy = (along[i], across[i]) if axis == 0 else (across[i], along[i])
        out.append((cx, cy, radii[i]))
    return out


def _centres(spec: SceneSpec, n: int, rng: np.random.Generator,
             layout: str = "fixed") -> list[tuple[float, float, float]]:
    """(cx, cy, radius) per drawn object."""
    obj_scale = _OBJ_SCALE
    if spec.relation is not None and layout == "varied":
        return _varied_pair_centres(spec, n, rng)
    if spec.relation is not None:
        out = []
        offsets = {"left of": ((-1, 0), (1, 0)), "right of": ((1, 0), (-1, 0)),
                   "above": ((0, -1), (0, 1)), "below": ((0, 1), (0, -1))}[spec.relation]
        for obj, (dx, dy) in zip(spec.objects, offsets):
            r = obj_scale[obj.size] * n * rng.uniform(0.9, 1.1) * 0.85
            cx = n / 2 + dx * n * 0.25 + rng.uniform(-0.04, 0.04) * n
            cy = n / 2 + dy * n * 0.25 + rng.uniform(-0.04, 0.04) * n
            out.append((cx, cy, r))
        return out
    obj = spec.objects[0]
    if spec.count == 1:
        r = obj_scale[obj.size] * n * rng.uniform(0.9, 1.1) * (1.4 if obj.size == "large" else 1.3)
        cx = {"left": 0.28, "center": 0.5, "right": 0.72}[spec.position] * n
        return [(cx + rng.uniform(-0.05, 0.05) * n, n / 2 + rng.uniform(-0.12, 0.12) * n, r)]
    slots = [(0.27, 0.27), (0.73, 0.27), (0.27, 0.73), (0.73, 0.73)]
    chosen = rng.permutation(4)[: spec.count]
    r = obj_scale[obj.size] * n * rng.uniform(0.9, 1.1) * 0.95
    return [(slots[i][0] * n + rng.uniform(-0.03, 0.03) * n,
             slots[i][1] * n + rng.uniform(-0.03, 0.03) * n, r) for i in chosen]


def render_with_boxes(spec: SceneSpec, image_size: int, rng: np.random.Generator,
                      layout: str = "fixed") -> tuple[Image.Image, list[Box]]:
    """Render a specification with fresh jitter from ``rng``; also the pixel box (x0, y0, x1, y1,
    ends exclusive, the tight box of its drawn pixels) of every drawn object, in drawing order
    (``objects``, or the copies of a counted object)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    n = image_size
    canvas = np.empty((n, n, 3), np.float64)
    canvas[:] = _jitter_colour(BACKGROUNDS[spec.background], rng)
    objects = spec.objects if spec.relation is not None else spec.objects * spec.count
    boxes = [_draw_object(canvas, obj, cx, cy, r, rng)
             for obj, (cx, cy, r) in zip(objects, _centres(spec, n, rng, layout))]
    canvas += rng.normal(0, 4, canvas.shape)
    return Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8), "RGB"), boxes


def render(spec: SceneSpec, image_size: int, rng: np.random.Generator,
           layout: str = "fixed") -> Image.Image:
    """Render a specification with fresh jitter from ``rng``."""
    return render_with_boxes(spec, image_size, rng, layout)[0]


def binding_twin(spec: SceneSpec) -> SceneSpec:
    """The pair scene with its two objects' colours exchanged (everything else kept).

    Rendered from an equally seeded generator, it is pixel-identical to ``spec`` except the
    objects' colours. Raises ``ValueError`` unless ``spec`` is a pair of differently coloured
    objects (the twin would be the scene itself).
    """
    if spec.relation is None or len(spec.objects) != 2:
        raise ValueError("binding_twin needs a pair scene (two objects and a relation)")
    a, b = spec.objects
    if a.colour == b.colour:
        raise ValueError(f"both objects are {a.colour}: swapping their colours changes nothing")
    return replace(spec, objects=(replace(a, colour=b.colour), replace(b, colour=a.colour)))


def confusable_objects(spec: SceneSpec) -> list[int]:
    """Indices of the objects whose shape has a :data:`CONFUSABLE` look-alike."""
    return [i for i, o in enumerate(spec.objects) if o.shape in CONFUSABLE]


def shape_confuser(spec: SceneSpec, index: int | None = None) -> SceneSpec:
    """The scene with object ``index``'s shape replaced by its :data:`CONFUSABLE` look-alike.

    ``index`` defaults to the first object with a confusable shape. A scene without one (only
    triangles, stars, crosses) has no confuser: ``ValueError`` -- the binding benchmark draws its
    scenes so that at least one object has a confusable shape. Rendered from an equally seeded
    generator, the confuser differs from ``spec`` only inside that object's outline.
    """
    candidates = confusable_objects(spec)
    if index is None:
        if not candidates:
            raise ValueError(f"no object has a confusable shape ({', '.join(CONFUSABLE)})")
        index = candidates[0]
    if index not in candidates:
        what = spec.objects[index].shape if 0 <= index < len(spec.objects) else "no such object"
        raise ValueError(f"object {index} ({what}) has no confusable shape "
                         f"({', '.join(CONFUSABLE)})")
    objects = list(spec.objects)
    objects[index] = replace(objects[index], shape=CONFUSABLE[objects[index].shape])
    return replace(spec, objects=tuple(objects))


def _phrase(obj: ShapeObject, rng: np.random.Generator, with_size: bool) -> str:
    size = f"{obj.size} " if with_size else ""
    if rng.random() < 0.5:
        return f"{size}{obj.colour} {synonym(obj.fill, rng)} {synonym(obj.shape, rng)}"
    return f"{size}{obj.colour} {synonym(obj.shape, rng)} {FILL_PHRASE[obj.fill]}"


def object_phrase(obj: ShapeObject, rng: np.random.Generator, with_size: bool = False,
                  shape_synonyms: bool = True) -> str:
    """One object as the captions word it, with its article ("a red pentagon with stripes",
    "a small red striped pentagon"): colour, fill and shape (and size when ``with_size``);
    ``shape_synonyms=False`` always names the shape by its label."""
    size = f"{obj.size} " if with_size else ""
    shape = synonym(obj.shape, rng) if shape_synonyms else obj.shape
    if rng.random() < 0.5:
        return with_article(f"{size}{obj.colour} {synonym(obj.fill, rng)} {shape}")
    return with_article(f"{size}{obj.colour} {shape} {FILL_PHRASE[obj.fill]}")


def captions(spec: SceneSpec, rng: np.random.Generator, n: int = 3) -> list[str]:
    """Captions from several templates with synonyms and varied word order.

    Every caption names each object's shape, colour and fill; some also name size, count,
    position or background, and those are true of the scene.
    """
    out = []
    for _ in range(n):
        with_size = rng.random() < 0.5
        if spec.relation is not None:
            a = _phrase(spec.objects[0], rng, with_size)
            b = _phrase(spec.objects[1], rng, with_size)
            t = rng.integers(3)
            out.append([f"{with_article(a)} {spec.relation} {with_article(b)}",
                        f"a photo of {with_article(a)} placed {spec.relation} {with_article(b)}",
                        f"two shapes: {with_article(a)} {spec.relation} {with_article(b)}"][t])
            continue
        obj = spec.objects[0]
        p = _phrase(obj, rng, with_size)
        if spec.count > 1:
            word = _NUMBERS[spec.count - 1]
            noun = _SYNONYMS[obj.shape][0] + ("es" if obj.shape == "cross" else "s")
            t = rng.integers(3)
            out.append([f"{word} {obj.colour} {_SYNONYMS[obj.fill][0]} {noun}",
                        f"a photo of {word} {noun}, {obj.colour}, {FILL_PHRASE[obj.fill]}",
                        (f"{spec.count} {obj.colour} {noun} {FILL_PHRASE[obj.fill]}"
                         f" on a {spec.background} background")][t])
            continue
        t = rng.integers(6)
        out.append([with_article(p),
                    f"a photo of {with_article(p)}",
                    f"{with_article(obj.colour)} {_SYNONYMS[obj.shape][0]}, {FILL_PHRASE[obj.fill]}",
                    f"{with_article(p)} on a {spec.background} background",
                    f"{with_article(p)} on the {spec.position}",
                    f"a picture of {with_article(synonym(obj.shape, rng))}, {obj.colour}, {FILL_PHRASE[obj.fill]}"][t])
    return out


def synonym(word: str, rng: np.random.Generator) -> str:
    """A random synonym of a shape or fill name (the word itself when it has none)."""
    options = _SYNONYMS.get(word, (word,))
    return options[rng.integers(len(options))]


def generate(config: ShapesConfig) -> Iterator[ShapesSample]:
    """Yield ``config.size`` samples, deterministically from ``config.seed``.

    ``identity`` yields ``config.views`` renderings per specification (size counts images).
    """
    rng = np.random.default_rng(config.seed)
    views = config.views if config.kind == "identity" else 1
    kind = "single" if config.kind == "identity" else config.kind
    produced, identity = 0, 0
    while produced < config.size:
        spec = random_spec(rng, kind, config.max_count)
        if config.split != "all" and spec_split(spec, config.test_fraction) != config.split:
            continue
        for _ in range(min(views, config.size - produced)):
            image = render(spec, config.image_size, rng, config.layout)
            yield ShapesSample(image, spec, identity, captions(spec, rng))
            produced += 1
        identity += 1


def write(config: ShapesConfig, out: Path) -> int:
    """Write PNG files and ``labels.jsonl`` into ``out``; returns the number of images."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(out / "labels.jsonl", "w", encoding="utf-8") as labels:
        for i, sample in enumerate(generate(config)):
            name = f"{config.kind}_{i:06d}.png"
            sample.image.save(out / name)
            labels.write(json.dumps({"file": name, **sample.labels()}) + "\n")
            count += 1
    return count
