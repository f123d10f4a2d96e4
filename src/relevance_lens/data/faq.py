"""The embedded test collection: FAQ retrieval over Debian's packaged documentation.

No package in PyPI or Debian ships an IR test collection's text (they all download at
run time), but Debian ships three FAQs whose structure *is* a test collection: every
question heading is a query, and the text under it is its one relevant passage.

- ``perl-doc``: ``perlfaq1..9.pod`` (``=head2`` headings are the questions),
- ``python3.11-doc``: the Python FAQ sources ``faq/*.rst.txt`` (section titles),
- ``debian-faq``: ``debian-faq.en.txt.gz`` (numbered headings such as ``5.3.``).

All answers together form one corpus; the questions are split train/dev/test by a hash of
the query id, so a rebuild never moves a question. BM25 runs (depth 100) come with each
split. Weakly labelled training pairs come from man pages in a fixed list of Debian
packages (the one-line NAME description as the query, the DESCRIPTION section as its
passage) and go only into the separate ``train-weak`` split with its own corpus.

:func:`build_faq` writes the files from the ``.deb`` files; :func:`load_faq` reads the
copy shipped in ``relevance_lens/datasets/faq``. Same ``.deb`` files, same bytes out.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from relevance_lens.data.debfile import DebPackage, find_debs, read_deb
from relevance_lens.data.docparse import (  # noqa: F401  (parsers re-exported for callers of faq)
    FaqEntry,
    finish_answer,
    groff_inline,
    manpage_pair,
    parse_debian_faq,
    parse_manpage,
    parse_pod_faq,
    parse_rst_faq,
    pod_inline,
    rst_inline,
    rst_labels,
)
from relevance_lens.data.formats import (
    Passage,
    atomic_write,
    read_corpus,
    read_qrels,
    read_queries,
    read_run,
    write_corpus,
    write_qrels,
    write_queries,
    write_run,
)
from relevance_lens.errors import InputError
from relevance_lens.evaluate.metrics import evaluate

DATA_DIR = Path(__file__).parent.parent / "datasets" / "faq"
SPLITS = ("train", "dev", "test", "train-weak")
# Buckets of sha1(query id) mod 100: [0, 70) train, [70, 85) dev, [85, 100) test.
SPLIT_BUCKETS = (("train", 70), ("dev", 85), ("test", 100))
FAQ_PACKAGES = ("perl-doc", "python3.11-doc", "debian-faq")
# Man-page sources for the weak pairs: documentation packages with many pages whose NAME
# lines read like queries. The FAQ packages are deliberately absent (perl-doc carries
# perlfaq*.1, which would leak test answers into training).
WEAK_PACKAGES = (
    "apt",
    "coreutils",
    "debhelper",
    "dpkg",
    "dpkg-dev",
    "e2fsprogs",
    "findutils",
    "git-man",
    "iproute2",
    "less",
    "libssl-doc",
    "libx11-doc",
    "man-db",
    "manpages",
    "manpages-dev",
    "openssh-client",
    "openssl",
    "passwd",
    "procps",
    "rsync",
    "systemd",
    "tar",
    "util-linux",
)
BM25_DEPTH = 100
WEAK_BM25_DEPTH = 30  # hard negatives only need the top; depth 100 would triple the file
MIN_ANSWER_WORDS = 8
# Weak passages are clipped (FAQ answers never are): a few man pages run to 100 kB, far past
# any reranker's window, and would dominate the shipped file's size.
WEAK_MAX_CHARS = 4000
METRICS = ("RR@10", "nDCG@10", "R@100")


@dataclass
class FaqSplit:
    """One split of the collection as loaded by :func:`load_faq`.

    Args:
        name: ``train``, ``dev``, ``test`` or ``train-weak``.
        queries: ``{qid: question}``.
        qrels: ``{qid: {docid: 1}}``, one relevant passage per query.
        corpus: every passage; the FAQ splits share one corpus, ``train-weak`` has its own.
        run: BM25's ranking over ``corpus`` for these queries.
        paths: the files read, by role (``queries``, ``qrels``, ``corpus``, ``run``).
    """

    name: str
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]
    corpus: dict[str, Passage]
    run: dict[str, dict[str, float]]
    paths: dict[str, Path] = field(default_factory=dict)


# ---------------------------------------------------------------- building


def split_of(qid: str) -> str:
    """The split of a query id: a fixed function of sha1(qid), so rebuilds never move a question."""
    bucket = int(hashlib.sha1(qid.encode("utf-8")).hexdigest(), 16) % 100
    return next(name for name, upper in SPLIT_BUCKETS if bucket < upper)


def faq_entries(debs: Mapping[str, DebPackage]) -> list[FaqEntry]:
    """Parse every question of the three FAQ packages, dropping those with (almost) no answer."""
    entries: list[FaqEntry] = []
    for path, blob in _documents(debs["perl-doc"]):
        entries += parse_pod_faq(blob.decode("utf-8"), PurePosixPath(path).stem)
    rst = [
        (PurePosixPath(path).name.split(".")[0], blob.decode("utf-8"))
        for path, blob in _documents(debs["python3.11-doc"])
    ]
    labels = {label: title for _, text in rst for label, title in rst_labels(text).items()}
    for name, text in rst:
        entries += parse_rst_faq(text, name, labels)
    for _, blob in _documents(debs["debian-faq"]):
        entries += parse_debian_faq(gzip.decompress(blob).decode("utf-8"))
    return [e for e in entries if len(e.answer.split()) >= MIN_ANSWER_WORDS and e.question]


def _documents(deb: DebPackage) -> list[tuple[str, bytes]]:
    """The package's documents in path order, without its copyright file."""
    return sorted((p, b) for p, b in deb.files.items() if not p.endswith("/copyright"))


