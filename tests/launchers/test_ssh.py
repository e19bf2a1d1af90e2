"""The SSH launcher against a real sshd on two loopback "hosts" (127.0.0.2 and 127.0.0.3).

The hosts are this machine, so what the launcher did remotely (kernel
processes, their sockets, their folder) can be checked here too.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import psutil
import pytest
from _ssh_fixture import HOSTS, SSHServer, skip_reason
from conftest import alive, readline, wait_until

import ipyparallel_ext as ipp
from ipyparallel_ext.cluster import SSHLauncher
from ipyparallel_ext.error import EngineStartError

pytestmark = pytest.mark.timeout(300)
PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")


@pytest.fixture(scope="module")
def sshd():
    """A running :class:`SSHServer` for the module; stopped (with its temp folder gone) after it."""
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    server = SSHServer()
    try:
        yield server.start()
    finally:
        server.close()


def ssh_cluster(sshd, hosts, kernel_name=None, **options):
    """An unstarted Cluster of ssh engines on the test sshd, running this Python there."""
    options.setdefault("ssh_args", sshd.client_args())
    options.setdefault("python", sys.executable)
    return ipp.Cluster(n=sum(hosts.values()) if isinstance(hosts, dict) else len(hosts), engines="ssh",
                       launcher_options={"hosts": hosts, **options}, engine_timeout=90, kernel_name=kernel_name)


def set_status(cluster):
    (status,) = cluster.engine_set_status().values()
    return status


def listening(pid):
    """(ip, port) pairs process ``pid`` listens on."""
    process = psutil.Process(pid)
    connections = getattr(process, "net_connections", None) or process.connections  # psutil < 6
    return {(c.laddr.ip, c.laddr.port) for c in connections(kind="tcp") if c.status == psutil.CONN_LISTEN}


def remote_pids(status):
    return [pid for facts in status["hosts"].values() for pid in facts["remote_pids"].values()]


def naming(folder):
    """Processes running now whose command line names ``folder`` (kernels, the remote watch)."""
    return [p for p in psutil.process_iter(["cmdline", "status"])
            if p.info["status"] != psutil.STATUS_ZOMBIE and folder in " ".join(p.info["cmdline"] or [])]


def assert_nothing_left(sshd, status):
    """No kernel, remote folder or tunnel of the engine set ``status`` (saved while it ran) is left."""
    for pid in remote_pids(status):
        assert wait_until(lambda pid=pid: not alive(pid), timeout=10), f"remote kernel {pid} still runs"
    for host, facts in status["hosts"].items():
        assert facts["remote_dir"]
        assert wait_until(lambda d=facts["remote_dir"]: not naming(d), timeout=10), naming(facts["remote_dir"])
        answer = sshd.run(host.rpartition("@")[2].split(":")[0], f"test -e {facts['remote_dir']} && echo left")
        assert answer.returncode in (0, 1) and "left" not in answer.stdout, answer
        assert wait_until(lambda t=facts["ssh_pid"]: not alive(t), timeout=10), "an ssh session is left"


@pytest.fixture(scope="module")
def ssh_rc(sshd):
    """A Client on one engine on each of 127.0.0.2 and 127.0.0.3, through tunnels."""
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1, HOSTS[1]: 1})
    try:
        rc = cluster.start_and_connect_sync()
        rc.wait_for_engines(2, timeout=60)
        yield cluster, rc
    finally:
        cluster.stop_cluster_sync()


def test_work_runs_on_both_hosts_through_tunnels(ssh_rc, shell):
    cluster, rc = ssh_rc
    status = set_status(cluster)
    assert status["state"] == "running" and status["tunnel"] is True
    assert set(status["hosts"]) == set(HOSTS)
    pids = rc[:].apply_sync(os.getpid)
    assert sorted(pids) == sorted(remote_pids(status))
    assert rc[:].apply_sync(lambda x: x * 2, 21) == [42, 42]
    view = rc[:]
    view.block = True
    view.activate("_ssh")
    try:
        shell.run_line_magic("px_ssh", "import os; pid_seen = os.getpid()")
    finally:
        from ipyparallel_ext import _magics

        _magics._registry[shell]["_ssh"].retire()
    assert view.pull("pid_seen") == pids


def test_clients_see_loopback_ports_of_the_tunnels_kernels_listen_on_loopback_only(ssh_rc):
    cluster, rc = ssh_rc
    status = set_status(cluster)
    for eid, path in zip(sorted(cluster.engines), cluster.connection_files):
        with open(path) as f:
            info = json.load(f)
        assert os.stat(path).st_mode & 0o777 == 0o600
        ports = {info[k] for k in PORTS}
        assert info["ip"] == "127.0.0.1"
        (host,) = [h for h, facts in status["hosts"].items() if eid in facts["engines"]]
        facts = status["hosts"][host]
        # The client's ports are the tunnel's: ssh listens on them here...
        assert {("127.0.0.1", p) for p in ports} <= listening(facts["ssh_pid"])
        # ...and the kernel listens on the remote loopback only, on other ports.
        kernel = listening(facts["remote_pids"][str(eid)])
        assert kernel and {ip for ip, _ in kernel} == {"127.0.0.1"}
        assert not ports & {p for _, p in kernel}


def test_interrupt_a_sleeping_task(ssh_rc, tmp_path):
    cluster, rc = ssh_rc

    @ipp.interactive
    def sleep_after(path):
        import time

        open(path, "w").close()
        time.sleep(120)

    for how in ("interrupt_request", "SIGINT over ssh"):
        started = tmp_path / f"started-{how[:4]}"
        ar = rc[1].apply_async(sleep_after, str(started))
        assert wait_until(started.exists, timeout=60)
        if how == "interrupt_request":
            rc.interrupt(targets=[1])
        else:
            cluster.signal_engine_sync(signal.SIGINT, 1)
        with pytest.raises(ipp.RemoteError) as info:
            ar.get(timeout=30)
        assert info.value.ename == "KeyboardInterrupt"
    assert rc[1].apply_sync(lambda: "still there") == "still there"


def test_restart_one_engine_keeps_its_connection_file(ssh_rc):
    cluster, rc = ssh_rc
    path = cluster.engines[0].connection_file
    before = rc[0].apply_sync(os.getpid)
    rc[0].push({"before_restart": 1}, block=True)
    rc.shutdown(targets=[0], restart=True)  # blocks until the engine is back
    assert rc.ids == [0, 1]
    assert cluster.engines[0].connection_file == path
    assert rc[0].apply_sync(os.getpid) != before
    assert wait_until(lambda: not alive(before), timeout=10)
    with pytest.raises(ipp.RemoteError, match="NameError"):
        rc[0].pull("before_restart", block=True)  # a fresh kernel
    assert set_status(cluster)["hosts"][HOSTS[0]]["remote_pids"]["0"] == rc[0].apply_sync(os.getpid)


def test_stop_leaves_no_kernel_no_tunnel_no_remote_folder(sshd, tmp_path):
    # user@host:port and a list of hosts: the port comes from the host, not from ssh_args.
    args = sshd.client_args()
    args = args[: args.index("-p")]
    cluster = ssh_cluster(sshd, [f"root@{HOSTS[0]}:{sshd.port}", f"{HOSTS[1]}:{sshd.port}"], ssh_args=args)
    try:
        rc = cluster.start_and_connect_sync()
        assert len(set(rc[:].apply_sync(os.getpid))) == 2
        status = set_status(cluster)
        files = cluster.connection_files
    finally:
        cluster.stop_cluster_sync()
    # Once stop returns: not even the sessions' remote ends are left.
    assert not [p for facts in status["hosts"].values() for p in naming(facts["remote_dir"])]
    assert_nothing_left(sshd, status)
    assert not any(os.path.exists(f) for f in files)


def test_another_process_stops_the_set_from_the_saved_facts(sshd, tmp_path):
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1, HOSTS[1]: 1}, remote_dir=str(tmp_path / "remote"))
    saved = tmp_path / "cluster.json"
    try:
        cluster.start_cluster_sync()
        status = set_status(cluster)
        saved.write_text(json.dumps(cluster.to_dict()))
        (engines,) = cluster.to_dict()["engines"]["sets"].values()
        assert {e["host"] for e in engines.values()} == set(HOSTS)
        code = ("import json, sys, ipyparallel_ext as ipp\n"
                "c = ipp.Cluster.from_dict(json.load(open(sys.argv[1])))\n"
                "print(sorted(c.engines))\nc.stop_cluster_sync()\n")
        out = subprocess.run([sys.executable, "-c", code, str(saved)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[0, 1]"
        assert_nothing_left(sshd, status)
        assert os.listdir(tmp_path / "remote") == []
    finally:
        cluster.stop_cluster_sync()


def test_a_local_port_taken_before_the_tunnel_binds_it_is_replaced(sshd, monkeypatch):
    # The race the tunnel's retry is for: a port picked free is taken before ssh binds it.
    from ipyparallel_ext.cluster import _ssh

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    picks = []

    def pick(k, free_ports=_ssh._free_ports):
        ports = free_ports(k)
        if not picks:
            ports[0] = taken.getsockname()[1]
        picks.append(ports)
        return ports

    monkeypatch.setattr(_ssh, "_free_ports", pick)
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1})
    try:
        rc = cluster.start_and_connect_sync()
        assert rc[:].apply_sync(lambda: "ok") == ["ok"]
        assert len(picks) == 2  # ssh refused the taken port (ExitOnForwardFailure); fresh ones worked
        with open(cluster.connection_files[0]) as f:
            assert taken.getsockname()[1] not in json.load(f).values()
    finally:
        cluster.stop_cluster_sync()
        taken.close()


def test_engines_end_with_the_python_that_started_them(sshd, tmp_path):
    # A client process killed outright stops nothing itself: its ssh sessions end, and with
    # them the remote kernels, as local kernels end with their parent.
    code = ("import json, sys, time, ipyparallel_ext as ipp\n"
            "c = ipp.Cluster(engines='ssh', engine_timeout=90, launcher_options=json.loads(sys.argv[1]))\n"
            "c.start_cluster_sync()\n"
            "print(json.dumps(list(c.engine_set_status().values())[0]), flush=True)\n"
            "time.sleep(300)\n")
    options = {"hosts": list(HOSTS), "ssh_args": sshd.client_args(), "python": sys.executable}
    process = subprocess.Popen([sys.executable, "-c", code, json.dumps(options)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        status = json.loads(readline(process, timeout=120))
        assert sorted(status["hosts"]) == sorted(HOSTS)  # no n: one engine per listed host
        assert all(alive(pid) for pid in remote_pids(status))
    finally:
        process.kill()
        process.wait(30)
    # Its ssh sessions were its children: they see their stdin end and exit once the kernels are gone.
    assert_nothing_left(sshd, status)


def test_a_lost_ssh_session_shows_in_the_status_and_ends_its_kernels(sshd):
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1, HOSTS[1]: 1})
    try:
        rc = cluster.start_and_connect_sync()
        status = set_status(cluster)
        lost = status["hosts"][HOSTS[1]]
        os.kill(lost["ssh_pid"], signal.SIGKILL)  # as a network that drops the connection would end it
        assert wait_until(lambda: set_status(cluster)["state"] == "ssh session lost", timeout=10)
        (eid,) = lost["engines"]
        assert cluster.to_dict()["engines"]["sets"][next(iter(cluster.engine_sets))][str(eid)]["state"] == "dead"
        # The host's end saw its session go: it stopped the kernel there, which its clients then see.
        assert wait_until(lambda: not alive(lost["remote_pids"][str(eid)]), timeout=15)
        (kept,) = status["hosts"][HOSTS[0]]["engines"]
        assert rc[kept].apply_sync(lambda: "other host fine") == "other host fine"
    finally:
        cluster.stop_cluster_sync()
    assert_nothing_left(sshd, status)


def test_without_tunnels_kernels_listen_on_the_hosts_address(sshd):
    # Any kernelspec: its argv runs with the remote Python.
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1, HOSTS[1]: 1}, kernel_name="python3", tunnel=False)
    try:
        rc = cluster.start_and_connect_sync()
        pids = rc[:].apply_sync(os.getpid)
        status = set_status(cluster)
        assert status["tunnel"] is False
        for host, facts in status["hosts"].items():
            assert not listening(facts["ssh_pid"])  # its session forwards nothing
            (eid,) = facts["engines"]
            with open(cluster.engines[eid].connection_file) as f:
                info = json.load(f)
            assert info["ip"] == host
            kernel = listening(facts["remote_pids"][str(eid)])
            # The kernel's own ports are on the host's address; what else it listens on is its
            # private loopback pipe (ipykernel's IOPub thread), not reachable from elsewhere.
            assert {(host, info[k]) for k in PORTS} <= kernel
            assert {ip for ip, _ in kernel} <= {host, "127.0.0.1"}
            assert "--HistoryManager.enabled=False" not in psutil.Process(facts["remote_pids"][str(eid)]).cmdline()
        assert sorted(pids) == sorted(remote_pids(status))
    finally:
        cluster.stop_cluster_sync()
    assert_nothing_left(sshd, status)


def _our_ssh_processes():
    """ssh processes this test process runs (tunnels of the module's cluster among them)."""
    return {p.pid for p in psutil.Process().children() if p.name() == "ssh" and p.status() != psutil.STATUS_ZOMBIE}


def test_auth_failure_names_sshs_error_and_leaves_nothing(sshd, tmp_path):
    remote = tmp_path / "remote"
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1, HOSTS[1]: 1}, ssh_args=sshd.client_args(sshd.wrong_key),
                          remote_dir=str(remote))
    before = _our_ssh_processes()
    try:
        with pytest.raises(EngineStartError, match=r"Permission denied \(publickey\)"):
            cluster.start_cluster_sync()
        assert cluster.engines == {}
        assert not remote.exists()
    finally:
        cluster.stop_cluster_sync()
    assert _our_ssh_processes() <= before


