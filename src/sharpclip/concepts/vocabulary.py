"""The concept vocabulary: conditions -> values -> prompt templates, kept as data files.

A condition (``colour``) has values (``red``, ``green``, ...), optional surface forms per value
(``synonyms``: ``outline -> [outlined, hollow]``), templates (``"a photo of {a_value} shape"``) and
optional literal ``prompts``. Its prompt set is every template filled with every surface form of
every value, then the literal prompts, deduplicated in order. Placeholders: ``{value}`` (the
surface form) and ``{a_value}`` (the same with "a"/"an" in front).

File format (YAML or JSON; the built-in files are ``concepts/data/*.yaml``)::

    conditions:
      material:
        aliases: [materials]
        values: [wood, metal, glass]
        synonyms: {metal: [metal, steel]}
        templates: ["a photo of something made of {value}", "{a_value} surface"]
        prompts: ["a wooden table"]          # optional, used as written; or per value:
        # prompts: {wood: ["a wooden table"], glass: ["a window pane"]}

A user file is merged over the built-in vocabulary: a condition with the same name (or alias)
replaces the built-in one as a whole; the replaced name and its aliases become its aliases.
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

if TYPE_CHECKING:
    from sharpclip.concepts.endpoint import LLMEndpoint

PLACEHOLDERS = ("value", "a_value")
BUILTIN_FILES = ("shapes.yaml", "photo.yaml")


class VocabularyError(ValueError):
    """A vocabulary file or entry is malformed; the message names the file and the problem."""


def normalise_name(name: str) -> str:
    """Condition names are case-insensitive; spaces and hyphens read as underscores."""
    return "_".join(str(name).strip().lower().replace("-", " ").split())


def with_article(phrase: str) -> str:
    """``"a red"`` / ``"an orange"``: the indefinite article by the phrase's first letter."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _dedupe(items: Iterable[str]) -> list[str]:
    seen: dict[str, None] = {}
    for item in items:
        seen.setdefault(" ".join(item.split()), None)
    return list(seen)


@dataclass(frozen=True)
class Concept:
    """One condition: its values, their surface forms, templates and literal prompts."""

    name: str
    values: tuple[str, ...]
    templates: tuple[str, ...] = ("a photo of {a_value}",)
    synonyms: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)
    extra_prompts: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    source: str = "built-in"
    value_prompts: Mapping[str, tuple[str, ...]] = field(default_factory=dict, hash=False)

    def surface_forms(self, value: str) -> tuple[str, ...]:
        """How prompts spell ``value`` (its synonyms, or the value itself)."""
        return tuple(self.synonyms.get(value, ())) or (value,)

    def labelled_prompts(self) -> list[tuple[str, str | None]]:
        """``(prompt, value)``: values x surface forms x templates, then the literal prompts per
        value, then the unattributed ones (value ``None``); deduplicated in order."""
        filled = [
            (template.format(value=form, a_value=with_article(form)), value)
            for template in self.templates
            for value in self.values
            for form in self.surface_forms(value)
        ]
        literal = [(p, v) for v in self.values for p in self.value_prompts.get(v, ())]
        seen: dict[str, str | None] = {}
        for prompt, value in [*filled, *literal, *((p, None) for p in self.extra_prompts)]:
            seen.setdefault(" ".join(prompt.split()), value)
        return list(seen.items())

    def prompts(self) -> list[str]:
        """The prompt set (the prompts of :meth:`labelled_prompts`)."""
        return [prompt for prompt, _ in self.labelled_prompts()]


