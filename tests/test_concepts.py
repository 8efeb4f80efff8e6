"""The concept vocabulary (concepts/): built-in data, user files, prompt sets, the LLM endpoint."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sharpclip.concepts import (
    Concept,
    EndpointError,
    LLMEndpoint,
    VocabularyError,
    load_vocabulary,
    parse_vocabulary,
    prompt_set_hash,
)
from sharpclip.concepts.vocabulary import with_article
from sharpclip.data import shapes

PHOTO_CONDITIONS = {"object", "animal", "vehicle", "scene", "weather", "time_of_day", "season",
                    "style", "mood", "action", "age", "clothing"}
SHAPES_VALUES = {
    "colour": set(shapes.COLOURS), "shape": set(shapes.SHAPES), "texture": set(shapes.FILLS),
    "size": set(shapes.SIZES), "count": {"1", "2", "3", "4"}, "position": set(shapes.POSITIONS),
    "background": set(shapes.BACKGROUNDS),
}


def test_builtin_conditions_expand_to_100_to_200_distinct_prompts():
    vocabulary = load_vocabulary()
    assert set(SHAPES_VALUES) | PHOTO_CONDITIONS == set(vocabulary.conditions)
    for name in vocabulary.conditions:
        prompts = vocabulary.prompts(name)
        assert 100 <= len(prompts) <= 200, (name, len(prompts))
        assert len(set(prompts)) == len(prompts) and all(p.strip() == p for p in prompts)
        assert not any("{" in p or "}" in p for p in prompts)


def test_shapes_conditions_match_the_generator_vocabulary():
    vocabulary = load_vocabulary()
    for name, values in SHAPES_VALUES.items():
        assert set(vocabulary.concept(name).values) == values, name
    assert vocabulary.resolve("fill") == "texture" and vocabulary.resolve("Color") == "colour"
    assert vocabulary.resolve("time of day") == "time_of_day"
    assert "a hollow shape" in vocabulary.prompts("fill")


def test_multi_condition_concatenates_prompt_sets():
    vocabulary = load_vocabulary()
    both = vocabulary.prompts_for("colour+shape")
    assert both == vocabulary.prompts("colour") + vocabulary.prompts("shape")
    assert vocabulary.split(" Fill + colour +texture") == ["texture", "colour"]
    assert vocabulary.prompts_for("colour") == vocabulary.prompts("colour")
    with pytest.raises(ValueError, match="empty condition"):
        vocabulary.split("+")


def test_unknown_condition_lists_the_known_ones():
    with pytest.raises(ValueError) as error:
        load_vocabulary().prompts("material")
    message = str(error.value)
    assert "'material'" in message and "colour" in message and "weather" in message


def test_concept_expansion_and_articles():
    concept = Concept("fruit", ("apple", "pear"), ("{a_value}", "a photo of {value}"),
                      synonyms={"pear": ("pear", "nashi")}, extra_prompts=("an apple",))
    assert concept.prompts() == ["an apple", "a pear", "a nashi", "a photo of apple",
                                 "a photo of pear", "a photo of nashi"]
    assert with_article("orange") == "an orange" and with_article("red") == "a red"


def test_prompt_set_hash_is_stable_and_order_sensitive():
    prompts = ["a red shape", "a blue shape"]
    expected = hashlib.sha256(b'["a red shape","a blue shape"]').hexdigest()
    assert prompt_set_hash(prompts) == expected
    assert prompt_set_hash(tuple(prompts)) == expected
    assert prompt_set_hash(prompts[::-1]) != expected


def test_user_file_is_merged_over_the_builtin(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "conditions:\n"
        "  material:\n"
        "    values: [wood, metal, 3]\n"
        "    templates: ['something made of {value}', '{a_value} surface']\n"
        "  colour:\n"
        "    values: [red, blue]\n"
        "    templates: ['{a_value} thing']\n"
    )
    vocabulary = load_vocabulary(path)
    assert vocabulary.prompts("material")[:2] == ["something made of wood",
                                                   "something made of metal"]
    assert vocabulary.concept("material").values == ("wood", "metal", "3")
    assert vocabulary.prompts("color") == ["a red thing", "a blue thing"]  # alias kept
    assert "weather" in vocabulary.conditions
    as_json = tmp_path / "mine.json"
    as_json.write_text(json.dumps({"conditions": {"fill": {"values": ["a", "b"],
                                                           "prompts": ["x", "y"]}}}))
    vocabulary = load_vocabulary(as_json)
    assert vocabulary.prompts("texture") == ["x", "y"] and vocabulary.resolve("texture") == "fill"


@pytest.mark.parametrize("text, problem", [
    ("conditions: [oops", "not valid YAML"),
    ("colour: {values: [red]}", "'conditions' key"),
    ("conditions: {c: {values: red, templates: ['{value}']}}", "'values' must be"),
    ("conditions: {c: {values: [red], templates: ['a photo']}}", "must use {value}"),
    ("conditions: {c: {values: [red], templates: ['{colour}']}}", "found {colour}"),
    ("conditions: {c: {values: [red], templates: ['{value']}}", "malformed"),
    ("conditions: {c: {values: [red], template: ['{value}']}}", "unknown key 'template'"),
    ("conditions: {c: {values: [red]}}", "neither"),
    ("conditions: {c: {values: [red], prompts: [x], synonyms: {blue: [b]}}}", "not in 'values'"),
    ("conditions: {c: {values: [red, ''], prompts: [x]}}", "bad entry"),
])
def test_malformed_user_file_names_the_file_and_the_problem(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_vocabulary(path)
    assert str(path) in str(error.value) and problem in str(error.value)


def test_missing_or_invalid_json_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_vocabulary(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.json"
    bad.write_text("{'single': 'quotes'}")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vocabulary(bad)


# --- the LLM endpoint, against a local server --------------------------------------------------

GOOD = {"values": ["wood", "metal", "glass"],
        "prompts": [f"a photo of something made of {v} {i}" for v in ("wood", "metal", "glass")
                    for i in range(12)]}


class FakeLLM:
    """A local /v1/chat/completions server answering with ``self.content`` (or ``self.status``)."""

    def __init__(self):
        self.requests, self.content, self.status = [], json.dumps(GOOD), 200
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append({"path": self.path, "body": body,
                                      "auth": self.headers.get("Authorization")})
                payload = json.dumps({"choices": [{"message": {"role": "assistant",
                                                               "content": fake.content}}]})
                self.send_response(fake.status)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(payload.encode() if fake.status == 200 else b"server sad")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def llm():
    with FakeLLM() as server:
        yield server


def test_endpoint_generates_validates_and_caches(llm, tmp_path):
    endpoint = LLMEndpoint(llm.url, "tiny-llm", key="secret", cache_dir=tmp_path / "cache")
    vocabulary = load_vocabulary(endpoint=endpoint)
    prompts = vocabulary.prompts("Material")
    assert prompts == GOOD["prompts"]
    assert vocabulary.concept("material").values == tuple(GOOD["values"])
    assert len(llm.requests) == 1
    request = llm.requests[0]
    assert request["path"] == "/v1/chat/completions" and request["auth"] == "Bearer secret"
    assert request["body"]["model"] == "tiny-llm" and "material" in str(request["body"]["messages"])
    cached = json.loads(endpoint.cache_path("material").read_text())
    assert cached["values"] == GOOD["values"] and cached["model"] == "tiny-llm"
    assert "secret" not in endpoint.cache_path("material").read_text()
    # a fresh vocabulary and endpoint object reuse the cache: no second request
    again = load_vocabulary(endpoint=LLMEndpoint(llm.url, "tiny-llm", cache_dir=tmp_path / "cache"))
    assert again.prompts_for("material+colour")[:36] == GOOD["prompts"]
    assert len(llm.requests) == 1
    # built-in conditions never reach the endpoint
    assert vocabulary.prompts("colour") and len(llm.requests) == 1


@pytest.mark.parametrize("content, problem", [
    ("Sure! Here are some prompts.", "not JSON"),
    (json.dumps({"values": ["a", "b"]}), "no list 'prompts'"),
    (json.dumps({"values": ["a", "b"], "prompts": ["x"] * 50}), "1 distinct prompts"),
    (json.dumps({"values": ["a", 7], "prompts": GOOD["prompts"]}), "non-empty strings"),
    (json.dumps(["a", "b"]), "not a JSON object"),
])
def test_malformed_answers_are_clear_errors_and_not_cached(llm, tmp_path, content, problem):
    llm.content = content
    endpoint = LLMEndpoint(llm.url, "m", cache_dir=tmp_path)
    with pytest.raises(EndpointError) as error:
        endpoint.concept("material")
    assert problem in str(error.value) and "material" in str(error.value)
    assert not list(tmp_path.iterdir())


def test_fenced_answer_is_accepted(llm, tmp_path):
    llm.content = "```json\n" + json.dumps(GOOD) + "\n```"
    assert LLMEndpoint(llm.url + "/v1", "m", cache_dir=tmp_path).concept("x").values == ("wood",
                                                                                          "metal",
                                                                                          "glass")
    assert llm.requests[0]["path"] == "/v1/chat/completions"


def test_http_and_connection_errors(llm, tmp_path):
    llm.status = 500
    with pytest.raises(EndpointError, match="HTTP 500"):
        LLMEndpoint(llm.url, "m", cache_dir=tmp_path).concept("material")
    closed = FakeLLM()
    url = closed.url
    closed.server.server_close()
    with pytest.raises(EndpointError, match="cannot reach"):
        LLMEndpoint(url, "m", cache_dir=tmp_path, timeout_s=5).concept("material")


def test_endpoint_from_environment(monkeypatch, tmp_path):
    for name in ("SHARPCLIP_LLM_URL", "SHARPCLIP_LLM_MODEL", "SHARPCLIP_LLM_KEY"):
        monkeypatch.delenv(name, raising=False)
    assert LLMEndpoint.from_env() is None
    monkeypatch.setenv("SHARPCLIP_LLM_URL", "http://localhost:1/v1/chat/completions")
    with pytest.raises(ValueError, match="SHARPCLIP_LLM_MODEL"):
        LLMEndpoint.from_env()
    monkeypatch.setenv("SHARPCLIP_LLM_MODEL", "qwen")
    monkeypatch.setenv("SHARPCLIP_LLM_KEY", "k")
    endpoint = LLMEndpoint.from_env(cache_dir=tmp_path)
    assert (endpoint.model, endpoint.key, endpoint.cache_dir) == ("qwen", "k", tmp_path)
    assert endpoint.chat_url == "http://localhost:1/v1/chat/completions"
    assert "k" not in repr(endpoint).replace("key", "")
    explicit = LLMEndpoint.from_env(url="http://h", model="m")
    assert explicit.chat_url == "http://h/v1/chat/completions"


def test_prompts_listed_per_value_carry_their_value():
    concepts = parse_vocabulary(
        "conditions:\n  fill:\n    values: [solid, striped]\n"
        "    templates: ['{a_value} shape']\n"
        "    prompts: {striped: ['a shape with stripes', 'a striped shape']}\n", "t.yaml")
    assert concepts["fill"].labelled_prompts() == [
        ("a solid shape", "solid"), ("a striped shape", "striped"),
        ("a shape with stripes", "striped")]  # the duplicate keeps its first place
    vocabulary = load_vocabulary()
    prompts, values = vocabulary.labelled_prompts_for("texture+count")
    assert prompts == vocabulary.prompts_for("texture+count")
    assert values[prompts.index("a shape with dots")] == "texture=dotted"
    assert values[prompts.index("two shapes")] == "count=2"
    with pytest.raises(VocabularyError, match="prompts given for 'dotted'"):
        parse_vocabulary("conditions:\n  fill:\n    values: [solid]\n"
                         "    prompts: {dotted: ['a dotted shape']}\n", "t.yaml")
