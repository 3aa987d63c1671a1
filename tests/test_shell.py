"""The shell library: every script deploytest can build passes ``sh -n`` and ``shellcheck -s sh``, and a
script never reaches a host with a helper it calls but does not define."""

from __future__ import annotations

import inspect
import os
import shutil
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator

import pytest

from deploytest import inspection, lock, prepare, shell, steps
from deploytest import plan as plans
from deploytest.checks import parse_checks
from deploytest.checks.attempt import Probes
from deploytest.config import GitSource, Settings
from deploytest.lock import Journal, LockOwner
from deploytest.remote import wrap_sudo
from deploytest.source import GIT, Package
from deploytest.state import HostState, ReleaseInfo

#: Codes excluded from shellcheck, each for a reason that holds for every script:
EXCLUDED = {
    # "Expressions don't expand in single quotes": values (an awk program, a hook, a JSON line) are
    # data, single-quoted on purpose by shell.quote; that they hold "$1" unexpanded is the point.
    "SC2016",
    # "A && B || C is not if-then-else": used where C must run when either A or B fails
    # ("[ -d "$p" ] && [ ! -L "$p" ] || continue", "{ write && mv; } || fail"), which is what it does.
    "SC2015",
    # "Use var=$(command) to assign output": a value that happens to be a command's name
    # (ref=main, kind=directory, a hook "make") is assigned as data, never run.
    "SC2209",
    # "Quotes/backslashes will be treated literally" (and its twin, "... in this variable will not be
    # respected"): a value holding quotes (a deploy_to of "/srv/it's") is data, never a command line.
    "SC2089",
    "SC2090",
}

HOSTILE = "it's \"quoted\" $(touch /tmp/dt-pwned) `id` \\ back\\slash\nnew line\ttab = ünïcödé ; | & *"
TOKEN = "0123456789abcdef" * 2
OTHER = "f" * 32

PLAIN = Settings(deploy_to="/srv/app")
FULL = Settings(
    deploy_to="/srv/app", shared=("data", "config/app.env", "log"), keep_releases=3,
    build_hooks=("make", "test -f VERSION"), restart_hooks=("systemctl restart app",), stop_hooks=("pkill app",),
    checks=tuple(parse_checks([{"port": 8000}, {"http": {"url": "http://127.0.0.1:8000/health", "status": 200}},
                               {"file": {"path": "/srv/app/current/VERSION", "contains": "2.0"}}])),
)
EVIL = Settings(
    deploy_to="/srv/" + HOSTILE.replace("\n", " "), shared=("my data/" + "it's $(x)", ".env"), keep_releases=1,
    build_hooks=(HOSTILE, "echo '$(id)'"), restart_hooks=(HOSTILE,), stop_hooks=(HOSTILE, "exit 0"),
    checks=tuple(parse_checks([{"command": {"run": HOSTILE, "stdout": HOSTILE}}])),
)
SUDO = Settings(deploy_to="/srv/sudo app", sudo=True, restart_hooks=("r",), stop_hooks=("s",), build_hooks=("b",))
SETTINGS = {"plain": PLAIN, "full": FULL, "evil": EVIL, "sudo": SUDO}


def owner() -> LockOwner:
    return LockOwner(user=HOSTILE, host="laptop'$(id)", pid=4242, started="2026-11-25T10:00:01Z", token=TOKEN,
                     release="20261125100001")


def packages() -> dict[str, Package]:
    return {
        "archive": Package(b"", HOSTILE, "directory", "/x"),
        "git": Package(None, "", GIT, "u", git=GitSource("https://h/r.git; $(id) 'x'", "main$(id)\"")),
    }


EVENT = {"event": "deploy", "release": "20261125100001", "who": HOSTILE, "outcome": "verified", "red": [HOSTILE]}
SUITE = '{"checks": [{"command": {"run": "echo \'$(id)\'"}}]}'
RID = "20261125100001"
PROBED = parse_checks([{"command": {"run": HOSTILE, "stdout": HOSTILE}}, {"port": 8000}])
#: A host with a verified release live, and one deployed to for the first time (a plan for each).
STATES = {"web1": HostState("web1", "/srv", releases=(ReleaseInfo("20261125100000", "verified"),),
                            live="20261125100000"),
          "web2": HostState("web2", "/srv")}

def plan_steps(settings: Settings) -> Iterator[plans.Step]:
    """Every step with a script of the plans of ``STATES``, for every package, verified or not."""
    for package in packages().values():
        for verify in (True, False):
            baseline = plans.baseline_probes(settings) if verify else None
            for host in plans.make(settings, STATES, package, owner(), RID, verify=verify,
                                   baseline=baseline).hosts.values():
                yield from (step for step in (*host.steps, host.on_failure) if step.script)


