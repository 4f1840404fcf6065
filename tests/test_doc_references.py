"""Every reference to a section of a document names a heading that document has.

Code, tests, benchmarks and the documents themselves point at sections as
``docs/performance.md, "Title"``, ``docs/performance.md ("Title")``, ``docs/protocol.md's
"Title"`` or ``docs/operations.md`, "Title"``, the title often broken over two lines of a comment
or docstring, and sometimes a second title after ``and``. A section that moves to another file,
or a heading that is renamed, leaves such a reference pointing at nothing: this test finds every
reference of those forms and asserts that the named file has a heading with that title.

A section's title is a heading's or a paragraph's bold lead (``**Leases run on the leader's
clock.**``). The forms in use name it whole or by its short form: the title without its trailing
qualifier in parentheses ("The queue rows' key" for "The queue rows' key (sixth round)"), or
its words before a colon or a comma ("Stage 1" for "Stage 1: every broker hosts every group").
A reference that gives a qualifier must give the section's own ("(this round)" names nothing).
Relative links between documents (``[text](other.md#anchor)``) must name a file and an anchor
that exist.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_DIRS = {".git", ".venv", ".nox", "__pycache__", "node_modules", "build", "dist", "results"}
SUFFIXES = {".py", ".md", ".sh", ".toml", ".txt", ".cfg"}

# docs/<name>.md, then what the forms in use put between it and the title (a backtick, "'s",
# a comma, an opening parenthesis, a line break with a comment's "#"), then the quoted title.
# A second title may follow after "and" or a comma.
_GAP = r"[`]?(?:'s)?[,(]?(?:\s|#|>)*"
_TITLE = r"\"([^\"]{2,300}?)\""
_THEN = r"(?:\s|#|>)*(?:and|,)(?:\s|#|>)*"
REFERENCE = re.compile(r"docs/([A-Za-z0-9_-]+)\.md" + _GAP + _TITLE + "(?:" + _THEN + _TITLE + ")?")
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*#*\s*$", re.MULTILINE)
BOLD_LEAD = re.compile(r"^(?:[-*]\s+|\d+\.\s+)?\*\*([^*]+?)[.:]?\*\*", re.MULTILINE)
SHORT_END = re.compile(r": |, | \(")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
SPLIT_PATH = re.compile(r"docs/[ \t]*\n[ \t#>]*[A-Za-z0-9_-]+\.md")
"""``docs/`` ending a line, the file's name on the next: a reference the pattern cannot read."""
LINK = re.compile(r"\]\(([A-Za-z0-9_./-]+\.md)?(?:#([A-Za-z0-9_-]+))?\)")


def _normal(title: str) -> str:
    """One spacing, comment markers of a broken line gone, one kind of quote."""
    title = re.sub(r"\s*\n\s*(?:[#>]\s*)*", " ", title)
    title = re.sub(r"\s+", " ", title).strip()
    return title.replace('"', "'").replace("`", "")


def _files() -> Iterator[Path]:
    for folder, dirs, names in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        for name in names:
            path = Path(folder) / name
            if path.suffix in SUFFIXES and path != Path(__file__).resolve():
                yield path


def headings(doc: Path) -> set[str]:
    """The titles of ``doc``'s headings, outside code blocks."""
    return {_normal(t) for t in HEADING.findall(FENCE.sub("", doc.read_text()))}


def titles_of(doc: Path) -> set[str]:
    """Every title a reference may name in ``doc``: headings, bold leads, their short forms."""
    text = FENCE.sub("", doc.read_text())
    full = {_normal(t) for t in HEADING.findall(text) + BOLD_LEAD.findall(text)}
    short = {title[: m.start()] for title in full for m in SHORT_END.finditer(title)}
    return full | short


def _anchor(title: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def references() -> list[tuple[str, int, str, str]]:
    """(file, line, document, title) for every reference in the repository."""
    found = []
    for path in _files():
        text = path.read_text(errors="replace")
        for match in REFERENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            where = str(path.relative_to(ROOT))
            for title in match.group(2, 3):
                if title is not None:
                    found.append((where, line, match.group(1), _normal(title)))
    return found


def test_references_name_existing_headings() -> None:
    cache: dict[str, set[str] | None] = {}
    broken = []
    found = references()
    for where, line, name, title in found:
        if name not in cache:
            doc = DOCS / f"{name}.md"
            cache[name] = titles_of(doc) if doc.exists() else None
        titles = cache[name]
        if titles is None:
            broken.append(f'{where}:{line}: docs/{name}.md does not exist ("{title}")')
        elif title not in titles:
            broken.append(f'{where}:{line}: docs/{name}.md has no heading "{title}"')
    for path in _files():
        text = path.read_text(errors="replace")
        for match in SPLIT_PATH.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            broken.append(f"{path.relative_to(ROOT)}:{line}: a path broken over two lines")
    assert len(found) > 100, "the pattern no longer finds the repository's references"
    assert not broken, "\n".join(broken)


def test_links_between_documents_resolve() -> None:
    broken = []
    for doc in sorted(DOCS.glob("*.md")):
        for target, anchor in LINK.findall(FENCE.sub("", doc.read_text())):
            path = (doc.parent / target).resolve() if target else doc
            if not path.exists():
                broken.append(f"{doc.name}: {target} does not exist")
            elif anchor and anchor not in {_anchor(t) for t in headings(path)}:
                broken.append(f"{doc.name}: {target or doc.name} has no heading for #{anchor}")
    assert not broken, "\n".join(broken)


def test_the_forms_in_use_are_read(tmp_path: Path) -> None:
    """The pattern reads each form; a title no section has, or a wrong qualifier, is not found."""
    text = (
        'see docs/performance.md, "The\n    # leader loop per request" and "Bytes on disk"; '
        'docs/protocol.md`, "Between\n> brokers"; docs/replication.md\'s "Stage 1"'
    )
    found = [(m.group(1), m.group(2), m.group(3)) for m in REFERENCE.finditer(text)]
    assert found == [
        ("performance", "The\n    # leader loop per request", "Bytes on disk"),
        ("protocol", "Between\n> brokers", None),
        ("replication", "Stage 1", None),
    ]
    doc = tmp_path / "doc.md"
    doc.write_text(
        "# Doc\n\n## Bytes on disk (issue 14)\n\n### Stage 1: every broker hosts every group\n\n"
        "**Leases run on the leader's clock.** Text.\n\n```sh\n# Not a heading\n```\n"
    )
    titles = titles_of(doc)
    assert {"Bytes on disk", "Bytes on disk (issue 14)", "Stage 1"} <= titles
    assert "Leases run on the leader's clock" in titles
    assert _normal("Between\n> brokers") == "Between brokers"
    assert not {"Bytes on disk (issue 11)", "Bytes on", "Not a heading"} & titles


def test_the_current_performance_document_names_sections_that_exist() -> None:
    """docs/performance.md names the sections behind its figures by their titles alone
    ("A replica's per-append path (seventh round)"): each is a section of it or of
    docs/performance-history.md, where the rounds' subsections are kept."""
    doc = DOCS / "performance.md"
    titles = titles_of(doc) | titles_of(DOCS / "performance-history.md")
    text = re.sub(r"`[^`]*`", "", REFERENCE.sub("", FENCE.sub("", doc.read_text())))
    named = {_normal(q) for q in re.findall(r"\"([A-Z][^\"]{2,200})\"", text)}
    missing = sorted(q for q in named if q not in titles and "..." not in q)
    assert len(named) > 20
    assert not missing, missing
