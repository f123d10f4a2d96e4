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
import html.entities
import io
import json
import re
import shutil
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from relevance_lens.data import (
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

DATA_DIR = Path(__file__).parent / "datasets" / "faq"
SPLITS = ("train", "dev", "test", "train-weak")
# Buckets of sha1(query id) mod 100: [0, 70) train, [70, 85) dev, [85, 100) test.
SPLIT_BUCKETS = (("train", 70), ("dev", 85), ("test", 100))
FAQ_PACKAGES = ("perl-doc", "python3.11-doc", "debian-faq")
# Man-page sources for the weak pairs: documentation packages with many pages whose NAME
# lines read like queries. The FAQ packages are deliberately absent (perl-doc carries
# perlfaq*.1, which would leak test answers into training).
WEAK_PACKAGES = (
    "apt", "coreutils", "debhelper", "dpkg", "dpkg-dev", "e2fsprogs", "findutils", "git-man",
    "iproute2", "less", "libssl-doc", "libx11-doc", "man-db", "manpages", "manpages-dev",
    "openssh-client", "openssl", "passwd", "procps", "rsync", "systemd", "tar", "util-linux",
)
BM25_DEPTH = 100
WEAK_BM25_DEPTH = 30  # hard negatives only need the top; depth 100 would triple the file
MIN_ANSWER_WORDS = 8
# Weak passages are clipped (FAQ answers never are): a few man pages run to 100 kB, far past
# any reranker's window, and would dominate the shipped file's size.
WEAK_MAX_CHARS = 4000
METRICS = ("RR@10", "nDCG@10", "R@100")


@dataclass(frozen=True)
class FaqEntry:
    """One question and its answer, as parsed from a source document.

    Args:
        docid: passage id of the answer (``perlfaq4-17``); the query id is ``q-`` + docid.
        question: the heading text, markup removed.
        title: the passage title (document and section name), never the question.
        answer: the answer as plain text, paragraphs separated by newlines.
    """

    docid: str
    question: str
    title: str
    answer: str

    @property
    def qid(self) -> str:
        return f"q-{self.docid}"


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


# ---------------------------------------------------------------- text helpers


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _join_paragraphs(paragraphs: Iterable[str]) -> str:
    return "\n".join(p for p in paragraphs if p.strip())


def _finish_answer(question: str, answer: str) -> str:
    """Drop a first line that merely repeats the question (the query must not be the passage)."""
    lines = answer.split("\n")
    while lines and _collapse(lines[0]).lower().rstrip("?:. ") == question.lower().rstrip("?:. "):
        lines.pop(0)
    return "\n".join(lines).strip()


def _dedent_code(lines: list[str]) -> str:
    lines = [line.rstrip().expandtabs(8) for line in lines]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    indent = min((len(l) - len(l.lstrip()) for l in lines if l.strip()), default=0)
    return "\n".join(l[indent:] for l in lines)


# ---------------------------------------------------------------- POD (perlfaq)

_POD_CODE = re.compile(r"([BCEFILSXZ])<(?:(<+)(\s+))?")
_POD_ESCAPES = {"lt": "<", "gt": ">", "verbar": "|", "sol": "/", "quot": '"', "amp": "&", "apos": "'"}


def pod_inline(text: str) -> str:
    """Render POD formatting codes (``C<...>``, ``L<...>``, ``E<gt>``, nested and ``C<< >>``) as plain text."""
    out, _ = _pod_span(text, 0, None)
    return out


def _pod_span(text: str, pos: int, closer: str | None) -> tuple[str, int]:
    """Parse from ``pos`` up to ``closer`` (``>`` or ``" >>"``-style), rendering nested codes."""
    parts: list[str] = []
    while pos < len(text):
        if closer is not None:
            if closer == ">" and text[pos] == ">":
                return "".join(parts), pos + 1
            if closer != ">":
                m = re.compile(r"\s+" + re.escape(closer)).match(text, pos)
                if m:
                    return "".join(parts), m.end()
        m = _POD_CODE.match(text, pos)
        if m:
            inner_closer = ">" * (len(m.group(2)) + 1) if m.group(2) else ">"
            inner, pos = _pod_span(text, m.end(), inner_closer)
            parts.append(_pod_apply(m.group(1), inner))
            continue
        parts.append(text[pos])
        pos += 1
    return "".join(parts), pos


def _pod_apply(code: str, inner: str) -> str:
    if code in "XZ":
        return ""
    if code == "E":
        return _pod_entity(inner)
    if code == "L":
        return _pod_link(inner)
    return inner  # B, C, F, I, S: the text itself


def _pod_entity(name: str) -> str:
    if name in _POD_ESCAPES:
        return _POD_ESCAPES[name]
    try:
        if name.lower().startswith("0x"):
            return chr(int(name, 16))
        if name.isdigit():
            return chr(int(name, 8) if name.startswith("0") else int(name))
    except ValueError:
        return ""
    return chr(html.entities.name2codepoint[name]) if name in html.entities.name2codepoint else ""


def _pod_link(inner: str) -> str:
    if "|" in inner:
        return inner.split("|", 1)[0]
    if "://" in inner:
        return inner
    page, _, section = inner.partition("/")
    section = section.strip('"')
    if section and page:
        return f'"{section}" in {page}'
    return f'"{section}"' if section else page


def parse_pod_faq(text: str, name: str) -> list[FaqEntry]:
    """Split one ``perlfaqN.pod`` into question entries: each ``=head2`` and the text up to the next heading.

    Args:
        text: the POD source.
        name: the document name (``perlfaq4``), the prefix of every docid.
    """
    doc_title, section = name, ""
    entries: list[FaqEntry] = []
    question: str | None = None
    paragraphs: list[str] = []
    bullet = False
    in_name = False

    def close() -> None:
        if question is not None:
            title = f"{doc_title} / {section}" if section else doc_title
            answer = _finish_answer(question, _join_paragraphs(paragraphs))
            entries.append(FaqEntry(f"{name}-{len(entries) + 1}", question, title, answer))

    for block in re.split(r"\n(?:[ \t]*\n)+", text.replace("\r\n", "\n")):
        if not block.strip():
            continue
        if block.startswith("="):
            command, rest = re.match(r"(=\w+)\s*(.*)", block, re.S).groups()  # type: ignore[union-attr]
            rest = _collapse(pod_inline(rest))
            if command in ("=head1", "=head2", "=head3", "=head4"):
                in_name = command == "=head1" and rest == "NAME"
            if command == "=head1":
                close()
                question, paragraphs = None, []
                section = "" if rest in ("NAME", "VERSION", "DESCRIPTION", "AUTHOR AND COPYRIGHT") else rest
            elif command == "=head2":
                close()
                question, paragraphs = rest, []
            elif command == "=item":
                marker = rest.split(" ", 1)
                if marker[0] in ("*", "-") or re.fullmatch(r"\d+\.?", marker[0]):
                    bullet = True
                    if len(marker) > 1:
                        paragraphs.append(f"- {marker[1]}")
                        bullet = False
                elif rest:
                    paragraphs.append(rest)
            continue  # =over, =back, =pod, =cut, =for, =begin, =end carry no answer text
        if block[0] in " \t":
            paragraphs.append(_dedent_code(block.split("\n")))
            continue
        paragraph = _collapse(pod_inline(block))
        if in_name:
            # "perlfaq4 - Data Manipulation" names the document: "perlfaq4: Data Manipulation"
            head, _, desc = paragraph.partition(" - ")
            doc_title = f"{head}: {desc}" if desc else paragraph
            continue
        if bullet and paragraph:
            paragraph, bullet = f"- {paragraph}", False
        paragraphs.append(paragraph)
    close()
    return entries


# ---------------------------------------------------------------- reStructuredText (Python FAQ)

_RST_UNDERLINE = re.compile(r"([=\-~^\"'`#*+:.])\1{2,}\s*")
_RST_DIRECTIVE = re.compile(r"(\s*)\.\.\s+([\w:-]+)::(.*)")
_RST_DROP = {"only", "contents", "index", "highlight", "toctree", "testsetup", "testcleanup", "raw", "image", "figure", "sectionauthor", "tabularcolumns"}
_RST_BULLET = re.compile(r"\s*(?:[*+-]|\d+\.|#\.)\s+")


def _rst_role(match: re.Match[str], labels: Mapping[str, str]) -> str:
    role, body = match.group(1), match.group(2)
    m = re.fullmatch(r"(.*?)\s*<([^>]+)>", body, re.S)
    if m and m.group(1):
        return m.group(1)
    body = body.lstrip("!")
    if body.startswith("~"):
        body = body[1:].rsplit(".", 1)[-1]
    if role == "ref":  # a bare :ref:`label` shows the target's title
        return labels.get(body, body.replace("-", " "))
    if role in ("pep", "rfc"):
        return f"{role.upper()} {body}"
    return body


def rst_inline(text: str, labels: Mapping[str, str] | None = None) -> str:
    """Render inline reStructuredText (roles, links, literals, emphasis) as plain text.

    Args:
        text: RST source.
        labels: ``{label: section title}`` to render bare ``:ref:`label``` references.
    """
    text = re.sub(r":(?:[\w-]+:)*([\w-]+):`([^`]+)`", lambda m: _rst_role(m, labels or {}), text)
    text = re.sub(r"``(.+?)``", r"\1", text, flags=re.S)
    text = re.sub(r"`([^`<]+?)\s*<[^>`]+>`__?", r"\1", text)
    text = re.sub(r"`([^`]+)`_{0,2}", r"\1", text)
    text = re.sub(r"\*\*(\S(?:.*?\S)?)\*\*", r"\1", text, flags=re.S)
    text = re.sub(r"(?<![\w*\\])\*(\S(?:[^*]*?\S)?)\*(?![\w*])", r"\1", text)
    return re.sub(r"\\(.)", r"\1", text)


def _rst_body(lines: list[str], labels: Mapping[str, str]) -> str:
    """Turn the body of one RST section into plain paragraphs; literal blocks keep their lines."""
    paragraphs: list[str] = []
    prose: list[str] = []

    def flush() -> None:
        if prose:
            text = rst_inline("\n".join(prose), labels).rstrip()
            # "text::" introduces a literal block and reads "text:"; a lone " ::" disappears
            text = text[:-3] if text.endswith(" ::") else re.sub(r"::$", ":", text)
            paragraphs.append(_collapse(text))
            prose.clear()

    i = 0
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        directive = _RST_DIRECTIVE.match(line)
        if directive or line.lstrip().startswith(".. "):
            # The block is everything indented deeper than the marker, blank lines included.
            flush()
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) > indent):
                j += 1
            content = lines[i + 1 : j]
            if directive and directive.group(2) not in _RST_DROP:
                name, argument = directive.group(2), directive.group(3).strip()
                if name in ("code-block", "code", "sourcecode", "doctest", "testcode", "testoutput"):
                    paragraphs.append(_dedent_code(_strip_options(content)))
                else:  # note, seealso, warning, versionadded...: prose worth keeping
                    label = {"note": "Note:", "seealso": "See also:", "warning": "Warning:"}.get(name, "")
                    inner = _rst_body(_dedent_code(_strip_options(content)).split("\n"), labels)
                    paragraphs.append(_collapse(" ".join(x for x in (label, rst_inline(argument, labels), inner) if x)))
            # comments (".. XXX ...") and link targets (".. _label:") vanish with their blocks
            i = j
            continue
        if not line.strip():
            flush()
            i += 1
            continue
        if indent > 0 and not prose and _after_literal_marker(lines, i):
            j = i
            while j < len(lines) and (not lines[j].strip() or len(lines[j]) - len(lines[j].lstrip()) >= indent):
                j += 1
            paragraphs.append(_dedent_code(lines[i:j]))
            i = j
            continue
        if prose and _RST_BULLET.match(line):
            flush()  # each list item is a line of its own
        prose.append(line)
        i += 1
    flush()
    return _join_paragraphs(p for p in paragraphs if p not in (":", ""))


