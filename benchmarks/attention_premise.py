"""Does CalibCLIP's premise hold for a model? (METHODS.md §3: "a few low-information tokens absorb
the global attention in both towers").

Per layer of each tower, the share of attention on the top 10% of tokens
(:func:`~sharpclip.methods.calibration.attention_concentration`), averaged over Shapes scenes:

- vision: the CLS token's head-averaged attention to the patches (the CLS key itself left out);
- text: the EOT token's head-averaged attention to the tokens before it (BOS and content tokens;
  the EOT key itself left out), and to the content tokens only (what DCC ranks).

Beside the model: the same architecture with random weights (no learning: ``torch.manual_seed``,
the checkpoint's own initialisation), and the uniform share (``ceil(0.1 n) / n`` for n tokens:
0.109 for 64 patches; slightly above 0.1 for short captions, whose mean is printed).

"Low-information": of the CLS attention on the last layer, how much lands on the patches an
object covers (the rest is flat background), against the share of patches they are; and how many of
the patches CVE suppresses (its default bands) lie on an object. On the text side, how much of the
last layer's EOT attention (over content tokens) lands on words that name an attribute (shape,
colour, fill, size, count, position, background, relation), and how many of the tokens DCC masks
(its default fraction, the vocabulary's prompts as reference corpus) are such words.

Ablation (``--ablation``, on by default): the identity task's galleries (seed 0, plain search,
no DCC) with CVE's re-run pooling biased three ways, same band sizes (80th/95th percentile,
decay 0.5): CVE's own bands (the most attended patches, by local deviation), the same bands on
the negated score (the least attended), and random bands; ``rho`` 0.5 and 1.

Writes a line chart (Pillow) and prints the tables.

Run: .venv/bin/python benchmarks/attention_premise.py [--n 500] [--seed 0]
         [--png docs/calibration-attention.png] [--no-ablation]
"""

from __future__ import annotations

import argparse
import datetime
import math
import platform
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from sharpclip.data import shapes
from sharpclip.methods.calibration import (
    SUPPRESS,
    CVEConfig,
    attention_concentration,
    bands,
    local_deviation,
)
from sharpclip.models import load_model

TOP = 0.1


def scenes(n: int, seed: int, image_size: int) -> tuple[list[Image.Image], list[list], list[str]]:
    """``n`` test-split scenes (3/4 single-object, 1/4 pairs) with object boxes and one caption."""
    rng = np.random.default_rng(seed)
    images, boxes, texts = [], [], []
    while len(images) < n:
        spec = shapes.random_spec(rng, "pair" if rng.random() < 0.25 else "single")
        if shapes.spec_split(spec) != "test":
            continue
        image, drawn = shapes.render_with_boxes(spec, image_size, rng)
        images.append(image)
        boxes.append(drawn)
        texts.append(shapes.captions(spec, rng, n=1)[0])
    return images, boxes, texts


def random_copy(model, folder: Path, seed: int = 0):
    """The model's architecture with freshly initialised weights (its tokenizer and
    preprocessing kept), loaded like any checkpoint."""
    import torch
    from transformers import CLIPModel, SiglipModel

    torch.manual_seed(seed)
    cls = CLIPModel if model.model_type == "clip" else SiglipModel
    cls(model.model.config).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "preprocessor_config.json",
                 "special_tokens_map.json", "vocab.json", "merges.txt"):
        if (model.path / name).is_file():
            shutil.copy(model.path / name, folder / name)
    return load_model(str(folder), device="cpu")


def vision_rows(model, images: list[Image.Image], batch: int = 100) -> list[np.ndarray]:
    """Per layer, the CLS token's head-averaged attention to the patches (N, P)."""
    import torch

    layers: list[list[np.ndarray]] = []
    for at in range(0, len(images), batch):
        pixels = torch.from_numpy(model.preprocess.batch(images[at:at + batch]))
        with torch.inference_mode():
            out = model.model.vision_model(pixel_values=pixels, output_attentions=True)
        for i, a in enumerate(out.attentions):
            if len(layers) <= i:
                layers.append([])
            layers[i].append(a.mean(dim=1)[:, 0, 1:].float().numpy())
    return [np.concatenate(rows) for rows in layers]


