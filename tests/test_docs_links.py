"""The documentation's relative links resolve: every ``](path)`` and ``](path#anchor)`` of the Markdown files
(README.md, the project READMEs, docs/, datasets/, benchmarks/) names an existing file, and an anchor names a
heading of that file (GitHub's heading ids)."""
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOBS = ("README.md", "projects", "docs", "datasets", "benchmarks")
LINK = re.compile(r"\]\(([^)\s]+)\)")


def markdown_files() -> list:
    """Repository-relative paths of the documentation's Markdown files."""
    paths = []
    for top in GLOBS:
        full = os.path.join(REPO, top)
        if os.path.isfile(full):
            paths.append(top)
        for root, _, files in os.walk(full):
            paths += [os.path.relpath(os.path.join(root, f), REPO) for f in files if f.endswith(".md")]
    return sorted(paths)


def heading_ids(text: str) -> set:
    """GitHub's ids of the Markdown headings in ``text``: lower case, punctuation but ``-``/``_`` dropped, spaces
    to ``-``, a repeated id suffixed ``-1``, ``-2``, ...; headings inside code blocks are not headings."""
    ids, seen = set(), {}
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    for title in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.M):
        slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        ids.add(slug if count == 0 else f"{slug}-{count}")
    return ids


def broken_links(path: str, text: str) -> list:
    """The relative links of Markdown file ``path`` (repository-relative) whose file or heading does not exist."""
    broken = []
    for target in LINK.findall(re.sub(r"```.*?```", "", text, flags=re.S)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = os.path.normpath(os.path.join(REPO, os.path.dirname(path), file)) if file else \
            os.path.join(REPO, path)
        if not os.path.exists(resolved):
            broken.append(f"{target} (no file {os.path.relpath(resolved, REPO)})")
        elif anchor and resolved.endswith(".md"):
            with open(resolved) as f:
                if anchor not in heading_ids(f.read()):
                    broken.append(f"{target} (no heading #{anchor} in {os.path.relpath(resolved, REPO)})")
    return broken


def test_heading_ids_follow_github():
    text = "# Depth: `projects/snnet_dpt` (DPT on NYUv2)\n## Does stitching work?\n## Tests\n### Tests\n```\n# no\n```"
    assert heading_ids(text) == {"depth-projectssnnet_dpt-dpt-on-nyuv2", "does-stitching-work", "tests", "tests-1"}


def test_broken_links_are_found():
    assert broken_links("README.md", "[a](docs/nowhere.md) [b](README.md#no-such-heading) [c](https://x.org/y)") \
        == ["docs/nowhere.md (no file docs/nowhere.md)", "README.md#no-such-heading (no heading #no-such-heading in "
            "README.md)"]


@pytest.mark.parametrize("path", markdown_files())
def test_relative_links_resolve(path):
    with open(os.path.join(REPO, path)) as f:
        text = f.read()
    assert broken_links(path, text) == [], f"{path}: fix or remove these links"
