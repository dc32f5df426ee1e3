"""JSON-schema constrained decoding: every sampled token keeps the output a prefix of a valid document.

A schema compiles to a tree of nodes; a character-level pushdown automaton
(`step`) walks JSON text against it. Its states are hashable tuples (a stack of
frames), so the set of tokens allowed in a state is computed once and cached:
a trie over the vocabulary's token strings is walked with the automaton, and
inside free string content a precomputed "plain" mask (tokens with no quote,
backslash or control character) is reused instead of walking 49k tokens.

Output is compact (no whitespace outside strings) and object keys come in the
schema's order, optional ones may be skipped. A token budget is kept: when the
shortest completion of the document would no longer fit in the tokens left,
decoding switches to emitting that completion, so the text always parses and
validates, even when a model rambles until max_tokens.

Supported subset: type (one or a list), object with properties / required /
additionalProperties, object without properties (any keys), string with
minLength / maxLength, number, integer (minimum 0, or a small closed range),
boolean, null, array with items / minItems / maxItems, enum, const, anyOf /
oneOf of different JSON types, $ref into $defs / definitions (not recursive).
Anything else raises SchemaError rather than silently producing invalid output.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Callable

import torch

from .errors import VlmkitError

MAX_INT_DIGITS = 15  # beyond this a JSON number stops round-tripping through float64
MAX_FRAC_DIGITS = 15
MAX_EXP_DIGITS = 2
ANY_DEPTH = 4  # nesting allowed inside free-form JSON ({"type": "object"} / json_object)
MAX_RANGE_ENUM = 1000  # integer ranges up to this size become an enumeration


class SchemaError(VlmkitError):
    """A JSON schema uses a feature the constrained decoder cannot guarantee."""


# ---------------------------------------------------------------- schema -> nodes
# eq=False: nodes hash by identity, which is what the automaton's state cache needs (and fast).
@dataclass(frozen=True, eq=False)
class Str:
    min_len: int = 0
    max_len: int | None = None


@dataclass(frozen=True, eq=False)
class Num:
    integer: bool = False
    signed: bool = True


@dataclass(frozen=True, eq=False)
class Lit:
    options: tuple[str, ...]  # compact JSON texts: enum / const / true / false / null


@dataclass(frozen=True, eq=False)
class Arr:
    item: object
    min_items: int = 0
    max_items: int | None = None


@dataclass(frozen=True, eq=False)
class Obj:
    props: tuple[tuple[str, object, bool], ...]  # (key text incl. quotes and colon, node, required)


@dataclass(frozen=True, eq=False)
class FreeObj:
    value: object  # any string keys, each value of this node


@dataclass(frozen=True, eq=False)
class Union:
    alts: tuple[object, ...]  # told apart by their first character


_TYPES = ("string", "number", "integer", "boolean", "null", "object", "array")
_IGNORED = {"title", "description", "default", "examples", "$schema", "$id", "$comment", "format", "strict", "name",
            "$defs", "definitions", "readOnly", "writeOnly", "deprecated"}
_KNOWN = {"type", "properties", "required", "additionalProperties", "items", "minItems", "maxItems", "enum", "const",
          "minLength", "maxLength", "anyOf", "oneOf", "$ref", "minimum", "maximum"} | _IGNORED


def _dumps(v) -> str:
    return json.dumps(v, separators=(",", ":"), ensure_ascii=False)


def compile_schema(schema: dict | bool | None) -> object:
    """A JSON schema (the supported subset) -> the root node; None or {} means any JSON value."""
    if schema is None or schema is True:
        schema = {}
    if not isinstance(schema, dict):
        raise SchemaError("a JSON schema must be an object")
    return _Compiler(schema).node(schema, "#", ())


class _Compiler:
    def __init__(self, root: dict):
        self.root = root
        self.defs = {**(root.get("definitions") or {}), **(root.get("$defs") or {})}

    def node(self, s, where: str, refs: tuple[str, ...]):
        if s is True or s == {}:
            return any_json(ANY_DEPTH)
        if not isinstance(s, dict):
            raise SchemaError(f"{where}: a schema must be an object")
        unknown = sorted(set(s) - _KNOWN)
        if unknown:
            raise SchemaError(f"{where}: unsupported JSON-schema keyword(s) {unknown}; supported: {sorted(_KNOWN - _IGNORED)}")
        if "$ref" in s:
            return self.ref(s["$ref"], where, refs)
        if "const" in s:
            return Lit((_dumps(s["const"]),))
        if "enum" in s:
            if not isinstance(s["enum"], list) or not s["enum"]:
                raise SchemaError(f"{where}: enum must be a non-empty list")
            return Lit(tuple(dict.fromkeys(_dumps(v) for v in s["enum"])))
        for key in ("anyOf", "oneOf"):
            if key in s:
                if not isinstance(s[key], list) or not s[key]:
                    raise SchemaError(f"{where}: {key} must be a non-empty list")
                return union([self.node(a, f"{where}/{key}/{i}", refs) for i, a in enumerate(s[key])], where)
        t = s.get("type")
        if t is None:
            t = "object" if "properties" in s else "array" if "items" in s else None
        if t is None:
            return any_json(ANY_DEPTH)
        if isinstance(t, list):
            return union([self.typed(x, s, where, refs) for x in t], where)
        return self.typed(t, s, where, refs)

    def ref(self, ref, where, refs):
        if not isinstance(ref, str) or not ref.startswith(("#/$defs/", "#/definitions/")):
            raise SchemaError(f"{where}: only local $ref into #/$defs or #/definitions is supported, got {ref!r}")
        if ref in refs:
            raise SchemaError(f"{where}: recursive $ref {ref!r} is not supported")
        name = ref.split("/", 2)[2]
        if name not in self.defs:
            raise SchemaError(f"{where}: $ref {ref!r} not found")
        return self.node(self.defs[name], ref, refs + (ref,))

    def typed(self, t, s, where, refs):
        if t not in _TYPES:
            raise SchemaError(f"{where}: unknown type {t!r}")
        if t == "string":
            lo, hi = int(s.get("minLength", 0)), s.get("maxLength")
            if hi is not None and int(hi) < lo:
                raise SchemaError(f"{where}: maxLength < minLength")
            return Str(lo, None if hi is None else int(hi))
        if t in ("number", "integer"):
            return self.number(t == "integer", s, where)
        if t == "boolean":
            return Lit(("true", "false"))
        if t == "null":
            return Lit(("null",))
        if t == "array":
            lo, hi = int(s.get("minItems", 0)), s.get("maxItems")
            if hi is not None and int(hi) < lo:
                raise SchemaError(f"{where}: maxItems < minItems")
            return Arr(self.node(s.get("items", {}), f"{where}/items", refs), lo, None if hi is None else int(hi))
        props = s.get("properties")
        if not props:
            extra = s.get("additionalProperties", True)
            if extra is False:
                return Lit(("{}",))
            return FreeObj(self.node(extra, f"{where}/additionalProperties", refs) if isinstance(extra, dict) else any_json(ANY_DEPTH - 1))
        required = s.get("required", [])
        missing = [r for r in required if r not in props]
        if missing:
            raise SchemaError(f"{where}: required properties {missing} are not in properties")
        return Obj(tuple((_dumps(k) + ":", self.node(v, f"{where}/properties/{k}", refs), k in required) for k, v in props.items()))

    def number(self, integer: bool, s, where):
        lo, hi = s.get("minimum"), s.get("maximum")
        if lo is None and hi is None:
            return Num(integer)
        if integer and lo is not None and hi is not None and float(lo).is_integer() and float(hi).is_integer() and 0 <= hi - lo <= MAX_RANGE_ENUM:
            return Lit(tuple(str(v) for v in range(int(lo), int(hi) + 1)))
        if hi is None and lo == 0:
            return Num(integer, signed=False)
        raise SchemaError(f"{where}: minimum/maximum are supported only as minimum 0 or a closed integer range of at most {MAX_RANGE_ENUM}")


def any_json(depth: int):
    scalars = [Str(), Num(), Lit(("true", "false", "null"))]
    if depth <= 0:
        return Union(tuple(scalars))
    inner = any_json(depth - 1)
    return Union(tuple(scalars + [FreeObj(inner), Arr(inner)]))


def first_chars(node) -> set[str]:
    if isinstance(node, Str):
        return {'"'}
    if isinstance(node, Num):
        return set("0123456789" + ("-" if node.signed else ""))
    if isinstance(node, Lit):
        return {o[0] for o in node.options}
    if isinstance(node, (Obj, FreeObj)):
        return {"{"}
    if isinstance(node, Arr):
        return {"["}
    return set().union(*(first_chars(a) for a in node.alts))


def union(alts: list, where: str):
    seen: set[str] = set()
    for a in alts:
        fc = first_chars(a)
        if fc & seen:
            raise SchemaError(f"{where}: anyOf/oneOf/type-list alternatives must be different JSON types (they overlap on {sorted(fc & seen)})")
        seen |= fc
    return alts[0] if len(alts) == 1 else Union(tuple(alts))


# ---------------------------------------------------------------- the automaton
# A state is a tuple of frames, innermost last; () is a finished document.
# Frames:  ("v", node)                 a value of `node` starts here
#          ("s", node, n, esc)         in string content; n chars so far (0 when unbounded), esc: 0, or 1 after "\"
#          ("n", node, phase, digits)  in a number
#          ("l", options, k)           k chars into one of the literal options
#          ("o", node, i, phase)       object: i = next property index; phase "first" | "after" | "key"
#          ("k", node, cands, k)       object: k chars into one of the keys cands (property indices)
#          ("f", node, phase)          free object: "first" | "colon" | "after" | "key"
#          ("a", node, count, phase)   array: "first" | "after" | "next"
_KEY = Str()  # free-object keys
_ESCAPES = '"\\/bfnrt'
_DIGITS = "0123456789"
_NONPLAIN = re.compile(r'["\\\x00-\x1f]')  # chars that end, escape or break a JSON string
_END = object()  # a number ended just before this char, which belongs to the enclosing frame


def start(node, ch: str):
    """The frames that a value of `node` becomes on its first char, or None."""
    if isinstance(node, Str):
        return (("s", node, 0, 0),) if ch == '"' else None
    if isinstance(node, Num):
        if ch == "-" and node.signed:
            return (("n", node, "sign", 0),)
        if ch == "0":
            return (("n", node, "zero", 0),)
        return (("n", node, "int", 1),) if ch in "123456789" else None
    if isinstance(node, Lit):
        return _lit((), node.options, 0, ch)
    if isinstance(node, Obj):
        return (("o", node, 0, "first"),) if ch == "{" else None
    if isinstance(node, FreeObj):
        return (("f", node, "first"),) if ch == "{" else None
    if isinstance(node, Arr):
        return (("a", node, 0, "first"),) if ch == "[" else None
    for a in node.alts:
        r = start(a, ch)
        if r is not None:
            return r
    return None


def _lit(rest: tuple, options: tuple[str, ...], k: int, ch: str):
    cands = tuple(o for o in options if len(o) > k and o[k] == ch)
    if not cands:
        return None
    if all(len(o) == k + 1 for o in cands):
        return rest  # the literal is complete
    return rest + (("l", cands, k + 1),)


def _required_from(props, i: int) -> bool:
    return any(req for _, _, req in props[i:])


def _key_candidates(props, i: int) -> tuple[int, ...]:
    """Properties that may come next: up to and including the first required one."""
    out = []
    for j in range(i, len(props)):
        out.append(j)
        if props[j][2]:
            break
    return tuple(out)


def _array_count(node: Arr, count: int) -> int:
    # without maxItems only "reached minItems yet?" matters: cap it so states repeat and cache
    return count if node.max_items is not None else min(count, node.min_items)


def step(state: tuple, ch: str):
    """The state after one more character, or None if that character makes the text invalid."""
    while state:
        top, rest = state[-1], state[:-1]
        kind = top[0]
        if kind == "s":
            node, n, esc = top[1], top[2], top[3]
            if esc:
                if ch not in _ESCAPES:
                    return None
                return rest + (("s", node, n + 1 if _bounded(node) else 0, 0),)
            if ch == '"':
                return rest if n >= node.min_len else None
            if ch == "\\":
                if node.max_len is not None and n + 1 > node.max_len:
                    return None
                return rest + (("s", node, n, 1),)
            if ch < " " or (ch == "\ufffd" and node.min_len):  # see TokenTable: \ufffd may be part of a wider char
                return None
            if not _bounded(node):
                return state
            if node.max_len is not None and n + 1 > node.max_len:
                return None
            return rest + (("s", node, n + 1, 0),)
        if kind == "v":
            r = start(top[1], ch)
            return None if r is None else rest + r
        if kind == "n":
            r = _num(top, ch)
            if r is _END:
                state = rest
                continue
            return None if r is None else rest + (r,)
        if kind == "l":
            options, k = top[1], top[2]
            r = _lit(rest, options, k, ch)
            if r is not None:
                return r
            if k in map(len, options):  # e.g. enum [1, 10] after "1": ends here, the char belongs to the parent
                state = rest
                continue
            return None
        if kind == "o":
            node, i, phase = top[1], top[2], top[3]
            if ch == "}" and phase != "key" and not _required_from(node.props, i):
                return rest
            if phase == "after":
                return rest + (("o", node, i, "key"),) if ch == "," and i < len(node.props) else None
            cands = tuple(j for j in _key_candidates(node.props, i) if node.props[j][0][0] == ch)
            return rest + (("k", node, cands, 1),) if cands else None
        if kind == "k":
            node, cands, k = top[1], top[2], top[3]
            cands = tuple(j for j in cands if len(node.props[j][0]) > k and node.props[j][0][k] == ch)
            if not cands:
                return None
            if len(cands) == 1 and len(node.props[cands[0]][0]) == k + 1:
                j = cands[0]
                return rest + (("o", node, j + 1, "after"), ("v", node.props[j][1]))
            return rest + (("k", node, cands, k + 1),)
        if kind == "f":
            node, phase = top[1], top[2]
            if phase == "colon":
                return rest + (("f", node, "after"), ("v", node.value)) if ch == ":" else None
            if phase == "after":
                if ch == ",":
                    return rest + (("f", node, "key"),)
                return rest if ch == "}" else None
            if ch == "}" and phase == "first":
                return rest
            return rest + (("f", node, "colon"), ("s", _KEY, 0, 0)) if ch == '"' else None
        if kind == "a":
            node, count, phase = top[1], top[2], top[3]
            if phase == "after":
                if ch == "]" and count >= node.min_items:
                    return rest
                if ch == "," and (node.max_items is None or count < node.max_items):
                    return rest + (("a", node, count, "next"),)
                return None
            if ch == "]" and phase == "first" and node.min_items == 0:
                return rest
            if node.max_items == 0:
                return None
            child = start(node.item, ch)
            if child is None:
                return None
            return rest + (("a", node, _array_count(node, count + 1), "after"),) + child
        raise AssertionError(f"unknown frame {top!r}")
    return None  # the document is complete: nothing may follow


def _bounded(node: Str) -> bool:
    return bool(node.min_len) or node.max_len is not None


def _num(top, ch):
    """-> the next number frame, _END (the number ended before ch), or None."""
    node, phase, d = top[1], top[2], top[3]
    digit = ch in _DIGITS
    if phase == "sign":
        if ch == "0":
            return ("n", node, "zero", 0)
        return ("n", node, "int", 1) if digit else None
    if phase in ("zero", "int"):
        if digit and phase == "int":
            return ("n", node, "int", d + 1) if d < MAX_INT_DIGITS else None
        if digit:
            return None  # no leading zeros
        if not node.integer and ch == ".":
            return ("n", node, "frac0", 0)
        if not node.integer and ch in "eE":
            return ("n", node, "exp0", 0)
        return _END
    if phase == "frac0":
        return ("n", node, "frac", 1) if digit else None
    if phase == "frac":
        if digit:
            return ("n", node, "frac", d + 1) if d < MAX_FRAC_DIGITS else None
        return ("n", node, "exp0", 0) if ch in "eE" else _END
    if phase == "exp0":
        if ch in "+-":
            return ("n", node, "exps", 0)
        return ("n", node, "exp", 1) if digit else None
    if phase == "exps":
        return ("n", node, "exp", 1) if digit else None
    if phase == "exp":
        if digit:
            return ("n", node, "exp", d + 1) if d < MAX_EXP_DIGITS else None
        return _END
    raise AssertionError(phase)


def walk(state: tuple, text: str):
    for ch in text:
        state = step(state, ch)
        if state is None:
            return None
    return state


def can_finish(state: tuple) -> bool:
    """Is the text so far a complete document? (A top-level number or literal may also go on.)"""
    if not state:
        return True
    if len(state) != 1:
        return False
    top = state[0]
    if top[0] == "n":
        return top[2] in ("zero", "int", "frac", "exp")
    if top[0] == "l":
        return top[2] in map(len, top[1])
    return False


def min_value(node) -> str:
    """The shortest valid JSON text for a node."""
    if isinstance(node, Str):
        return '"' + "a" * node.min_len + '"'
    if isinstance(node, Num):
        return "0"
    if isinstance(node, Lit):
        return min(node.options, key=len)
    if isinstance(node, FreeObj):
        return "{}"
    if isinstance(node, Arr):
        return "[" + ",".join([min_value(node.item)] * node.min_items) + "]"
    if isinstance(node, Obj):
        return "{" + ",".join(k + min_value(v) for k, v, req in node.props if req) + "}"
    return min((min_value(a) for a in node.alts), key=len)


def _obj_tail(node: Obj, i: int, comma_first: bool) -> str:
    req = [k + min_value(v) for k, v, r in node.props[i:] if r]
    if not req:
        return "}"
    return ("," if comma_first else "") + ",".join(req) + "}"


def min_completion(state: tuple) -> str:
    """The shortest text that turns the current prefix into a complete, valid document."""
    out = []
    for top in reversed(state):
        kind = top[0]
        if kind == "v":
            out.append(min_value(top[1]))
        elif kind == "s":
            node, n, esc = top[1], top[2], top[3]
            out.append(('"' if esc else "") + "a" * max(0, node.min_len - n - (1 if esc else 0)) + '"')
        elif kind == "n":
            out.append("0" if top[2] in ("sign", "frac0", "exp0", "exps") else "")
        elif kind == "l":
            options, k = top[1], top[2]
            out.append(min((o[k:] for o in options if len(o) >= k), key=len))
        elif kind == "o":
            node, i, phase = top[1], top[2], top[3]
            if phase == "key" and not _required_from(node.props, i):
                out.append(min((node.props[j][0] + min_value(node.props[j][1]) for j in range(i, len(node.props))), key=len) + "}")
            else:
                out.append(_obj_tail(node, i, comma_first=phase == "after"))
        elif kind == "k":
            node, cands, k = top[1], top[2], top[3]
            out.append(min((node.props[j][0][k:] + min_value(node.props[j][1]) + _obj_tail(node, j + 1, True) for j in cands), key=len))
        elif kind == "f":
            phase = top[2]
            out.append({"first": "}", "after": "}", "colon": ":" + min_value(top[1].value) + "}", "key": '"":' + min_value(top[1].value) + "}"}[phase])
        elif kind == "a":
            node, count, phase = top[1], top[2], top[3]
            item = min_value(node.item)
            need = max(0, node.min_items - count)
            if phase == "next":
                need = max(need, 1)
            items = [item] * need
            sep = "," if phase == "after" and items else ""
            out.append(sep + ",".join(items) + "]")
    return "".join(out)


# ---------------------------------------------------------------- the vocabulary side
class TokenTable:
    """Token strings of a tokenizer, a trie over them, and masks reused in every constrained state.

    A byte-level token that holds part of a multi-byte character decodes to "\\ufffd" on
    its own. Such bytes are never ASCII, so they can only sit inside a string, and they
    never change the ASCII structure of the decoded text: treating them as one plain
    character each keeps the structure exact (string lengths are then an upper bound,
    which is why strings with a minLength refuse them).
    """

    def __init__(self, tokenizer):
        self.vocab_size = max(len(tokenizer), getattr(tokenizer, "vocab_size", 0) or 0)
        special = set(getattr(tokenizer, "added_tokens_decoder", {}) or {}) | set(tokenizer.all_special_ids)
        ids = [i for i in range(self.vocab_size) if i not in special]
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:  # the Rust tokenizer directly: 5x faster than batch_decode's per-item overhead
            texts = backend.decode_batch([[i] for i in ids], skip_special_tokens=False)
        else:
            texts = tokenizer.batch_decode([[i] for i in ids], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        pieces = tokenizer.convert_ids_to_tokens(ids)
        self.strings: list[str | None] = [None] * self.vocab_size
        for i, t, p in zip(ids, texts, pieces):
            if p and p.startswith("\u2581") and not t.startswith(" "):  # SentencePiece drops the leading space alone
                t = " " + t
            if t:
                self.strings[i] = t
        plain = torch.zeros(self.vocab_size, dtype=torch.bool)
        lengths = torch.zeros(self.vocab_size, dtype=torch.long)
        fffd = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.nonplain: list[int] = []
        self.single: dict[str, int] = {}
        for i, t in enumerate(self.strings):
            if t is None:
                continue
            if len(t) == 1:
                self.single.setdefault(t, i)
            if _NONPLAIN.search(t):
                self.nonplain.append(i)
            else:
                plain[i] = True
                lengths[i] = len(t)
                fffd[i] = "\ufffd" in t
        self.plain, self.lengths, self.fffd = plain, lengths, fffd
        self.trie = _TrieNode([(t, i) for i, t in enumerate(self.strings) if t is not None], 0)
        self.tokenizer = tokenizer

    def encode(self, text: str) -> list[int]:
        """Token ids whose strings concatenate to `text` exactly (falling back to single characters)."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if "".join(self.strings[i] or "\0" for i in ids) == text:
            return ids
        if all(c in self.single for c in text):
            return [self.single[c] for c in text]
        raise SchemaError(f"the tokenizer cannot spell {text!r} token by token")