def _want_faq(package: str) -> Callable[[str], bool]:
    patterns = {
        "perl-doc": r"usr/share/perl/[^/]+/pod/perlfaq[1-9]\.pod",
        "python3.11-doc": r"usr/share/doc/python3\.11/html/_sources/faq/(?!index)\w+\.rst\.txt",
        "debian-faq": r"usr/share/doc/debian/FAQ/debian-faq\.en\.txt\.gz",
    }
    copyright_file = f"usr/share/doc/{package}/copyright"
    return lambda name: name == copyright_file or re.fullmatch(patterns[package], name) is not None


def _want_man(package: str) -> Callable[[str], bool]:
    copyright_file = f"usr/share/doc/{package}/copyright"
    # English pages only: /usr/share/man/manN/, not /usr/share/man/<lang>/manN/
    return lambda name: name == copyright_file or re.fullmatch(r"usr/share/man/man[1-8]/[^/]+", name) is not None


def weak_pairs(debs: Mapping[str, DebPackage]) -> tuple[dict[str, str], dict[str, Passage], dict[str, str]]:
    """Man-page pairs: ``(queries, corpus, source package by docid)``.

    Query = the NAME line's description ("list directory contents"), passage = the
    DESCRIPTION section titled ``ls(1)``. Pages whose description is shorter than 3 words
    or whose DESCRIPTION is under 20 words are skipped, and so is every page after the
    first with the same (case-folded) description, so no query has an unjudged twin.
    """
    queries: dict[str, str] = {}
    corpus: dict[str, Passage] = {}
    sources: dict[str, str] = {}
    seen: set[str] = set()
    for package in sorted(debs):
        for path, blob in sorted(debs[package].files.items()):
            if not path.startswith("usr/share/man/"):
                continue
            text = (gzip.decompress(blob) if path.endswith(".gz") else blob).decode("utf-8", errors="replace")
            if re.match(r"\.so\s", text.lstrip()):
                continue  # an alias page that only includes another
            pair = manpage_pair(text)
            if pair is None:
                continue
            query, description = pair[0], finish_answer(*pair)
            page = PurePosixPath(path).name.removesuffix(".gz")
            stem, _, section = page.rpartition(".")
            key = query.casefold()
            if len(query.split()) < 3 or len(description.split()) < 20 or key in seen:
                continue
            seen.add(key)
            docid = f"man-{package}-{re.sub(r'[^A-Za-z0-9_.:+-]', '_', page)}"
            queries[f"q-{docid}"] = query
            corpus[docid] = Passage(docid, f"{stem}({section})", _clip(description, WEAK_MAX_CHARS))
            sources[docid] = package
    return queries, corpus, sources


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, at a line break when one is near, else a space."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit + 1)
    if cut < limit // 2:
        cut = text.rfind(" ", 0, limit + 1)
    return text[: cut if cut > 0 else limit].rstrip()