def _after_literal_marker(lines: list[str], i: int) -> bool:
    """True when the previous non-blank source line ended with ``::`` (so this indented block is code)."""
    j = i - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    return j >= 0 and lines[j].rstrip().endswith("::")


def _strip_options(content: list[str]) -> list[str]:
    """Drop a directive's ``:option: value`` lines, which follow its marker line directly."""
    out = list(content)
    while out and re.match(r"\s+:[\w-]+:", out[0]):
        out.pop(0)
    return out


def _rst_headings(lines: list[str]) -> list[tuple[int, str, bool]]:
    """``(line of the title, title source, overlined)`` for every section title."""
    headings = []
    for i in range(1, len(lines)):
        title = lines[i - 1].strip()
        if not title or not _RST_UNDERLINE.fullmatch(lines[i]) or len(lines[i].rstrip()) < len(title):
            continue
        if _RST_UNDERLINE.fullmatch(title) or (i >= 2 and lines[i - 2].strip() and not _RST_UNDERLINE.fullmatch(lines[i - 2])):
            continue
        headings.append((i - 1, title, i >= 2 and lines[i - 2].rstrip() == lines[i].rstrip()))
    return headings


def rst_labels(text: str) -> dict[str, str]:
    """``{label: title}`` for every ``.. _label:`` target placed right above a section title."""
    lines = text.replace("\r\n", "\n").split("\n")
    labels = {}
    for start, title, overlined in _rst_headings(lines):
        j = start - 2 if overlined else start - 1
        while j >= 0 and (not lines[j].strip() or lines[j].startswith(".. _")):
            if lines[j].startswith(".. _"):
                labels[lines[j][4:].strip().rstrip(":")] = _collapse(rst_inline(title))
            j -= 1
    return labels


