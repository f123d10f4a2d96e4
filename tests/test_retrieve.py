"""BM25 first stage on a tiny inline corpus."""

from __future__ import annotations

import importlib.util

import pytest

from relevance_lens.data.bm25 import bm25_search
from relevance_lens.data.formats import Passage
from relevance_lens.errors import InputError

CORPUS = {
    "1": Passage("1", "Dogs", "Dogs bark at the mailman every morning."),
    "2": Passage("2", "", "The weather is sunny and warm today."),
    "3": Passage("3", "Cats", "Cats purr when they are content."),
    "4": Passage("4", "", "Bread is baked in an oven."),
}
HAS_STEMMER = importlib.util.find_spec("Stemmer") is not None


def test_obvious_match_ranks_first():
    run = bm25_search({"q": "why do dogs bark"}, CORPUS, stemmer=None)
    assert next(iter(run["q"])) == "1"
    assert list(run["q"].values()) == sorted(run["q"].values(), reverse=True)


def test_title_is_indexed():
    run = bm25_search(
        {"q": "cats"}, {"9": Passage("9", "Cats", "They purr."), "8": Passage("8", "", "Bread.")}, stemmer=None
    )
    assert list(run["q"]) == ["9"]


def test_stopword_and_unknown_queries_return_empty():
    run = bm25_search({"a": "the of and is", "b": "zyzzyva", "c": "???"}, CORPUS, stemmer=None)
    assert run == {"a": {}, "b": {}, "c": {}}


def test_qid_equal_to_docid_is_kept():
    run = bm25_search({"1": "cats purr", "3": "dogs"}, CORPUS, stemmer=None)
    assert set(run) == {"1", "3"}
    assert next(iter(run["1"])) == "3"
    assert next(iter(run["3"])) == "1"


def test_depth_caps_and_ties_break_by_docid():
    corpus = {d: Passage(d, "", "apple") for d in ["c", "a", "d", "b"]}
    corpus["e"] = Passage("e", "", "pear")
    run = bm25_search({"q": "apple"}, corpus, depth=3, stemmer=None)
    assert list(run["q"]) == ["a", "b", "c"]
    assert len(bm25_search({"q": "apple"}, corpus, depth=100, stemmer=None)["q"]) == 4


def test_deterministic():
    queries = {"q1": "dogs bark", "q2": "warm weather"}
    assert bm25_search(queries, CORPUS, stemmer=None) == bm25_search(queries, CORPUS, stemmer=None)


@pytest.mark.parametrize(
    ("kwargs", "corpus", "problem"),
    [({"depth": 0}, CORPUS, "depth=0"), ({}, {}, "the corpus is empty")],
)
def test_bad_settings(kwargs, corpus, problem):
    with pytest.raises(InputError, match=problem):
        bm25_search({"q": "dogs"}, corpus, stemmer=None, **kwargs)


@pytest.mark.skipif(not HAS_STEMMER, reason="PyStemmer not installed")
def test_english_stemming_matches_inflections():
    run = bm25_search({"q": "dog barking"}, CORPUS)
    assert next(iter(run["q"])) == "1"


@pytest.mark.skipif(HAS_STEMMER, reason="PyStemmer installed")
def test_missing_stemmer_says_how_to_fix():
    with pytest.raises(InputError, match="pip install PyStemmer, or pass stemmer=None"):
        bm25_search({"q": "dogs"}, CORPUS)
