"""Every ```python example in docs/*.md runs as written (blocks marked with a docs-test comment
may be skipped: see tests/md_examples.py)."""
from pathlib import Path

import pytest

from md_examples import python_blocks, run_blocks

DOCS = Path(__file__).resolve().parent.parent / "docs"
PAGES = sorted(p for p in DOCS.glob("*.md") if python_blocks(p))


def test_pages_found():
    assert len(PAGES) >= 5, PAGES


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_docs_examples_run(page, tmp_path):
    blocks = python_blocks(page)
    skipped = run_blocks(blocks, tmp_path)
    if skipped and len(skipped) == len(blocks):
        pytest.skip("; ".join(skipped))


def test_block_extraction_and_markers(tmp_path):
    md = tmp_path / "x.md"
    md.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- docs-test: skip (needs a GPU) -->\n```python\nraise SystemExit\n```\n"
        "```bash\nls\n```\n<!-- docs-test: requires no_such_module_xyz -->\n\n```python\nimport no_such_module_xyz\n```\n"
        "   ```python\n   y = x + 1\n   ```\n"
    )
    blocks = python_blocks(md)
    assert [b.line for b in blocks] == [3, 8, 16, 19]
    assert blocks[1].skip_reason().startswith("marked: skip")
    assert blocks[2].skip_reason() == "needs no_such_module_xyz"
    assert blocks[0].skip_reason() is None and blocks[3].code == "y = x + 1\n"
    assert len(run_blocks(blocks, tmp_path)) == 2


def test_failing_block_names_its_line(tmp_path):
    md = tmp_path / "bad.md"
    md.write_text("```python\na = 1\n```\n\n```python\nb = undefined_name\n```\n")
    with pytest.raises(AssertionError, match=r"bad.md:5 failed: NameError"):
        run_blocks(python_blocks(md), tmp_path)