def parse_rst_faq(text: str, name: str, labels: Mapping[str, str] | None = None) -> list[FaqEntry]:
    """Split one Python FAQ ``.rst`` source into question entries.

    A section title with text under it is a question; one whose body is empty (its first
    child is another title) is a section name and becomes part of the passage title.
    The overlined title is the document's name.

    Args:
        text: the reStructuredText source.
        name: the file stem (``programming``); docids are ``pyfaq-<name>-<n>``.
        labels: ``{label: title}`` of the other FAQ files, so cross-file ``:ref:`` links
            read as titles (this file's own labels are always known).
    """
    lines = text.replace("\r\n", "\n").split("\n")
    headings = _rst_headings(lines)
    labels = {**(labels or {}), **rst_labels(text)}
    doc_title, section = name, ""
    entries: list[FaqEntry] = []
    for k, (start, title, overlined) in enumerate(headings):
        end = headings[k + 1][0] - (1 if headings[k + 1][2] else 0) if k + 1 < len(headings) else len(lines)
        title = _collapse(rst_inline(title, labels))
        if overlined:
            doc_title = title
            continue
        body = _rst_body(lines[start + 2 : end], labels)
        if not body:
            section = title
            continue
        passage_title = f"{doc_title}: {section}" if section else doc_title
        entries.append(FaqEntry(f"pyfaq-{name}-{len(entries) + 1}", title, passage_title, _finish_answer(title, body)))
    return entries


