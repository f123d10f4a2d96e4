"""Hypothesis strategies for tests/test_fuzz.py: hostile and near-valid input for every reader.

Kept out of the test module: pytest's assertion rewriting of a test module makes hypothesis
spend seconds per example on the lambdas of these strategies.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import types
import typing

from hypothesis import strategies as st

from relevance_lens.dissect.registry import ANALYSES
from relevance_lens.score.config import ScoreConfig
from relevance_lens.study import spec as study_spec
from relevance_lens.train.config import TrainConfig

# ---------------------------------------------------------------- strategies

# Tokens that have tripped IR readers: ids, TREC columns, non-finite and odd numbers,
# unicode whitespace that str.split() and \s see but a tab split does not, BOMs, JSON-looking text.
TOKENS = [
    "q1", "d1", "D2", "Q0", "0", "1", "-1", "3", "1.5", "-0.0", "1e400", "nan", "NaN", "inf", "-inf", "1_0",
    "\u0663", "0x1", "+2", "", " ", "\ufeff", "\r", "é", "\u2028", "\x85", "\x1c", "\xa0", "\x00", "{",
    '{"_id": 1}', "tag", "<script>",
]  # fmt: skip
SEPARATORS = ["\t", " ", "  ", "\t\t", "\v", "\f"]


def _mostly(good, bad, odds: int = 6):
    """``good`` about ``odds - 1`` times in ``odds``, else ``bad``: most examples get deep into a reader."""
    # The bad branch is the largest integer: hypothesis draws the smallest (simplest) one far more often.
    return st.integers(1, odds).flatmap(lambda i: bad if i == odds else good)


_field = st.sampled_from(TOKENS) | st.text(max_size=6)
_line = st.builds(
    lambda parts, last: "".join(f + s for f, s in parts) + last,
    st.lists(st.tuples(_field, st.sampled_from(SEPARATORS)), max_size=7),
    _field,
)
# Mostly-valid records, so that many examples parse and the round trip is exercised too.
_good_id = st.sampled_from(["q1", "d1", "7", "10", "x-y", "é"]) | st.from_regex(r"[A-Za-z0-9_.:-]{1,5}", fullmatch=True)
_maybe_id = _mostly(_good_id, _field)
_words = st.sampled_from(["some text", "a", " lead", "t\u00e9xt", "<b>&amp;", "x\ry"]) | st.text(max_size=10)
_number = st.sampled_from(["1", "0", "-2", "1.5", "-0.0", "3e-5", "1e400", "nan"]) | st.floats().map(repr)
_records = {
    "queries": st.tuples(_maybe_id, _words).map("\t".join),
    "corpus": st.tuples(_maybe_id, _words).map("\t".join) | st.tuples(_maybe_id, _words, _words).map("\t".join),
    "run": st.tuples(_maybe_id, st.just("Q0"), _maybe_id, st.integers(-1, 100).map(str), _number, st.just("t")),
    "qrels": st.tuples(_maybe_id, st.just("0"), _maybe_id, st.integers(-1, 3).map(str) | _field),
}
_records["run"] = _records["run"].map(" ".join) | _records["run"].map("\t".join)
_records["qrels"] = _records["qrels"].map(" ".join)


def _tabular(kind: str):
    lines = st.lists(_mostly(_records[kind], _line), max_size=6)
    return st.builds(lambda ls, nl: nl.join(ls), lines, st.sampled_from(["\n", "\r\n"]))


_KEYS = [
    "_id", "id", "qid", "query_id", "docid", "doc_id", "text", "title", "query", "contents",
    "positive_passages", "negative_passages",
]  # fmt: skip
_scalar = st.none() | st.booleans() | st.integers() | st.floats() | st.sampled_from(TOKENS) | st.text(max_size=8)
_json = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
)
_id = _mostly(_good_id | st.integers(-5, 5), st.sampled_from([" 8 ", "", "a b", "\ufeffx"]) | _scalar)
_str = _mostly(_words, st.sampled_from(["", " ", "a\tb", "a\nb", "a\rb", "\u2028"]) | _scalar)
_passage = st.fixed_dictionaries(
    {"docid": _id, "text": _str}, optional={"_id": _id, "title": _str, "contents": _str}
) | st.fixed_dictionaries({}, optional={"_id": _id, "title": _str, "contents": _str})
_any_record = st.fixed_dictionaries(
    {},
    optional={
        "_id": _id,
        "qid": _id,
        "query_id": _id,
        "docid": _id,
        "text": _str,
        "title": _str,
        "query": _str,
        "contents": _str,
        "positive_passages": st.lists(_passage, max_size=2) | _json,
        "negative_passages": st.lists(_passage, max_size=2) | _json,
    },
)
_jsonl_records = {
    "queries": st.fixed_dictionaries({"_id": _id, "text": _str}),
    "corpus": st.fixed_dictionaries({"docid": _id, "text": _str}, optional={"title": _str}),
    "tevatron": st.fixed_dictionaries(
        {"query_id": _id, "query": _str, "positive_passages": st.lists(_passage, min_size=1, max_size=2)},
        optional={"negative_passages": st.lists(_passage, max_size=2)},
    ),
}
_hostile_json = st.sampled_from(["[" * 3000, '{"_id": ' + "9" * 5000 + ', "text": "x"}'])


def _jsonl(kind: str):
    good = st.builds(json.dumps, _jsonl_records[kind])
    line = _mostly(good, st.builds(json.dumps, _any_record | _json) | _line | _hostile_json)
    return st.lists(line, max_size=5).map("\n".join)


@st.composite
def as_bytes(draw, texts):
    """Encode text (lone surrogates become invalid UTF-8), maybe splice in junk bytes, maybe gzip it."""
    data = draw(texts).encode("utf-8", "surrogatepass")
    if draw(st.integers(0, 3)) == 3:
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]
    wrap = draw(st.sampled_from(["plain", "plain", "plain", "gzip", "truncated gzip", "bom"]))
    if wrap == "bom":
        data = b"\xef\xbb\xbf" + data
    if wrap.endswith("gzip"):
        data = gzip.compress(data, mtime=0)
        if wrap == "truncated gzip":
            data = data[: draw(st.integers(2, max(2, len(data) - 1)))]
    return data


JSONL_QUERIES, JSONL_CORPUS, TEVATRON = (
    _mostly(as_bytes(_jsonl(k)), st.binary(max_size=200), 5) for k in _jsonl_records
)
QUERIES, CORPUS, RUN, QRELS = (_mostly(as_bytes(_tabular(k)), st.binary(max_size=200), 5) for k in _records)


# ---------------------------------------------------------------- study TOML


def _toml(value) -> str:
    """A small TOML writer for generated documents (inline tables only)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # JSON escapes are TOML basic-string escapes (lone surrogates are refused)
    if isinstance(value, list):
        return "[" + ", ".join(map(_toml, value)) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {_toml(v)}" for k, v in value.items()) + "}"


