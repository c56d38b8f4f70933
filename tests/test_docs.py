"""The docs cannot drift: generated tables equal their sources, links resolve, and the
README stays a front page."""

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))
import tables  # noqa: E402


def _docs():
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_generated_tables_match_their_sources():
    stale = [p.name for p in _docs() if tables.render(p.read_text()) != p.read_text()]
    assert not stale, f"run `python bench/tables.py`: out of date in {stale}"


def test_config_reference_lists_every_key_with_its_default():
    from bt_jax.config import base_config
    text = (ROOT / "docs" / "configuration.md").read_text()
    c = base_config()
    for key, value in (("data.store_dtype", "'uint16'"), ("finetune.epochs", "5"),
                       ("augment.balance", "'augment2a'")):
        row = next(ln for ln in text.splitlines() if ln.startswith(f"| `{key}` |"))
        assert f"`{value}`" in row, row
    assert text.count("\n| `") >= len(list(c.data.keys())) + len(list(c.train.keys()))


def test_a_new_schema_key_makes_the_reference_stale(monkeypatch):
    from bt_jax import config
    plain = config.base_config

    def planted():
        c = plain()
        c.data.planted_key = 7
        return c
    monkeypatch.setattr(config, "base_config", planted)
    doc = (ROOT / "docs" / "configuration.md").read_text()
    assert "| `data.planted_key` | `7` |" in tables.render(doc)


def test_links_resolve():
    bad = []
    for p in _docs():
        for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", p.read_text()):
            if not target.startswith("http") and not (p.parent / target).exists():
                bad.append(f"{p.name}: {target}")
    assert not bad, bad


def test_readme_is_a_front_page():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250
    heads = [ln for ln in lines if ln.startswith("## ")]
    assert heads[:2] == ["## Set up", "## Pipelines"]
