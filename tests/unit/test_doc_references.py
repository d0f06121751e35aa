"""Every section reference in the repository points at a page and a heading that exist.

Code, tests and docs cite the project's own pages by path and section number, e.g.
``docs/providers/smspartner.md`` followed by the section sign and ``1.2.2``. This test scans the
repository's text files and fails, with ``file:line`` for each, on a reference:

- whose page does not exist (paths are read from the repository root, or from the citing file's
  directory for relative links between docs pages);
- whose section number is not a heading of that page (``## 4.6 Webhooks``);
- with no page at all, outside ``docs/`` (inside a docs page, a bare section is the page's own);
- to the old references outside the repository: a provider reference or design page named by
  its bare file name (or any path but ``docs/design.md``) outside ``docs/``.

Several sections may follow one path, joined by commas, slashes, dashes, "and" or "or":
they inherit the path before them.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SIGN = "\u00a7"
EXTENSIONS = {".py", ".lua", ".md", ".yml", ".yaml", ".toml", ".json", ".html", ".js"}
SKIP_DIRS = {
    ".venv",
    ".tools",
    ".git",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "node_modules",
    "build",
    "dist",
}

REF = re.compile(SIGN + r"\s?(\d+(?:\.\d+)*)")
PATH_BEFORE = re.compile(r"([\w./-]+\.md)`{0,2}(?:\s?|\s*\n\s*#\s*)$")
DASHES = "\u2013\u2014"  # en and em dash, as in a range of sections
CONNECTOR = re.compile(rf"^[\s,;/&+\-{DASHES}]*(?:(?:and|or|to)\b)?[\s,;/\-{DASHES}#]*$")
HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)(?=[\s.:]|$)", re.MULTILINE)
OLD_NAMES = ("providers", "design")
OLD_PAGE = re.compile(r"[\w./-]*\b(?:" + "|".join(OLD_NAMES) + r")\.md\b")


def headings(page: Path) -> set[str]:
    """The section numbers a Markdown page has as headings."""
    return set(HEADING.findall(page.read_text(encoding="utf-8")))


def _resolve(name: str, citing: Path, root: Path) -> Path | None:
    for base in (root, citing.parent):
        candidate = (base / name).resolve()
        if candidate.is_file() and candidate.is_relative_to(root):
            return candidate
    return None


def check_text(citing: Path, text: str, root: Path = ROOT) -> list[str]:
    """Every bad reference in ``text`` (the content of ``citing``), as ``file:line: why``."""
    rel = citing.relative_to(root).as_posix()
    in_docs = rel.startswith("docs/") and rel.endswith(".md")
    problems: list[str] = []
    cache: dict[Path, set[str]] = {}

    def line_of(offset: int) -> int:
        return text.count("\n", 0, offset) + 1

    previous: tuple[int, str | None] | None = None  # (end offset, page name) of the last one
    for match in REF.finditer(text):
        section = match.group(1)
        before = text[max(0, match.start() - 200) : match.start()]
        named = PATH_BEFORE.search(before)
        page_name: str | None
        if named:
            page_name = named.group(1)
        elif (
            previous is not None
            and CONNECTOR.match(text[previous[0] : match.start()])
            and "\n\n" not in text[previous[0] : match.start()]
        ):
            page_name = previous[1]
        elif in_docs:
            page_name = citing.name
        else:
            page_name = None
        previous = (match.end(), page_name)
        where = f"{rel}:{line_of(match.start())}"
        if page_name is None:
            problems.append(f"{where}: {SIGN}{section} names no page")
            continue
        page = _resolve(page_name, citing, root)
        if page is None:
            problems.append(f"{where}: {page_name} {SIGN}{section}: no such page in the repository")
            continue
        if page not in cache:
            cache[page] = headings(page)
        if section not in cache[page]:
            problems.append(f"{where}: {page_name} {SIGN}{section}: no heading {section} there")
    # mkdocs.yml names pages relative to docs/ (its nav), as the pages themselves do.
    if not rel.startswith("docs/") and rel != "mkdocs.yml":
        for match in OLD_PAGE.finditer(text):
            if match.group(0) != "docs/design.md":
                where = f"{rel}:{line_of(match.start())}"
                problems.append(f"{where}: {match.group(0)} is not a page of this repository")
    return problems


def text_files(root: Path = ROOT) -> list[Path]:
    """The repository's own text files: what git tracks or would track (``.gitignore`` keeps
    virtualenvs and caches out), or a walk that skips them where there is no git."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=root, capture_output=True, check=False,
    )  # fmt: skip
    if listed.returncode == 0 and (root / ".git").exists():
        names = [n for n in listed.stdout.decode().split("\0") if n]
        return sorted(
            root / n for n in names if Path(n).suffix in EXTENSIONS and (root / n).is_file()
        )
    found: list[Path] = []
    for directory, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info")]
        found.extend(Path(directory) / f for f in files if Path(f).suffix in EXTENSIONS)
    return sorted(found)