def _bm25_run(queries: Mapping[str, str], corpus: Mapping[str, Passage], depth: int) -> dict[str, dict[str, float]]:
    from relevance_lens.data.bm25 import bm25_search  # bm25s is only needed when building

    run = bm25_search(dict(queries), dict(corpus), depth=depth)
    # four decimals: readable, and immune to the last-bit float noise between BLAS builds
    return {qid: {d: round(float(s), 4) for d, s in docs.items()} for qid, docs in run.items()}


def _metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    result = evaluate(qrels, run, metrics=METRICS, query_ids=sorted(qrels))
    return {name: round(value, 4) for name, value in result.aggregate.items()}


def _licence_names(copyright_text: str) -> list[str]:
    """The ``License:`` short names of a machine-readable copyright file (empty if free-form)."""
    names = {m.group(1).strip() for m in re.finditer(r"^License:\s*(\S.*)$", copyright_text, re.M)}
    return sorted(names)


def _write_text(path: Path, text: str) -> None:
    with atomic_write(path) as handle:
        handle.write(text)


def build_faq(out_dir: Path, deb_dir: Path | None = None, *, weak: bool = True) -> dict:
    """Build the collection from the Debian packages into ``out_dir``.

    Args:
        out_dir: where the files go (the shipped copy lives in ``relevance_lens/datasets/faq``).
        deb_dir: a folder holding ``<package>_*.deb`` files (one per package); any that are
            missing are fetched with ``apt-get download`` into a temporary folder.
        weak: also build the ``train-weak`` split from man pages.

    Returns:
        The manifest written to ``manifest.json``: package versions and sha256s, counts
        per split and BM25's metrics per split.

    Raises:
        InputError: a package cannot be found or fetched, or parses to nothing.
    """
    out_dir = Path(out_dir)
    packages = FAQ_PACKAGES + (WEAK_PACKAGES if weak else ())
    with tempfile.TemporaryDirectory(prefix="relevance-lens-debs-") as tmp:
        paths = find_debs(packages, Path(deb_dir) if deb_dir is not None else None, Path(tmp))
        debs = {p: read_deb(paths[p], _want_faq(p) if p in FAQ_PACKAGES else _want_man(p)) for p in packages}
    entries = faq_entries({p: debs[p] for p in FAQ_PACKAGES})
    for package, prefix in zip(FAQ_PACKAGES, ("perlfaq", "pyfaq-", "debfaq-")):
        if not any(e.docid.startswith(prefix) for e in entries):
            raise InputError(
                f"{paths[package]}: no FAQ questions found inside; expected the Debian 12 layout of {package}"
            )
    corpus = {e.docid: Passage(e.docid, e.title, e.answer) for e in sorted(entries, key=lambda e: e.docid)}
    manifest: dict = {
        "name": "relevance-lens FAQ collection",
        "split_rule": "sha1(query id) mod 100: <70 train, <85 dev, else test",
        "sources": {},
        "splits": {},
        "bm25": {},
    }
    for package in packages:
        deb = debs[package]
        manifest["sources"][package] = {"version": deb.version, "deb": deb.path.name, "sha256": deb.sha256}
    write_corpus(corpus, out_dir / "corpus.jsonl")
    for split in ("train", "dev", "test"):
        chosen = sorted((e for e in entries if split_of(e.qid) == split), key=lambda e: e.qid)
        queries = {e.qid: e.question for e in chosen}
        qrels = {e.qid: {e.docid: 1} for e in chosen}
        run = _bm25_run(queries, corpus, BM25_DEPTH)
        write_queries(queries, out_dir / f"queries.{split}.tsv")
        write_qrels(qrels, out_dir / f"qrels.{split}.txt")
        write_run(run, out_dir / f"bm25.{split}.run", tag="bm25", depth=BM25_DEPTH)
        manifest["splits"][split] = {"queries": len(queries), "by_source": _count_prefixes(qrels)}
        manifest["bm25"][split] = _metrics(qrels, run)
    manifest["corpus"] = {"passages": len(corpus), "by_source": _count_prefixes(corpus)}

    if weak:
        queries, weak_corpus, sources = weak_pairs({p: debs[p] for p in WEAK_PACKAGES})
        weak_corpus = dict(sorted(weak_corpus.items()))
        queries = dict(sorted(queries.items()))
        qrels = {qid: {qid[2:]: 1} for qid in queries}
        run = _bm25_run(queries, weak_corpus, WEAK_BM25_DEPTH)
        write_corpus(weak_corpus, out_dir / "corpus.train-weak.jsonl.gz")
        write_queries(queries, out_dir / "queries.train-weak.tsv.gz")
        write_qrels(qrels, out_dir / "qrels.train-weak.txt.gz")
        write_run(run, out_dir / "bm25.train-weak.run.gz", tag="bm25", depth=WEAK_BM25_DEPTH)
        per_package = {p: sum(1 for s in sources.values() if s == p) for p in WEAK_PACKAGES}
        manifest["splits"]["train-weak"] = {
            "queries": len(queries),
            "passages": len(weak_corpus),
            "by_package": per_package,
        }
        manifest["bm25"]["train-weak"] = _metrics(qrels, run)
    else:
        for stale in out_dir.glob("*.train-weak.*"):  # the manifest must describe what is there
            stale.unlink()
    _write_text(out_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False) + "\n")
    _write_text(out_dir / "LICENSES.md", _licences(debs, packages))
    _write_text(out_dir / "README.md", _readme(manifest))
    return manifest


