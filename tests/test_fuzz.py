"""Property-based fuzzing of every reader: arbitrary input gives a correct parse or one InputError.

For each reader (queries, corpus TSV/JSONL, TREC runs, qrels, Tevatron JSONL, study TOML,
adapter folder metadata) hypothesis feeds raw bytes and near-valid files (plausible fields
with hostile values: bad UTF-8, BOMs, odd whitespace, NaN, huge numbers, deep nesting, gzip
truncated). The reader must either return data that survives a write-and-read round trip
through the writers, or raise :class:`InputError` whose single line names the file; any
other exception fails the test. The fast tier runs a fixed, derandomized 200 examples per
reader; the slow tier runs more.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import tempfile
import typing
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings

from fuzzfix import (
    ADAPTER_JSON,
    CORPUS,
    JSONL_CORPUS,
    JSONL_QUERIES,
    QRELS,
    QUERIES,
    RERANKER_JSON,
    RUN,
    STUDY,
    TEVATRON,
)
from relevance_lens.data import formats
from relevance_lens.errors import InputError
from relevance_lens.model.reranker import CONFIG_FILE, RerankerConfig, read_saved_config
from relevance_lens.study import spec as study_spec
from relevance_lens.train.config import TrainConfig, fits_type

# Derandomized and without an example database: the same examples on every machine, no
# .hypothesis/ folder left in the checkout.
_COMMON = dict(
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
settings.register_profile("fuzz-fast", max_examples=200, **_COMMON)
settings.register_profile("fuzz-slow", max_examples=800, **_COMMON)  # ~13 s a reader on an AVX2 EPYC
FAST, SLOW = settings.get_profile("fuzz-fast"), settings.get_profile("fuzz-slow")


def fuzz(strategy, fast=FAST):
    """Turn ``check(data)`` into a fast-tier test and a slow-tier test with more examples."""

    def make(check):
        quick = fast(given(strategy)(check))
        thorough = pytest.mark.slow(SLOW(given(strategy)(check)))
        return quick, thorough

    return make


# ---------------------------------------------------------------- the property


def _write(folder: str, name: str, data: bytes) -> Path:
    path = Path(folder) / name
    path.write_bytes(data)
    return path


def parse_or_refuse(read, path: Path, named: Path | None = None):
    """``read(path)``, or None when it raised the one-line InputError naming ``path`` (or ``named``)."""
    try:
        parsed = read(path)
        event("parsed")  # --hypothesis-show-statistics: how often each outcome was reached
        return parsed
    except InputError as exc:
        message = str(exc)
        event("refused")
        event("refused: " + message.removeprefix(str(named or path)).lstrip(":0123456789 ")[:40])
        assert str(named or path) in message, f"error does not name the file: {message}"
        assert "\n" not in message, f"error is not one line: {message!r}"
        return None


def round_trip(folder: str, value, write, read, names: tuple[str, ...]) -> None:
    """Each of ``names`` the writer accepts must read back equal; a refusal must be an InputError."""
    for name in names:
        path = Path(folder) / f"again-{name}"
        try:
            write(value, path)
        except InputError as exc:  # e.g. a tab inside a text field cannot be written as TSV
            assert name.removesuffix(".gz").endswith(".tsv") and str(path) in str(exc)
            continue
        assert read(path) == value, f"{name}: written and read back differently"


def _check_reader(data: bytes, name: str, read, write=None, names=()):
    with tempfile.TemporaryDirectory() as folder:
        parsed = parse_or_refuse(read, _write(folder, name, data))
        if parsed is not None and write is not None:
            round_trip(folder, parsed, write, read, names)
    return parsed


# ---------------------------------------------------------------- the readers


@fuzz(QUERIES | JSONL_QUERIES)
def _queries_tsv(data):
    _check_reader(data, "queries.tsv", formats.read_queries, formats.write_queries, ("q.tsv", "q.jsonl"))


test_queries_tsv, test_queries_tsv_slow = _queries_tsv


@fuzz(JSONL_QUERIES)
def _queries_jsonl(data):
    _check_reader(data, "queries.jsonl", formats.read_queries, formats.write_queries, ("q.jsonl", "q.tsv"))


test_queries_jsonl, test_queries_jsonl_slow = _queries_jsonl


@fuzz(CORPUS | JSONL_CORPUS)
def _corpus_tsv(data):
    names = ("c.tsv", "c.jsonl.gz")
    _check_reader(data, "corpus.tsv.gz", formats.read_corpus, formats.write_corpus, names)


test_corpus_tsv, test_corpus_tsv_slow = _corpus_tsv


@fuzz(JSONL_CORPUS)
def _corpus_jsonl(data):
    _check_reader(data, "corpus.jsonl", formats.read_corpus, formats.write_corpus, ("c.jsonl", "c.tsv"))


test_corpus_jsonl, test_corpus_jsonl_slow = _corpus_jsonl


@fuzz(RUN)
def _run(data):
    _check_reader(data, "run.trec", formats.read_run, formats.write_run, ("r.trec", "r.trec.gz"))


test_run, test_run_slow = _run


@fuzz(QRELS)
def _qrels(data):
    _check_reader(data, "qrels.txt", formats.read_qrels, formats.write_qrels, ("q.txt",))


test_qrels, test_qrels_slow = _qrels


@fuzz(TEVATRON)
def _tevatron(data):
    def write(groups, path):
        formats.write_tevatron(groups, path)

    groups = _check_reader(data, "train.jsonl", formats.read_tevatron, write, ("t.jsonl", "t.jsonl.gz"))
    for group in groups or ():
        assert group.positives and all(isinstance(p, formats.Passage) for p in group.positives + group.negatives)


test_tevatron, test_tevatron_slow = _tevatron


def test_a_run_with_whitespace_only_ids_is_readable_again():
    """A run written from a parsed run reads back equal, ids in id order (a known-good anchor)."""
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, "r.trec", b"2 Q0 b 1 0.5 t\n10 Q0 a 1 1e-3 t\n2 Q0 a 2 -0.0 t\n")
        run = formats.read_run(path)
        round_trip(folder, run, formats.write_run, formats.read_run, ("x.trec",))
        assert run == {"2": {"b": 0.5, "a": -0.0}, "10": {"a": 0.001}}


# ---------------------------------------------------------------- study TOML


def _check_study_types(study: study_spec.Study) -> None:
    """What a parsed study promises the planner: typed values and names that stay in the workdir."""
    assert isinstance(study.spec.name, str) and study_spec.SAFE_NAME.fullmatch(study.spec.name)
    assert study.models and all(isinstance(m.name, str) for m in study.models)
    assert all(study_spec.SAFE_NAME.fullmatch(m.short()) for m in study.models if m.label is not None)
    assert all(isinstance(r, int) and not isinstance(r, bool) and r >= 1 for r in study.spec.ranks)
    hints = typing.get_type_hints(TrainConfig)
    for table in (study.train, study.baseline_train):
        assert all(fits_type(value, hints[key]) for key, value in table.items()), table
    assert all(isinstance(ev, study_spec.EvalSpec) for ev in study.evals.values())


@fuzz(STUDY)
def _study(data):
    with tempfile.TemporaryDirectory() as folder:
        study = parse_or_refuse(study_spec.load_study, _write(folder, "study.toml", data))
        if study is not None:
            _check_study_types(study)


test_study_toml, test_study_toml_slow = _study


# ---------------------------------------------------------------- adapter folder metadata


@fuzz(RERANKER_JSON)
def _reranker_json(data):
    with tempfile.TemporaryDirectory() as folder:
        path = _write(folder, CONFIG_FILE, data)
        config = parse_or_refuse(lambda _: read_saved_config(folder), path)
        if config is None:
            return
        for f in dataclasses.fields(RerankerConfig):
            value = getattr(config, f.name)
            assert type(value) is type(f.default), f"{f.name} = {value!r} accepted"
        # The writer (Reranker.save) stores {"reranker": asdict(settings), ...}: it must read back equal.
        path.write_text(json.dumps({"reranker": asdict(config)}))
        assert read_saved_config(folder) == config


test_reranker_json, test_reranker_json_slow = _reranker_json


@pytest.fixture(scope="module")
def lora_folder(tmp_path_factory):
    """A real adapter folder of a tiny llama (rank 2 on q), written by Reranker.save."""
    from relevance_lens.model.lora import LoraSettings, attach_lora
    from tiny import tiny_reranker

    reranker = tiny_reranker("llama")
    attach_lora(reranker, LoraSettings(rank=2, targets="q", dropout=0.0))
    folder = tmp_path_factory.mktemp("adapter")
    reranker.save(folder)
    return _Adapter(folder, reranker.base_config)


@dataclasses.dataclass
class _Adapter:
    folder: Path
    base_config: object = dataclasses.field(repr=False)  # keeps hypothesis' failure reports short


def _adapter_metadata(lora_folder, data):
    from relevance_lens.dissect.weights import ADAPTER_CONFIG, load_adapter_weights, read_base_config

    original, base_config = lora_folder.folder, lora_folder.base_config
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "adapter"
        shutil.copytree(original, folder)
        path = _write(str(folder), ADAPTER_CONFIG, data)
        weights = parse_or_refuse(lambda _: load_adapter_weights(folder, base_config), path)
        if weights is not None:
            assert weights.parts() and all(math.isfinite(s) for _, _, s in weights.factors.values())
        (folder / CONFIG_FILE).unlink()  # so read_base_config must rely on adapter_config.json alone
        parse_or_refuse(lambda _: read_base_config(folder), path, named=folder)


@FAST
@given(ADAPTER_JSON)
def test_adapter_config(lora_folder, data):
    _adapter_metadata(lora_folder, data)


@pytest.mark.slow
@SLOW
@given(ADAPTER_JSON)
def test_adapter_config_slow(lora_folder, data):
    _adapter_metadata(lora_folder, data)