def text_rows(model, texts: list[str]) -> tuple[list[list[np.ndarray]], list[list[np.ndarray]]]:
    """Per layer and text, the EOT token's head-averaged attention to the tokens before it, and
    to the content tokens only (lists: captions differ in length)."""
    import torch

    from sharpclip.models.tokens import eot_positions

    tokens = model.tokenize(texts)
    mask = tokens["attention_mask"]
    with torch.inference_mode():
        out = model.model.text_model(input_ids=tokens["input_ids"], attention_mask=mask,
                                     output_attentions=True)
    ids = tokens["input_ids"].numpy()
    eot = eot_positions(model, tokens["input_ids"])
    content = ~np.isin(ids, list(model.tokenizer.all_special_ids)) & mask.numpy().astype(bool)
    before, contents = [], []
    for a in out.attentions:
        a = a.mean(dim=1).float().numpy()
        before.append([a[i, e, :e] for i, e in enumerate(eot)])
        contents.append([a[i, e, content[i]] for i, e in enumerate(eot)])
    return before, contents


def concentration_of(rows) -> float:
    """Mean top-10% share over rows (an array (N, T) or a list of 1-D rows)."""
    return float(np.mean([attention_concentration(r, TOP) for r in rows]))


def uniform_share(lengths) -> float:
    return float(np.mean([max(1, math.ceil(TOP * n)) / n for n in lengths]))


