"""docs/image-format.md is generated from the construct declarations and kept current."""

import importlib.util
from pathlib import Path

import pytest

from lxc_cr.image import kinds

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("gen_image_doc",
                                                  REPO / "tools" / "gen_image_doc.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_doc_is_current():
    text = _generator().generate()
    committed = (REPO / "docs" / "image-format.md").read_text()
    assert committed == text, "docs/image-format.md is out of date: run tools/gen_image_doc.py"


def test_doc_names_every_kind_and_field():
    text = _generator().generate()
    for k in kinds.all_kinds():
        assert f"### {k.name}\n" in text and f"`{k.tag:#06x}`" in text
        for sc in k.struct.subcons:
            assert f"`{sc.name}`" in text