_TABLES: dict[int, tuple[object, TokenTable]] = {}


def token_table(tokenizer) -> TokenTable:
    """Built once per tokenizer (about a second for a 49k vocabulary), then shared."""
    hit = _TABLES.get(id(tokenizer))
    if hit is None or hit[0] is not tokenizer:
        hit = (tokenizer, TokenTable(tokenizer))
        _TABLES[id(tokenizer)] = hit
    return hit[1]


class Grammar:
    """A compiled schema over one vocabulary, with the allowed-token mask and completion cost cached per state."""

    MAX_CACHE = 20_000

    def __init__(self, schema, table: TokenTable):
        self.root = compile_schema(schema)
        self.table = table
        self.initial = (("v", self.root),)
        self._masks: dict[tuple, torch.Tensor] = {}
        self._costs: dict[tuple, int] = {}

    def allowed(self, state: tuple) -> torch.Tensor:
        """[V] bool: tokens that keep `state` a valid prefix (end-of-text is the caller's to add)."""
        m = self._masks.get(state)
        if m is None:
            m = self._compute(state)
            if len(self._masks) >= self.MAX_CACHE:
                self._masks.clear()
            self._masks[state] = m
        return m

    def _compute(self, state: tuple) -> torch.Tensor:
        t = self.table
        top = state[-1] if state else None
        if top is not None and top[0] == "s" and not top[3]:
            # string content: every plain token stays in the string; walk only the rest
            node, n = top[1], top[2]
            mask = t.plain.clone()
            if node.max_len is not None:
                mask &= t.lengths <= node.max_len - n
            if node.min_len:
                mask &= ~t.fffd
            for i in t.nonplain:
                if walk(state, t.strings[i]) is not None:
                    mask[i] = True
            return mask
        ids: list[int] = []
        _dfs(t.trie, state, ids)
        mask = torch.zeros(t.vocab_size, dtype=torch.bool)
        if ids:
            mask[torch.tensor(ids)] = True
        return mask

    def completion(self, state: tuple) -> list[int]:
        """Token ids of the shortest valid ending from `state`."""
        text = min_completion(state)
        return self.table.encode(text) if text else []

    def cost(self, state: tuple) -> int:
        """Tokens needed to finish the document from `state`."""
        c = self._costs.get(state)
        if c is None:
            c = len(self.completion(state))
            if len(self._costs) >= self.MAX_CACHE:
                self._costs.clear()
            self._costs[state] = c
        return c


