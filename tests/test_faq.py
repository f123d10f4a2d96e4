"""The FAQ collection: parsers on inline snippets, the split rule, the .deb reader, and the shipped data."""

from __future__ import annotations

import io
import json
import lzma
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from relevance_lens.data.faq import (
    DATA_DIR,
    faq_paths,
    load_faq,
    manpage_pair,
    parse_debian_faq,
    parse_pod_faq,
    parse_rst_faq,
    pod_inline,
    read_deb,
    rst_inline,
    split_of,
)
from relevance_lens.errors import InputError

# ---------------------------------------------------------------- POD

POD = """\
=head1 NAME

perlfaq4 - Data Manipulation

=head1 DESCRIPTION

This section of the FAQ answers questions related to manipulating data.

=head1 Data: Numbers

=head2 Why is int() broken?
X<int> X<broken>

Your C<int()> is most probably working just fine. See
L<perlop/"Floating-point Arithmetic"> and L<the docs|http://perldoc.perl.org/>.

    print int(0.6/0.2-2), "\\n";

    print 1;

=head2 How do I compare?

Use C<< $a <=> $b >> or B<cmp>, I<never> E<lt>E<gt> on strings:

=over 4

=item *

numbers sort with F<sort.pl>

=back

=head2 Empty?

=head1 AUTHOR AND COPYRIGHT

Copyright (c) 1997-2010 Tom Christiansen.
"""


def test_pod_questions_titles_and_answers():
    entries = parse_pod_faq(POD, "perlfaq4")
    assert [e.question for e in entries] == ["Why is int() broken?", "How do I compare?", "Empty?"]
    assert [e.docid for e in entries] == ["perlfaq4-1", "perlfaq4-2", "perlfaq4-3"]
    first, second, empty = entries
    assert first.qid == "q-perlfaq4-1"
    assert first.title == "perlfaq4: Data Manipulation / Data: Numbers"
    assert first.answer.split("\n") == [
        'Your int() is most probably working just fine. See "Floating-point Arithmetic" in perlop and the docs.',
        'print int(0.6/0.2-2), "\\n";',
        "print 1;",
    ]
    assert second.answer == "Use $a <=> $b or cmp, never <> on strings:\n- numbers sort with sort.pl"
    assert empty.answer == ""  # the builder drops answers this short
    assert "Copyright" not in second.answer + empty.answer


@pytest.mark.parametrize(
    "pod, text",
    [
        ("C<foo>", "foo"),
        ("C<< $x->[0] >>", "$x->[0]"),
        ("C<<< a >> b >>>", "a >> b"),
        ("B<I<nested>> code", "nested code"),
        ("E<gt>E<lt>E<verbar>E<sol>E<0xEF>E<eacute>", "><|/\u00efé"),
        ("L<perlfunc>", "perlfunc"),
        ("L<sprintf()|perlfunc/sprintf>", "sprintf()"),
        ('L</"Local">', '"Local"'),
        ("L<https://cpan.org>", "https://cpan.org"),
        ("see X<index>Z<>this", "see this"),
    ],
)
def test_pod_inline(pod, text):
    assert pod_inline(pod) == text


# ---------------------------------------------------------------- reStructuredText

RST = """\
:tocdepth: 2

===============
Programming FAQ
===============

.. only:: html

   .. contents::

General Questions
=================

.. _faq-debugger:

Is there a debugger?
--------------------

Yes. The :mod:`pdb` module and :func:`breakpoint` are documented in the
:ref:`Library Reference <pdb>`; see ``python -m pdb`` and `PyCharm
<https://www.jetbrains.com/pycharm/>`_, as **strongly** advised in :pep:`8`.

.. XXX this comment is dropped
   with its indented continuation

* first item
* second item

An example::

   def f(*args):
       return args

How do I debug?
---------------

.. code-block:: python

   import pdb; pdb.set_trace()

See :ref:`faq-debugger` and *emphasis*.
"""


def test_rst_sections_questions_and_markup():
    entries = parse_rst_faq(RST, "programming")
    assert [e.question for e in entries] == ["Is there a debugger?", "How do I debug?"]
    assert [e.docid for e in entries] == ["pyfaq-programming-1", "pyfaq-programming-2"]
    assert {e.title for e in entries} == {"Programming FAQ: General Questions"}
    lines = entries[0].answer.split("\n")
    assert lines[0] == (
        "Yes. The pdb module and breakpoint are documented in the Library Reference; "
        "see python -m pdb and PyCharm, as strongly advised in PEP 8."
    )
    assert lines[1:4] == ["* first item", "* second item", "An example:"]
    assert "\n".join(lines[4:]) == "def f(*args):\n    return args"
    assert "XXX" not in entries[0].answer and "contents" not in entries[0].answer
    # a bare :ref: to a label reads as the title it labels
    assert entries[1].answer == "import pdb; pdb.set_trace()\nSee Is there a debugger? and emphasis."


