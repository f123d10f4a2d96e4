"""Turning Debian documentation sources into plain-text questions and answers.

Parsers for POD (perlfaq), reStructuredText (the Python FAQ), the Debian FAQ's plain text and
groff man pages. They are hand-written because no maintained library converts these formats to
plain text without rendering tool chains (pod2text, docutils/Sphinx, groff) that are not
dependencies here, and the FAQ structure (which heading is a question) is ours to decide anyway.
"""

from __future__ import annotations

import html.entities
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass


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


# ---------------------------------------------------------------- text helpers


def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _join_paragraphs(paragraphs: Iterable[str]) -> str:
    return "\n".join(p for p in paragraphs if p.strip())


def finish_answer(question: str, answer: str) -> str:
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
            answer = finish_answer(question, _join_paragraphs(paragraphs))
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
_RST_DROP = {
    "only",
    "contents",
    "index",
    "highlight",
    "toctree",
    "testsetup",
    "testcleanup",
    "raw",
    "image",
    "figure",
    "sectionauthor",
    "tabularcolumns",
}
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
        if _RST_UNDERLINE.fullmatch(title) or (
            i >= 2 and lines[i - 2].strip() and not _RST_UNDERLINE.fullmatch(lines[i - 2])
        ):
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
        entries.append(FaqEntry(f"pyfaq-{name}-{len(entries) + 1}", title, passage_title, finish_answer(title, body)))
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
    start = next(
        (i for i, l in enumerate(lines) if _DEB_CHAPTER.fullmatch(l.strip()) and not l[:1].isspace()), len(lines)
    )
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
        answer = finish_answer(question, _join_paragraphs(paragraphs))
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
    "em": "-",
    "en": "-",
    "hy": "-",
    "mi": "-",
    "bu": "*",
    "aq": "'",
    "dq": '"',
    "lq": '"',
    "rq": '"',
    "oq": "'",
    "cq": "'",
    "co": "(c)",
    "rg": "(R)",
    "tm": "(TM)",
    "ti": "~",
    "ha": "^",
    "ga": "`",
    "ul": "_",
    "bv": "|",
    "or": "|",
    "sl": "/",
    "rs": "\\",
    "ba": "|",
    ">=": ">=",
    "<=": "<=",
    "!=": "!=",
    "mu": "x",
    "de": " degrees",
    "->": "->",
    "<-": "<-",
    "==": "==",
    "pl": "+",
    "eq": "=",
    "sq": "*",
    "at": "@",
    "sh": "#",
    "Do": "$",
    "lB": "[",
    "rB": "]",
    "lC": "{",
    "rC": "}",
    "la": "<",
    "ra": ">",
    "fm": "'",
    "sd": '"',
    "tno": "~",
    "Fo": "<<",
    "Fc": ">>",
    "fo": "<",
    "fc": ">",
    "%": "",
    "Aq": "'",
    'L"': '"',
    'R"': '"',
    "C+": "C++",
    "--": "--",
    "PI": "pi",
    "C`": '"',
    "C'": '"',
    "lh": "<=",
    "rh": "=>",
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
_GROFF_ONE = {
    "-": "-",
    "e": "\\",
    "\\": "\\",
    "'": "'",
    "`": "`",
    ".": ".",
    " ": " ",
    "~": " ",
    "0": " ",
    "t": " ",
    "_": "_",
}
_ALTERNATING = {"BR", "RB", "BI", "IB", "RI", "IR"}
_TEXT_MACROS = {"B", "I", "SM", "SB", "UE", "ME"}
_BREAKS = {
    "PP",
    "LP",
    "P",
    "sp",
    "br",
    "Sp",
    "TP",
    "TQ",
    "HP",
    "RS",
    "RE",
    "nf",
    "fi",
    "EX",
    "EE",
    "Vb",
    "Ve",
    "Pp",
    "Bl",
    "El",
    "Bd",
    "Ed",
    "It",
    "INDENT",
    "UNINDENT",
    "IP",
    "SS",
    "Ss",
    "in",
    "ti",
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
    return [
        a[1:-1] if a.startswith('"') and a.endswith('"') and len(a) > 1 else a
        for a in re.findall(r'"[^"]*"?|\S+', rest)
    ]


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
                    label = (
                        args[0]
                        if args and macro == "IP"
                        else " ".join(args)
                        if macro != "It"
                        else _mdoc_line(args, mdoc_name)
                    )
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