class _TrieNode:
    """A prefix tree over token strings, expanded on first visit: most states only ever look at a few branches."""

    __slots__ = ("items", "depth", "ends", "_children")

    def __init__(self, items: list[tuple[str, int]], depth: int):
        self.items, self.depth = items, depth  # every string here shares its first `depth` chars and is longer
        self.ends: list[int] = []
        self._children: dict | None = None

    def children(self) -> dict:
        if self._children is None:
            kids: dict[str, _TrieNode] = {}
            d = self.depth
            for s, i in self.items:
                kid = kids.get(s[d])
                if kid is None:
                    kid = kids[s[d]] = _TrieNode([], d + 1)
                (kid.ends.append(i) if len(s) == d + 1 else kid.items.append((s, i)))
            self._children, self.items = kids, []
        return self._children


def _dfs(node: _TrieNode, state: tuple, out: list[int]) -> None:
    for ch, child in node.children().items():
        nxt = step(state, ch)
        if nxt is None:
            continue
        out.extend(child.ends)
        if child.items or child._children:
            _dfs(child, nxt, out)


_GRAMMARS: dict[tuple[int, str], Grammar] = {}


def grammar_for(schema, tokenizer) -> Grammar:
    """Compiled grammars are cached by (tokenizer, schema text): a server sees the same schema again and again."""
    key = (id(tokenizer), json.dumps(schema, sort_keys=True))
    g = _GRAMMARS.get(key)
    if g is None:
        g = Grammar(schema, token_table(tokenizer))
        if len(_GRAMMARS) >= 64:
            _GRAMMARS.pop(next(iter(_GRAMMARS)))
        _GRAMMARS[key] = g
    return g


