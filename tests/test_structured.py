"""Structured output (pyrunq4.structured, llguidance): every generated document
parses and validates against its schema.

A random tiny model left alone never writes JSON, so validity over hundreds of
sampled documents shows the mask is applied at every token. The schemas bound
every value (maxLength, integer ranges, maxItems) so that a random model ends
each document well inside max_new_tokens; SmolLM2 meets unbounded ones in
test_serve.py. Skipped without llguidance or jsonschema.
"""
import json

import numpy as np
import pytest

pytest.importorskip("llguidance")
jsonschema = pytest.importorskip("jsonschema")

from conftest import write_random_model  # noqa: E402
from pyrunq4 import ArgumentError, Model  # noqa: E402
from pyrunq4.structured import JsonConstraint, check_schema, json_stream  # noqa: E402

SCHEMAS = [
    {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                      "age": {"type": "integer", "minimum": 0, "maximum": 150}},
     "required": ["name", "age"], "additionalProperties": False},
    {"type": "array", "items": {"type": "integer", "minimum": -50, "maximum": 50},
     "minItems": 1, "maxItems": 5},
    {"type": "string", "enum": ["red", "green", "blue"]},
    {"type": "boolean"},
    {"type": "object", "properties": {
        "point": {"type": "object", "properties": {"x": {"type": "integer", "minimum": -9,
                                                         "maximum": 9},
                                                   "y": {"type": "integer", "minimum": 0,
                                                         "maximum": 99}},
                  "required": ["x", "y"], "additionalProperties": False},
        "tags": {"type": "array", "items": {"type": "string", "maxLength": 5}, "maxItems": 3}},
     "required": ["point", "tags"], "additionalProperties": False},
    {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 9}, {"type": "string", "maxLength": 4},
               {"type": "null"}]},
    {"type": "string", "pattern": "^[a-z]{2,6}-[0-9]{1,3}$"},
    {"type": "object", "properties": {"ok": {"type": "boolean"},
                                      "code": {"type": "integer", "enum": [200, 404, 500]}},
     "required": ["ok", "code"], "additionalProperties": False},
    {"$defs": {"item": {"type": "object",
                        "properties": {"id": {"type": "integer", "minimum": 1, "maximum": 99}},
                        "required": ["id"], "additionalProperties": False}},
     "type": "array", "items": {"$ref": "#/$defs/item"}, "maxItems": 3},
    {"type": "array", "items": {"enum": ["a", "b", 1, None, True]}, "minItems": 2, "maxItems": 4},
]
SEEDS = 20   # 10 schemas x 20 seeds = 200 sampled documents


@pytest.fixture(scope="module")
def model(model_dir):
    path = write_random_model(model_dir / "structured.rq4", dim=64, hidden_dim=96, n_layers=2,
                              n_heads=4, n_kv_heads=2, head_dim=32, tied=True, rope=True,
                              ffn_type="q4a", ffn_group=64, max_seq_len=512, seed=1)
    with Model(path, n_threads=1) as m:
        yield m


@pytest.mark.parametrize("index", range(len(SCHEMAS)))
def test_every_document_validates(model, index):
    schema = SCHEMAS[index]
    ids = model.chat_tokens([{"role": "user", "content": "JSON, please."}])
    for seed in range(SEEDS):
        text = "".join(json_stream(model, ids, schema, max_new_tokens=400, temperature=1.0,
                                   seed=seed))
        assert model.last_stats["stop_reason"] == "stop", (seed, text)
        jsonschema.validate(json.loads(text), schema)
    greedy = "".join(json_stream(model, ids, schema, max_new_tokens=400))
    jsonschema.validate(json.loads(greedy), schema)


def test_unconstrained_random_model_is_not_json(model):
    """The control: the same model without the mask does not write JSON."""
    ids = model.chat_tokens([{"role": "user", "content": "JSON, please."}])
    valid = 0
    for seed in range(20):
        text = model.generate(ids, max_new_tokens=40, temperature=1.0, seed=seed)
        try:
            jsonschema.validate(json.loads(text), SCHEMAS[0])
            valid += 1
        except (ValueError, jsonschema.ValidationError):
            pass
    assert valid == 0


def test_seed_reproduces_and_cache_is_reused(model):
    ids = model.chat_tokens([{"role": "user", "content": "JSON, please."}])
    a = "".join(json_stream(model, ids, SCHEMAS[0], temperature=1.0, seed=7))
    b = "".join(json_stream(model, ids, SCHEMAS[0], temperature=1.0, seed=7))
    assert a == b
    assert model.last_stats["prompt_fed"] == 1   # all but the last prompt token were cached


def test_mask_allows_exactly_the_grammar(model):
    c = JsonConstraint(model, {"type": "boolean"})
    logits = np.zeros(model.config.vocab_size, np.float32)
    c.mask(logits)
    allowed = [model.detokenize([t]) for t in np.flatnonzero(np.isfinite(logits))]
    assert allowed and all("true".startswith(s.lstrip(" \n")) or "false".startswith(s.lstrip(" \n"))
                           for s in allowed), allowed
    assert "t" in allowed and "f" in allowed and "x" not in allowed


def test_max_new_tokens_cuts_and_says_so(model):
    ids = model.chat_tokens([{"role": "user", "content": "JSON, please."}])
    text = "".join(json_stream(model, ids, SCHEMAS[0], max_new_tokens=3, temperature=1.0, seed=1))
    assert model.last_stats["stop_reason"] == "length" and model.last_stats["new_tokens"] == 3
    assert text.startswith("{")


def test_model_api_json_schema(model):
    """Model.generate / stream / chat / chat_stream take json_schema."""
    schema = SCHEMAS[0]
    msgs = [{"role": "user", "content": "JSON, please."}]
    a = model.chat(msgs, max_new_tokens=200, temperature=1.0, seed=3, json_schema=schema)
    assert a == "".join(model.chat_stream(msgs, max_new_tokens=200, temperature=1.0, seed=3,
                                          json_schema=schema))
    assert a == "".join(json_stream(model, model.chat_tokens(msgs), schema, 200, 1.0, seed=3))
    jsonschema.validate(json.loads(a), schema)
    b = model.generate("Hello", max_new_tokens=200, json_schema=schema)
    jsonschema.validate(json.loads(b), schema)
    assert b == "".join(model.stream("Hello", max_new_tokens=200, json_schema=schema))
    with pytest.raises(ArgumentError, match="stop"):
        model.generate("Hello", stop="}", json_schema=schema)
    with pytest.raises(ArgumentError, match="temperature"):
        model.generate("Hello", temperature=-1, json_schema=schema)
    with pytest.raises(ArgumentError, match="max_new_tokens"):
        json_stream(model, [1, 2], schema, max_new_tokens=-1)
    with pytest.raises(ArgumentError, match="vocabulary"):
        json_stream(model, [1, 10**6], schema)


@pytest.mark.parametrize("schema", [{"type": "nonsense"}, {"$ref": "#/$defs/missing"}, [1, 2],
                                    {"type": "integer", "minimum": 5, "maximum": 1}])
def test_bad_schema_is_refused(model, schema):
    with pytest.raises(ArgumentError, match="schema"):
        check_schema(schema)
    with pytest.raises(ArgumentError, match="schema"):
        json_stream(model, [1, 2, 3], schema)