def _composed(step: plans.Step) -> bool:
    """A step whose script is several put together: the finish (a chain), a lock with the baseline's probes."""
    return step.name == "finish" or (step.name == "lock" and not step.script.startswith(shell.PRELUDE))


#: One builder per script_for_* (and the plan): given settings, every variant of the script.
BUILDERS: dict[str, Callable[[Settings], Iterator[str]]] = {
    "inspection.script_for_inspect": lambda s: iter([inspection.script_for_inspect(s)]),
    "inspection.script_for_current": lambda s: iter([inspection.script_for_current(s)]),
    "inspection.script_for_inspect_and_lock": lambda s: iter([inspection.script_for_inspect_and_lock(s, owner())]),
    "steps.script_for_mark_bad": lambda s: iter([steps.script_for_mark_bad(s, RID)]),
    "steps.script_for_mark_verified": lambda s: iter([steps.script_for_mark_verified(s, RID)]),
    "steps.script_for_switch": lambda s: iter([steps.script_for_switch(s, RID)]),
    "steps.script_for_record_suite": lambda s: iter([steps.script_for_record_suite(s, RID, SUITE)]),
    "steps.script_for_restart": lambda s: iter([steps.script_for_restart(s)]),
    "steps.script_for_switch_and_restart": lambda s: iter([steps.script_for_switch_and_restart(s, RID)]),
    "steps.script_for_switch_back": lambda s: iter([steps.script_for_switch_back(s, prev, RID)
                                                    for prev in (None, "20261125100000")]),
    "steps.script_for_remove": lambda s: iter([steps.script_for_remove(s, RID)]),
    "steps.script_for_discard": lambda s: iter([steps.script_for_discard(s, RID, bad=bad) for bad in (True, False)]),
    "steps.script_for_finish": lambda s: iter([steps.script_for_finish(s, owner(), logs=logs, cleanup=cleanup)
                                               for logs in (True, False) for cleanup in (True, False)]),
    "steps.script_for_log": lambda s: iter([steps.script_for_log(s, EVENT)]),
    "steps.script_for_answered_log": lambda s: iter([steps.script_for_answered_log(s)]),
    "inspection.script_for_probe_and_inspect": lambda s: iter([  # the probes' own script, then one of the library
        inspection.script_for_probe_and_inspect(s, who, Probes.of(PROBED, [10.0] * len(PROBED)))
        for who in (owner(), None)]),
    "inspection.script_for_lock_then_probe": lambda s: iter([  # one of the library, then the probes' own script
        inspection.script_for_lock_then_probe(s, owner(), Probes.of(PROBED, [10.0] * len(PROBED)))]),
    # the probes' harness as written (sent from a descriptor, in whose here-document no checker looks)
    "checks.Probes (the harness)": lambda s: iter([Probes.of(PROBED, [10.0] * len(PROBED)).script]),
    "prepare.script_for_prepare": lambda s: iter([
        prepare.script_for_prepare(s, RID, package, HOSTILE, build=build, owner=who)
        for package in packages().values() for build in (True, False) for who in (owner(), None)]),
    "lock.script_for_acquire_lock": lambda s: iter([
        lock.script_for_acquire_lock(s, owner(), journal, takeover)
        for journal in (None, Journal.begin(owner(), RID, None), Journal.begin(owner(), RID, "20261125100000"))
        for takeover in ("", OTHER)]),
    "lock.script_for_release_lock": lambda s: iter([lock.script_for_release_lock(s, owner())]),
    "lock.script_for_clear_journal": lambda s: iter([lock.script_for_clear_journal(s, OTHER)]),
    "lock.script_for_heartbeat": lambda s: iter([lock.script_for_heartbeat(s, owner())]),
    "lock.script_for_force_unlock": lambda s: iter([lock.script_for_force_unlock(s, token, event)
                                                    for token in ("", OTHER) for event in (None, EVENT)]),
    "plan.make": lambda s: iter([step.script for step in plan_steps(s) if not _composed(step)]),
    "plan.make finish, lock with the baseline (chained)": lambda s: iter([
        step.script for step in plan_steps(s) if _composed(step)]),
    "steps.finish (chained)": lambda s: iter([shell.chain(steps.script_for_discard(s, RID, bad=True),
                                                          steps.script_for_finish(s, owner()))]),
}


