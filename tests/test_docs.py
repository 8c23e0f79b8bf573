"""The docs a comment points to exist, and the README stays a README.

A citation of a documentation section, in code or in the docs, is written

    docs/<page>.md, "<heading>"      (or README.md, "<heading>"; BUILD_NOTES.md, "<heading>")

with the heading's text as it stands after its ``#``s; it may wrap over comment or docstring
lines. Inside docs/ a page may name a sibling without the folder (``design.md, "Layers"``), and a
Markdown link may stand for the page (``[docs/data.md](docs/data.md), "The records"``).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 400
# Folders whose files may cite the docs; build outputs and environments are not walked.
SOURCE_DIRS = ("configs", "input_pipeline", "mrp_jax", "tests", "docs", "launch", ".ci")
SOURCE_SUFFIXES = {".py", ".sh", ".toml", ".yaml", ".yml", ".md", ""}
ROOT_FILES = ("README.md", "BUILD_NOTES.md", "pyproject.toml", "Makefile")

# A page, written bare or as the target of a Markdown link, then a comma and a quoted heading.
CITATION = re.compile(
    r"(?:\[[^\]\n]*\]\()?(?P<page>(?:docs/)?[\w.-]+\.md)\)?,\s+\"(?P<heading>[^\"\n]{1,100})\"")
# A section cited another way: the page without ".md", or the heading in single quotes.
LOOSE_CITATION = re.compile(r"\b(?:README|BUILD_NOTES)(?!\.md),\s*[\"']|\.md,\s+'")
# Any mention of a page under docs/, cited with a heading or not.
DOCS_PAGE = re.compile(r"\bdocs/[\w-]+\.md\b")
# An issue of this project's tracker: "issue 14", "issues #20, #21", "(#14)". Upstream issues
# are written with their repository (openxla/xla#32231) and are not matched.
ISSUE = re.compile(r"(?i)\bissues?\s+#?\d+|(?<![\w/.-])#\d+\b")
# A line break inside a comment or docstring, with the next line's indentation and "#".
_WRAP = re.compile(r"[ \t]*\n[ \t]*(?:#+[ \t]*)?")


def _source_files() -> list[Path]:
  files = [ROOT / name for name in ROOT_FILES]
  for folder in SOURCE_DIRS:
    for path in sorted((ROOT / folder).rglob("*")):
      if path.is_file() and path.suffix in SOURCE_SUFFIXES and "__pycache__" not in path.parts:
        files.append(path)
  # This file's own examples are not citations.
  return [path for path in files if path.exists() and path != Path(__file__).resolve()]


def _headings(page: Path) -> set[str]:
  """The page's Markdown headings (ATX style), outside fenced code blocks."""
  headings, fenced = set(), False
  for line in page.read_text(encoding="utf-8").splitlines():
    if line.startswith("```"):
      fenced = not fenced
    elif not fenced and (match := re.match(r"#{1,6}\s+(.+?)\s*#*\s*$", line)):
      headings.add(match.group(1))
  return headings


def _resolve(page: str, citing: Path) -> Path:
  """A page named bare inside docs/ is a sibling (README.md and BUILD_NOTES.md are the root's);
  otherwise paths are from the root."""
  if citing.parent == ROOT / "docs" and "/" not in page and page not in ROOT_FILES:
    return ROOT / "docs" / page
  return ROOT / page


def citations(path: Path) -> list[tuple[str, str, int]]:
  """(page, heading, line) of every section citation in the file."""
  text = path.read_text(encoding="utf-8", errors="replace")
  # Every line break becomes one space, so a citation may wrap; each break's place in the
  # joined text gives the line numbers back.
  breaks: list[int] = []
  pieces, position = [], 0
  for match in _WRAP.finditer(text):
    pieces.append(text[position:match.start()])
    breaks.append(sum(map(len, pieces)) + len(breaks))
    position = match.end()
  pieces.append(text[position:])
  flat = " ".join(pieces)
  return [(match["page"], " ".join(match["heading"].split()),
           1 + sum(b < match.start() for b in breaks))
          for match in CITATION.finditer(flat)]


