"""The SSH test bed itself, against real sshd processes."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any, Callable

import paramiko
import pytest
import testbed
from testbed import Host, TestBed

pytestmark = pytest.mark.testbed

MakeHosts = Callable[..., TestBed]


def run_over_ssh(bed: TestBed, name: str, cmd: str, **kwargs: Any) -> Any:
    conn = bed.strict_connection(name, connect_timeout=5)
    try:
        return conn.run(cmd, hide=True, in_stream=False, **kwargs)
    finally:
        conn.close()


def other_key_known_hosts(bed: TestBed, tmp_path: Path) -> Path:
    """A known_hosts naming the same addresses with different keys (a man in the middle)."""
    lines = []
    for h in bed.hosts:
        _, public = testbed._ed25519_keypair("impostor")
        lines.append(testbed.known_hosts_line(h.address, h.port, public))
    path = tmp_path / "known_hosts.wrong"
    path.write_text("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------------------------------
# connecting


def test_fabric_connects_to_every_host_with_strict_host_key_checking(make_hosts: MakeHosts) -> None:
    bed = make_hosts(5)
    assert bed.names == ["web1", "web2", "web3", "web4", "web5"]
    for host in bed.hosts:
        conn = bed.strict_connection(host.name, connect_timeout=5)
        try:
            conn.open()
            assert conn.host == host.address  # HostName from the ssh_config
            assert conn.port == 22 and conn.user == "root"
            assert conn.client.get_transport().get_remote_server_key().get_base64() == \
                host.public_key.split()[1]
            assert conn.run("hostname", hide=True, in_stream=False).stdout.strip() == host.name
        finally:
            conn.close()


def test_wrong_or_missing_known_hosts_is_refused(make_hosts: MakeHosts, tmp_path: Path) -> None:
    bed = make_hosts(2)
    wrong = other_key_known_hosts(bed, tmp_path)
    conn = bed.strict_connection("web1", known_hosts=wrong, connect_timeout=5)
    with pytest.raises(paramiko.BadHostKeyException):
        conn.open()
    conn.close()

    empty = tmp_path / "known_hosts.empty"
    empty.write_text("")
    conn = bed.strict_connection("web2", known_hosts=empty, connect_timeout=5)
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        conn.open()
    conn.close()
    assert all(h.sessions() == 0 for h in bed.hosts)


def test_openssh_client_accepts_the_generated_files(make_hosts: MakeHosts, tmp_path: Path) -> None:
    """ssh_config + known_hosts are what OpenSSH itself expects (StrictHostKeyChecking yes)."""
    if shutil.which("ssh") is None:
        pytest.fail("ssh client missing: apt-get install -y openssh-client")
    bed = make_hosts(2)
    ssh = ["ssh", "-F", str(bed.ssh_config), "-o", "BatchMode=yes", "-o", "ConnectTimeout=5"]
    ok = subprocess.run(ssh + ["web2", "hostname"], env=bed.env(), capture_output=True, text=True)
    assert (ok.returncode, ok.stdout.strip()) == (0, "web2"), ok.stderr

    wrong = other_key_known_hosts(bed, tmp_path)
    bad = subprocess.run(ssh + ["-o", f"UserKnownHostsFile={wrong}", "web2", "hostname"],
                         env=bed.env(), capture_output=True, text=True)
    assert bad.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in bad.stderr


def test_fab_cli_with_env_and_ssh_config(make_hosts: MakeHosts, tmp_path: Path) -> None:
    bed = make_hosts(3)
    env = bed.env()
    assert env["HOME"] != os.environ.get("HOME") and Path(env["HOME"], ".ssh").is_dir()
    fab = shutil.which("fab", path=env["PATH"])
    assert fab, "fab not on PATH of bed.env()"
    proc = subprocess.run([fab, "-S", str(bed.ssh_config), "-H", ",".join(bed.names), "--", "hostname"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.split()) == ["web1", "web2", "web3"]
    for host in bed.hosts:
        assert host.wait_sessions(1) == 1


# --------------------------------------------------------------------------------------------------
# isolation


def test_hosts_have_their_own_hostname_and_srv(make_hosts: MakeHosts) -> None:
    bed = make_hosts(3)
    web1, web2, web3 = bed.hosts
    assert len({h.address for h in bed.hosts}) == 3
    for host in bed.hosts:
        assert run_over_ssh(bed, host.name, "hostname").stdout.strip() == host.name
        assert host.sh("hostname").stdout.strip() == host.name

    run_over_ssh(bed, "web1", "echo one > /srv/marker")
    assert (web1.srv / "marker").read_text() == "one\n"
    assert not (web2.srv / "marker").exists()
    assert run_over_ssh(bed, "web2", "test -e /srv/marker", warn=True).exited == 1
    assert web2.sh("test -e /srv/marker").returncode == 1

    (web3.srv / "seeded").write_text("from the test\n")
    assert run_over_ssh(bed, "web3", "cat /srv/seeded").stdout == "from the test\n"
    # The root filesystem's own /srv is untouched.
    assert not Path("/srv/marker").exists()


def test_each_host_has_its_own_loopback(make_hosts: MakeHosts) -> None:
    """An app listening on 127.0.0.1:8000 in one host is not seen by another."""
    bed = make_hosts(2)
    web1, web2 = bed.hosts
    python = shutil.which("python3") or sys.executable
    server = subprocess.Popen(web1._nsenter() + [python, "-m", "http.server", "--bind", "127.0.0.1", "8000"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=web1.srv)
    try:
        probe = f"{python} -c \"import socket; socket.create_connection(('127.0.0.1', 8000), 1)\""
        deadline = time.monotonic() + 10
        while web1.sh(probe).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert web1.sh(probe).returncode == 0
        assert web2.sh(probe).returncode != 0
    finally:
        web1.sh("pkill -f http.server")  # nsenter forked: the server is its child inside web1
        server.wait()


def test_a_process_on_one_host_is_invisible_from_another(make_hosts: MakeHosts) -> None:
    """Each host has its own PID namespace: ps, pgrep and deploytest's process check on web2 never
    see what runs on web1."""
    from deploytest.assertions import assert_process

    bed = make_hosts(2)
    web1, web2 = bed.hosts
    run_over_ssh(bed, "web1", "nohup sleep 3001 >/dev/null 2>&1 &")
    assert "sleep 3001" in run_over_ssh(bed, "web1", "ps -eo args").stdout
    assert run_over_ssh(bed, "web2", "pgrep -f 'sleep 300[1]'", warn=True).exited == 1
    assert web2.sh("pgrep -f 'sleep 300[1]'").returncode == 1
    assert web1.sh("pgrep -f 'sleep 300[1]'").returncode == 0
    # PID 1 of each host is its own init; sshd is its child, as on a server.
    assert run_over_ssh(bed, "web2", "ps -o args= -p 1").stdout.startswith("bash -c trap")
    assert f"/{web2.name}/sshd_config" in run_over_ssh(bed, "web2", "ps -o args= --ppid 1").stdout
    for name, green in (("web1", True), ("web2", False)):
        conn = bed.strict_connection(name, connect_timeout=5)
        try:
            if green:
                assert_process(conn, "sleep 3001")
            else:
                with pytest.raises(AssertionError, match="sleep 3001"):
                    assert_process(conn, "sleep 3001")
        finally:
            conn.close()


def test_orphans_are_reaped_at_once(make_hosts: MakeHosts) -> None:
    """A daemon that exits is reaped by the host's init, not left a zombie (``kill -0`` would still
    succeed on one, and restart scripts wait on that)."""
    bed = make_hosts(1)
    out = run_over_ssh(bed, "web1", "sh -c 'sleep 0.2 & echo $!' ; sleep 1; "
                                    "ps -eo stat= | grep -c '^Z' || true").stdout.split()
    daemon, zombies = out
    assert zombies == "0"
    assert run_over_ssh(bed, "web1", f"kill -0 {daemon}", warn=True).exited != 0


def test_host_cpu_counts_the_work_done_on_that_host(make_hosts: MakeHosts) -> None:
    bed = make_hosts(2)
    web1, web2 = bed.hosts
    before = [h.cpu_seconds() for h in bed.hosts]
    run_over_ssh(bed, "web1", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
    time.sleep(0.2)  # sshd reaps the session
    used = [h.cpu_seconds() - b for h, b in zip(bed.hosts, before)]
    assert used[0] >= 0.1 and used[1] < used[0] / 4, used


def test_two_beds_in_one_test_do_not_collide(make_hosts: MakeHosts) -> None:
    a = make_hosts(2, prefix="app")
    b = make_hosts(2, prefix="db")
    assert a.names == ["app1", "app2"] and b.names == ["db1", "db2"]
    assert not {h.address for h in a.hosts} & {h.address for h in b.hosts}
    assert run_over_ssh(b, "db2", "hostname").stdout.strip() == "db2"
    assert run_over_ssh(a, "app1", "hostname").stdout.strip() == "app1"
    # Closing one bed leaves the other one alone.
    gone = _bed_resources(a)
    a.close()
    _assert_gone(gone)
    assert run_over_ssh(b, "db1", "hostname").stdout.strip() == "db1"
    assert all(h.sh("true").returncode == 0 for h in b.hosts)


# --------------------------------------------------------------------------------------------------
# latency


def _median_round_trip(bed: TestBed, name: str, rounds: int = 5) -> float:
    conn = bed.strict_connection(name, connect_timeout=10)
    try:
        conn.open()
        times = []
        for _ in range(rounds):
            started = time.monotonic()
            conn.run("true", hide=True, in_stream=False)
            times.append(time.monotonic() - started)
    finally:
        conn.close()
    return sorted(times)[len(times) // 2]


def test_rtt_puts_a_round_trip_time_on_the_path_to_sshd(make_hosts: MakeHosts) -> None:
    """A command over an open connection takes two round trips (open the channel, exec): with
    rtt_ms=50 it takes well over 50 ms more than without.  A lower bound only: a busy machine may
    slow either bed."""
    near = make_hosts(1, prefix="near")
    far = make_hosts(2, prefix="far", rtt_ms=50, jitter_ms=10)
    near_s, far_s = _median_round_trip(near, "near1"), _median_round_trip(far, "far1")
    assert far_s - near_s >= 0.05, (near_s, far_s)
    # Behind the relay everything else holds: sessions counted, own hostname, a cut host times out.
    far1, far2 = far.hosts
    assert far1.wait_sessions(5) == 5
    assert run_over_ssh(far, "far2", "hostname").stdout.strip() == "far2"
    far2.cut()
    conn = far.strict_connection("far2", connect_timeout=1)
    started = time.monotonic()
    with pytest.raises((TimeoutError, OSError, paramiko.SSHException)):
        conn.open()
    assert time.monotonic() - started >= 0.9
    conn.close()


def test_jitter_never_reorders_a_stream() -> None:
    draws = iter([0.01, -0.01, 0.0, -0.01])
    arrivals = []
    last = 0.0
    for sent in (0.0, 0.001, 0.002, 0.1):
        last = testbed.arrival(sent, last, one_way=0.025, jitter=0.02, draw=lambda lo, hi: next(draws))
        arrivals.append(round(last, 3))
    assert arrivals == [0.035, 0.035, 0.035, 0.115]
    with pytest.raises(ValueError, match="jitter_ms"):
        testbed.start_hosts(1, rtt_ms=10, jitter_ms=20)


# --------------------------------------------------------------------------------------------------
# faults


def test_cut_host_times_out_and_healed_host_accepts(make_hosts: MakeHosts) -> None:
    bed = make_hosts(2)
    web1 = bed.hosts[0]
    web1.cut()
    conn = bed.strict_connection("web1", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises((TimeoutError, OSError, paramiko.SSHException)):
        conn.open()
    assert time.monotonic() - started >= 1.5, "a cut host should time out, not refuse"
    conn.close()
    # The other host is unaffected.
    assert run_over_ssh(bed, "web2", "hostname").stdout.strip() == "web2"

    web1.heal()
    assert run_over_ssh(bed, "web1", "hostname").stdout.strip() == "web1"


def test_stopped_sshd_refuses_and_restarted_accepts(make_hosts: MakeHosts) -> None:
    bed = make_hosts(1)
    web1 = bed.hosts[0]
    run_over_ssh(bed, "web1", "echo kept > /srv/kept")
    old_pid = web1.pid
    web1.stop_sshd()
    assert web1.pid is None and not testbed._pid_alive(old_pid or 0)
    conn = bed.strict_connection("web1", connect_timeout=2)
    started = time.monotonic()
    with pytest.raises(paramiko.ssh_exception.NoValidConnectionsError):
        conn.open()
    assert time.monotonic() - started < 1.5, "a stopped sshd should refuse at once"
    conn.close()
    assert web1.sh("cat /srv/kept").stdout == "kept\n"  # namespaces outlive sshd

    web1.start_sshd()
    assert web1.pid not in (None, old_pid)
    assert run_over_ssh(bed, "web1", "hostname; cat /srv/kept").stdout == "web1\nkept\n"


def test_session_counter_counts_exactly_the_commands(make_hosts: MakeHosts) -> None:
    bed = make_hosts(2)
    web1, web2 = bed.hosts
    before1, before2 = web1.sessions(), web2.sessions()
    conn = bed.strict_connection("web1", connect_timeout=5)
    try:
        conn.open()
        assert web1.sessions() == before1  # connecting is not a command
        for i in range(3):
            assert conn.run(f"echo {i}", hide=True, in_stream=False).stdout == f"{i}\n"
    finally:
        conn.close()
    assert web1.wait_sessions(before1 + 3) == before1 + 3
    time.sleep(0.2)
    assert web1.sessions() == before1 + 3
    assert web2.sessions() == before2
    assert web1.logins() == 1
    web2.sh("true")  # sh() is not an SSH session
    assert web2.sessions() == before2


def test_tiny_disk_fills_up(make_hosts: MakeHosts) -> None:
    bed = make_hosts(2)
    web1, web2 = bed.hosts
    (web1.srv / "before").write_text("x")
    web1.tiny_disk("512k")
    result = run_over_ssh(bed, "web1", "dd if=/dev/zero of=/srv/big bs=64k count=32", warn=True)
    assert result.exited != 0
    assert "No space left on device" in result.stderr
    # Other hosts keep their disk.
    assert run_over_ssh(bed, "web2", "dd if=/dev/zero of=/srv/big bs=64k count=32", warn=True).ok
    # The tmpfs survives an sshd restart, and can be removed again.
    web1.restart_sshd()
    assert "tmpfs" in run_over_ssh(bed, "web1", "df /srv").stdout
    web1.restore_disk()
    assert run_over_ssh(bed, "web1", "cat /srv/before").stdout == "x"
    assert run_over_ssh(bed, "web1", "dd if=/dev/zero of=/srv/big bs=64k count=32", warn=True).ok


# --------------------------------------------------------------------------------------------------
# the single host


def test_single_host_works_with_fabric(ssh_host: TestBed, tmp_path: Path) -> None:
    assert len(ssh_host.hosts) == 1
    host: Host = ssh_host.hosts[0]
    assert host.address == "127.0.0.1" and host.port != 22
    assert ssh_host.known_hosts.read_text().startswith(f"[127.0.0.1]:{host.port} ssh-ed25519 AAAA")
    conn = ssh_host.strict_connection(host.name, connect_timeout=5)
    try:
        assert conn.run("hostname", hide=True, in_stream=False).stdout.strip() == host.name
        src = tmp_path / "payload.txt"
        src.write_text("payload\n")
        conn.put(str(src), "/srv/payload.txt")  # sftp subsystem
        assert (host.srv / "payload.txt").read_text() == "payload\n"
        assert conn.run("cat /srv/payload.txt", hide=True, in_stream=False).stdout == "payload\n"
    finally:
        conn.close()
    assert host.wait_sessions(2) == 2

    wrong = other_key_known_hosts(ssh_host, tmp_path)
    bad = ssh_host.strict_connection(host.name, known_hosts=wrong, connect_timeout=5)
    with pytest.raises(paramiko.BadHostKeyException):
        bad.open()
    bad.close()

    with pytest.raises(NotImplementedError):
        host.cut()
    host.stop_sshd()
    host.start_sshd()
    assert run_over_ssh(ssh_host, host.name, "cat /srv/payload.txt").stdout == "payload\n"


def test_single_host_moves_off_a_port_taken_by_another_program(monkeypatch: pytest.MonkeyPatch) -> None:
    """The free port can be taken between choosing it and sshd binding it: another program listening
    there must not pass for our sshd."""
    import socket

    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        taken = squatter.getsockname()[1]
        ports = iter([taken])
        real_free_port = testbed.free_port
        monkeypatch.setattr(testbed, "free_port", lambda host="127.0.0.1": next(ports, None) or real_free_port(host))
        bed = testbed.start_local()
        try:
            host = bed.hosts[0]
            assert host.port != taken and host.pid is not None
            assert f"[127.0.0.1]:{host.port} " in bed.known_hosts.read_text()
            assert run_over_ssh(bed, host.name, "hostname").stdout.strip() == host.name
        finally:
            bed.close()


# --------------------------------------------------------------------------------------------------
# scale, cleanup, requirements


@pytest.mark.slow
@pytest.mark.parametrize("n, limit", [(20, 10.0), (50, 25.0)])
def test_bring_up_many_hosts(make_hosts: MakeHosts, n: int, limit: float) -> None:
    started = time.monotonic()
    bed = make_hosts(n)
    elapsed = time.monotonic() - started
    print(f"\ntestbed: {n} hosts up in {elapsed:.2f}s")
    assert elapsed < limit
    assert len(bed.hosts) == n and len({h.address for h in bed.hosts}) == n
    assert all(testbed.port_open(h.address, 22) for h in bed.hosts)
    last = bed.hosts[-1]
    assert run_over_ssh(bed, last.name, "hostname").stdout.strip() == f"web{n}"


def _bed_resources(bed: TestBed) -> dict[str, Any]:
    return {
        "pids": [p for h in bed.hosts for p in (h.pid, h.init_pid, h.holder.pid if h.holder else None) if p]
        + ([bed.relay.pid] if bed.relay else []),
        "netns": [h.netns for h in bed.hosts if h.netns],
        "links": [h.link for h in bed.hosts if h.link],
        "dir": bed.dir,
    }


def _assert_gone(res: dict[str, Any]) -> None:
    assert not [p for p in res["pids"] if testbed._pid_alive(p)]
    assert not [n for n in res["netns"] if Path("/run/netns", n).exists()]
    assert not [n for n in res["links"] if Path("/sys/class/net", n).exists()]
    assert not res["dir"].exists()


def test_close_removes_everything() -> None:
    bed = testbed.start_hosts(3, rtt_ms=10)
    local = testbed.start_local()
    # Something a deploy might leave running inside a host.
    bed.hosts[0].sh("nohup sleep 300 >/dev/null 2>&1 &")
    left = [int(p) for p in bed.hosts[0].sh("pgrep -f 'sleep 300'").stdout.split()]
    assert left and bed.relay is not None
    res = [_bed_resources(bed), _bed_resources(local)]
    res[0]["pids"] += [p for p in bed.hosts[0].processes() if p not in res[0]["pids"]]
    bed.close()
    local.close()
    bed.close()  # idempotent
    for r in res:
        _assert_gone(r)


@pytest.mark.slow
@pytest.mark.parametrize("how", ["sigkill", "sigterm", "exception"])
def test_leftovers_of_a_dead_run_are_swept(tmp_path: Path, how: str) -> None:
    """A run that dies without cleaning up (SIGKILL) is swept by the next one; SIGTERM and an
    unhandled exception clean up on their own."""
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(f"""
        import json, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import testbed
        bed = testbed.start_hosts(2, rtt_ms=10)
        local = testbed.start_local()
        res = {{"pids": [bed.relay.pid], "netns": [], "links": [], "dirs": []}}
        for b in (bed, local):
            for h in b.hosts:
                res["pids"] += [h.pid, h.holder.pid] + h.processes()
                res["netns"] += [h.netns] if h.netns else []
                res["links"] += [h.link] if h.link else []
            res["dirs"].append(str(b.dir))
        print(json.dumps(res), flush=True)
        if {how!r} == "exception":
            raise SystemExit("boom")
        time.sleep(300)
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    import json

    res = json.loads(proc.stdout.readline())
    if how != "exception":
        proc.send_signal(signal.SIGKILL if how == "sigkill" else signal.SIGTERM)
    proc.wait(30)
    if how == "sigkill":
        assert any(testbed._pid_alive(p) for p in res["pids"])  # really left behind
        removed = testbed.sweep_stale()
        assert removed
    testbed._wait_gone(res["pids"], 5)
    _assert_gone({"pids": res["pids"], "netns": res["netns"], "links": res["links"],
                  "dir": Path(res["dirs"][0])})
    assert not Path(res["dirs"][1]).exists()


