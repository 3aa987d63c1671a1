"""Benchmark: the same release and the same six checks through deploytest and the tools a user would pick instead.

Needs the peers: ``pip install .[benchmark]`` (ansible-core, pyinfra, pytest-testinfra) in the
environment that runs this script; the test suite never installs them. Brings up real OpenSSH hosts
with ``tests/testbed.py`` (root; each host in its own network, PID and mount namespaces), once per
round-trip time (``--rtt 0,50``: a relay on the path to each host's sshd), and runs, interleaved
(the order of the tools turns with every round):

deploy
    a new release of ``examples/hello/app`` (upload, a shared ``log`` directory, build hook
    ``py_compile``, atomic switch of ``current``, restart on port 8000, keep 5 releases), then the
    six checks, each tool in its own ``/srv/<tool>`` on the same hosts:

    * ``deploytest``: ``fab -H <hosts> deploy-and-verify`` (rollout ``[1, "100%"]``);
    * ``ansible`` / ``ansible+pipelining``: an ``ansible-playbook`` doing what ansistrano does, with
      builtin modules only (file, unarchive, command, shell), then the checks as builtin modules
      (uri, wait_for, slurp, command, stat), OpenSSH with ControlPersist (Ansible's default), with
      and without ``pipelining``;
    * ``pyinfra``: the same steps as pyinfra operations (files.directory, files.put, server.shell,
      files.link), the checks as shell commands;
    * ``fabric loop``: a plain fabfile task, ``fab -H <hosts> deploy``: Fabric runs it host after
      host (put, run, run...), the checks as ``c.run``.

verify
    the six checks only, on the release deploytest deployed last: ``fab verify``, the Ansible
    checks playbook (both ways), pyinfra, and ``pytest --hosts=paramiko://...`` with
    pytest-testinfra (one host after another, as without pytest-xdist).

The six checks: ``/health`` answers 200 with ``ok <version>`` (retried up to 15 s: the app just
restarted), port 8000 listens, ``current/VERSION`` holds the version, ``python3
current/hello.py --version`` prints it, a ``hello.py --port 8000`` process runs, ``current`` is a
symlink. Every tool uses the same parallelism: ``min(hosts, --parallel)`` (deploytest's
``rollout.parallel``, Ansible's forks, pyinfra's ``--parallel``); the Fabric loop and testinfra are
sequential by nature.

Per row: wall time; SSH sessions per host (``Starting session:`` lines in each host's sshd log,
commands and sftp/scp subsystems alike; min-max over the hosts); control-side CPU and peak memory of
everything the tool ran on this machine (each run in its own cgroup: ``cpuacct.usage`` and
``memory.max_usage_in_bytes``, so Ansible's forks and its OpenSSH ControlPersist masters count; with
no cgroup v1, ``wait4`` of the process); and whether every host ended on the right release
(``current/VERSION`` in the tool's directory, and the app on port 8000 answering with it).

Each timed run starts on a quiet machine: up to 10 s are spent waiting until less than 10 % of the
CPU is busy, so what the run before left working (its last steps on the hosts) weighs on no one.
With ``--rounds N`` the median of N runs is shown; ``--short-rounds M`` runs the rows of at most 10
hosts M times instead (a few seconds long, they feel a passing slowdown of the machine most).

Run: ``PYTHONPATH=. python benchmarks/bench_peers.py --hosts 1,10,100 --rtt 0,50`` (as root).
"""

from __future__ import annotations

import argparse
import itertools
import os
import shutil
import signal
import statistics
import sys
import tarfile
import tempfile
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import yaml
from common import ROOT, Run, fab_env, int_list, measure, raise_fd_limit, simple_table, testbed

