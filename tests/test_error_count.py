"""The bad inputs tried, counted: every case of tests/bad_inputs.py's tables, and that each one is run.

A case is one bad input (a recipe, stage plan, data file, model directory, reward function or run
directory) with the one-line message it must produce. Add a case to its table and to EXPECTED.
"""

import importlib
import re
from collections import Counter
from pathlib import Path

from bad_inputs import ALL_CASES, Case

EXPECTED = {"recipe": 49, "stages": 18, "data": 22, "model": 10, "reward": 6, "storage": 6}
MODULES = ["test_errors_recipe", "test_errors_data", "test_errors_model", "test_faults"]


def test_bad_inputs_are_counted():
    keys = [(c.group, c.id) for c in ALL_CASES]
    assert len(set(keys)) == len(keys), "case ids must be unique within their group"
    assert dict(Counter(c.group for c in ALL_CASES)) == EXPECTED
    assert len(ALL_CASES) == sum(EXPECTED.values()) == 111
    assert sum(not c.warn for c in ALL_CASES) == 108  # errors; the other 3 are survivable (dropped with a count)
    assert all(c.expect and c.names for c in ALL_CASES), "every case says what it expects and what the message must name"


def test_every_case_is_tried():
    tried: set[tuple[str, str]] = set()
    for name in MODULES:
        module = importlib.import_module(name)
        for obj in vars(module).values():
            for mark in getattr(obj, "pytestmark", []):
                if mark.name == "parametrize":
                    tried |= {(v.group, v.id) for v in mark.args[1] if isinstance(v, Case)}
        # cases a dedicated test looks up by id (survivable data problems, storage faults)
        source = Path(module.__file__).read_text()
        tried |= {("data", i) for i in re.findall(r'WARNINGS\["(\w+)"\]', source)}
        tried |= {("storage", i) for i in re.findall(r'STORAGE\["(\w+)"\]', source)}
    missing = {(c.group, c.id) for c in ALL_CASES} - tried
    assert not missing, f"cases no test runs: {sorted(missing)}"
