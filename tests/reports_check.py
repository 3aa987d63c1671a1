"""Every deploytest report a test writes is read as its consumers read it.

A pytest plugin (``pytest_plugins`` in conftest.py): after each test that used ``tmp_path``, every
JUnit report in it (a ``<testsuites name="deploytest ...">`` document) must validate against the Ant
``junit-10.xsd`` that Jenkins' xUnit plugin uses and read back with junitparser, and every JSON
report (``"format": "deploytest-report"``) must validate against the package's JSON Schema.
Also usable directly: :func:`check_junit`, :func:`check_json`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Iterator, List

import pytest

DATA = Path(__file__).resolve().parent / "data"


@functools.lru_cache(maxsize=1)
def _xsd() -> Any:
    import xmlschema

    return xmlschema.XMLSchema(str(DATA / "junit-10.xsd"))


@functools.lru_cache(maxsize=1)
def _json_validator() -> Any:
    import jsonschema

    from deploytest.report_json import report_schema

    schema = report_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def check_junit(path: Path) -> Any:
    """Validate ``path`` against junit-10.xsd and read it with junitparser; return the parsed JUnitXml."""
    from junitparser import JUnitXml

    errors = [str(e).splitlines()[0] for e in _xsd().iter_errors(str(path))]
    assert not errors, f"{path}: not valid against junit-10.xsd: {errors[:3]}"
    parsed = JUnitXml.fromfile(str(path))
    names = [(case.classname, case.name) for suite in parsed for case in suite]
    assert len(names) == len(set(names)), f"{path}: duplicate classname + name (GitLab keeps only the first)"
    for suite in parsed:
        for case in suite:
            assert "." not in (case.classname or "").removeprefix("deploytest."), case.classname
    return parsed


def check_json(path: Path) -> dict[str, Any]:
    """Validate the JSON report at ``path`` against deploytest's report schema; return it."""
    document: dict[str, Any] = json.loads(path.read_text())
    errors = sorted(_json_validator().iter_errors(document), key=lambda e: list(e.path))
    assert not errors, f"{path}: not valid against report.schema.json: " + "; ".join(
        f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors[:3])
    return document


def reports_in(root: Path) -> Iterator[tuple[str, Path]]:
    """``("junit" | "json", path)`` for every deploytest report under ``root``."""
    for path in root.rglob("*"):
        if path.suffix not in (".xml", ".json") or not path.is_file() or path.is_symlink():
            continue
        try:
            head = path.read_bytes()[:400].decode("utf-8", "replace")
        except OSError:
            continue
        if path.suffix == ".xml" and '<testsuites name="deploytest' in head:
            yield "junit", path
        elif path.suffix == ".json" and '"format": "deploytest-report"' in head:
            yield "json", path


CHECKED: List[Path] = []


@pytest.fixture(autouse=True)
def _deploytest_reports_are_valid(request: pytest.FixtureRequest) -> Iterator[None]:
    # asked for now, so that tmp_path is torn down after this check
    root = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if root is None:
        return
    for kind, path in reports_in(root):
        (check_junit if kind == "junit" else check_json)(path)
        CHECKED.append(path)