APP = ROOT / "examples" / "hello" / "app"
PORT = 8000
PID_FILE = "/srv/hello.pid"  # one app per host, whichever tool deployed it last
SESSION_WORDS = "Starting session:"
DEPLOY_TOOLS = ["deploytest", "ansible", "ansible+pipelining", "pyinfra", "fabric loop"]
VERIFY_TOOLS = ["deploytest", "ansible", "ansible+pipelining", "pyinfra", "testinfra"]
BIN = Path(sys.executable).parent
#: Below this share of busy CPU (over a quarter second) the machine counts as quiet before a timed run.
QUIET_BUSY = 0.10


def deploy_to(tool: str) -> str:
    return "/srv/" + tool.split("+")[0].replace(" ", "-")


# --------------------------------------------------------------------------------------------------
# the release


def make_release(work: Path, version: str) -> tuple[Path, Path]:
    """``app-<version>/`` (the example app, VERSION = version, its restart script keeping the app's
    pid in /srv so any tool's release replaces any other's) and its ``.tar.gz``."""
    app = work / f"app-{version}"
    if not app.exists():
        shutil.copytree(APP, app)
        (app / "VERSION").write_text(version + "\n")
        restart = app / "bin" / "restart"
        restart.write_text(restart.read_text().replace("log/hello.pid", PID_FILE))
        for cache in app.rglob("__pycache__"):
            shutil.rmtree(cache)
    archive = work / f"app-{version}.tar.gz"
    if not archive.exists():
        with tarfile.open(archive, "w:gz") as tar:
            for path in sorted(app.rglob("*")):
                tar.add(path, arcname=str(path.relative_to(app)), recursive=False)
    return app, archive


def shell_checks(directory: str, version: str) -> Dict[str, str]:
    """The six checks as shell commands (pyinfra, the Fabric loop)."""
    return {
        "health": f"for i in $(seq 30); do curl -sf http://127.0.0.1:{PORT}/health | grep -q 'ok {version}'"
                  " && exit 0; sleep 0.5; done; exit 1",
        "port": f"ss -ltnH | grep -q '127.0.0.1:{PORT} '",
        "version file": f"grep -q '{version}' {directory}/current/VERSION",
        "command": f"python3 {directory}/current/hello.py --version | grep -q '{version}'",
        "process": f"pgrep -f 'hello.py --port {PORT}' >/dev/null",
        "current link": f"test -L {directory}/current",
    }


# --------------------------------------------------------------------------------------------------
# the tools' projects


def deploytest_project(root: Path, app: Path, version: str, parallel: int) -> None:
    d = deploy_to("deploytest")
    root.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(root / "app", ignore_errors=True)
    shutil.copytree(app, root / "app")
    (root / "fabfile.py").write_text("from deploytest.tasks import deploy_and_verify, verify\n")
    (root / "fabric.yaml").write_text(yaml.safe_dump({"deploytest": {
        "app": "hello", "deploy_to": d, "source": "app/", "keep_releases": 5, "shared": ["log"],
        "hooks": {"build": ["python3 -m py_compile hello.py"], "restart": [f"sh bin/restart {PORT}"]},
        "checks": [
            {"http": {"url": f"http://127.0.0.1:{PORT}/health", "status": 200, "contains": f"ok {version}",
                      "name": "health"}},
            {"port": {"port": PORT}},
            {"file": {"path": f"{d}/current/VERSION", "contains": version}},
            {"command": {"run": f"python3 {d}/current/hello.py --version", "exit": 0, "stdout": version}},
            {"process": {"pattern": f"hello.py --port {PORT}"}},
            {"file": {"path": f"{d}/current", "type": "symlink", "name": "current link"}},
        ],
        "verify": {"timeout": 15, "interval": 0.3},
        "rollout": {"batches": [1, "100%"], "max_fail": 0, "parallel": parallel},
    }}, sort_keys=False))