@pytest.mark.parametrize(
    "rst, text",
    [
        (":func:`~os.path.join`", "join"),
        (":class:`!Foo`", "Foo"),
        (":rfc:`2822`", "RFC 2822"),
        ("`text`_ and `anon <http://x>`__", "text and anon"),
        ("``*args`` stays", "*args stays"),
        ("2*3*4 keeps stars", "2*3*4 keeps stars"),
    ],
)
def test_rst_inline(rst, text):
    assert rst_inline(rst) == text


# ---------------------------------------------------------------- Debian FAQ

DEBIAN = """\
                      The Debian GNU/Linux FAQ

Table of Contents

1. Definitions and overview
    1.1. What is this FAQ?

Chapter 1. Definitions and overview

1.1.\u00a0What is this FAQ?

    This document gives frequently asked questions. See the Debian Free
    Software Guidelines (https://www.debian.org/social_
    contract#guidelines) and GNU/
    Linux.

      * full featured: many packages.

      * free to use.

1.2.\u00a0What is the difference between Debian GNU/Linux and other Linux
distributions? Why should I choose Debian?

    These key features distinguish Debian from other Linux distributions.

Chapter 2. Getting Debian

2.1.\u00a0Where is it?

    Everywhere.
"""


def test_debian_faq_headings_wrapped_lines_and_chapters():
    entries = parse_debian_faq(DEBIAN)
    assert [e.docid for e in entries] == ["debfaq-1.1", "debfaq-1.2", "debfaq-2.1"]
    assert entries[1].question == (
        "What is the difference between Debian GNU/Linux and other Linux distributions? Why should I choose Debian?"
    )
    assert entries[0].title == "Debian FAQ: Definitions and overview"
    assert entries[2].title == "Debian FAQ: Getting Debian"
    assert entries[0].answer.split("\n") == [
        "This document gives frequently asked questions. See the Debian Free Software Guidelines "
        "(https://www.debian.org/social_contract#guidelines) and GNU/Linux.",
        "* full featured: many packages.",
        "* free to use.",
    ]
    assert entries[2].answer == "Everywhere."


# ---------------------------------------------------------------- man pages

MAN = r""".\" a comment
.TH LS "1" "September 2022" "GNU coreutils 9.1" "User Commands"
.de XX
.SH NOT A SECTION
..
.SH NAME
ls \- list directory contents
.SH SYNOPSIS
.B ls
[\fI\,OPTION\/\fR]...
.SH DESCRIPTION
.PP
List information about the FILEs\(emthe current directory by default.
Sort entries if none of \fB\-cftuvSUX\fR nor
.BR \-\-sort " is"
specified.
.TP
\fB\-a\fR, \fB\-\-all\fR
do not ignore entries starting with .
.SH AUTHOR
Written by Richard M. Stallman.
"""

MDOC = """.Dd $Mdocdate: December 16 2022 $
.Dt SCP 1
.Sh NAME
.Nm scp
.Nd OpenSSH secure file copy
.Sh DESCRIPTION
.Nm
copies files between hosts, using
.Xr ssh 1 .
.It Fl r
Recursively copy entire directories.
"""


def test_manpage_pairs():
    query, description = manpage_pair(MAN)
    assert query == "list directory contents"
    assert description == (
        "List information about the FILEs-the current directory by default. "
        "Sort entries if none of -cftuvSUX nor --sort is specified.\n"
        "-a, --all do not ignore entries starting with ."
    )
    query, description = manpage_pair(MDOC)
    assert query == "OpenSSH secure file copy"
    assert description == "scp copies files between hosts, using ssh(1).\n-r Recursively copy entire directories."
    assert manpage_pair(".TH X 1\n.SH NAME\nx \\- no description section\n") is None


# ---------------------------------------------------------------- .deb reader


