"""The README as a new user reads it: the quick-start commands and every Python block."""
import re
from pathlib import Path

from md_examples import python_blocks, run_blocks

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(tmp_path):
    blocks = python_blocks(README)
    assert blocks, "README has no python block"
    assert run_blocks(blocks, tmp_path) == []  # nothing in the README may be skipped


def test_quick_start_commands_at_the_top():
    text = README.read_text(encoding="utf-8")
    first_two = re.findall(r"```bash\n(.*?)\n```", text, flags=re.S)[:2]
    assert first_two == ['pip install . && otsolve demo', 'pip install ".[test]" && pytest']
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert '\npip install ".[test]" && pytest' in ci  # CI runs the README's test command as written


def test_installed_distribution_ships_license_and_types():
    """What `pip install .` puts in place: the BSD-3 text, the typing marker, the metadata."""
    import importlib.metadata as md

    import otsolve

    dist = md.distribution("otsolve")
    lic = [f for f in dist.files or [] if f.name == "LICENSE"]
    assert lic, "LICENSE is not in the installed distribution"
    text = lic[0].read_text(encoding="utf-8")
    assert "BSD 3-Clause License" in text and "Neither the name of the copyright holder" in text
    assert (Path(otsolve.__file__).parent / "py.typed").is_file()
    classifiers = dist.metadata.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers and "License :: OSI Approved :: BSD License" in classifiers
    assert dist.metadata["License"] == "BSD-3-Clause"