def test_one_host_failing_stops_the_engines_the_other_one_started(sshd, tmp_path):
    remote = tmp_path / "remote"
    closed = sshd.port + 1 if sshd.port < 65535 else sshd.port - 1  # nothing listens there on 127.0.0.3
    # ssh_args has sshd's -p: 127.0.0.2 is reached through it, while 127.0.0.3's own port wins.
    cluster = ssh_cluster(sshd, [HOSTS[0], f"{HOSTS[1]}:{closed}"], remote_dir=str(remote))
    before = _our_ssh_processes()
    try:
        with pytest.raises(EngineStartError, match="Connection refused"):
            cluster.start_cluster_sync()
        # The engine on 127.0.0.2 had started: its folder is gone, so is it.
        assert os.listdir(remote) == []
        assert not naming(str(remote))
    finally:
        cluster.stop_cluster_sync()
    assert _our_ssh_processes() <= before


def test_a_kernel_that_dies_at_start_is_named_with_its_log(sshd, tmp_path, monkeypatch):
    spec = tmp_path / "jupyter" / "kernels" / "refuses"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": ["python", "-c", "import sys; sys.exit('this kernel refuses to start')", "{connection_file}"],
        "display_name": "refuses", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    remote = tmp_path / "remote"
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1, HOSTS[1]: 1}, kernel_name="refuses", remote_dir=str(remote))
    try:
        with pytest.raises(EngineStartError, match="2 of 2 hosts") as info:
            cluster.start_cluster_sync()
        assert str(info.value).count("kernel exited with code 1: this kernel refuses to start") == 2
        assert os.listdir(remote) == []
    finally:
        cluster.stop_cluster_sync()