def _tar_xz(files: dict[str, bytes]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("./usr/share/man/man1/alias.1.gz")
        link.type, link.linkname = tarfile.SYMTYPE, "ls.1.gz"
        tar.addfile(link)
    return lzma.compress(raw.getvalue())


def _ar(members: dict[str, bytes]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members.items():
        out.append(f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{'100644':<8}{len(data):<10}`\n".encode())
        out.append(data + (b"\n" if len(data) % 2 else b""))
    return b"".join(out)


def test_read_deb_without_external_tools(tmp_path):
    control = _tar_xz({"./control": b"Package: demo\nVersion: 1.2-3\nDescription: x\n more\n"})
    data = _tar_xz({"./usr/share/man/man1/ls.1.gz": b"page", "./usr/share/doc/demo/copyright": b"GPL"})
    deb = tmp_path / "demo_1.2-3_all.deb"
    deb.write_bytes(_ar({"debian-binary": b"2.0\n", "control.tar.xz": control, "data.tar.xz": data}))
    package = read_deb(deb, lambda name: name.startswith("usr/share/man/"))
    assert (package.name, package.version) == ("demo", "1.2-3")
    assert package.files == {"usr/share/man/man1/ls.1.gz": b"page"}  # the symlink alias is skipped
    assert len(package.sha256) == 64
    (tmp_path / "bad.deb").write_bytes(b"not an archive")
    with pytest.raises(InputError, match="not a .deb"):
        read_deb(tmp_path / "bad.deb", lambda name: True)


# ---------------------------------------------------------------- splits


def test_split_rule_is_a_fixed_function_of_the_query_id():
    # pinned: a change to the rule would silently reshuffle every published number
    assert split_of("q-perlfaq4-2") == "train"
    assert split_of("q-debfaq-1.4") == "dev"
    assert split_of("q-debfaq-1.3") == "test"
    shares = Counter(split_of(f"q-{i}") for i in range(20000))
    assert abs(shares["train"] / 20000 - 0.70) < 0.02
    assert abs(shares["dev"] / 20000 - 0.15) < 0.02
    assert abs(shares["test"] / 20000 - 0.15) < 0.02


def test_unknown_split_is_refused():
    with pytest.raises(InputError, match="expected one of train, dev, test, train-weak"):
        faq_paths("validation")


# ---------------------------------------------------------------- the shipped collection


@pytest.fixture(scope="module")
def shipped():
    manifest = json.loads((DATA_DIR / "manifest.json").read_text())
    return manifest, {split: load_faq(split) for split in manifest["splits"]}


def test_shipped_splits_are_consistent(shipped):
    manifest, splits = shipped
    assert set(splits) == {"train", "dev", "test", "train-weak"}
    faq_corpus = splits["test"].corpus
    answered: Counter[str] = Counter()
    for name, split in splits.items():
        assert len(split.queries) == manifest["splits"][name]["queries"]
        assert set(split.qrels) == set(split.queries)
        for qid, judged in split.qrels.items():
            assert list(judged.values()) == [1], qid  # exactly one relevant passage
            (docid,) = judged
            assert docid in split.corpus and qid == f"q-{docid}"
            answered[docid] += 1
            first_line = split.corpus[docid].text.split("\n", 1)[0]
            assert first_line.lower().rstrip("?:. ") != split.queries[qid].lower().rstrip("?:. "), qid
        assert set(split.run) <= set(split.queries)
        assert all(docid in split.corpus for docs in split.run.values() for docid in docs)
        if name != "train-weak":
            assert split.corpus == faq_corpus
            assert all(split_of(qid) == name for qid in split.queries)
    assert len(faq_corpus) == manifest["corpus"]["passages"]
    assert all(answered[docid] == 1 for docid in faq_corpus)  # every answer belongs to one question


def test_weak_pairs_stay_out_of_dev_and_test(shipped):
    manifest, splits = shipped
    weak = splits["train-weak"]
    assert weak.corpus.keys().isdisjoint(splits["test"].corpus.keys())
    assert all(docid.startswith("man-") for docid in weak.corpus)
    for name in ("train", "dev", "test"):
        assert weak.queries.keys().isdisjoint(splits[name].queries.keys())
        ids = set(splits[name].queries) | {d for docs in splits[name].run.values() for d in docs}
        assert not any(i.startswith(("man-", "q-man-")) for i in ids)
    by_package = manifest["splits"]["train-weak"]["by_package"]
    for package, count in by_package.items():  # docids are man-<package>-<page>
        longer = [p for p in by_package if p != package and p.startswith(package)]
        owned = [
            d
            for d in weak.corpus
            if d.startswith(f"man-{package}-") and not any(d.startswith(f"man-{p}-") for p in longer)
        ]
        assert len(owned) == count, package
    assert sum(by_package.values()) == len(weak.corpus) == manifest["splits"]["train-weak"]["passages"]
    licences = (DATA_DIR / "LICENSES.md").read_text()
    for package in by_package:
        assert f"| {package} | {manifest['sources'][package]['version']} |" in licences


def test_files_and_manifest_name_their_sources():
    manifest = json.loads((DATA_DIR / "manifest.json").read_text())
    for package in ("perl-doc", "python3.11-doc", "debian-faq"):
        assert len(manifest["sources"][package]["sha256"]) == 64
    assert set(manifest["bm25"]) == set(manifest["splits"])
    for path in Path(DATA_DIR).iterdir():
        assert path.stat().st_size < 3_000_000, path  # the package stays small