# ---------------------------------------------------------------- Debian FAQ (plain text)

_DEB_HEADING = re.compile(r"(\d+(?:\.\d+)+)\.\s+(\S.*)")
_DEB_CHAPTER = re.compile(r"Chapter (\d+)\.\s+(\S.*)")


def _debian_paragraph(lines: list[str]) -> str:
    text = ""
    for line in lines:
        line = line.strip()
        # The text renderer wraps inside URLs and after "/": join those without a space.
        if text.endswith("/") or (text.endswith("-") and text[-2:-1].isalnum()):
            text += line
        else:
            text = f"{text} {line}" if text else line
    text = re.sub(r"\((https?:[^)]*)\)", lambda m: "(" + re.sub(r"\s+", "", m.group(1)) + ")", text)
    text = re.sub(r"(https?:)\s+//", r"\1//", text)
    return _collapse(text)


def parse_debian_faq(text: str) -> list[FaqEntry]:
    """Split the plain-text Debian FAQ into entries: a numbered heading (``5.3. How...?``,
    possibly wrapped over several lines) and its indented text up to the next heading.
    The table of contents (everything before ``Chapter 1.``) is skipped."""
    lines = text.replace("\r\n", "\n").replace("\xa0", " ").split("\n")  # headings use no-break spaces
    start = next((i for i, l in enumerate(lines) if _DEB_CHAPTER.fullmatch(l.strip()) and not l[:1].isspace()), len(lines))
    entries: list[FaqEntry] = []
    chapter = ""
    number: str | None = None
    question = ""
    body: list[str] = []

    def close() -> None:
        if number is None:
            return
        paragraphs, current = [], []
        for line in body + [""]:
            if line.strip():
                if current and re.match(r"\s*(?:\*|\d+\.)\s", line):
                    paragraphs.append(_debian_paragraph(current))
                    current = []
                current.append(line)
            elif current:
                paragraphs.append(_debian_paragraph(current))
                current = []
        answer = _finish_answer(question, _join_paragraphs(paragraphs))
        entries.append(FaqEntry(f"debfaq-{number}", question, f"Debian FAQ: {chapter}", answer))

    i = start
    while i < len(lines):
        line = lines[i]
        chapter_match = _DEB_CHAPTER.fullmatch(line.strip()) if not line[:1].isspace() else None
        heading = _DEB_HEADING.fullmatch(line.rstrip()) if not line[:1].isspace() else None
        if chapter_match:
            close()
            number, body, chapter = None, [], chapter_match.group(2).strip()
            i += 1
        elif heading:
            close()
            number, body = heading.group(1), []
            parts = [heading.group(2)]
            i += 1
            while i < len(lines) and lines[i].strip() and not lines[i][:1].isspace():
                parts.append(lines[i])  # the heading wraps at column 0
                i += 1
            question = _debian_paragraph(parts)
        else:
            if number is not None:
                body.append(line)
            i += 1
    close()
    return entries


