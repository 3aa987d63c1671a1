"""Ground truth: every check kind against REAL facts set up on this machine (tests/verdict_facts.py).

``tests/data/verdicts/<kind>.json`` lists cases: ``check`` (config form; ``@name@`` is replaced by a
fact's value, ``"#name#"`` by the fact as a number), the right verdict ``ok`` and ``observed`` (a
regular expression the verdict's observed value must match, so no case passes on ``ok`` alone).
``root: true`` marks cases whose facts need root (users, chown, dpkg -i, mount); they are skipped
otherwise, and their ids start with ``root-`` so ``-k "not root"`` selects the rest. ``issue`` names
the cause of issue 15 the case reproduces; ``from_child`` runs the check from a child Python whose
command line holds the pattern. ``bounded`` marks the few cases whose fact holds but lies past
``max_output``: there the right verdict is red with "more than N" or "cut at N" said, never a guess.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator

import pytest
import verdict_facts
from invoke.context import Context

from deploytest.assertions import CheckFailed, check_all
from deploytest.checks import parse_check

DATA = Path(__file__).parent / "data" / "verdicts"


def _cases() -> list[Any]:
    params = []
    for path in sorted(DATA.glob("*.json")):
        for case in json.loads(path.read_text()):
            case_id = ("root-" if case.get("root") else "") + f"{path.stem}-{case['id']}"
            marks = [pytest.mark.skipif(not verdict_facts.IS_ROOT, reason="needs root")] if case.get("root") else []
            params.append(pytest.param(case, id=case_id, marks=marks))
    return params


CASES = _cases()


@pytest.fixture(scope="module")
def facts() -> Iterator[dict[str, str]]:
    built = verdict_facts.build()
    try:
        yield built.values
    finally:
        built.close()


def _fill(value: Any, facts: dict[str, str], escape: bool = False) -> Any:
    """``value`` with each ``"#name#"`` replaced by that fact as a number and each ``@name@`` inside
    a string by the fact's text (regex-escaped with ``escape``)."""
    text = json.dumps(value)
    for name in set(re.findall(r"[@#](\w+)[@#]", text)):
        if name not in facts:
            pytest.fail(f"no fact named {name}")
        if f'"#{name}#"' in text:
            text = text.replace(f'"#{name}#"', str(int(facts[name])))
        fact = re.escape(facts[name]) if escape else facts[name]
        text = text.replace(f"@{name}@", json.dumps(fact)[1:-1])
    return json.loads(text)


_CHILD = """
import json, sys
from invoke.context import Context
from deploytest.assertions import CheckFailed, check_all
try:
    result = check_all(Context(), [json.loads(sys.argv[1])]).results[0]
except CheckFailed as failed:
    result = failed.report.results[0]
print(json.dumps(result.verdict.to_dict()))
"""


def verdict_of(check: dict[str, Any], from_child: bool = False) -> dict[str, Any]:
    """The verdict of ``check`` run on this machine through deploytest.assertions."""
    if from_child:
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(check)], capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, out.stderr
        verdict: dict[str, Any] = json.loads(out.stdout)
        return verdict
    try:
        report = check_all(Context(), [check])
    except CheckFailed as failed:
        report = failed.report
    assert report.error is None, report.error
    return report.results[0].verdict.to_dict()


def test_corpus_is_large_and_covers_every_kind() -> None:
    kinds = {p.stem for p in DATA.glob("*.json")}
    assert kinds >= {"command", "file", "http", "port", "process", "package", "service", "user", "group", "disk"}
    assert len(CASES) >= 150
    issues = {case.values[0].get("issue") for case in CASES} - {None}
    assert issues == set(range(1, 14)), sorted(issues)
    assert all(case.values[0]["observed"] for case in CASES), "every case names what it observed"


@pytest.mark.parametrize("case", CASES)
def test_verdict(case: dict[str, Any], facts: dict[str, str]) -> None:
    check = _fill(case["check"], facts)
    if "config_error" in case:
        with pytest.raises(Exception, match=case["config_error"]):
            parse_check(check)
        return
    verdict = verdict_of(check, case.get("from_child", False))
    observed = _fill(case["observed"], facts, escape=True)
    assert (verdict["ok"], bool(re.search(observed, verdict["observed"]))) == (case["ok"], True), verdict


def test_check_runs_with_the_callers_umask(facts: dict[str, str], tmp_path: Path) -> None:
    made = tmp_path / "made"
    verdict = verdict_of({"command": {"run": f"touch {made}"}})
    assert verdict["ok"], verdict
    assert made.stat().st_mode & 0o777 == 0o666 & ~int(facts["umask"], 8)


def test_root_cases_are_marked() -> None:
    root_only = [c for c in CASES if c.values[0].get("root")]
    assert root_only and len(root_only) < len(CASES)
    assert os.geteuid() == 0 or all(c.marks for c in root_only)
