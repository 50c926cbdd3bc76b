"""Extract and run the ```python blocks of a Markdown file (README.md, docs/*.md).

The blocks of one file run in order in one namespace (a page's later examples build on its earlier
ones), in a temporary working directory, with matplotlib on the Agg backend.

A block is marked by an HTML comment on the line(s) just before its fence (invisible in the
rendered page):

* ``<!-- docs-test: skip (reason) -->``: never run (e.g. needs a GPU, or is a fragment);
* ``<!-- docs-test: requires torch -->``: run only when the named module imports (else skipped);
* ``<!-- docs-test: slow -->``: run only when ``OTSOLVE_DOCS_SLOW=1``.

Blocks without a marker must run as written and fast (small sizes).
"""
from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

MARKER = re.compile(r"<!--\s*docs-test:\s*(.*?)\s*-->")
FENCE = re.compile(r"^(\s*)```(\w*)\s*$")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    code: str
    markers: list[str] = field(default_factory=list)

    def skip_reason(self) -> str | None:
        for m in self.markers:
            if m.startswith("skip"):
                return f"marked: {m}"
            if m.startswith("slow") and os.environ.get("OTSOLVE_DOCS_SLOW", "") in ("", "0"):
                return "marked slow (set OTSOLVE_DOCS_SLOW=1)"
            if m.startswith("requires"):
                for mod in m.split()[1:]:
                    if importlib.util.find_spec(mod) is None:
                        return f"needs {mod}"
        return None


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, with the docs-test markers just above each."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2)
        start = i
        i += 1
        body = []
        while i < len(lines) and not re.match(rf"^{indent}```\s*$", lines[i]):
            body.append(lines[i][len(indent):] if lines[i].startswith(indent) else lines[i])
            i += 1
        i += 1  # closing fence
        if lang != "python":
            continue
        markers = []
        j = start - 1
        while j >= 0 and (lines[j].strip() == "" or MARKER.search(lines[j])):
            markers += MARKER.findall(lines[j])
            j -= 1
        blocks.append(Block(Path(path), start + 1, "\n".join(body) + "\n", markers))
    return blocks


def run_blocks(blocks: list[Block], workdir: Path) -> list[str]:
    """Run the blocks in order in one namespace inside ``workdir``; return the skip messages.

    A failure raises with the file and line of the block that failed.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    skipped: list[str] = []
    ns: dict = {"__name__": "__main__"}
    old = os.getcwd()
    os.chdir(workdir)
    try:
        for b in blocks:
            reason = b.skip_reason()
            if reason:
                skipped.append(f"{b.path.name}:{b.line}: {reason}")
                continue
            try:
                exec(compile(b.code, f"{b.path}:{b.line}", "exec"), ns)
            except Exception as exc:
                raise AssertionError(f"example at {b.path}:{b.line} failed: {type(exc).__name__}: {exc}") from exc
            finally:
                plt.close("all")
    finally:
        os.chdir(old)
    return skipped