def test_missing_remote_python_says_so(sshd):
    cluster = ssh_cluster(sshd, {HOSTS[0]: 1}, python="/nonexistent/python3")
    try:
        with pytest.raises(EngineStartError, match="/nonexistent/python3.*(not found|No such file)"):
            cluster.start_cluster_sync()
    finally:
        cluster.stop_cluster_sync()


def test_more_engines_than_slots_and_bad_options_are_named():
    with pytest.raises(TypeError, match="hosts"):
        SSHLauncher(hosts="node1")
    with pytest.raises(ValueError, match="engine count 0 of host 'a'"):
        SSHLauncher(hosts={"a": 0})
    with pytest.raises(ValueError, match="ssh host .a:xyz"):
        SSHLauncher(hosts=["a:xyz"])
    with pytest.raises(TypeError, match="colour"):
        ipp.Cluster(engines="ssh", launcher_options={"hosts": ["a"], "colour": "red"})
    launcher = SSHLauncher(hosts=["u@a:2222", "a", "u@a:2222"], ssh_args="-i key -o X=y")
    assert launcher.options()["hosts"] == {"u@a:2222": 2, "a": 1}
    assert launcher.options()["ssh_args"] == ["-i", "key", "-o", "X=y"]
    cluster = ipp.Cluster(n=4, engines=launcher)
    try:
        with pytest.raises(EngineStartError, match="4 engines asked for, but hosts .* have 3 slots"):
            cluster.start_cluster_sync()
    finally:
        cluster.stop_cluster_sync()
