"""The manual's links hold: every relative link in README.md, BENCHMARKS.md and docs/*.md
points at a file that exists and, with an #anchor, at a heading of that file; the README
links every docs page; and the README's two quick-start commands are the ones CI runs.

Standard library only, no network: external links (http, https, mailto) are not checked.
"""
from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"

INSTALL_AND_SEARCH = (
    "python3 -m venv .venv && .venv/bin/python -m pip install torch==2.13.0 && "
    ".venv/bin/python -m pip install -e '.[test]' && "
    ".venv/bin/python -m nas.search --target-flops 400M"
)
RUN_TESTS = ".venv/bin/python -m pytest -q"

FENCE = re.compile(r"^\s{0,3}(`{3,}|~{3,})")
HEADING = re.compile(r"^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.S)
# [text](target) or ![alt](target), text without nested brackets; target up to the first
# space or closing parenthesis (an optional "title" after the space is allowed)
LINK = re.compile(r"!?\[([^\[\]]*)\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//)", re.I)  # http:, https:, mailto:, ...


def markdown_files() -> list[Path]:
    return sorted(ROOT.glob("*.md")) + sorted(DOCS.glob("*.md"))


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fence = [], None
    for number, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if fence is None and m:
            fence = m.group(1)
            continue
        if fence is not None:
            if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence):
                fence = None
            continue
        out.append((number, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: the rendered text (link targets and markup dropped),
    lower-cased, characters other than letters, digits, spaces, hyphens and underscores
    removed, spaces turned into hyphens."""
    text = re.sub(r"!?\[([^\[\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"<[^>]+>", "", text)
    text = text.lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every heading anchor of a Markdown file, duplicates numbered -1, -2, ... as GitHub does."""
    seen: dict[str, int] = {}
    out = set()
    for _, line in prose_lines(path.read_text(encoding="utf-8")):
        m = HEADING.match(line)
        if not m:
            continue
        base = slug(m.group(2))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(path: Path) -> list[tuple[int, str, str]]:
    """(line number, text, target) of every Markdown link outside code."""
    out = []
    for number, line in prose_lines(path.read_text(encoding="utf-8")):
        # code spans cannot hold links, but a link's text may be a code span: keep the
        # span's length and content shape, minus anything that could look like a link
        line = CODE_SPAN.sub(lambda m: "`" + re.sub(r"[\[\]()]", "_", m.group(2)) + "`", line)
        for m in LINK.finditer(line):
            out.append((number, m.group(1), m.group(2)))
    return out


def relative_links() -> list[tuple[Path, int, str]]:
    return [(path, number, target) for path in markdown_files() for number, _, target in links(path)
            if not EXTERNAL.match(target)]


def split(source: Path, target: str) -> tuple[Path, str | None]:
    path, _, anchor = target.partition("#")
    file = source if not path else (source.parent / unquote(path)).resolve()
    return file, (unquote(anchor) if "#" in target else None)


def test_the_markdown_files_are_found():
    names = {p.relative_to(ROOT).as_posix() for p in markdown_files()}
    assert {"README.md", "BENCHMARKS.md", "docs/reference.md"} <= names
    assert relative_links(), "no relative link found: the link pattern is broken"


@pytest.mark.parametrize("source,line,target", relative_links(),
                         ids=lambda v: v.relative_to(ROOT).as_posix() if isinstance(v, Path) else str(v))
def test_a_relative_link_points_at_an_existing_file_and_heading(source, line, target):
    where = f"{source.relative_to(ROOT)}:{line}: link ({target})"
    file, anchor = split(source, target)
    assert file.exists(), f"{where}: {file} does not exist"
    if anchor is not None:
        assert file.suffix == ".md", f"{where}: an #anchor into a file that is not Markdown"
        assert anchor in anchors(file), (
            f"{where}: {file.relative_to(ROOT)} has no heading whose anchor is #{anchor}")


def test_the_readme_links_every_docs_page():
    linked = {split(README, target)[0] for _, _, target in links(README) if not EXTERNAL.match(target)}
    missing = [p.relative_to(ROOT).as_posix() for p in sorted(DOCS.glob("*.md")) if p.resolve() not in linked]
    assert not missing, f"README.md does not link: {', '.join(missing)}"


def test_every_docs_page_has_a_title_and_a_link_back_to_the_readme():
    for page in sorted(DOCS.glob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        assert lines and re.match(r"^# \S", lines[0]), f"{page.name}: the first line is not a '# Title'"
        back = [t for n, _, t in links(page) if n <= 5 and split(page, t)[0] == README.resolve()]
        assert back, f"{page.name}: no link back to the README near the top"


def quick_start_commands() -> list[str]:
    """The bash blocks of the README's section "Quick start: the two commands"."""
    text = README.read_text(encoding="utf-8")
    m = re.search(r"^## Quick start: the two commands\n(.*?)(?=^## )", text, re.S | re.M)
    assert m, "README.md has no section '## Quick start: the two commands'"
    return re.findall(r"^```bash\n(.*?)\n```$", m.group(1), re.S | re.M)


def test_the_readme_still_gives_the_two_quick_start_commands_verbatim():
    assert quick_start_commands() == [INSTALL_AND_SEARCH, RUN_TESTS]


def test_ci_runs_the_readme_test_command():
    readme_test_command = quick_start_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert readme_test_command in lines, f".ci/run does not run the README's test command {readme_test_command!r}"
    # and installs the same pinned torch as the README's first command
    pin = re.search(r"torch==[\w.+-]+", quick_start_commands()[0]).group(0)
    assert any(pin in line.split() for line in lines), f".ci/run does not install {pin}"


@pytest.mark.parametrize("heading,expected", [
    ("Quick start: the two commands", "quick-start-the-two-commands"),
    ("The search: `python -m nas.search`", "the-search-python--m-nassearch"),
    ("Compound scaling: B1–B7 from a B0 (`python -m scaling`)", "compound-scaling-b1b7-from-a-b0-python--m-scaling"),
    ("Grid-search α, β, γ", "grid-search-α-β-γ"),
    ("Distributed search with NNI (`--engine nni`)", "distributed-search-with-nni---engine-nni"),
    ("snake_case and [a link](x.md)", "snake_case-and-a-link"),
])
def test_slug_matches_github(heading, expected):
    assert slug(heading) == expected


def test_duplicate_headings_are_numbered(tmp_path):
    page = tmp_path / "p.md"
    page.write_text("# A\n\n## Options\n\n```\n# not a heading\n```\n\n## Options\n\n## Options\n", encoding="utf-8")
    assert anchors(page) == {"a", "options", "options-1", "options-2"}