def comments_and_docstrings(path: Path) -> list[tuple[str, int]]:
  """(text, line) of every comment and docstring of a Python file."""
  source = path.read_text(encoding="utf-8")
  found = [(token.string, token.start[0])
           for token in tokenize.generate_tokens(io.StringIO(source).readline)
           if token.type == tokenize.COMMENT]
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
      if (docstring := ast.get_docstring(node, clean=False)) is not None:
        found.append((docstring, node.body[0].lineno))
  return found


def test_every_cited_section_exists():
  missing = []
  for path in _source_files():
    for page, heading, line in citations(path):
      if heading.startswith("<"):  # a placeholder in a description of the syntax
        continue
      target = _resolve(page, path)
      where = f"{path.relative_to(ROOT)}:{line}"
      if not target.exists():
        missing.append(f"{where}: cites {page}, which does not exist")
      elif heading not in _headings(target):
        missing.append(f'{where}: cites {page}, "{heading}", which has no such heading')
  assert not missing, ("fix the citation or the heading:\n" + "\n".join(missing))


def test_citations_use_one_syntax():
  loose = [f"{path.relative_to(ROOT)}: {match.group(0)!r}"
           for path in _source_files()
           for match in LOOSE_CITATION.finditer(path.read_text(encoding="utf-8", errors="replace"))]
  assert not loose, ('cite a section as README.md, "<heading>" (or docs/<page>.md, "<heading>"), '
                     "so that its existence is checked:\n" + "\n".join(loose))


def test_every_mentioned_docs_page_exists():
  missing = [f"{path.relative_to(ROOT)}: {page}"
             for path in _source_files()
             for page in DOCS_PAGE.findall(path.read_text(encoding="utf-8", errors="replace"))
             if not (ROOT / page).exists()]
  assert not missing, "pages mentioned but not in docs/:\n" + "\n".join(missing)


def test_no_comment_cites_an_issue_number():
  found = [f"{path.relative_to(ROOT)}:{line}: {match.group(0)!r}"
           for path in _source_files() if path.suffix == ".py"
           for text, line in comments_and_docstrings(path)
           for match in ISSUE.finditer(text)]
  assert not found, ("say what the code does and why, not which issue asked for it:\n"
                     + "\n".join(found))


def test_markdown_links_resolve():
  broken = []
  for path in _source_files():
    if path.suffix == ".md":
      for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text(encoding="utf-8")):
        if not target.startswith(("http://", "https://")) and not (path.parent / target).exists():
          broken.append(f"{path.relative_to(ROOT)}: {target}")
  assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


def test_readme_stays_short():
  lines = len((ROOT / "README.md").read_text(encoding="utf-8").splitlines())
  assert lines <= README_MAX_LINES, (
      f"README.md has {lines} lines (at most {README_MAX_LINES}): move reference material to "
      "a page under docs/ and point to it")


@pytest.mark.parametrize("text, expected", [
    ('# see (docs/performance.md, "Memory\n# plan")', [("docs/performance.md", "Memory plan")]),
    ('"""Measured (docs/performance.md,\n  "Compiled for an H100")."""',
     [("docs/performance.md", "Compiled for an H100")]),
    ('[docs/data.md](docs/data.md), "The records"', [("docs/data.md", "The records")]),
    ("# a page without a heading: docs/data.md", []),
])
def test_citation_syntax(tmp_path, text, expected):
  path = tmp_path / "module.py"
  path.write_text(text)
  assert [(page, heading) for page, heading, _ in citations(path)] == expected


@pytest.mark.parametrize("text, cites", [
    ("# issue #14 asked for it", True), ("# issues 20 and 21", True), ("# fixed in #21", True),
    ("# openxla/xla#32231 reports it", False), ("# colour '#1f77b4'", False),
])
def test_issue_pattern(text, cites):
  assert bool(ISSUE.search(text)) == cites
