"""Every document the code cites is in this repository, with every section it is cited for.

A citation names the file from the repository root and the section by number: `docs/NUMERICS.md §4.4`, also lists
(`§4.4, §4.5`, `§2 and §6`) and ranges (`§4.7–§4.8`). A section is a Markdown heading that starts with its number
(`## 4. "ggml" profile`, `### 4.4 Dot products`). Nothing may point outside the checkout: a user's clone has nothing
beside it, so a path into a shared folder next to it is a dead reference.
"""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".md", ".toml"}
SKIP_DIRS = {".git", ".nox", "out", "build", "dist", "__pycache__", ".pytest_cache", ".ruff_cache", ".hypothesis"}
OUTSIDE = ("/".join(("..", "shared")), "/".join(("shared", "docs")))  # spelled in pieces so this file passes too

NUM = r"\d+(?:\.\d+)*"
GAP = r"(?:\s|#)*"  # a citation may wrap onto the next line, also inside a `#` comment
DOC_REF = re.compile(r"(?<![\w./-])docs/([\w-]+)(?:(\.md)\b|(?![\w/-]|\.\w))")
FIRST_SECTION = re.compile(rf"{GAP}§\s*({NUM})")
NEXT_SECTION = re.compile(rf"{GAP}(?:,|and|or|–|-){GAP}§\s*({NUM})|–({NUM})")
# an upper-case document named without its docs/ path: <NAME>.md, or <NAME> followed by a section sign
BARE_DOC = re.compile(r"(?<![\w./-])([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*)(?:(\.md)\b|(?='?\s*§))")
HEADING = re.compile(rf"^#{{1,6}}\s+({NUM})\.?(?=\s|$)")


def repo_files() -> list[Path]:
    """The repository's .py, .md and .toml files: git's tracked and unignored ones, or a walk outside a checkout."""
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
        paths = [ROOT / p for p in out.split("\0") if p]
    except (OSError, subprocess.CalledProcessError):
        paths = [p for p in ROOT.rglob("*")
                 if not any(d in SKIP_DIRS or d.endswith(".egg-info") for d in p.relative_to(ROOT).parts[:-1])]
    return sorted({p for p in paths if p.suffix in SUFFIXES and p.is_file()})


def sections(doc: Path) -> list[str]:
    """The section numbers of a Markdown file's headings, in order (headings inside code fences do not count)."""
    found, fence = [], False
    for line in doc.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fence = not fence
        elif not fence and (m := HEADING.match(line)):
            found.append(m.group(1))
    return found


def citations(text: str) -> list[tuple[int, str, bool, list[str]]]:
    """(line, document name, written with .md, cited section numbers) for every `docs/<NAME>.md §N` in a text."""
    refs = []
    for m in DOC_REF.finditer(text):
        nums, pos = [], m.end()
        if first := FIRST_SECTION.match(text, pos):
            nums.append(first.group(1))
            pos = first.end()
            while more := NEXT_SECTION.match(text, pos):
                nums.append(more.group(1) or more.group(2))
                pos = more.end()
        refs.append((text.count("\n", 0, m.start()) + 1, m.group(1), bool(m.group(2)), nums))
    return refs


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(ROOT)}:{line}"


def test_cited_documents_and_sections_exist():
    problems = []
    known: dict[Path, set[str]] = {}
    for path in repo_files():
        for line, name, has_md, nums in citations(path.read_text(encoding="utf-8")):
            doc = ROOT / "docs" / f"{name}.md"
            if not has_md:
                problems.append(f"{where(path, line)}: docs/{name} is not a file; cite docs/<NAME>.md")
            elif not doc.is_file():
                problems.append(f"{where(path, line)}: docs/{name}.md does not exist")
            else:
                have = known.setdefault(doc, set(sections(doc)))
                problems += [f"{where(path, line)}: docs/{name}.md has no section {n}" for n in nums if n not in have]
    assert not problems, "dead documentation references:\n" + "\n".join(problems)


def test_documents_are_cited_by_their_path():
    """A bare <NAME>.md or <NAME> §4 tells a reader neither where the file is nor lets the test above check it."""
    problems = []
    for path in repo_files():
        text = path.read_text(encoding="utf-8")
        for m in BARE_DOC.finditer(text):
            name = m.group(1)
            if m.group(2) and (ROOT / f"{name}.md").is_file():
                continue  # a top-level file such as README.md, cited by its path
            problems.append(f"{where(path, text.count(chr(10), 0, m.start()) + 1)}: {m.group(0).strip()!r}; "
                            f"cite it as docs/{name}.md §<N>")
    assert not problems, "documents cited without their path:\n" + "\n".join(problems)


def test_nothing_points_outside_the_repository():
    problems = [f"{where(path, n)}: {line.strip()}" for path in repo_files()
                for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
                if any(s in line for s in OUTSIDE)]
    assert not problems, "references to files outside the repository:\n" + "\n".join(problems)


def test_section_numbers_are_unique():
    docs = sorted((ROOT / "docs").glob("*.md"))
    assert docs, "docs/ has no Markdown files"
    for doc in docs:
        numbers = sections(doc)
        assert numbers, f"{doc.relative_to(ROOT)} has no numbered sections"
        dupes = sorted({n for n in numbers if numbers.count(n) > 1})
        assert not dupes, f"{doc.relative_to(ROOT)}: section numbers used twice: {dupes}"


def test_citation_parser():
    # "_/" stands for "docs/" and {N} for a document's name: this file is scanned too
    text = ("see _/{N}.md §4.4, §4.5 and §6; _/FORMATS.md §2, rule 1\n"
            "# _/{N}-AVX2.md\n#   §4.7–4.8, _/HOSTS of the project, _/img/a.png, x/_/FORMATS.md §9")
    text = text.replace("_/", "docs/").format(N="NUMERICS")
    assert citations(text) == [(1, "NUMERICS", True, ["4.4", "4.5", "6"]), (1, "FORMATS", True, ["2"]),
                               (2, "NUMERICS-AVX2", True, ["4.7", "4.8"]), (3, "HOSTS", False, [])]
    text = "{N}.md §4, {N} §5.1, {N}-AVX2 §8.3, README.md, docs/{N}.md §4, FORMATS = 1".format(N="NUMERICS")
    expected = [s.format(N="NUMERICS") for s in ("{N}.md", "{N}", "{N}-AVX2", "README.md")]
    assert [m.group(0).strip() for m in BARE_DOC.finditer(text)] == expected
