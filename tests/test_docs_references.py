"""Every test the README and docs cite as evidence exists: ``tests/<file>.py`` and ``tests/<file>.py::<test>``
(also the ``, ::<other test>`` shorthand after it) name a test file and a test function in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"tests/([\w/]+\.py)((?:::\w+(?:\[[^\]`]*\])?)?)((?:`?,\s*`::\w+(?:\[[^\]`]*\])?)*)")


def citations() -> list[tuple[str, str, str]]:
    """(document, test file, test name or '') for every citation in README.md and docs/*.md."""
    out = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for match in CITED.finditer(doc.read_text()):
            names = re.findall(r"::(\w+)", match.group(2) + match.group(3))
            out += [(doc.name, match.group(1), name) for name in names or [""]]
    return out


def test_every_test_the_docs_cite_exists():
    found = citations()
    assert len(found) > 50  # the pattern still matches how the docs cite tests
    missing = []
    for doc, file, name in found:
        path = ROOT / "tests" / file
        if not path.is_file():
            missing.append(f"{doc}: tests/{file}")
        elif name and not re.search(rf"^(?:async )?def {name}\(|^class {name}\b", path.read_text(), re.M):
            missing.append(f"{doc}: tests/{file}::{name}")
    assert not missing, missing