def _readme(manifest: Mapping) -> str:
    splits, bm25, sources = manifest["splits"], manifest["bm25"], manifest["sources"]
    rows = [
        f"| {name} | {splits[name]['queries']} | {bm25[name]['RR@10']:.3f} | {bm25[name]['nDCG@10']:.3f} | "
        f"{bm25[name]['R@100']:.3f} |"
        for name in splits
    ]
    faq = ", ".join(f"{p} {sources[p]['version']}" for p in FAQ_PACKAGES)
    weak = (
        f"\n`train-weak` holds {splits['train-weak']['queries']} weakly labelled man-page pairs from "
        f"{sum(1 for n in splits['train-weak']['by_package'].values() if n)} Debian packages: the NAME line's "
        'description is the query ("list directory contents"), the DESCRIPTION section (clipped to '
        f"{WEAK_MAX_CHARS} characters) its passage, in a corpus of its own (`corpus.train-weak.jsonl.gz`). "
        f"Its BM25 run (depth {WEAK_BM25_DEPTH}) is there for hard negatives. Use it for training only; "
        "no man page is in dev or test.\n"
        if "train-weak" in splits
        else ""
    )
    return f"""# FAQ retrieval collection

Questions from three FAQs shipped by Debian ({faq}); each question's own answer is its one
relevant passage, and all {manifest["corpus"]["passages"]} answers form the corpus
(`corpus.jsonl`: docid, title, text; never truncated). Query ids are `q-` + the answer's docid.
Splits are fixed by `{manifest["split_rule"]}`, so a rebuild never moves a question.

| split | queries | BM25 RR@10 | nDCG@10 | R@100 |
|---|---|---|---|---|
{chr(10).join(rows)}
{weak}
Files per split: `queries.<split>.tsv`, `qrels.<split>.txt` (TREC), `bm25.<split>.run` (TREC run,
depth {BM25_DEPTH}, over the whole corpus). `manifest.json` records each source package's version and the
sha256 of its `.deb`; `LICENSES.md` holds the sources' licences. Rebuild with
`relevance-lens data build-faq` (same `.deb` files give the same bytes), load with
`relevance_lens.data.faq.load_faq("test")`.
"""