# ---------------------------------------------------------------- man pages (groff), for weak pairs

_GROFF_CHARS = {
    "em": "-", "en": "-", "hy": "-", "mi": "-", "bu": "*", "aq": "'", "dq": '"', "lq": '"', "rq": '"',
    "oq": "'", "cq": "'", "co": "(c)", "rg": "(R)", "tm": "(TM)", "ti": "~", "ha": "^", "ga": "`",
    "ul": "_", "bv": "|", "or": "|", "sl": "/", "rs": "\\", "ba": "|", ">=": ">=", "<=": "<=",
    "!=": "!=", "mu": "x", "de": " degrees", "->": "->", "<-": "<-", "==": "==", "pl": "+",
    "eq": "=", "sq": "*", "at": "@", "sh": "#", "Do": "$", "lB": "[", "rB": "]", "lC": "{",
    "rC": "}", "la": "<", "ra": ">", "fm": "'", "sd": '"', "tno": "~", "Fo": "<<", "Fc": ">>",
    "fo": "<", "fc": ">", "%": "", "Aq": "'", "L\"": '"', "R\"": '"', "C+": "C++", "--": "--",
    "PI": "pi", "C`": '"', "C'": '"', "lh": "<=", "rh": "=>",
}
_GROFF_ESCAPE = re.compile(
    r"\\(?:"
    r"f(?:\[[^\]]*\]|\(..|.)"  # font
    r"|\((?P<c2>..)|\[(?P<cb>[^\]]*)\]"  # special characters
    r"|\*(?:\((?P<s2>..)|\[(?P<sb>[^\]]*)\]|(?P<s1>.))"  # strings
    r"|[nk](?:\(..|\[[^\]]*\]|.)|s[+-]?(?:\d+|\(\d\d|\[[^\]]*\])"  # registers, size
    r"|[hvwlLoDNXbxSRZ]'[^']*'|[$]\d"  # escapes with quoted arguments
    r"|(?P<one>.)"
    r")"
)
_GROFF_ONE = {"-": "-", "e": "\\", "\\": "\\", "'": "'", "`": "`", ".": ".", " ": " ", "~": " ", "0": " ", "t": " ", "_": "_"}
_ALTERNATING = {"BR", "RB", "BI", "IB", "RI", "IR"}
_TEXT_MACROS = {"B", "I", "SM", "SB", "UE", "ME"}
_BREAKS = {
    "PP", "LP", "P", "sp", "br", "Sp", "TP", "TQ", "HP", "RS", "RE", "nf", "fi", "EX", "EE", "Vb", "Ve",
    "Pp", "Bl", "El", "Bd", "Ed", "It", "INDENT", "UNINDENT", "IP", "SS", "Ss", "in", "ti",
}
# mdoc macros that only mark up their arguments (openssh's pages); Fl, Xr and Ns need care
_MDOC_MARKUP = set(
    "Ar Pa Cm Ic Ev Va Li Em Sy Dq Sq Qq Ql Pq Op Oo Oc Do Dc So Sc Po Pc Bq Bo Bc Brq Aq No Xo Xc Fn Fa "
    "Ft Fo Fc Vt Dv Er Ad An Lk Mt Tn Ux Bx At St Sx Pf Ap Dl Ek Ef Eo Ec Ms Lb In Nm Sm Bk".split()
)


def groff_inline(text: str) -> str:
    """Render groff escapes (fonts, ``\\-``, ``\\(em``, ``\\*(Aq``...) in one line of text."""

    def replace(m: re.Match[str]) -> str:
        name = m.group("c2") or m.group("cb") or m.group("s2") or m.group("sb") or m.group("s1")
        if name is not None:
            return _GROFF_CHARS.get(name, "")
        one = m.group("one")
        return _GROFF_ONE.get(one, "") if one is not None else ""

    text = re.sub(r'\\".*$', "", text)  # comment to end of line
    return _GROFF_ESCAPE.sub(replace, text)