# ---------------------------------------------------------------- per-row sampling
class JsonConstraint:
    """One row's position in a grammar, advanced token by token."""

    def __init__(self, grammar: Grammar, max_tokens: int):
        self.grammar = grammar
        self.state = grammar.initial
        self.forced: list[int] = []
        need = grammar.cost(self.state)
        if need > max_tokens:
            raise SchemaError(f"max_tokens={max_tokens} is too small for this schema: its shortest valid output takes {need} tokens")

    @property
    def complete(self) -> bool:
        return can_finish(self.state)

    def advance(self, token_id: int) -> None:
        s = self.grammar.table.strings[token_id]
        nxt = walk(self.state, s) if s is not None else None
        if nxt is None:
            raise AssertionError(f"token {token_id} ({s!r}) is not allowed here: the sampler and the constraint disagree")
        self.state = nxt


class RowSampler:
    """Chooses one row's next token; plugged into generate_from_embeds as a logits_processor.

    The batch itself decodes greedily and each row's sampler returns a one-hot
    row of logits, so temperature, top-p, seed, max_tokens, a JSON constraint
    and an early stop are all per row: rows with different settings share one
    forward pass, and a seeded row gives the same text whatever it is batched with.
    """

    def __init__(self, eos_ids, max_tokens: int, temperature: float = 0.0, top_p: float = 1.0,
                 seed: int | None = None, constraint: JsonConstraint | None = None):
        """eos_ids: an int, or a set whose smallest member is the one forced to end a row."""
        self.eos_ids = {eos_ids} if isinstance(eos_ids, int) else set(eos_ids)
        self.eos_id, self.max_tokens = min(self.eos_ids), max_tokens
        self.temperature, self.top_p = temperature, top_p
        self.gen = torch.Generator().manual_seed(seed) if seed is not None else None
        if temperature > 0 and self.gen is None:
            self.gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, ()).item()))
        self.constraint = constraint
        self.seen = 0
        self.stop_requested = False  # set from another thread: a stop string, a cancel or a deadline
        self.finish_reason: str | None = None  # "length" when this sampler ended the row at max_tokens

    def __call__(self, row: int, ids: list, logits: torch.Tensor) -> torch.Tensor:
        if self.finish_reason is not None:
            return logits  # the row has ended; generation pads it
        c = self.constraint
        if c is not None:
            for t in ids[self.seen:]:
                c.advance(int(t))
        self.seen = len(ids)
        if self.stop_requested:
            return self._end(logits, "stop")
        left = self.max_tokens - len(ids)  # tokens left, this one included
        if left <= 0:
            return self._end(logits, "length")
        if c is None:
            if self.temperature == 0:
                return logits  # greedy: the batch's argmax is this row's choice (and generation sees its EOS)
            tok = sample_token(logits, self.temperature, self.top_p, self.gen)
            if tok in self.eos_ids:
                self.finish_reason = "stop"
            return _one_hot(logits, tok)
        if c.forced:
            return _one_hot(logits, c.forced.pop(0))
        allowed = c.grammar.allowed(c.state)
        if c.complete:
            if left == 1:
                return self._end(logits, "stop")
            allowed = allowed.clone()
            allowed[self.eos_id] = True
        elif not allowed.any():  # the vocabulary cannot continue here: spell the shortest ending
            return self._force(logits, c)
        masked = logits.masked_fill(~allowed, float("-inf"))
        tok = int(masked.argmax()) if self.temperature == 0 else sample_token(masked, self.temperature, self.top_p, self.gen)
        if tok == self.eos_id:
            return self._end(logits, "stop")
        if c.grammar.cost(walk(c.state, c.grammar.table.strings[tok])) > left - 1:
            # this token would leave too few tokens to close the document: close it now instead
            return self._force(logits, c)
        return _one_hot(logits, tok)

    def _force(self, logits: torch.Tensor, c: JsonConstraint) -> torch.Tensor:
        c.forced = c.grammar.completion(c.state)
        if not c.forced:
            return self._end(logits, "stop")
        return _one_hot(logits, c.forced.pop(0))

    def _end(self, logits: torch.Tensor, reason: str) -> torch.Tensor:
        self.finish_reason = reason
        return _one_hot(logits, self.eos_id)