def _count_prefixes(ids: Iterable[str]) -> dict[str, int]:
    """Counts by source (``perlfaq``, ``pyfaq``, ``debfaq``) of docids or query ids."""
    counts: dict[str, int] = {}
    for docid in ids:
        source = re.match(r"(?:q-)?(perlfaq|pyfaq|debfaq)", docid)
        key = source.group(1) if source else "other"
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def _document_notices(debs: Mapping[str, DebPackage]) -> dict[str, list[tuple[str, str]]]:
    """The licence notices the FAQ documents carry themselves (perlfaq's AUTHOR AND COPYRIGHT,
    the Debian FAQ's front matter), distinct texts only, with the files that carry each."""
    perl: dict[str, list[str]] = {}
    for path, blob in _documents(debs["perl-doc"]):
        pod = blob.decode("utf-8")
        start = pod.find("=head1 AUTHOR AND COPYRIGHT")
        if start >= 0:
            notice = pod[start:].split("\n", 1)[1].split("\n=", 1)[0].strip()
            perl.setdefault(notice, []).append(PurePosixPath(path).stem)
    notices = {"perl-doc": [(", ".join(names), notice) for notice, names in perl.items()]}
    for path, blob in _documents(debs["debian-faq"]):
        text = gzip.decompress(blob).decode("utf-8")
        m = re.search(r"^Copyright .*?(?=^Abstract)", text, re.M | re.S)
        if m:
            notices["debian-faq"] = [(PurePosixPath(path).name, m.group(0).strip())]
    return notices


def _licences(debs: Mapping[str, DebPackage], packages: Iterable[str]) -> str:
    out = [
        "# Licences of the FAQ collection's sources\n",
        "The passages and questions are excerpts of Debian packages' documentation, reformatted as plain",
        "text. Each source keeps its own licence; the copyright files below are copied verbatim from the",
        "`.deb` files named in `manifest.json`.\n",
    ]
    notices = _document_notices(debs)
    for package in FAQ_PACKAGES:
        deb = debs[package]
        text = deb.files.get(f"usr/share/doc/{package}/copyright", b"").decode("utf-8", errors="replace")
        out.append(f"## {package} {deb.version} (FAQ passages and questions)\n")
        for where, notice in notices.get(package, []):
            out += [f"The notice in {where}:\n", "```text", notice, "```\n"]
        out += [f"The package's `/usr/share/doc/{package}/copyright`:\n", "```text", text.rstrip(), "```\n"]
    weak = [p for p in packages if p not in FAQ_PACKAGES]
    if weak:
        out += [
            "## Man pages (train-weak split only)\n",
            "Each weak pair's docid names its source package (`man-<package>-<page>`). The licence of each",
            "page is given in `/usr/share/doc/<package>/copyright` of that package (listed licence names",
            "are those the file declares; a page's own header may be more specific).\n",
            "| package | version | licences declared in its copyright file |",
            "|---|---|---|",
        ]
        for package in weak:
            deb = debs[package]
            text = deb.files.get(f"usr/share/doc/{package}/copyright", b"").decode("utf-8", errors="replace")
            names = ", ".join(_licence_names(text)) or "see the file (not machine-readable)"
            out.append(f"| {package} | {deb.version} | {names.replace('|', '/')} |")
        out.append("")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- loading


def faq_paths(split: str, data_dir: Path | None = None) -> dict[str, Path]:
    """The files of one split: ``queries``, ``qrels``, ``corpus`` and ``run`` paths.

    Raises:
        InputError: an unknown split, or one whose files are not there (``train-weak``
            when the collection was built with ``weak=False``).
    """
    if split not in SPLITS:
        raise InputError(f"FAQ split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(data_dir) if data_dir is not None else DATA_DIR
    suffix = ".gz" if split == "train-weak" else ""
    paths = {
        "queries": root / f"queries.{split}.tsv{suffix}",
        "qrels": root / f"qrels.{split}.txt{suffix}",
        "corpus": root / ("corpus.train-weak.jsonl.gz" if split == "train-weak" else "corpus.jsonl"),
        "run": root / f"bm25.{split}.run{suffix}",
    }
    missing = [str(p) for p in paths.values() if not p.exists()]
    if missing:
        raise InputError(
            f"FAQ split {split!r}: missing {', '.join(missing)}; rebuild with `relevance-lens data build-faq`"
            + (" (with weak pairs)" if split == "train-weak" else "")
        )
    return paths


def load_faq(split: str, data_dir: Path | None = None) -> FaqSplit:
    """Load one split of the FAQ collection (the shipped copy unless ``data_dir`` is given)."""
    paths = faq_paths(split, data_dir)
    return FaqSplit(
        name=split,
        queries=read_queries(paths["queries"]),
        qrels=read_qrels(paths["qrels"]),
        corpus=read_corpus(paths["corpus"]),
        run=read_run(paths["run"]),
        paths=paths,
    )