ANSIBLE_CHECKS = """\
- name: health
  ansible.builtin.uri: {url: "http://127.0.0.1:%(port)d/health", return_content: true}
  register: health
  until: health.status == 200 and ('ok ' ~ version) in health.content
  retries: 15
  delay: 1
- name: port
  ansible.builtin.wait_for: {host: 127.0.0.1, port: %(port)d, timeout: 15}
- name: version file
  ansible.builtin.slurp: {src: "{{ deploy_to }}/current/VERSION"}
  register: version_file
  failed_when: version not in (version_file.content | b64decode)
- name: command
  ansible.builtin.command: python3 {{ deploy_to }}/current/hello.py --version
  register: version_command
  changed_when: false
  failed_when: version_command.rc != 0 or version not in version_command.stdout
- name: process
  ansible.builtin.command: pgrep -f "hello.py --port %(port)d"
  changed_when: false
- name: current link
  ansible.builtin.stat: {path: "{{ deploy_to }}/current"}
  register: current
  failed_when: not current.stat.islnk
"""

ANSIBLE_DEPLOY = """\
- hosts: all
  gather_facts: false
  vars: {deploy_to: %(deploy_to)s, keep_releases: 5}
  tasks:
    - name: ANSISTRANO | Ensure deployment base path exists
      ansible.builtin.file: {path: "{{ deploy_to }}/{{ item }}", state: directory}
      loop: [releases, shared, shared/log]
    - name: ANSISTRANO | Create new release path
      ansible.builtin.file: {path: "{{ deploy_to }}/releases/{{ release }}", state: directory}
    - name: ANSISTRANO | Unarchive the release
      ansible.builtin.unarchive: {src: "{{ archive }}", dest: "{{ deploy_to }}/releases/{{ release }}"}
    - name: ANSISTRANO | Link shared paths
      ansible.builtin.file:
        src: "{{ deploy_to }}/shared/log"
        path: "{{ deploy_to }}/releases/{{ release }}/log"
        state: link
        force: true
    - name: build
      ansible.builtin.command: {cmd: python3 -m py_compile hello.py, chdir: "{{ deploy_to }}/releases/{{ release }}"}
    - name: ANSISTRANO | Change softlink to new release
      ansible.builtin.file: {src: "{{ deploy_to }}/releases/{{ release }}", path: "{{ deploy_to }}/current",
                             state: link, force: true}
    - name: restart
      ansible.builtin.command: {cmd: sh bin/restart %(port)d, chdir: "{{ deploy_to }}/current"}
    - name: ANSISTRANO | Clean up releases
      ansible.builtin.shell: ls -1dt {{ deploy_to }}/releases/* | tail -n +{{ keep_releases + 1 }} | xargs -r rm -rf
    - ansible.builtin.import_tasks: checks.yml
"""

ANSIBLE_VERIFY = """\
- hosts: all
  gather_facts: false
  vars: {deploy_to: %(deploy_to)s}
  tasks:
    - ansible.builtin.import_tasks: checks.yml
"""


def ansible_project(root: Path, bed: testbed.TestBed, names: Sequence[str], forks: int, pipelining: bool,
                    verify_dir: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "cp").mkdir(exist_ok=True)
    (root / "ansible.cfg").write_text(textwrap.dedent(f"""\
        [defaults]
        inventory = inventory.ini
        forks = {forks}
        host_key_checking = True
        interpreter_python = /usr/bin/python3
        retry_files_enabled = False
        gathering = explicit
        [ssh_connection]
        ssh_args = -C -o ControlMaster=auto -o ControlPersist=60s -F {bed.ssh_config}
        control_path_dir = {root / "cp"}
        pipelining = {pipelining}
        """))
    (root / "inventory.ini").write_text("[all]\n" + "".join(f"{n}\n" for n in names))
    (root / "checks.yml").write_text(ANSIBLE_CHECKS % {"port": PORT})
    (root / "deploy.yml").write_text(ANSIBLE_DEPLOY % {"port": PORT, "deploy_to": deploy_to("ansible")})
    (root / "verify.yml").write_text(ANSIBLE_VERIFY % {"deploy_to": verify_dir})


