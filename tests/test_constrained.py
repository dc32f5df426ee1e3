"""JSON-schema constrained decoding: the automaton, the token masks, and generation that always validates."""
import json

import jsonschema
import pytest
import torch

from tiny import smollm2_tokenizer, tiny_vlm
from vlmkit.constrained import (Grammar, JsonConstraint, RowSampler, SchemaError, batch_processor, can_finish,
                                compile_schema, min_completion, token_table, walk)

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 12},
        "age": {"type": "integer", "minimum": 0},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
        "ok": {"type": "boolean"},
        "kind": {"enum": ["cat", "dog", 1, 10, None]},
        "pos": {"type": "object", "properties": {"x": {"type": "number"}, "y": {"type": "number"}}, "required": ["x", "y"]},
    },
    "required": ["name", "age", "pos"],
}
SCHEMAS = [
    PERSON,
    {"type": "array", "items": {"type": "integer"}, "minItems": 2, "maxItems": 5},
    {"type": "object"},  # free-form JSON object (response_format json_object)
    {"type": "object", "properties": {"answer": {"type": ["string", "null"]}, "score": {"type": "number"},
                                      "grade": {"type": "integer", "minimum": 1, "maximum": 5}},
     "required": ["answer", "score", "grade"], "additionalProperties": False},
    {"$defs": {"box": {"type": "object", "properties": {"label": {"type": "string", "minLength": 2}, "xyxy": {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}},
                       "required": ["label", "xyxy"]}},
     "type": "object", "properties": {"boxes": {"type": "array", "items": {"$ref": "#/$defs/box"}}}, "required": ["boxes"]},
]


@pytest.fixture(scope="module")
def table():
    return token_table(smollm2_tokenizer())


def accepts(schema, text: str) -> bool:
    state = walk((("v", compile_schema(schema)),), text)
    return state is not None and can_finish(state)


@pytest.mark.parametrize("text,ok", [
    ('{"name":"bob","age":3,"pos":{"x":1.5e3,"y":-0.25}}', True),
    ('{"name":"a\\"b\\n","age":0,"tags":["x","y"],"ok":true,"kind":10,"pos":{"x":0,"y":1}}', True),
    ('{"name":"bob","age":3,"kind":null,"pos":{"x":0,"y":0}}', True),
    ('{"name":"bob","age":03,"pos":{"x":0,"y":0}}', False),  # leading zero
    ('{"name":"bob","age":-3,"pos":{"x":0,"y":0}}', False),  # minimum 0
    ('{"name":"bob","pos":{"x":0,"y":0}}', False),  # missing required
    ('{"name":"bob","age":3,"pos":{"x":0}}', False),  # nested missing required
    ('{"name":"bob","age":3,"pos":{"x":0,"y":0},"extra":1}', False),
    ('{"name":"bob","age":3,"tags":["a","b","c","d"],"pos":{"x":0,"y":0}}', False),  # maxItems
    ('{"name":"thirteen chars","age":3,"pos":{"x":0,"y":0}}', False),  # maxLength 12
    ('{"name":"bob","age":3,"kind":"cow","pos":{"x":0,"y":0}}', False),  # enum
    ('{"name":"bob","age":3.5,"pos":{"x":0,"y":0}}', False),  # integer
    ('{"name":"bob","age":3,"pos":{"x":0,"y":0}} ', False),  # nothing after the document
    ('{"name":"line\nbreak","age":3,"pos":{"x":0,"y":0}}', False),  # raw control char in a string
])
def test_automaton_agrees_with_jsonschema(text, ok):
    assert accepts(PERSON, text) == ok
    if ok:
        jsonschema.validate(json.loads(text), PERSON)


@pytest.mark.parametrize("schema", SCHEMAS)
def test_min_completion_closes_every_prefix(schema):
    """From any prefix of a valid document, the planned shortest ending gives a valid document."""
    docs = {0: '{"name":"bo","age":12,"tags":["x"],"ok":false,"kind":"dog","pos":{"x":-1.5,"y":2e-3}}', 1: "[1,-20,300]",
            2: '{"a":[1,{"b":null}],"c":"d"}', 3: '{"answer":null,"score":0.5,"grade":4}',
            4: '{"boxes":[{"label":"cat","xyxy":[1,2,3,4]}]}'}
    doc = docs[SCHEMAS.index(schema)]
    jsonschema.validate(json.loads(doc), schema)
    root = (("v", compile_schema(schema)),)
    for k in range(len(doc) + 1):
        state = walk(root, doc[:k])
        assert state is not None, doc[:k]
        full = doc[:k] + min_completion(state)
        jsonschema.validate(json.loads(full), schema)


