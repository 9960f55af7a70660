"""A family is one module: no code outside `scaling/families/` names a family, by `==`, `in`, a
dict key or a default. The check reads every string literal in the package's source (docstrings
and comments are prose and may mention a family; a literal that *is* a family's name, or a conf
name built on one such as "gpt_debug", is code)."""

from __future__ import annotations

import io
import re
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = re.compile(r"^(gpt|cnn|vit)(_[a-z0-9_]+)?$")
SCANNED = ["scaling", "launch", "analysis"]
ALLOWED = ROOT / "scaling" / "families"


def _family_literals(path: Path, root: Path = ROOT) -> list[str]:
    hits = []
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    for tok in tokens:
        if tok.type != tokenize.STRING:
            continue
        body = re.sub(r"^[rbuf]*('''|\"\"\"|'|\")", "", tok.string, flags=re.IGNORECASE)
        body = re.sub(r"('''|\"\"\"|'|\")$", "", body)
        if NAMES.match(body):
            hits.append(f"{path.relative_to(root)}:{tok.start[0]}: {tok.string}")
    return hits


def test_no_module_outside_the_families_names_a_family():
    hits = []
    for top in SCANNED:
        for path in sorted((ROOT / top).rglob("*.py")):
            if ALLOWED not in path.parents:
                hits += _family_literals(path)
    assert hits == [], "family names outside scaling/families/:\n" + "\n".join(hits)


def test_the_scan_finds_a_family_name(tmp_path):
    # The check can fail: a dispatch on a family's name, as the code had it, is found; prose is not.
    sample = tmp_path / "sample.py"
    sample.write_text('"""A GPT-2 style model."""\nx = 1 if cfg.family == "gpt" else 2\nmodel: str = "cnn_debug"\n'
                      's = f"{name} vit"\n')
    assert _family_literals(sample, tmp_path) == ['sample.py:2: "gpt"', 'sample.py:3: "cnn_debug"']