PYINFRA_DEPLOY = """\
from pyinfra import host
from pyinfra.operations import files, server

D = %(deploy_to)r
RELEASE = host.data.get("release")
R = f"{D}/releases/{RELEASE}"
CHECKS = %(checks)r

if host.data.get("task") == "deploy":
    files.directory(name="releases", path=f"{D}/releases")
    files.directory(name="shared log", path=f"{D}/shared/log")
    files.put(name="upload", src=host.data.get("archive"), dest=f"{D}/upload-{RELEASE}.tar.gz")
    server.shell(name="unpack, link shared, build", commands=[
        f"mkdir -p {R} && tar xzf {D}/upload-{RELEASE}.tar.gz -C {R} && rm -f {D}/upload-{RELEASE}.tar.gz",
        f"ln -sfn {D}/shared/log {R}/log",
        f"cd {R} && python3 -m py_compile hello.py",
    ])
    files.link(name="switch", path=f"{D}/current", target=R)
    server.shell(name="restart", commands=[f"cd {D}/current && sh bin/restart %(port)d"])
    server.shell(name="clean up", commands=[f"ls -1dt {D}/releases/* | tail -n +6 | xargs -r rm -rf"])
for name, command in CHECKS.items():
    server.shell(name=f"check {name}", commands=[command])
"""