def _groff_args(rest: str) -> list[str]:
    return [a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a for a in re.findall(r'"[^"]*"?|\S+', rest)]


def _mdoc_line(args: list[str], name: str) -> str:
    out: list[str] = []
    glue = False
    i = 0
    while i < len(args):
        token = args[i]
        if token == "Fl":
            i += 1
            nxt = args[i] if i < len(args) and args[i] not in _MDOC_MARKUP else ""
            out.append(("" if glue else " ") + "-" + nxt)
            glue = False
        elif token == "Xr" and i + 2 < len(args):
            out.append(f" {args[i + 1]}({args[i + 2]})")
            i += 2
        elif token == "Ns":
            glue = True
        elif token == "Nm":
            if i + 1 >= len(args) or args[i + 1] in _MDOC_MARKUP or not re.match(r"[\w.-]+$", args[i + 1]):
                out.append(" " + name)
        elif token not in _MDOC_MARKUP:
            out.append(("" if glue or re.fullmatch(r"[.,:;)\]]", token) else " ") + token)
            glue = False
        i += 1
    return "".join(out).strip()


def parse_manpage(source: str) -> dict[str, str]:
    """Roughly render a man (or mdoc) page's groff source: ``{SECTION NAME: text}``.

    Requests are interpreted only as far as plain text needs (fonts, paragraph breaks,
    alternating-font macros, tables flattened, macro definitions and ``.ig`` skipped).
    Paragraphs are separated by newlines; literal (``.nf``) lines keep their breaks.
    """
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    line_buffer: list[str] = []
    literal = False
    skip_until: str | None = None
    table = 0  # 0 outside, 1 options/format lines, 2 data
    mdoc_name = ""

    def flush() -> None:
        if current is not None and line_buffer:
            joined = ("\n" if literal else " ").join(line_buffer)
            current.append(joined if literal else _collapse(joined))
        line_buffer.clear()

    def emit(text: str) -> None:
        if current is None:
            return
        text = groff_inline(text)
        if text.strip():
            line_buffer.append(text.rstrip() if literal else text)

    for raw in source.replace("\r\n", "\n").split("\n"):
        if skip_until is not None:
            if re.sub(r"\s+", "", raw) == skip_until:  # ".  ." ends a definition too
                skip_until = None
            continue
        if table:
            if raw.startswith(".TE"):
                table = 0
                flush()
            elif table == 1:
                if raw.rstrip().endswith("."):
                    table = 2
            elif not raw.startswith("."):
                emit(re.sub(r"T[{}]", "", raw).replace("\t", " "))
                flush()
            continue
        if raw.startswith((".", "'")):
            macro, _, rest = raw[1:].strip().partition(" ")
            macro = macro.strip()
            if macro.startswith('\\"') or macro in ("", "\\}"):
                continue
            if macro in ("de", "de1", "am", "ig"):
                skip_until = ".." if macro != "ig" or not rest.strip() else "." + rest.strip()
                continue
            if macro in ("SH", "Sh"):
                flush()
                heading = _collapse(groff_inline(" ".join(_groff_args(rest)))).upper()
                current = sections.setdefault(heading, [])
                literal = False
                continue
            if macro == "TS":
                flush()
                table = 1
                continue
            if macro in ("nf", "EX", "Vb", "Bd"):
                flush()
                literal = macro != "Bd" or "-literal" in rest or "-unfilled" in rest
                continue
            if macro in ("fi", "EE", "Ve", "Ed"):
                flush()
                literal = False
                continue
            if macro in _BREAKS:
                flush()
                if macro in ("IP", "SS", "Ss", "It"):
                    args = _groff_args(rest)
                    label = args[0] if args and macro == "IP" else " ".join(args) if macro != "It" else _mdoc_line(args, mdoc_name)
                    if label and groff_inline(label).strip() not in ("*", "-", "\\(bu"):
                        emit(label)
                        if macro in ("SS", "Ss"):
                            flush()
                continue
            args = _groff_args(rest)
            if macro in _ALTERNATING:
                emit("".join(args))
            elif macro in _TEXT_MACROS:
                emit(" ".join(args))
            elif macro == "Nd":  # mdoc's NAME description: render it as "name - description"
                emit("\\- " + " ".join(args))
            elif macro in ("UR", "MT", "URL"):
                if macro == "URL" and len(args) > 1:
                    emit(args[1])
            elif macro == "Sm":  # mdoc spacing mode: "on"/"off" are not text
                pass
            elif macro == "Nm" and not mdoc_name and args:
                mdoc_name = args[0]
                emit(mdoc_name)
            elif macro in _MDOC_MARKUP or macro in ("Fl", "Xr", "Nm"):
                emit(_mdoc_line([macro] + args, mdoc_name))
            # everything else (TH, ft, if, ie, el, ds, nr, ne, ad, IX, PD...) carries no text
            continue
        emit(raw)
    flush()
    return {name: "\n".join(paragraphs) for name, paragraphs in sections.items()}