def _one_hot(logits: torch.Tensor, token: int) -> torch.Tensor:
    out = torch.full_like(logits, float("-inf"))
    out[token] = 0.0
    return out


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator | None) -> int:
    """logits [V] -> one token id, with temperature and nucleus (top-p) filtering."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1:
        sorted_p, idx = probs.sort(descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= top_p  # keep the smallest prefix reaching top_p
        sorted_p = sorted_p.masked_fill(drop, 0)
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
    return int(torch.multinomial(probs, 1, generator=gen))


def batch_processor(samplers: list[RowSampler]) -> Callable[[int, list, torch.Tensor], torch.Tensor]:
    """The logits_processor for generate_from_embeds: row i is decided by samplers[i]."""
    return lambda row, ids, logits: samplers[row](row, ids, logits)


def json_processor(tokenizer, schema, config, batch_size: int, eos_ids):
    """-> (logits_processor, config) for VLM.generate(json_schema=...): every row constrained by `schema`.

    The returned config decodes greedily because the rows sample for themselves
    (with the config's temperature, top-p and seed + row).
    """
    from dataclasses import replace

    grammar = grammar_for(schema, tokenizer)
    seed = config.seed
    samplers = [RowSampler(eos_ids, config.max_new_tokens, config.temperature, config.top_p,
                           None if seed is None else seed + row, JsonConstraint(grammar, config.max_new_tokens))
                for row in range(batch_size)]
    return batch_processor(samplers), replace(config, temperature=0.0, top_p=1.0)


def validate_json(text: str, schema) -> object:
    """Parse `text` and validate it against `schema` (jsonschema); returns the value."""
    import jsonschema

    value = json.loads(text)
    jsonschema.validate(value, schema or {})
    return value


__all__ = ["SchemaError", "compile_schema", "Grammar", "grammar_for", "JsonConstraint", "RowSampler", "batch_processor",
           "token_table", "json_processor", "validate_json", "min_completion", "step", "walk", "can_finish"]