def _keys_of(*classes) -> list[str]:
    return sorted({f.name for cls in classes for f in dataclasses.fields(cls)})


_toml_scalar = (
    st.sampled_from(["x", "dev", "test", "all", "q,k", "mha", "none", "fp32", "auto", "../../x", "<script>", ""])
    | st.integers(-2, 300)
    | st.floats(allow_nan=True)
    | st.booleans()
    | st.text(max_size=6)
)
_toml_value = _toml_scalar | st.lists(_toml_scalar, max_size=3) | st.lists(st.integers(-1, 40), max_size=3)


def _table(keys: list[str]):
    return st.dictionaries(st.sampled_from(keys) | st.text(max_size=4), _toml_value, max_size=4)


def _plausible(hint):
    """Values of a setting's own type (TOML has no null: an optional setting gets its type)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return st.one_of(*map(_plausible, args))
    if typing.get_origin(hint) is typing.Literal:
        return st.sampled_from(args)
    if typing.get_origin(hint) is list:
        return st.lists(_plausible(args[0]), max_size=3)
    simple = {
        bool: st.booleans(),
        int: st.integers(0, 64),
        float: st.floats(0, 2) | st.integers(1, 9),
        str: st.sampled_from(["auto", "all", "dev", "fp32", "off", "q,k", "nDCG@10", "x"]),
    }
    return simple.get(hint, _toml_scalar)


def _settings(cls, skip=()):
    """A table of up to 3 of ``cls``'s settings, each its default, a value of its type, or anything."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default_factory() if callable(f.default_factory) else f.default
        values[f.name] = (
            st.just(default) if default not in (None, dataclasses.MISSING) else _plausible(hints[f.name])
        ) | _plausible(hints[f.name])
    if not values:
        return st.just({})
    names = st.lists(st.sampled_from(sorted(values)), max_size=3, unique=True)
    return names.flatmap(lambda ns: st.fixed_dictionaries({n: _mostly(values[n], _toml_value, 8) for n in ns}))


