"""Differential run: deploytest and pytest-testinfra judge the same real facts; who is right?

Sets up the ground-truth corpus' facts on this machine (``tests/verdict_facts.py``: files and links,
listeners, live and zombie processes, dpkg packages, users and groups, supervisor groups, ...), then
for every corpus case (``tests/data/verdicts/*.json``) that testinfra can express with its local
backend, asks both tools and compares each verdict with the case's known truth. Prints the counts and
an RST table of every disagreement with who was right.

Cases testinfra has no module for (HTTP bodies, free disk space, pip in a venv without pip, version
constraints, command output past a size) are counted as "no equivalent" and left out.

Run as root from the repository root (needs ``pytest-testinfra``: ``pip install -e .[benchmark]``)::

    PYTHONPATH=. .venv/bin/python benchmarks/bench_testinfra_diff.py
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any, Callable, Optional

from common import simple_table  # noqa: E402 - also puts the repository on sys.path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

import test_verdicts_ground_truth as corpus  # noqa: E402
import verdict_facts  # noqa: E402

Judge = Callable[[Any, dict[str, Any]], bool]


def _file(host: Any, p: dict[str, Any]) -> Optional[bool]:
    if p.get("type") == "symlink" and {"mode", "owner", "group"} & set(p):
        return None  # testinfra has no facts of a link itself (it stats what the link leads to)
    f = host.file(p["path"])
    if p.get("exists") is False:
        return not f.exists
    kind = p.get("type")
    checks = [{"file": f.is_file, "dir": f.is_directory, "symlink": f.is_symlink}.get(kind, f.exists)]
    if "target" in p:
        checks.append(f.is_symlink and host.check_output("readlink %s", p["path"]) == p["target"])
    if "mode" in p:
        checks.append(f.mode == int(p["mode"], 8))
    if "owner" in p:
        checks.append(p["owner"] in (f.user, str(f.uid)))
    if "group" in p:
        checks.append(p["group"] in (f.group, str(f.gid)))
    if "contains" in p:
        checks.append(f.contains(re.escape(p["contains"])))
    if "matches" in p:
        checks.append(re.search(p["matches"], f.content_string, re.M) is not None)
    if "size" in p:
        checks.append(f.size == p["size"])
    if "sha256" in p:
        checks.append(f.sha256sum == p["sha256"])
    return all(checks)


def _port(host: Any, p: dict[str, Any]) -> bool:
    proto = p.get("proto", "tcp")
    address = p.get("address", "").strip("[]")
    if address:
        listening = host.socket(f"{proto}://{address}:{p['port']}").is_listening
    else:  # "tcp://PORT" means every address in testinfra; any socket on the port is the question
        listening = any(s.endswith(f":{p['port']}") for s in host.socket.get_listening_sockets()
                        if s.startswith(f"{proto}://"))
    return bool(listening) == p.get("listening", True)


def _tcp(host: Any, p: dict[str, Any]) -> bool:
    return bool(host.addr(p["host"]).port(p["port"]).is_reachable) == p.get("reachable", True)


def _process(host: Any, p: dict[str, Any]) -> bool:
    found = [x for x in host.process.filter() if re.search(p["pattern"], x.args)]
    if "user" in p:
        found = [x for x in found if x.user == p["user"]]
    if "count" in p:
        return len(found) == p["count"]
    low = p.get("min", 0 if "max" in p else 1)
    return len(found) >= low and len(found) <= p.get("max", len(found))


def _service(host: Any, p: dict[str, Any]) -> Optional[bool]:
    if "enabled" in p:
        return None
    running = host.supervisor(p["name"], supervisorctl_conf=p["supervisor_conf"]).is_running
    return bool(running) == p.get("running", True)


def _package(host: Any, p: dict[str, Any]) -> Optional[bool]:
    if p.get("manager") == "pip" or "version" in p:
        return None  # no version constraints in testinfra; no pip in the corpus venv
    pkg = host.package(p["name"])
    if not p.get("installed", True):
        return not pkg.is_installed
    return bool(pkg.is_installed)


def _user(host: Any, p: dict[str, Any]) -> bool:
    u = host.user(p["name"])
    if not p.get("exists", True):
        return not u.exists
    checks = [u.exists]
    if u.exists:
        for key in ("uid", "gid", "home", "shell"):
            if key in p:
                checks.append(getattr(u, key) == p[key])
        if "groups" in p:
            checks.append(all(g in u.groups for g in p["groups"]))
    return all(checks)


def _group(host: Any, p: dict[str, Any]) -> bool:
    g = host.group(p["name"])
    if not p.get("exists", True):
        return not g.exists
    checks = [g.exists]
    if g.exists:
        if "gid" in p:
            checks.append(g.gid == p["gid"])
        if "members" in p:
            checks.append(all(m in g.members for m in p["members"]))
    return all(checks)


def _command(host: Any, p: dict[str, Any]) -> Optional[bool]:
    if "max_output" in p or "cwd" in p:
        return None
    out = host.run(p["run"])
    exits = p.get("exit", 0)
    checks = [out.rc in (exits if isinstance(exits, list) else [exits])]
    for stream, text in (("stdout", out.stdout), ("stderr", out.stderr)):
        if stream in p:
            checks.append(p[stream] in text)
        if f"{stream}_equals" in p:
            checks.append(text.rstrip("\n") == p[f"{stream}_equals"])
        if f"{stream}_matches" in p:
            checks.append(re.search(p[f"{stream}_matches"], text, re.M) is not None)
        if f"{stream}_empty" in p:
            checks.append((not text.strip()) == p[f"{stream}_empty"])
    return all(checks)


JUDGES: dict[str, Callable[[Any, dict[str, Any]], Optional[bool]]] = {
    "file": _file,
    "port": _port,
    "tcp": _tcp,
    "process": _process,
    "service": _service,
    "package": _package,
    "user": _user,
    "group": _group,
    "command": _command,
}


def testinfra_verdict(host: Any, kind: str, params: dict[str, Any]) -> Optional[bool]:
    """testinfra's answer (True = the expectation holds), None when it has no equivalent."""
    judge = JUDGES.get(kind)
    if judge is None:
        return None
    try:
        return judge(host, params)
    except Exception:  # noqa: BLE001 - a testinfra error is a red verdict, as in a test
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.parse_args()
    try:
        import testinfra
    except ImportError:
        print("bench_testinfra_diff: needs pytest-testinfra (pip install -e .[benchmark])", file=sys.stderr)
        return 2
    host = testinfra.get_host("local://")
    facts = verdict_facts.build()
    rows: list[list[str]] = []
    counts = {"cases": 0, "no equivalent": 0, "deploytest wrong": 0, "of them past max_output": 0,
              "testinfra wrong": 0, "disagree": 0}
    try:
        for param in corpus.CASES:
            case = param.values[0]
            if "config_error" in case or (case.get("root") and not verdict_facts.IS_ROOT):
                continue
            check = corpus._fill(case["check"], facts.values)
            (kind, params), = check.items()
            # testinfra keeps a command's whole output in memory: an endless writer never answers.
            theirs = None if case.get("endless") else testinfra_verdict(host, kind, params)
            if theirs is None and not case.get("endless"):
                counts["no equivalent"] += 1
                continue
            counts["cases"] += 1
            ours = corpus.verdict_of(check, case.get("from_child", False))
            # A "bounded" case holds on the host, but past max_output deploytest says it cannot judge it.
            truth = case["ok"] if "bounded" not in case else not case["ok"]
            counts["deploytest wrong"] += ours["ok"] != truth
            counts["of them past max_output"] += ours["ok"] != truth and "bounded" in case
            counts["testinfra wrong"] += theirs != truth
            if ours["ok"] != theirs:
                counts["disagree"] += 1
                right = "deploytest" if ours["ok"] == truth else "testinfra"
                shown = "no answer" if theirs is None else "green" if theirs else "red"
                rows.append([param.id, "green" if truth else "red", "green" if ours["ok"] else "red",
                             shown, right, ours["observed"][:48]])
            print(f"  {param.id}: truth={truth} deploytest={ours['ok']} testinfra={theirs}", file=sys.stderr)
    finally:
        facts.close()
    print(json.dumps(counts))
    print()
    print(simple_table(["case", "truth", "deploytest", "testinfra", "right", "deploytest observed"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