def test_every_section_reference_in_the_repository_resolves() -> None:
    problems: list[str] = []
    scanned = 0
    for path in text_files():
        text = path.read_text(encoding="utf-8", errors="replace")
        if SIGN in text or ".md" in text:
            scanned += 1
            problems.extend(check_text(path, text))
    assert scanned > 50  # the scan really reached the code, tests and docs
    assert not problems, "bad references:\n" + "\n".join(problems)


def test_every_provider_page_has_its_numbered_sections() -> None:
    pages = {1: "smspartner", 2: "mailpartner", 3: "voicepartner", 4: "postal", 5: "emailmassivo"}
    for number, name in pages.items():
        assert str(number) in headings(ROOT / "docs" / "providers" / f"{name}.md")
    assert "6" in headings(ROOT / "docs" / "providers" / "index.md")


# -- the checker itself, on synthetic files ----------------------------------------------------

GOOD_PAGE = "# 1 Thing\n\n## 1.1 Part\n\n### 1.2.2 Send\n"


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    (tmp_path / "docs" / "providers").mkdir(parents=True)
    (tmp_path / "docs" / "providers" / "thing.md").write_text(GOOD_PAGE, encoding="utf-8")
    (tmp_path / "pkg").mkdir()
    return tmp_path


@pytest.mark.parametrize(
    "text",
    [
        f"# docs/providers/thing.md {SIGN}1.2.2\n",
        f"x = 1  # (docs/providers/thing.md {SIGN}1.1, {SIGN}1.2.2 and {SIGN}1)\n",
        f'"""``docs/providers/thing.md`` {SIGN}1.1-{SIGN}1.2.2."""\n',
        f"# see docs/providers/thing.md\n# {SIGN}1.1 for the rest\n",
        f"# docs/design.md is a page; the GSM set has {SIGN}\u00bf in it\n",
    ],
)
def test_the_checker_accepts_good_references(repo: Path, text: str) -> None:
    (repo / "docs/design.md").write_text("# Design\n", encoding="utf-8")
    assert check_text(repo / "pkg" / "mod.py", text, repo) == []


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (f"# docs/providers/other.md {SIGN}1.1\n", "no such page"),
        (f"# docs/providers/thing.md {SIGN}1.2.3\n", "no heading 1.2.3"),
        (f"# docs/providers/thing.md {SIGN}1.1, and later {SIGN}1.2.2\n", "names no page"),
        (f"# bare {SIGN}1.2.2\n", "names no page"),
        (f"# {OLD_NAMES[0]}.md {SIGN}1.2.2\n", "no such page"),
        (f"# as {OLD_NAMES[1]}.md says\n", "is not a page"),
        (f"# the reference/{OLD_NAMES[0]}.md table\n", "is not a page"),
    ],
)
def test_the_checker_reports_each_bad_reference_with_its_line(
    repo: Path, text: str, why: str
) -> None:
    problems = check_text(repo / "pkg" / "mod.py", "\n\n" + text, repo)
    assert problems, text
    assert all(p.startswith("pkg/mod.py:3: ") for p in problems), problems
    assert any(why in p for p in problems), problems


def test_inside_a_docs_page_a_bare_section_is_the_page_itself(repo: Path) -> None:
    page = repo / "docs" / "providers" / "thing.md"
    assert check_text(page, f"see {SIGN}1.2.2\n", repo) == []
    assert check_text(page, f"see {SIGN}9.9\n", repo) == [
        f"docs/providers/thing.md:1: thing.md {SIGN}9.9: no heading 9.9 there"
    ]
    assert check_text(page, f"see [thing.md {SIGN}1.1](thing.md)\n", repo) == []