_good_model = st.sampled_from(["smollm2-135m", "org/model", "x.gguf"]) | st.fixed_dictionaries(
    {"name": st.sampled_from(["m", "org/m"])}, optional={"label": st.sampled_from(["m7", "a.b"])}
)
_bad_model = st.sampled_from(["../up", ""]) | st.fixed_dictionaries({"name": st.just("m"), "label": _toml_scalar})
_study_table = st.fixed_dictionaries(
    {
        "models": st.lists(_mostly(_good_model, _bad_model | _toml_value), min_size=1, max_size=2),
        "name": _mostly(st.sampled_from(["tiny", "a.b-c_1"]), _toml_scalar),
    },
    optional={k: _mostly(_plausible(list[int]), _toml_value) for k in ("ranks", "seeds")}
    | {"targets": _mostly(st.lists(st.sampled_from(["all", "mha", "q,k"]), min_size=1), _toml_value)},
)
_eval_table = st.builds(
    lambda more: {"split": "dev", **more},
    _settings(study_spec.EvalSpec, skip=("split", "queries", "qrels", "corpus", "run", "ir_datasets")),
)
_evals = st.dictionaries(st.sampled_from(["dev", "a"]), _mostly(_eval_table, _table(_keys_of(study_spec.EvalSpec))))
_analysis_tables = st.lists(st.sampled_from(list(ANALYSES)), unique=True).flatmap(
    lambda names: st.fixed_dictionaries({n: _mostly(_settings(ANALYSES[n].settings), _toml_value) for n in names})
)
_document = st.fixed_dictionaries(
    {"study": _mostly(_study_table, _toml_value, 10)},
    optional={
        "train": _mostly(_settings(TrainConfig, skip=study_spec.GRID_KEYS), _table(_keys_of(TrainConfig))),
        "baseline_train": _settings(TrainConfig, skip=study_spec.GRID_KEYS),
        "evals": _mostly(_evals, _toml_scalar),
        "analyses": _mostly(_analysis_tables, _analysis_tables.map(lambda t: {**t, "bogus": {}}) | _toml_scalar),
        "scoring": _mostly(_settings(ScoreConfig, skip=("depth",)), _table(_keys_of(ScoreConfig))),
    },
).flatmap(lambda doc: _mostly(st.just(doc), st.just({**doc, "bogus": 1}), 10))
_toml_text = st.builds(lambda doc: "\n".join(f"{k} = {_toml(v)}" for k, v in doc.items()), _document)
STUDY = _mostly(
    as_bytes(_mostly(_toml_text, st.sampled_from(["a = " + "[" * 3000, "[study"]), 10)), st.binary(max_size=200), 5
)


# ---------------------------------------------------------------- adapter folder metadata

_config_record = st.fixed_dictionaries(
    {},
    optional={
        "model": _mostly(st.just("smollm2-135m"), _scalar),
        "template": _mostly(
            st.just("{query} {title} {text}"), st.sampled_from(["{", "{query:xyz}", "{0}", "{nope}", "{query.x}"])
        ),
        "max_length": _mostly(st.integers(8, 600), st.integers(-5, 7) | _scalar),
        "append_eos": _mostly(st.booleans(), _scalar),
        "padding_side": _mostly(st.sampled_from(["left", "right"]), _scalar),
        "head_bias": _mostly(st.booleans(), _scalar),
    },
)
RERANKER_JSON = _mostly(
    as_bytes(_mostly(st.builds(json.dumps, st.fixed_dictionaries({"reranker": _config_record})), _jsonl("queries"))),
    st.binary(max_size=200),
    5,
)


_adapter_record = st.fixed_dictionaries(
    {"peft_type": st.just("LORA"), "r": st.just(2), "lora_alpha": _mostly(st.integers(1, 16), _scalar)},
    optional={
        "use_rslora": _mostly(st.booleans(), _scalar),
        "alpha_pattern": _mostly(st.dictionaries(st.sampled_from(["q_proj", "layers.1.*"]), st.integers(1, 9)), _json)
        | st.dictionaries(st.text(max_size=3), _scalar, max_size=2),
        "target_modules": st.just(["q_proj"]),
        "base_model_name_or_path": _scalar | st.just("/"),
    },
)
ADAPTER_JSON = _mostly(
    as_bytes(_mostly(st.builds(json.dumps, _adapter_record), st.builds(json.dumps, _json))), st.binary(max_size=200), 5
)