def test_fixtures_fail_with_one_line_when_the_machine_cannot_run_them(tmp_path: Path) -> None:
    """Not a skip: a FAILED test naming what is missing and how to install it."""
    (tmp_path / "conftest.py").write_text(textwrap.dedent(f"""
        import importlib.util, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        spec = importlib.util.spec_from_file_location("fixtures_under_test",
                                                      {str(Path(__file__).with_name("conftest.py"))!r})
        fixtures = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(fixtures)
        ssh_host, make_hosts = fixtures.ssh_host, fixtures.make_hosts
        import testbed
        testbed.SSHD = "/nonexistent/sshd"
    """))
    (tmp_path / "test_it.py").write_text(textwrap.dedent("""
        def test_single(ssh_host):
            pass

        def test_multi(make_hosts):
            make_hosts(2)
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "-p", "no:deploytest", str(tmp_path)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    # ssh_host fails in setup (an ERROR), make_hosts in the test body (a FAILURE); neither is skipped.
    assert "1 failed, 1 error" in out and "skipped" not in out, out
    assert "During handling" not in out, out
    assert out.count("SSH test bed unavailable: the SSH test bed needs /nonexistent/sshd") >= 2, out
    assert "apt-get install -y openssh-server" in out


def test_missing_requirements_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(testbed, "SSHD", "/nonexistent/sshd")
    problem = testbed.check_requirements()
    assert problem is not None and "\n" not in problem
    assert "/nonexistent/sshd" in problem and "apt-get install" in problem
    with pytest.raises(testbed.TestBedError, match="openssh-server"):
        testbed.start_local()


def test_install_line_names_the_packages_of_the_missing_tools(monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no tools at all; sshd is found by its full path
    problem = testbed.check_requirements(netns=True)
    assert problem is not None and "\n" not in problem
    assert "ip (iproute2)" in problem and "nsenter (util-linux)" in problem
    assert problem.endswith(": apt-get install -y util-linux mount coreutils bash iproute2"), problem
    local = testbed.check_requirements(netns=False)
    assert local is not None and local.endswith(": apt-get install -y util-linux mount coreutils bash"), local
