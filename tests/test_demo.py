"""`python -m fastopt demo` (quick mode): every section runs and reports its numbers."""

from __future__ import annotations

import re

import pytest

from fastopt import demo


@pytest.mark.parametrize("section", demo.SECTIONS, ids=lambda s: s.__name__)
def test_section_runs_and_reports(section):
    lines = section(True)
    assert len(lines) >= 3
    text = "\n".join(lines)
    assert "nan" not in text.lower()  # every figure is a number
    assert re.search(r"\d+\.\d+ ms", text), text  # timings were measured


def test_run_demo_exit_code(capsys):
    assert demo.run_demo(quick=True) == 0
    assert "curvature" in capsys.readouterr().out