def pyinfra_project(root: Path, bed: testbed.TestBed, names: Sequence[str], directory: str,
                    version: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    hosts = [(h.name, {"ssh_hostname": h.address, "ssh_port": h.port, "ssh_user": "root",
                       "ssh_key": str(bed.client_key), "ssh_known_hosts_file": str(bed.known_hosts),
                       "ssh_strict_host_key_checking": "yes"})
             for h in bed.hosts if h.name in set(names)]
    (root / "inventory.py").write_text(f"hosts = {hosts!r}\n")
    (root / "deploy.py").write_text(PYINFRA_DEPLOY % {"deploy_to": directory, "port": PORT,
                                                      "checks": shell_checks(directory, version)})


FABRIC_LOOP = """\
import os

from fabric import task

D = %(deploy_to)r
CHECKS = %(checks)r


@task
def deploy(c):
    release, archive = os.environ["BENCH_RELEASE"], os.environ["BENCH_ARCHIVE"]
    r = f"{D}/releases/{release}"
    c.run(f"mkdir -p {D}/releases {D}/shared/log {r}")
    c.put(archive, f"{D}/upload-{release}.tar.gz")
    c.run(f"tar xzf {D}/upload-{release}.tar.gz -C {r} && rm -f {D}/upload-{release}.tar.gz")
    c.run(f"ln -sfn {D}/shared/log {r}/log")
    c.run(f"cd {r} && python3 -m py_compile hello.py")
    c.run(f"ln -sfn {r} {D}/current.new && mv -T {D}/current.new {D}/current")
    c.run(f"cd {D}/current && sh bin/restart %(port)d")
    c.run(f"ls -1dt {D}/releases/* | tail -n +6 | xargs -r rm -rf")
    for command in CHECKS.values():
        c.run(command)
"""


def fabric_loop_project(root: Path, version: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    d = deploy_to("fabric loop")
    (root / "fabfile.py").write_text(FABRIC_LOOP % {"deploy_to": d, "port": PORT,
                                                    "checks": shell_checks(d, version)})


TESTINFRA_TESTS = """\
VERSION = %(version)r
D = %(deploy_to)r


def test_health(host):
    out = host.run("curl -sf http://127.0.0.1:%(port)d/health").stdout
    assert f"ok {VERSION}" in out


def test_port(host):
    assert host.socket("tcp://127.0.0.1:%(port)d").is_listening


def test_version_file(host):
    assert host.file(f"{D}/current/VERSION").contains(VERSION)


def test_command(host):
    result = host.run(f"python3 {D}/current/hello.py --version")
    assert result.rc == 0 and VERSION in result.stdout


def test_process(host):
    assert [p for p in host.process.filter() if "hello.py --port %(port)d" in p.args]


def test_current_link(host):
    assert host.file(f"{D}/current").is_symlink
"""


# --------------------------------------------------------------------------------------------------
# measuring


class Cgroup:
    """A cgroup v1 pair (cpuacct, memory) a tool's run goes into with everything it starts."""

    def __init__(self, name: str) -> None:
        memory_path = "/"
        with open("/proc/self/cgroup") as fh:
            for line in fh:
                _, controllers, path = line.strip().split(":", 2)
                if "memory" in controllers.split(","):
                    memory_path = path
        self.cpu = Path("/sys/fs/cgroup/cpuacct") / name
        self.memory = Path("/sys/fs/cgroup/memory") / memory_path.lstrip("/") / name
        for d in (self.cpu, self.memory):
            d.mkdir()

    @staticmethod
    def available() -> bool:
        return Path("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists() and Path("/sys/fs/cgroup/memory").is_dir()

    def enter(self, pid: int) -> None:
        for d in (self.cpu, self.memory):
            (d / "cgroup.procs").write_text(str(pid))

    def cpu_seconds(self) -> float:
        return int((self.cpu / "cpuacct.usage").read_text()) / 1e9

    def peak_mb(self) -> float:
        return int((self.memory / "memory.max_usage_in_bytes").read_text()) / 2**20

    def remove(self) -> None:
        """Kill what is left (ControlPersist masters) and remove the groups."""
        for _ in range(50):
            pids = [int(p) for p in (self.cpu / "cgroup.procs").read_text().split()]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.05)
        for d in (self.cpu, self.memory):
            try:
                d.rmdir()
            except OSError:
                pass


@dataclass
class Result:
    tool: str
    scenario: str
    hosts: int
    rtt: int
    seconds: float
    sessions: tuple[int, int]
    cpu: float
    memory_mb: float
    right: int
    code: int
    output: str


def sessions(host: testbed.Host) -> int:
    return host.log_text().count(SESSION_WORDS)


def cpu_busy(seconds: float) -> float:
    """The share of this machine's CPU time spent busy over the next ``seconds`` (/proc/stat)."""
    def sample() -> list[int]:
        with open("/proc/stat") as fh:
            return [int(x) for x in fh.readline().split()[1:]]
    before = sample()
    time.sleep(seconds)
    delta = [b - a for a, b in zip(before, sample())]
    total = sum(delta)
    return 1 - (delta[3] + delta[4]) / total if total else 0.0  # idle + iowait


def quiet(limit: float = 10.0) -> None:
    """Wait (at most ``limit`` seconds) until the machine is idle: the run before (the tool's or the
    untimed deploy's last steps on the hosts) does not weigh on the next tool's run."""
    deadline = time.monotonic() + limit
    while cpu_busy(0.25) > QUIET_BUSY and time.monotonic() < deadline:
        pass


def run_tool(cmd: List[str], cwd: Path, env: Dict[str, str], timeout: float) -> tuple[Run, float, float]:
    """Run one tool's command in its own cgroup: (run, CPU seconds, peak memory MiB)."""
    if not Cgroup.available():
        run = measure(cmd, cwd, env, timeout=timeout)
        return run, run.cpu, run.rss_mb
    group = Cgroup(f"dt-bench-{os.getpid()}-{time.monotonic_ns()}")
    try:
        # The tool runs under a small sh that enters the cgroup, then execs it.
        wrapped = ["sh", "-c", f'echo $$ > {group.cpu}/cgroup.procs && echo $$ > {group.memory}/cgroup.procs'
                   ' && exec "$@"', "tool"] + cmd
        run = measure(wrapped, cwd, env, timeout=timeout)
        return run, group.cpu_seconds(), group.peak_mb()
    finally:
        group.remove()


def on_release(bed: testbed.TestBed, hosts: Sequence[testbed.Host], directory: str, version: str,
               app_too: bool) -> int:
    """How many hosts have ``version`` live in ``directory`` (and the app answering with it)."""
    right = 0
    for h in hosts:
        out = h.sh(f"cat {directory}/current/VERSION 2>/dev/null; echo; "
                   f"curl -s -m 5 http://127.0.0.1:{PORT}/health").stdout.split("\n")
        live = out[0].strip()
        health = "\n".join(out[1:])
        if live == version and (not app_too or f"ok {version}" in health):
            right += 1
    return right


class Bench:
    def __init__(self, work: Path, bed: testbed.TestBed, rtt: int, parallel: int, timeout: float) -> None:
        self.work, self.bed, self.rtt, self.parallel, self.timeout = work, bed, rtt, parallel, timeout
        self.counter = itertools.count(1)
        self.env = fab_env(bed)
        self.env["ANSIBLE_NOCOLOR"] = "1"
        self.env["ANSIBLE_STDOUT_CALLBACK"] = "default"
        self.env["PYINFRA_YES"] = "1"
        self.last_deploytest_version = ""

    def next_version(self) -> str:
        return f"1.{next(self.counter)}.{self.rtt}"

    def deploy(self, tool: str, hosts: Sequence[testbed.Host]) -> Result:
        n, names = len(hosts), [h.name for h in hosts]
        version = self.next_version()
        release = time.strftime("%Y%m%d%H%M%S") + version.replace(".", "")
        app, archive = make_release(self.work, version)
        p = min(n, self.parallel)
        root = self.work / tool.replace(" ", "-").replace("+", "-")
        env = dict(self.env)
        if tool == "deploytest":
            deploytest_project(root, app, version, p)
            cmd = [sys.executable, "-m", "fabric", "-S", str(self.bed.ssh_config), "-H", ",".join(names),
                   "deploy-and-verify"]
            self.last_deploytest_version = version
        elif tool.startswith("ansible"):
            ansible_project(root, self.bed, names, p, tool.endswith("pipelining"), deploy_to("deploytest"))
            env["ANSIBLE_CONFIG"] = str(root / "ansible.cfg")
            cmd = [str(BIN / "ansible-playbook"), "deploy.yml", "-e",
                   f"release={release} version={version} archive={archive}"]
        elif tool == "pyinfra":
            pyinfra_project(root, self.bed, names, deploy_to("pyinfra"), version)
            cmd = [str(BIN / "pyinfra"), "inventory.py", "deploy.py", "-y", "--parallel", str(p),
                   "--data", "task=deploy", "--data", f"release={release}", "--data", f"archive={archive}"]
        elif tool == "fabric loop":
            fabric_loop_project(root, version)
            env.update({"BENCH_RELEASE": release, "BENCH_ARCHIVE": str(archive)})
            cmd = [sys.executable, "-m", "fabric", "-S", str(self.bed.ssh_config), "-H", ",".join(names),
                   "deploy"]
        else:
            raise ValueError(tool)
        return self._measure(tool, "deploy", hosts, cmd, root, env, deploy_to(tool), version, app_too=True)

    def verify(self, tool: str, hosts: Sequence[testbed.Host]) -> Result:
        n, names = len(hosts), [h.name for h in hosts]
        version = self.last_deploytest_version
        d = deploy_to("deploytest")
        p = min(n, self.parallel)
        root = self.work / ("verify-" + tool.replace(" ", "-").replace("+", "-"))
        env = dict(self.env)
        if tool == "deploytest":
            app, _ = make_release(self.work, version)
            deploytest_project(root, app, version, p)
            cmd = [sys.executable, "-m", "fabric", "-S", str(self.bed.ssh_config), "-H", ",".join(names),
                   "verify"]
        elif tool.startswith("ansible"):
            ansible_project(root, self.bed, names, p, tool.endswith("pipelining"), d)
            env["ANSIBLE_CONFIG"] = str(root / "ansible.cfg")
            cmd = [str(BIN / "ansible-playbook"), "verify.yml", "-e", f"version={version}"]
        elif tool == "pyinfra":
            pyinfra_project(root, self.bed, names, d, version)
            cmd = [str(BIN / "pyinfra"), "inventory.py", "deploy.py", "-y", "--parallel", str(p),
                   "--data", "task=verify"]
        elif tool == "testinfra":
            root.mkdir(parents=True, exist_ok=True)
            (root / "test_verify.py").write_text(TESTINFRA_TESTS % {"version": version, "deploy_to": d,
                                                                    "port": PORT})
            cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:deploytest",
                   f"--hosts={','.join('paramiko://' + x for x in names)}", f"--ssh-config={self.bed.ssh_config}",
                   "test_verify.py"]
        else:
            raise ValueError(tool)
        return self._measure(tool, "verify", hosts, cmd, root, env, d, version, app_too=True)

    def _measure(self, tool: str, scenario: str, hosts: Sequence[testbed.Host], cmd: List[str], root: Path,
                 env: Dict[str, str], directory: str, version: str, app_too: bool) -> Result:
        before = [sessions(h) for h in hosts]
        quiet()
        run, cpu, memory = run_tool(cmd, root, env, self.timeout)
        time.sleep(0.2)
        counts = [sessions(h) - b for h, b in zip(hosts, before)]
        right = on_release(self.bed, hosts, directory, version, app_too)
        result = Result(tool, scenario, len(hosts), self.rtt, run.seconds, (min(counts), max(counts)), cpu,
                        memory, right, run.codes[0], run.output)
        status = "ok" if run.codes == [0] and right == len(hosts) else f"exit {run.codes[0]}"
        print(f"  {scenario} {tool}, {len(hosts)} hosts, rtt {self.rtt} ms: {run.seconds:.2f}s, "
              f"{counts and min(counts)}-{counts and max(counts)} sessions/host, CPU {cpu:.2f}s, "
              f"{memory:.0f} MiB, {right}/{len(hosts)} right, {status}", file=sys.stderr)
        if status != "ok":
            print(textwrap.indent("\n".join(run.output.strip().splitlines()[-25:]), "    | "), file=sys.stderr)
        return result


def main() -> int:
    """Bring up the hosts per RTT, run every tool on every row, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--hosts", type=int_list, default=[1, 10, 100], help="host counts (default 1,10,100)")
    parser.add_argument("--rtt", default="0,50", help="round-trip times in ms (default 0,50)")
    parser.add_argument("--rounds", type=int, default=1, help="runs per tool and row; the median is shown")
    parser.add_argument("--short-rounds", type=int, default=0,
                        help="runs per tool in rows of at most 10 hosts (default: --rounds): a few seconds"
                             " long, they feel a passing slowdown of the machine most")
    parser.add_argument("--parallel", type=int, default=100,
                        help="parallelism of every tool that has one (default 100)")
    parser.add_argument("--scenarios", default="deploy,verify", help="deploy,verify (default both)")
    parser.add_argument("--tools", default=",".join(dict.fromkeys(DEPLOY_TOOLS + VERIFY_TOOLS)),
                        help="which tools (default all)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds before one run is killed")
    args = parser.parse_args()
    problem = testbed.check_requirements(netns=True)
    missing = [t for t in ("ansible-playbook", "pyinfra") if not (BIN / t).exists()]
    try:
        import testinfra  # noqa: F401
    except ImportError:
        missing.append("pytest-testinfra")
    if problem or missing:
        print(f"cannot run the benchmark: {problem or 'missing ' + ', '.join(missing)}: "
              "pip install .[benchmark]", file=sys.stderr)
        return 2
    raise_fd_limit()
    rtts = [int(x) for x in args.rtt.split(",") if x.strip()]
    tools = [t.strip() for t in args.tools.split(",")]
    scenarios = [s.strip() for s in args.scenarios.split(",")]
    results: List[Result] = []
    work = Path(tempfile.mkdtemp(prefix="dt-bench-peers-"))
    started_all = time.perf_counter()
    interrupted = False
    try:
        for rtt in rtts:
            started = time.perf_counter()
            bed = testbed.start_hosts(max(args.hosts), prefix="web", rtt_ms=rtt or None)
            print(f"{max(args.hosts)} hosts up (rtt {rtt} ms) in {time.perf_counter() - started:.1f}s",
                  file=sys.stderr)
            bench = Bench(work / f"rtt{rtt}", bed, rtt, args.parallel, args.timeout)
            bench.work.mkdir()
            try:
                # Untimed: every tool's directory exists and the app runs on every host.
                warm = bench.deploy("deploytest", bed.hosts)
                if warm.code != 0:
                    print(warm.output, file=sys.stderr)
                    return 1
                for n in args.hosts:
                    hosts = bed.hosts[:n]
                    rounds = max(args.short_rounds, args.rounds) if n <= 10 else args.rounds
                    for r in range(rounds):
                        if "deploy" in scenarios:
                            order = [t for t in DEPLOY_TOOLS if t in tools]
                            for tool in order[r % len(order):] + order[:r % len(order)]:
                                results.append(bench.deploy(tool, hosts))
                        if "verify" in scenarios:
                            bench.deploy("deploytest", hosts)  # untimed: what the verify rows check
                            order = [t for t in VERIFY_TOOLS if t in tools]
                            for tool in order[r % len(order):] + order[:r % len(order)]:
                                results.append(bench.verify(tool, hosts))
            finally:
                bed.close()
    except KeyboardInterrupt:  # Ctrl-C or timeout -s INT: the rows measured so far still count
        interrupted = True
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print_table(results, rtts)
    print(f"(whole benchmark: {time.perf_counter() - started_all:.0f}s"
          f"{'; interrupted, the rows above are the ones measured' if interrupted else ''})", file=sys.stderr)
    return 0 if not interrupted and all(r.code == 0 and r.right == r.hosts for r in results) else 1


def print_table(results: List[Result], rtts: List[int]) -> None:
    rows = []
    ordered = DEPLOY_TOOLS + [t for t in VERIFY_TOOLS if t not in DEPLOY_TOOLS]
    groups: Dict[tuple[str, int, int, str], List[Result]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.rtt, r.hosts, r.tool), []).append(r)
    best: Dict[tuple[str, int, int], float] = {}
    for (scenario, rtt, hosts, tool), rs in groups.items():
        if tool == "deploytest":
            best[(scenario, rtt, hosts)] = statistics.median(x.seconds for x in rs)
    for (scenario, rtt, hosts, tool) in sorted(groups, key=lambda k: (k[0] != "deploy", k[1], k[2],
                                                                      ordered.index(k[3]))):
        rs = groups[(scenario, rtt, hosts, tool)]
        seconds = statistics.median(x.seconds for x in rs)
        ref: Optional[float] = best.get((scenario, rtt, hosts))
        ratio = f"{seconds / ref:.1f}x" if ref else "-"
        lo, hi = min(x.sessions[0] for x in rs), max(x.sessions[1] for x in rs)
        ok = all(x.code == 0 and x.right == x.hosts for x in rs)
        rows.append([scenario, str(rtt), str(hosts), tool, f"{seconds:.2f}", ratio,
                     f"{lo}" if lo == hi else f"{lo}-{hi}", f"{statistics.median(x.cpu for x in rs):.2f}",
                     f"{max(x.memory_mb for x in rs):.0f}",
                     "yes" if ok else f"no ({min(x.right for x in rs)}/{hosts}, exit {rs[0].code})"])
    print()
    print(f"The same release (examples/hello/app, build + restart) and six checks; {os.cpu_count()} CPUs shared "
          f"by the tool and all hosts; RTT {'/'.join(map(str, rtts))} ms on the path to each sshd")
    print()
    print(simple_table(["scenario", "RTT (ms)", "hosts", "tool", "wall (s)", "vs deploytest", "sessions/host",
                        "CPU (s)", "peak MiB", "right release"], rows))


if __name__ == "__main__":
    sys.exit(main())