def test_masks_match_a_brute_force_walk(table):
    """The trie walk and the string fast path allow exactly the tokens a token-by-token walk allows."""
    g = Grammar(PERSON, table)
    for prefix in ['', '{"name":"bo', '{"name":"bob","age":1', '{"name":"b","age":1,"ta', '{"name":"b","age":1,"tags":["a",',
                   '{"name":"b","age":1,"kind":1', '{"name":"b\\']:
        state = walk(g.initial, prefix)
        got = set(g.allowed(state).nonzero().flatten().tolist())
        want = {i for i, s in enumerate(table.strings) if s is not None and walk(state, s) is not None}
        assert got == want, prefix
    assert table.strings[0] is None and table.strings[2] is None  # special tokens are never allowed


@pytest.mark.parametrize("schema", SCHEMAS)
@pytest.mark.parametrize("max_tokens", [48, 24])
def test_random_logits_always_give_valid_json(table, schema, max_tokens):
    """Adversarial 'models' (random logits, hot sampling) and tight budgets: every output parses and validates."""
    g = Grammar(schema, table)
    V = table.vocab_size
    for seed in range(4):
        gen = torch.Generator().manual_seed(seed)
        sampler = RowSampler({2}, max_tokens, temperature=1.5, seed=seed, constraint=JsonConstraint(g, max_tokens))
        ids = []
        for _ in range(max_tokens):
            logits = torch.randn(V, generator=gen) * 4
            tok = int(sampler(0, ids, logits).argmax())
            if tok == 2:
                break
            ids.append(tok)
        text = "".join(table.strings[i] for i in ids)
        assert len(ids) <= max_tokens
        jsonschema.validate(json.loads(text), schema)


def test_tiny_model_generate_with_schema_always_validates():
    vlm = tiny_vlm()
    conv = [{"role": "user", "content": "Describe a person as JSON."}]
    for schema in SCHEMAS:
        for temperature in (0.0, 1.0):
            results = vlm.generate([conv, conv], json_schema=schema, max_new_tokens=32, temperature=temperature, seed=3)
            for r in results:
                assert len(r.token_ids) <= 32
                jsonschema.validate(json.loads(r.text), schema)


def test_seeded_rows_do_not_depend_on_their_batch(table):
    """Per-row generators: row 0 samples the same tokens alone or next to another row."""
    def run(rows):
        samplers = [RowSampler({2}, 10, temperature=1.0, seed=7) for _ in range(rows)]
        proc = batch_processor(samplers)
        gen0, others = torch.Generator().manual_seed(0), torch.Generator().manual_seed(rows)
        ids = [[] for _ in range(rows)]
        for _ in range(10):
            # row 0 sees the same logits in both runs; its neighbours see anything
            logits = torch.cat([torch.randn(1, table.vocab_size, generator=gen0), torch.randn(rows - 1, table.vocab_size, generator=others)])
            for r in range(rows):
                ids[r].append(int(proc(r, ids[r], logits[r]).argmax()))
        return ids[0]
    assert run(1) == run(3)


@pytest.mark.parametrize("schema,msg", [
    ({"type": "string", "pattern": "^a+$"}, "pattern"),
    ({"type": "number", "maximum": 3}, "minimum/maximum"),
    ({"anyOf": [{"type": "object", "properties": {"a": {"type": "string"}}}, {"type": "object"}]}, "different JSON types"),
    ({"$defs": {"n": {"type": "object", "properties": {"next": {"$ref": "#/$defs/n"}}}}, "$ref": "#/$defs/n"}, "recursive"),
    ({"type": "object", "properties": {"a": {"type": "string"}}, "required": ["b"]}, "not in properties"),
    ({"type": "wat"}, "unknown type"),
])
def test_unsupported_schemas_are_refused_clearly(schema, msg):
    with pytest.raises(SchemaError, match=msg):
        compile_schema(schema)


def test_budget_too_small_for_the_schema_is_refused(table):
    g = Grammar(PERSON, table)  # shortest document: {"name":"","age":0,"pos":{"x":0,"y":0}}
    with pytest.raises(SchemaError, match="too small"):
        JsonConstraint(g, 5)
