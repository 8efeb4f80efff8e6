"""Optional: ask an OpenAI-compatible chat endpoint for an unknown condition's values and prompts.

The paper (CLAY) writes its condition prompts with an LLM; the project ships a vocabulary instead
and uses an LLM only when the user configures one:

- ``SHARPCLIP_LLM_URL``: the server (``http://host:port``, ``.../v1`` or the full
  ``.../v1/chat/completions``), ``SHARPCLIP_LLM_MODEL``: the model name, ``SHARPCLIP_LLM_KEY``:
  an optional bearer key (read from the environment only, never stored).
- The answer must be one JSON object ``{"values": [...], "prompts": [...]}``; it is validated
  and cached as JSON under the cache directory (default ``~/.cache/sharpclip/concepts``), one
  file per condition and model, so a condition costs one request ever.

Only the standard library is used (``urllib``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from sharpclip.concepts.vocabulary import Concept, _dedupe, normalise_name

log = logging.getLogger(__name__)

ENV_URL, ENV_MODEL, ENV_KEY = "SHARPCLIP_LLM_URL", "SHARPCLIP_LLM_MODEL", "SHARPCLIP_LLM_KEY"
DEFAULT_CACHE_DIR = Path("~/.cache/sharpclip/concepts")
CACHE_FORMAT = 1
VALUES_RANGE = (2, 200)
PROMPTS_RANGE = (10, 1000)
MAX_CHARS = 300

SYSTEM_PROMPT = ("You write short text prompts for a CLIP-style image-text retrieval model. "
                 "Answer with one JSON object and nothing else.")
USER_PROMPT = (
    "Condition: {name!r}. List the values this condition typically takes in photographs "
    "(between 3 and 30 values). Then write between 100 and 200 short image captions (at most 15 "
    "words each), each describing one value of the condition, spread evenly over the values and "
    "varied in wording, such as 'a photo of <value>'. Reply exactly in the form "
    '{{"values": ["..."], "prompts": ["..."]}}.'
)


class EndpointError(RuntimeError):
    """The LLM endpoint could not be reached or gave an unusable answer; the message says which."""


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80] or "x"


def _extract_json(content: str) -> object:
    text = content.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    if not text.startswith("{") and "{" in text and "}" in text:
        text = text[text.index("{"): text.rindex("}") + 1]
    return json.loads(text)


def validate_answer(data: object, where: str) -> tuple[list[str], list[str]]:
    """``(values, prompts)`` from a parsed answer; ``EndpointError`` says what is wrong."""
    expected = 'expected {"values": [...], "prompts": [...]}'
    if not isinstance(data, dict):
        raise EndpointError(f"{where}: the answer is not a JSON object; {expected}")
    out = []
    for key, (low, high) in (("values", VALUES_RANGE), ("prompts", PROMPTS_RANGE)):
        items = data.get(key)
        if not isinstance(items, list):
            raise EndpointError(f"{where}: the answer has no list {key!r}; {expected}")
        bad = [i for i in items if not isinstance(i, str) or not i.strip() or len(i) > MAX_CHARS]
        if bad:
            raise EndpointError(f"{where}: {key!r} must hold non-empty strings of at most "
                                f"{MAX_CHARS} characters (bad entry: {str(bad[0])[:60]!r})")
        items = _dedupe(items)
        if not low <= len(items) <= high:
            raise EndpointError(f"{where}: {len(items)} distinct {key} (expected {low} to {high})")
        out.append(items)
    return out[0], out[1]


@dataclass(frozen=True)
class LLMEndpoint:
    """An OpenAI-compatible ``/v1/chat/completions`` endpoint and the cache for its answers."""

    url: str
    model: str
    key: str | None = field(default=None, repr=False)
    cache_dir: Path = DEFAULT_CACHE_DIR
    timeout_s: float = 120.0

    @classmethod
    def from_env(cls, url: str | None = None, model: str | None = None,
                 cache_dir: Path | str | None = None) -> LLMEndpoint | None:
        """Arguments first, then ``SHARPCLIP_LLM_URL/MODEL/KEY``; ``None`` when no URL is set."""
        url = url or os.environ.get(ENV_URL)
        if not url:
            return None
        model = model or os.environ.get(ENV_MODEL)
        if not model:
            raise ValueError(f"an LLM endpoint URL is set ({url}) but no model name: set "
                             f"{ENV_MODEL} or pass the model explicitly")
        return cls(url, model, os.environ.get(ENV_KEY) or None,
                   Path(cache_dir) if cache_dir is not None else DEFAULT_CACHE_DIR)

    @property
    def chat_url(self) -> str:
        """The full chat-completions URL."""
        base = self.url.rstrip("/")
        if base.endswith("/chat/completions"):
            return base
        return base + ("/chat/completions" if base.endswith("/v1") else "/v1/chat/completions")

    def cache_path(self, name: str) -> Path:
        """Where the answer for condition ``name`` is cached."""
        directory = Path(self.cache_dir).expanduser()
        return directory / f"{_slug(normalise_name(name))}--{_slug(self.model)}.json"

    def concept(self, name: str) -> Concept:
        """The condition as a :class:`Concept`: cached, else one request (then cached)."""
        name = normalise_name(name)
        path = self.cache_path(name)
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                values, prompts = validate_answer(cached, f"cache file {path}")
                return self._concept(name, values, prompts)
            except (ValueError, EndpointError) as error:
                log.warning("ignoring unreadable concept cache %s (%s)", path, error)
        values, prompts = self.request(name)
        self._write_cache(path, name, values, prompts)
        return self._concept(name, values, prompts)

    def _concept(self, name: str, values: list[str], prompts: list[str]) -> Concept:
        return Concept(name, tuple(values), templates=(), extra_prompts=tuple(prompts),
                       source=f"llm {self.model} at {self.url}")

    def request(self, name: str) -> tuple[list[str], list[str]]:
        """Ask the endpoint for condition ``name``; returns validated ``(values, prompts)``."""
        where = f"LLM endpoint {self.chat_url} (model {self.model}, condition {name!r})"
        body = {"model": self.model, "temperature": 0.2,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                             {"role": "user", "content": USER_PROMPT.format(name=name)}]}
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.key:
            headers["Authorization"] = f"Bearer {self.key}"
        request = urllib.request.Request(self.chat_url, json.dumps(body).encode(), headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                raw = response.read().decode("utf-8", errors="replace")
        except urllib.error.HTTPError as error:
            detail = error.read().decode("utf-8", errors="replace")[:200]
            raise EndpointError(f"{where}: HTTP {error.code} {error.reason} {detail}".strip()) \
                from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise EndpointError(f"{where}: cannot reach the server ({reason}); check {ENV_URL}") \
                from None
        try:
            content = json.loads(raw)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise EndpointError(f"{where}: not a chat-completions response "
                                f"(expected choices[0].message.content): {raw[:120]!r}") from None
        try:
            data = _extract_json(str(content))
        except ValueError:
            raise EndpointError(f"{where}: the message is not JSON: {str(content)[:120]!r}") \
                from None
        return validate_answer(data, where)

    def _write_cache(self, path: Path, name: str, values: list[str], prompts: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        document = {"format": CACHE_FORMAT, "condition": name, "model": self.model,
                    "url": self.url, "values": values, "prompts": prompts}
        with tempfile.NamedTemporaryFile("w", encoding="utf-8", dir=path.parent,
                                         suffix=".tmp", delete=False) as handle:
            json.dump(document, handle, indent=1, ensure_ascii=False)
        os.replace(handle.name, path)