def manpage_pair(source: str) -> tuple[str, str] | None:
    """(NAME line's description, DESCRIPTION text) of a man page, or None when either is missing."""
    sections = parse_manpage(source)
    name_line = _collapse(sections.get("NAME", ""))
    description = sections.get("DESCRIPTION", "")
    parts = re.split(r"\s+-+\s+|\s+-(?=[A-Z])", name_line, maxsplit=1)
    if len(parts) != 2 or not description:
        return None
    query = parts[1].strip().rstrip(".")
    return (query, description) if query else None


# ---------------------------------------------------------------- .deb files


@dataclass
class DebPackage:
    """A ``.deb``'s identity and the files it holds (only those asked for are kept)."""

    name: str
    version: str
    path: Path
    sha256: str
    files: dict[str, bytes]  # path inside the package (no leading "./") -> bytes


def _ar_members(data: bytes, path: Path) -> dict[str, bytes]:
    if not data.startswith(b"!<arch>\n"):
        raise InputError(f"{path}: not a .deb (no ar archive header); re-download it")
    members, pos = {}, 8
    while pos + 60 <= len(data):
        header = data[pos : pos + 60]
        name = header[:16].decode().strip().rstrip("/")
        size = int(header[48:58].decode().strip())
        members[name] = data[pos + 60 : pos + 60 + size]
        pos += 60 + size + (size % 2)
    return members


def _tar_stream(member_name: str, blob: bytes, deb: Path, part: str) -> tarfile.TarFile:
    if member_name.endswith((".xz", ".gz", ".bz2")) or member_name.endswith(".tar"):
        return tarfile.open(fileobj=io.BytesIO(blob), mode="r:*")
    # zstd and friends: let dpkg-deb decompress (it knows every format dpkg supports)
    if shutil.which("dpkg-deb") is None:
        raise InputError(f"{deb}: {member_name} needs dpkg-deb to decompress; install dpkg or use an xz-compressed .deb")
    flag = "--fsys-tarfile" if part == "data" else "--ctrl-tarfile"
    tar = subprocess.run(["dpkg-deb", flag, str(deb)], check=True, capture_output=True).stdout
    return tarfile.open(fileobj=io.BytesIO(tar), mode="r:")


def read_deb(path: Path, want: Callable[[str], bool]) -> DebPackage:
    """Read a ``.deb`` with no external tools: its control fields and the regular files ``want`` accepts.

    Symlinks are skipped (man-page aliases are symlinks; the real page is read once).
    """
    data = path.read_bytes()
    members = _ar_members(data, path)
    control_name = next((n for n in members if n.startswith("control.tar")), None)
    data_name = next((n for n in members if n.startswith("data.tar")), None)
    if control_name is None or data_name is None:
        raise InputError(f"{path}: no control.tar/data.tar member; expected a Debian binary package")
    fields: dict[str, str] = {}
    with _tar_stream(control_name, members[control_name], path, "control") as tar:
        for member in tar:
            if member.name.lstrip("./") == "control":
                for line in tar.extractfile(member).read().decode("utf-8").split("\n"):  # type: ignore[union-attr]
                    key, sep, value = line.partition(":")
                    if sep and not line[:1].isspace():
                        fields[key] = value.strip()
    files: dict[str, bytes] = {}
    with _tar_stream(data_name, members[data_name], path, "data") as tar:
        for member in tar:
            name = str(PurePosixPath(member.name.lstrip("."))).lstrip("/")
            if member.isfile() and want(name):
                files[name] = tar.extractfile(member).read()  # type: ignore[union-attr]
    return DebPackage(fields.get("Package", ""), fields.get("Version", ""), path, hashlib.sha256(data).hexdigest(), files)