def prompt_set_hash(prompts: Iterable[str]) -> str:
    """A stable sha256 hex digest of a prompt list (order-sensitive); a cache key for embeddings."""
    payload = json.dumps(list(prompts), ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()


def _strings(raw: object, what: str, where: str, allow_empty: bool = False) -> tuple[str, ...]:
    if isinstance(raw, str) or not isinstance(raw, list) or (not raw and not allow_empty):
        raise VocabularyError(f"{where}: {what} must be a {'' if allow_empty else 'non-empty '}"
                         f"list of strings (got {type(raw).__name__})")
    raw = [str(i) if isinstance(i, int | float) and not isinstance(i, bool) else i for i in raw]
    bad = [item for item in raw if not isinstance(item, str) or not item.strip()]
    if bad:
        raise VocabularyError(
            f"{where}: {what} must hold non-empty strings (bad entry: {bad[0]!r})"
        )
    return tuple(item.strip() for item in raw)


def _check_template(template: str, where: str) -> None:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as error:
        raise VocabularyError(f"{where}: template {template!r} is malformed ({error})") from None
    unknown = [f for f in fields if f not in PLACEHOLDERS]
    if unknown or not fields:
        raise VocabularyError(
            f"{where}: template {template!r} must use {{value}} or {{a_value}} and nothing else"
            + (f" (found {{{unknown[0]}}})" if unknown else "")
        )


def concept_from_dict(name: str, raw: object, source: str) -> Concept:
    """Build and validate a :class:`Concept` from one entry of a vocabulary file."""
    where = f"{source}: condition {name!r}"
    if not isinstance(raw, dict):
        raise VocabularyError(f"{where} must be a mapping with 'values' and 'templates'")
    unknown = set(raw) - {"values", "templates", "synonyms", "prompts", "aliases"}
    if unknown:
        raise VocabularyError(f"{where}: unknown key {min(unknown)!r} (allowed: values, "
                         "templates, synonyms, prompts, aliases)")
    values = _strings(raw.get("values"), "'values'", where)
    templates = _strings(raw.get("templates", []), "'templates'", where, allow_empty=True)
    for template in templates:
        _check_template(template, where)
    synonyms_raw = raw.get("synonyms", {}) or {}
    if not isinstance(synonyms_raw, dict):
        raise VocabularyError(f"{where}: 'synonyms' must map a value to a list of strings")
    synonyms = {}
    for value, forms in synonyms_raw.items():
        if str(value) not in values:
            raise VocabularyError(
                f"{where}: synonyms given for {value!r}, which is not in 'values'"
            )
        synonyms[str(value)] = _strings(forms, f"synonyms of {value!r}", where)
    raw_prompts, value_prompts = raw.get("prompts", []), {}
    if isinstance(raw_prompts, dict):
        for value, prompts in raw_prompts.items():
            if str(value) not in values:
                raise VocabularyError(
                    f"{where}: prompts given for {value!r}, which is not in 'values'"
                )
            value_prompts[str(value)] = _strings(prompts, f"prompts of {value!r}", where)
        extra = ()
    else:
        extra = _strings(raw_prompts, "'prompts'", where, allow_empty=True)
    if not templates and not extra and not value_prompts:
        raise VocabularyError(f"{where}: give 'templates' or 'prompts' (it has neither)")
    aliases = tuple(normalise_name(a) for a in _strings(raw.get("aliases", []), "'aliases'",
                                                         where, allow_empty=True))
    return Concept(normalise_name(name), values, templates, synonyms, extra, aliases, source,
                   value_prompts)


def read_vocabulary_file(path: Path | str) -> dict[str, Concept]:
    """Parse a YAML or JSON vocabulary file; ``ValueError`` names the file and the problem."""
    path = Path(path).expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise VocabularyError(
            f"{path}: cannot read the vocabulary file ({error.strerror})"
        ) from None
    return parse_vocabulary(text, str(path), json_only=path.suffix.lower() == ".json")


def parse_vocabulary(text: str, source: str, json_only: bool = False) -> dict[str, Concept]:
    """Parse vocabulary text (YAML, or JSON when ``json_only``) into concepts by name."""
    try:
        data = json.loads(text) if json_only else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        kind = "JSON" if json_only else "YAML"
        detail = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VocabularyError(f"{source}: not valid {kind} ({detail})") from None
    if not isinstance(data, dict) or not isinstance(data.get("conditions"), dict):
        raise VocabularyError(f"{source}: expected a mapping with a 'conditions' key holding "
                         "condition name -> {values, templates}")
    concepts = {}
    for name, raw in data["conditions"].items():
        concept = concept_from_dict(str(name), raw, source)
        concepts[concept.name] = concept
    return concepts


def builtin_concepts() -> dict[str, Concept]:
    """The vocabulary shipped in ``concepts/data`` (Shapes conditions and photo conditions)."""
    return dict(_parsed_builtin_files())


@functools.cache
def _parsed_builtin_files() -> dict[str, Concept]:
    # Parsed once per process: the YAML costs ~17 ms, several times a warm conditional search.
    concepts: dict[str, Concept] = {}
    data = resources.files("sharpclip.concepts") / "data"
    for name in BUILTIN_FILES:
        parsed = parse_vocabulary((data / name).read_text(encoding="utf-8"), f"built-in {name}")
        concepts.update({k: replace(v, source="built-in") for k, v in parsed.items()})
    return concepts


class Vocabulary:
    """Conditions by name (aliases resolved); unknown names go to the optional LLM endpoint."""

    def __init__(self, concepts: Mapping[str, Concept], endpoint: LLMEndpoint | None = None):
        self.concepts = dict(concepts)
        self.endpoint = endpoint
        self._generated: dict[str, Concept] = {}
        self._aliases = {a: c.name for c in self.concepts.values() for a in c.aliases}

    @property
    def conditions(self) -> list[str]:
        """The known condition names (aliases excluded), sorted."""
        return sorted(self.concepts)

    def values(self) -> dict[str, list[str]]:
        """``{condition: values}`` of every known condition (what steering looks for in a query)."""
        return {name: list(self.concepts[name].values) for name in self.conditions}

    def resolve(self, name: str) -> str:
        """The canonical name of a condition or alias; ``ValueError`` if unknown."""
        key = normalise_name(name)
        if key in self.concepts:
            return key
        if key in self._aliases:
            return self._aliases[key]
        if self.endpoint is not None:
            return key
        raise ValueError(
            f"unknown condition {name!r}; known conditions: {', '.join(self.conditions)} "
            "(or add it in a vocabulary file, or configure an LLM endpoint with "
            "SHARPCLIP_LLM_URL and SHARPCLIP_LLM_MODEL)"
        )

    def concept(self, name: str) -> Concept:
        """The concept for a condition name or alias (generated through the endpoint if unknown)."""
        key = self.resolve(name)
        if key in self.concepts:
            return self.concepts[key]
        if key not in self._generated:
            self._generated[key] = self.endpoint.concept(key)
        return self._generated[key]

    def prompts(self, name: str) -> list[str]:
        """The prompt set of one condition."""
        return self.concept(name).prompts()

    def split(self, spec: str) -> list[str]:
        """``"colour+shape"`` -> canonical names ``["colour", "shape"]`` (duplicates dropped)."""
        parts = [p for p in str(spec).split("+") if p.strip()]
        if not parts:
            raise ValueError(f"empty condition {spec!r}; give a name such as 'colour' "
                             "or several joined with '+'")
        return _dedupe(self.resolve(p) for p in parts)

    def prompts_for(self, spec: str) -> list[str]:
        """The concatenated prompt sets of ``"colour+shape"`` (deduplicated, in order)."""
        return _dedupe(p for name in self.split(spec) for p in self.concept(name).prompts())

    def labelled_prompts_for(self, spec: str) -> tuple[list[str], list[str | None]]:
        """``(prompts, values)`` of ``"colour+shape"``: :meth:`prompts_for` and each prompt's
        value as ``"condition=value"`` (``None`` when the prompt names no value)."""
        seen: dict[str, str | None] = {}
        for name in self.split(spec):
            for prompt, value in self.concept(name).labelled_prompts():
                seen.setdefault(prompt, None if value is None else f"{name}={value}")
        return list(seen), list(seen.values())


def load_vocabulary(path: Path | str | None = None,
                    endpoint: LLMEndpoint | None = None) -> Vocabulary:
    """The built-in vocabulary, with the user file at ``path`` (YAML or JSON) merged over it."""
    concepts = builtin_concepts()
    if path is not None:
        for concept in read_vocabulary_file(path).values():
            names = {concept.name, *concept.aliases}
            replaced = [c for c in concepts.values() if names & {c.name, *c.aliases}]
            inherited = [a for c in replaced for a in (c.name, *c.aliases)]
            aliases = _dedupe(a for a in (*concept.aliases, *inherited) if a != concept.name)
            for old in replaced:
                del concepts[old.name]
            concepts[concept.name] = replace(concept, aliases=tuple(aliases))
    return Vocabulary(concepts, endpoint)