def every_script() -> Iterator[tuple[str, str]]:
    """``(name, script)`` of every script deploytest can build, for every settings variant; with sudo,
    the script as it is sent (wrapped) too."""
    for variant, settings in SETTINGS.items():
        for name, build in BUILDERS.items():
            for n, text in enumerate(build(settings)):
                yield f"{variant}:{name}#{n}", text
                if settings.sudo:
                    yield f"{variant}:{name}#{n}:sudo", wrap_sudo(text)


SCRIPTS = dict(every_script())


def test_every_script_builder_is_covered() -> None:
    modules: dict[str, ModuleType] = {"steps": steps, "inspection": inspection, "prepare": prepare, "lock": lock}
    found = {f"{prefix}.{name}" for prefix, module in modules.items()
             for name, fn in inspect.getmembers(module, inspect.isfunction)
             if name.startswith("script_for_") and fn.__module__ == module.__name__}
    assert found | {"plan.make", "plan.make finish, lock with the baseline (chained)",
                    "steps.finish (chained)", "checks.Probes (the harness)"} == set(BUILDERS)


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_script_is_valid_sh(name: str) -> None:
    result = subprocess.run(["sh", "-n"], input=SCRIPTS[name], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_scripts_pass_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (apt-get install -y shellcheck; scripts/test.sh does it)"
    problems = []
    for name, text in SCRIPTS.items():
        result = subprocess.run([shellcheck, "-s", "sh", "-f", "gcc", "-e", ",".join(sorted(EXCLUDED)), "-"],
                                input=text, capture_output=True, text=True)
        if result.returncode != 0 or result.stdout.strip():
            problems.append(f"{name}:\n{result.stdout}{result.stderr}")
    assert not problems, "\n".join(problems[:5])


def test_hostile_values_reach_scripts_only_quoted() -> None:
    text = prepare.script_for_prepare(EVIL, RID, packages()["git"], HOSTILE, build=True, owner=owner())
    assert f"D={shell.quote(EVIL.deploy_to)}\n" in text
    for hook in EVIL.build_hooks:
        assert f"={shell.quote(hook)}\n" in text
    assert f"url={shell.quote(packages()['git'].git.url)}\n" in text  # type: ignore[union-attr]
    # values are assigned before the helpers; helpers and body name variables only
    code = text[text.index("\ndt_clean() {"):]
    assert "dt-pwned" not in code and "laptop" not in code and "h/r.git" not in code


# -- the builder ---------------------------------------------------------------------------------


def test_a_script_has_the_prelude_and_exactly_the_helpers_its_body_calls() -> None:
    text = shell.script(PLAIN, 'dt_fail step "went wrong"\n')
    assert text.startswith("set -u\n")
    assert "dt_fail() {" in text and "dt_clean() {" in text  # dt_fail calls dt_clean
    assert text.index("dt_clean() {") < text.index("dt_fail() {")  # dependencies first
    assert "dt_list() {" not in text and "dt_refuse() {" not in text
    # transitively: dt_list -> dt_state -> dt_get
    assert shell.helpers_for("dt_list\n") == ["dt_get", "dt_state", "dt_list"]
    # a helper is included once however often it is called
    assert shell.script(PLAIN, "dt_live\ndt_live\n").count("dt_live() {") == 1


def test_a_helper_used_but_defined_nowhere_fails_in_python() -> None:
    with pytest.raises(shell.UnknownHelper, match="dt_nonesuch"):
        shell.script(PLAIN, 'dt_nonesuch "$x"\n')
    with pytest.raises(shell.UnknownHelper, match="dt_hook"):
        shell.script(PLAIN, "dt_hook_typo\ndt_hook\n")


def test_a_helper_calling_an_undefined_helper_fails_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(shell.HELPERS, "dt_broken", "dt_broken() { dt_missing; }\n")
    with pytest.raises(shell.UnknownHelper, match="helper dt_broken calls dt_missing"):
        shell.script(PLAIN, "dt_broken\n")


def test_a_function_the_body_defines_itself_is_no_helper() -> None:
    text = shell.script(PLAIN, "dt_mine() { dt_live; }\ndt_mine\n")
    assert "dt_live() {" in text and text.count("dt_mine()") == 1


def test_every_helper_is_used_by_some_script_and_is_valid() -> None:
    used = {name for text in SCRIPTS.values() for name in shell.HELPERS if f"{name}() {{" in text}
    assert used == set(shell.HELPERS)


def test_values_need_plain_names() -> None:
    for bad in ("D", "S", "dt_x", "a b", "x;y", ""):
        with pytest.raises(ValueError):
            shell.script(PLAIN, "true\n", {bad: 1})
    with pytest.raises(ValueError, match="twice"):
        shell.join(("", {"id": "1"}), ("", {"id": "2"}))


def test_no_script_is_cut_or_hand_assembled() -> None:
    # every script starts with the prelude once: none is two scripts glued together
    for name, text in SCRIPTS.items():
        if ":sudo" in name or "chained" in name or "harness" in name:
            continue
        if "probe_and_inspect" in name:  # the probes' own script (in a subshell), then one of the library
            text = text.split("\n); fi\n", 1)[1]
        if "lock_then_probe" in name:  # one of the library (in a subshell), then the probes' own script
            text = text.removeprefix("(\n").split("\n) </dev/null; ", 1)[0]
        assert text.startswith(shell.PRELUDE) and text.count(shell.PRELUDE) == 1, name


@pytest.mark.parametrize("link", [
    "/srv/app/releases/20261125100000", "/srv/app/releases/20261125100000/", "releases/20261125100000",
    "/srv/app/releases/20261125100000/public", "releases/20261125100000/public/",
    "/elsewhere/releases/20261125100000", "/srv/app/other/20261125100000", "/srv/app/releases/",
    "/srv/app/releases/bad id", "/srv/app/releases-x/1",
])
def test_the_shell_and_python_read_a_current_link_alike(tmp_path: Path, link: str) -> None:
    """What ``dt_live`` says is live is what ``live_id`` says: cleanup on the host and the plan here
    must never disagree about which release serves (a link into releases/<id>/public is <id>)."""
    from deploytest.state import live_id

    deploy_to = tmp_path / "srv" / "app"
    deploy_to.mkdir(parents=True)
    local = link.replace("/srv/app", str(deploy_to), 1) if link.startswith("/srv/app") else link
    os.symlink(local, deploy_to / "current")
    settings = Settings(deploy_to=str(deploy_to))
    out = subprocess.run(["sh", "-c", shell.script(settings, "dt_live\n")], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert (out or None) == live_id(local, settings)
    expected = "20261125100000" if local.rstrip("/").startswith((f"{deploy_to}/releases/2", "releases/2")) else None
    assert live_id(local, settings) == expected, link


def test_a_script_runs_from_a_descriptor_with_its_input_untouched() -> None:
    """What a session sends: the script's shells show a short command line (not the script), the
    script reads the session's input, and the descriptor is not left to what the script runs."""
    body = ("read -r line; echo \"got=$line\"\n"
            "tr '\\0' ' ' </proc/$$/cmdline; echo; (tr '\\0' ' ' </proc/self/cmdline; echo)\n"
            "[ ! -e /proc/$$/fd/3 ] && echo fd3-closed; rest=$(cat); echo \"rest=$rest\"\n"
            + "# padding past a pipe's size\n" * 400 + "echo end\n")
    sent = shell.from_descriptor(body)
    result = subprocess.run(["/bin/sh", "-c", sent], input="first\nsecond\n", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "got=first" and lines[-2:] == ["rest=second", "end"], result.stdout
    assert lines[1].strip() == lines[2].strip() == "/bin/sh /dev/fd/3", result.stdout
    assert "fd3-closed" in lines
    shellcheck = shutil.which("shellcheck")
    if shellcheck:
        check = subprocess.run([shellcheck, "-s", "sh", "-f", "gcc", "-"], input=sent, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout


def test_a_script_holding_the_end_line_gets_another(monkeypatch: pytest.MonkeyPatch) -> None:
    tokens = iter(["a" * 16, "b" * 16])
    monkeypatch.setattr(shell.secrets, "token_hex", lambda n: next(tokens))
    sent = shell.from_descriptor(f"echo one\ncat <<'X'\nDT_END_{'a' * 16}\nX\necho two\n")
    assert f"<<'DT_END_{'b' * 16}'" in sent
    result = subprocess.run(["/bin/sh", "-c", sent], capture_output=True, text=True)
    assert result.stdout == f"one\nDT_END_{'a' * 16}\ntwo\n", result.stdout + result.stderr


def test_a_script_from_a_descriptor_still_runs_where_dev_fd_is_missing() -> None:
    """Without /dev/fd (a bare /dev: only null here) the script runs in the shell itself, input and all."""
    body = "read -r line; echo \"got=$line\"\n" + "# padding past a pipe's size\n" * 400 + "echo end\n"
    sent = shell.from_descriptor(body)
    result = subprocess.run(
        ["unshare", "-m", "sh", "-c",
         'mount -t tmpfs none /dev && mknod -m 666 /dev/null c 1 3 && [ ! -e /dev/fd ] && exec sh -c "$1"',
         "sh", sent],
        input="first\n", capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "got=first\nend\n", result.stdout + result.stderr