def object_patches(boxes: list, image_size: int, grid: tuple[int, int]) -> np.ndarray:
    """(P,) bool: the patches a drawn object's box overlaps."""
    rows, cols = grid
    ph, pw = image_size / rows, image_size / cols
    out = np.zeros((rows, cols), bool)
    for x0, y0, x1, y1 in boxes:
        r0, r1 = int(y0 // ph), math.ceil(y1 / ph)
        c0, c1 = int(x0 // pw), math.ceil(x1 / pw)
        out[r0:r1, c0:c1] = True
    return out.reshape(-1)


def information(last: np.ndarray, boxes: list[list], image_size: int,
                config: CVEConfig | None = None) -> dict[str, float]:
    """Where the last layer's CLS attention goes: object patches vs background."""
    config = config or CVEConfig()
    grid = (round(last.shape[1] ** 0.5),) * 2
    on = np.stack([object_patches(b, image_size, grid) for b in boxes])
    top_n = max(1, math.ceil(TOP * last.shape[1]))
    top = np.argsort(-last, axis=1)[:, :top_n]
    suppressed = bands(local_deviation(last, grid, config.eta), config.p_decay,
                       config.p_suppress) == SUPPRESS
    return {"object_patch_share": float(on.mean()),
            "attention_on_objects": float((last * on).sum(1).mean() / last.sum(1).mean()),
            "top10_on_objects": float(np.take_along_axis(on, top, 1).mean()),
            "suppressed_on_objects": float(on[suppressed].mean())}


_FUNCTION_WORDS = {"a", "an", "of", "on", "the", "with", "as", "drawn", "photo", "picture",
                   "placed", "shape", "shapes", "background"}


def attribute_words() -> set[str]:
    """Words of Shapes captions that name an attribute (the rest: articles, templates)."""
    words = set(shapes.SHAPES) | set(shapes.COLOURS) | set(shapes.FILLS) | set(shapes.SIZES)
    words |= set(shapes.BACKGROUNDS) | set(shapes.POSITIONS) | {"one", "two", "three", "four"}
    words |= {"1", "2", "3", "4", "left", "right", "above", "below"}
    for phrase in [*shapes.FILL_PHRASE.values(), *(w for v in shapes._SYNONYMS.values() for w in v)]:
        words |= set(phrase.split())
    words |= {s + ("es" if s == "cross" else "s") for s in shapes.SHAPES}
    return words - _FUNCTION_WORDS


def _word_at(text: str, start: int) -> str:
    left = text.rfind(" ", 0, start + 1) + 1 if text[start:start + 1] != " " else start + 1
    right = text.find(" ", left)
    return text[left:None if right < 0 else right].strip(",:").lower()


def text_information(model, texts: list[str]) -> dict[str, float]:
    """Last-layer EOT attention over content tokens: on attribute words vs the rest; and what
    DCC (default fraction, the vocabulary's prompts) masks."""
    from sharpclip.methods.calibration import general_positions
    from sharpclip.models.calibrated import text_tokens_for_dcc
    from sharpclip.query.calibration import DiscriminativeText, reference_corpus

    named = attribute_words()
    offsets = model.tokenizer(texts, return_offsets_mapping=True)["offset_mapping"]
    tokens = text_tokens_for_dcc(model, texts)
    dcc = DiscriminativeText(model, reference_corpus())
    share, attention, top, masked = [], [], [], []
    for i, text in enumerate(texts):
        positions = np.flatnonzero(tokens.content[i])
        is_attr = np.array([_word_at(text, offsets[i][p][0]) in named for p in positions])
        a = tokens.attention[i][positions]
        a = a / max(a.sum(), 1e-12)
        share.append(is_attr.mean())
        attention.append(a[is_attr].sum())
        top.append(is_attr[np.argmax(a)])
        at = general_positions(tokens.attention[i], tokens.input_ids[i], tokens.content[i],
                               dcc.generality, dcc.config.fraction)
        masked += [bool(is_attr[np.searchsorted(positions, p)]) for p in at]
    return {"attribute_token_share": float(np.mean(share)),
            "eot_attention_on_attributes": float(np.mean(attention)),
            "top_token_is_attribute": float(np.mean(top)),
            "dcc_masked_attributes": float(np.mean(masked)) if masked else 0.0}


def ablation(model, seed: int = 0) -> list[tuple[str, str, float, dict]]:
    """(part, bands, rho, metrics) of plain search over CVE vectors biased three ways."""
    from sharpclip.eval import identity as ident
    from sharpclip.methods.calibration import blend, key_bias
    from sharpclip.models.calibrated import rerun_pooling

    rng = np.random.default_rng(seed)
    rows = []
    image_size = model.preprocess.crop_hw[0]
    for part in (ident.identity_part(seed, ident.DEFAULT_SIZE, image_size),
                 ident.pair_part(seed, ident.DEFAULT_SIZE // 2, image_size)):
        cache = ident.PoolingCache(model, part.images)
        u = model.encode_texts(part.queries)
        rows.append((part.name, "none (plain)", 0.0, ident.part_metrics(u @ cache.plain.T,
                                                                        part.relevant)))
        scorers = {"CVE (most attended)": lambda i: local_deviation(i.attention, i.grid, 1.0),
                   "least attended": lambda i: -local_deviation(i.attention, i.grid, 1.0),
                   "random": lambda i: rng.random(i.attention.shape)}
        for name, score in scorers.items():
            v_cal = np.concatenate([
                rerun_pooling(model, i, key_bias(bands(score(i), 80.0, 95.0), 0.5, i.leading_keys))
                for i in cache.inputs])
            for rho in (0.5, 1.0):
                rows.append((part.name, name, rho, ident.part_metrics(
                    u @ blend(cache.plain, v_cal, rho).T, part.relevant)))
    return rows


def ablation_table(rows) -> str:
    lines = ["| part | bands on | rho | R@1 | mAP | mINP |", "|---|---|---|---|---|---|"]
    for part, name, rho, m in rows:
        lines.append(f"| {part} | {name} | {rho:g} | {m['recall@1']:.3f} | {m['map']:.3f} | "
                     f"{m['minp']:.3f} |")
    return "\n".join(lines) + "\n"


def measure(model, images, boxes, texts) -> dict:
    vision = vision_rows(model, images)
    before, contents = text_rows(model, texts)
    return {"vision": [concentration_of(r) for r in vision],
            "text": [concentration_of(r) for r in before],
            "text_content": [concentration_of(r) for r in contents],
            "bos_share": [float(np.mean([r[0] / max(r.sum(), 1e-12) for r in layer]))
                          for layer in before],
            "uniform_vision": uniform_share([vision[0].shape[1]]),
            "uniform_text": uniform_share([len(r) for r in before[0]]),
            "uniform_content": uniform_share([len(r) for r in contents[0]]),
            "information": information(vision[-1], boxes, images[0].width),
            "text_information": text_information(model, texts)}


# --- the chart (Pillow) -------------------------------------------------------------------------

COLOURS = {"bundled": (31, 119, 180), "random": (214, 39, 40), "uniform": (120, 120, 120)}


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
           series: dict[str, list[float]], uniform: float, font) -> None:
    x0, y0, x1, y1 = box
    layers = len(next(iter(series.values())))
    draw.rectangle(box, outline=(0, 0, 0))
    draw.text((x0, y0 - 16), title, fill=(0, 0, 0), font=font)

    def xy(layer: int, value: float) -> tuple[float, float]:
        x = x0 + 20 + (x1 - x0 - 40) * (layer / max(layers - 1, 1))
        return x, y1 - (y1 - y0) * value

    for tick in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        _, y = xy(0, tick)
        draw.line((x0, y, x0 + 4, y), fill=(0, 0, 0))
        draw.text((x0 - 26, y - 6), f"{tick:.1f}", fill=(0, 0, 0), font=font)
    for layer in range(layers):
        x, _ = xy(layer, 0)
        draw.line((x, y1, x, y1 - 4), fill=(0, 0, 0))
        draw.text((x - 3, y1 + 4), str(layer + 1), fill=(0, 0, 0), font=font)
    _, uy = xy(0, uniform)
    for x in range(x0 + 2, x1 - 2, 8):
        draw.line((x, uy, x + 4, uy), fill=COLOURS["uniform"])
    for name, values in series.items():
        points = [xy(i, v) for i, v in enumerate(values)]
        draw.line(points, fill=COLOURS[name], width=2)
        for x, y in points:
            draw.ellipse((x - 3, y - 3, x + 3, y + 3), fill=COLOURS[name])


def chart(results: dict[str, dict], path: Path) -> None:
    """Two panels (vision CLS, text EOT): top-10% share per layer, with the uniform share."""
    font = ImageFont.load_default()
    width, height = 640, 300
    image = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(image)
    draw.text((10, 6), "Share of attention on the top 10% of tokens, per layer", fill=(0, 0, 0),
              font=font)
    panels = (("vision: CLS -> patches", "vision", "uniform_vision", (50, 50, 300, 250)),
              ("text: EOT -> earlier tokens", "text", "uniform_text", (370, 50, 620, 250)))
    for title, key, uniform, box in panels:
        _panel(draw, box, title, {name: r[key] for name, r in results.items()},
               results["bundled"][uniform], font)
        draw.text(((box[0] + box[2]) // 2 - 14, box[3] + 16), "layer", fill=(0, 0, 0), font=font)
    x = 60
    for name, label in (("bundled", "bundled model"), ("random", "random weights (same arch.)"),
                        ("uniform", "uniform attention")):
        if name == "uniform":
            for dx in (0, 8, 16):
                draw.line((x + dx, 288, x + dx + 4, 288), fill=COLOURS[name])
        else:
            draw.line((x, 288, x + 20, 288), fill=COLOURS[name], width=2)
        draw.text((x + 24, 282), label, fill=(0, 0, 0), font=font)
        x += 190
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=32).save(path, optimize=True)


def table(results: dict[str, dict]) -> str:
    layers = len(results["bundled"]["vision"])
    lines = ["| model | tower | " + " | ".join(f"layer {i + 1}" for i in range(layers))
             + " | uniform |", "|---" * (layers + 3) + "|"]
    rows = (("vision CLS->patches", "vision", "uniform_vision"),
            ("text EOT->earlier tokens", "text", "uniform_text"),
            ("text EOT->content tokens", "text_content", "uniform_content"),
            ("text EOT: share on BOS", "bos_share", None))
    for name, r in results.items():
        for label, key, uniform in rows:
            cells = " | ".join(f"{v:.3f}" for v in r[key])
            ref = f"{r[uniform]:.3f}" if uniform else "-"
            lines.append(f"| {name} | {label} | {cells} | {ref} |")
    lines += ["", ("| model | object patches (share of grid) | last-layer CLS attention on them | "
                   "top-10% patches on objects | CVE-suppressed patches on objects |"),
              "|---|---|---|---|---|"]
    for name, r in results.items():
        i = r["information"]
        lines.append(f"| {name} | {i['object_patch_share']:.3f} | {i['attention_on_objects']:.3f}"
                     f" | {i['top10_on_objects']:.3f} | {i['suppressed_on_objects']:.3f} |")
    lines += ["", ("| model | attribute words (share of content tokens) | last-layer EOT attention on "
                   "them | most attended token is one | DCC-masked tokens that are one |"),
              "|---|---|---|---|---|"]
    for name, r in results.items():
        t = r["text_information"]
        lines.append(f"| {name} | {t['attribute_token_share']:.3f} | "
                     f"{t['eot_attention_on_attributes']:.3f} | {t['top_token_is_attribute']:.3f} | "
                     f"{t['dcc_masked_attributes']:.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=500, help="scenes (and captions)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="bundled")
    parser.add_argument("--png", default="docs/calibration-attention.png")
    parser.add_argument("--no-ablation", dest="ablation", action="store_false")
    args = parser.parse_args()
    model = load_model(args.model, device="cpu")
    images, boxes, texts = scenes(args.n, args.seed, model.preprocess.crop_hw[0])
    with tempfile.TemporaryDirectory() as tmp:
        baseline = random_copy(model, Path(tmp))
        results = {"bundled": measure(model, images, boxes, texts),
                   "random": measure(baseline, images, boxes, texts)}
    print(f"{platform.platform()}, {datetime.date.today()}; model {model.fingerprint}, "
          f"{args.n} scenes/captions, seed {args.seed}")
    print(table(results), end="")
    chart(results, Path(args.png))
    print(f"chart: {args.png} ({Path(args.png).stat().st_size} bytes)")
    if args.ablation:
        print()
        print(ablation_table(ablation(model, args.seed)), end="")


if __name__ == "__main__":
    main()