def find_debs(packages: Iterable[str], deb_dir: Path | None, download_dir: Path) -> dict[str, Path]:
    """Locate ``<pkg>_*.deb`` in ``deb_dir``; fetch the missing ones with ``apt-get download``."""
    found: dict[str, Path] = {}
    missing = []
    for package in packages:
        candidates = sorted(deb_dir.glob(f"{package}_*.deb")) if deb_dir is not None else []
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            raise InputError(f"{deb_dir}: several .deb files for {package} ({names}); keep exactly one")
        if candidates:
            found[package] = candidates[0]
        else:
            missing.append(package)
    if missing:
        if shutil.which("apt-get") is None:
            raise InputError(
                f"missing .deb files for {', '.join(missing)} and no apt-get to fetch them; "
                f"download them on a Debian machine (apt-get download {' '.join(missing)}) and pass their folder"
            )
        done = subprocess.run(["apt-get", "download", *missing], cwd=download_dir, capture_output=True, text=True)
        if done.returncode != 0:
            raise InputError(f"apt-get download {' '.join(missing)} failed: {done.stderr.strip()[-500:]}")
        for package in missing:
            candidates = sorted(download_dir.glob(f"{package}_*.deb"))
            if not candidates:
                raise InputError(f"apt-get download {package} produced no .deb in {download_dir}")
            found[package] = candidates[-1]
    return found


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
    rst = [(PurePosixPath(path).name.split(".")[0], blob.decode("utf-8")) for path, blob in _documents(debs["python3.11-doc"])]
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
            query, description = pair[0], _finish_answer(*pair)
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
    from relevance_lens.retrieve import bm25_search  # bm25s is only needed when building

    run = bm25_search(dict(queries), dict(corpus), depth=depth)
    # four decimals: readable, and immune to the last-bit float noise between BLAS builds
    return {qid: {d: round(float(s), 4) for d, s in docs.items()} for qid, docs in run.items()}


def _metrics(qrels: Mapping[str, Mapping[str, int]], run: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    from relevance_lens.evaluate import evaluate

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
            raise InputError(f"{paths[package]}: no FAQ questions found inside; expected the Debian 12 layout of {package}")
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
        manifest["splits"]["train-weak"] = {"queries": len(queries), "passages": len(weak_corpus), "by_package": per_package}
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
        f"| {name} | {splits[name]['queries']} | {bm25[name]['RR@10']:.3f} | {bm25[name]['nDCG@10']:.3f} | {bm25[name]['R@100']:.3f} |"
        for name in splits
    ]
    faq = ", ".join(f"{p} {sources[p]['version']}" for p in FAQ_PACKAGES)
    weak = (
        f"\n`train-weak` holds {splits['train-weak']['queries']} weakly labelled man-page pairs from "
        f"{sum(1 for n in splits['train-weak']['by_package'].values() if n)} Debian packages: the NAME line's "
        "description is the query (\"list directory contents\"), the DESCRIPTION section (clipped to "
        f"{WEAK_MAX_CHARS} characters) its passage, in a corpus of its own (`corpus.train-weak.jsonl.gz`). "
        f"Its BM25 run (depth {WEAK_BM25_DEPTH}) is there for hard negatives. Use it for training only; "
        "no man page is in dev or test.\n"
        if "train-weak" in splits
        else ""
    )
    return f"""# FAQ retrieval collection

Questions from three FAQs shipped by Debian ({faq}); each question's own answer is its one
relevant passage, and all {manifest['corpus']['passages']} answers form the corpus
(`corpus.jsonl`: docid, title, text; never truncated). Query ids are `q-` + the answer's docid.
Splits are fixed by `{manifest['split_rule']}`, so a rebuild never moves a question.

| split | queries | BM25 RR@10 | nDCG@10 | R@100 |
|---|---|---|---|---|
{chr(10).join(rows)}
{weak}
Files per split: `queries.<split>.tsv`, `qrels.<split>.txt` (TREC), `bm25.<split>.run` (TREC run,
depth {BM25_DEPTH}, over the whole corpus). `manifest.json` records each source package's version and the
sha256 of its `.deb`; `LICENSES.md` holds the sources' licences. Rebuild with
`relevance-lens data build-faq` (same `.deb` files give the same bytes), load with
`relevance_lens.faq.load_faq("test")`.
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
