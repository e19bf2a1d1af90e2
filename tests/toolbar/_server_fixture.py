"""A real Jupyter server for the toolbar tests: ``with running_server(tmp_path) as server: ...``.

The server (``jupyter server``, ``jupyter lab`` or ``jupyter notebook``)
runs in its own process on a free port, with a token, in private
Jupyter runtime, config and IPython folders under ``tmp_path``, with this
checkout first on ``PYTHONPATH`` (so the server, its kernels and any
cluster it starts import the code under test), and with the toolbar's
server extension enabled on the command line (it works before the package
is installed).  Leaving the block stops every cluster started in its
runtime folder (by the API or by :meth:`JupyterServer.cli`), then the server
(which shuts its kernels down), and checks that none of their processes is
left.

Import it from a test module in ``tests/toolbar``::

    from _server_fixture import running_server
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests

REPO = str(Path(__file__).resolve().parents[2])
_START_TIMEOUT = 90.0  # seconds a server may take to answer, on a busy 2-core machine
_STOP_TIMEOUT = 30.0  # seconds it may take to shut its kernels down and exit
_CLI_TIMEOUT = 150.0  # seconds a `cluster` command may take (starting engines on a busy machine)
_APPS = {"server": "jupyter_server", "lab": "jupyterlab", "notebook": "notebook"}


def free_port() -> int:
    """A TCP port nobody listens on now (the server may still lose it to a race: see the retry)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """A running Jupyter server: where it is, its token, and helpers to call it.

    Attributes
    ----------
    url : str
        ``http://127.0.0.1:PORT{base_url}``, ending with ``/``.
    token : str
    root_dir, runtime_dir : pathlib.Path
        The folder it serves, and its Jupyter runtime folder (where cluster files go).
    env : dict
        The environment it runs in; ``cli`` uses the same.
    process : subprocess.Popen
    """

    def __init__(self, url, token, root_dir, runtime_dir, env, process, log_path):
        self.url, self.token = url, token
        self.root_dir, self.runtime_dir = root_dir, runtime_dir
        self.env, self.process, self.log_path = env, process, log_path

    def request(self, method: str, path: str, *, token: bool = True, timeout: float = 180.0, **kwargs):
        """``requests.request`` to ``url + path``, with the token in the Authorization header unless ``token=False``."""
        headers = dict(kwargs.pop("headers", {}))
        if token:
            headers["Authorization"] = f"token {self.token}"
        return requests.request(method, self.url + path.lstrip("/"), headers=headers, timeout=timeout,
                                allow_redirects=False, **kwargs)

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """Run ``ipyparallel-ext cluster *args`` in the server's environment (same runtime folder)."""
        result = subprocess.run([sys.executable, "-m", "ipyparallel_ext._cli", "cluster", *args], env=self.env,
                                capture_output=True, text=True, timeout=_CLI_TIMEOUT)
        if check and result.returncode:
            raise AssertionError(f"cluster {' '.join(args)} exited {result.returncode}: {result.stderr}")
        return result

    def log(self) -> str:
        """What the server has logged so far."""
        return Path(self.log_path).read_text(errors="replace")


def _environment(tmp: Path) -> dict:
    env = dict(os.environ)
    for name, folder in (("JUPYTER_RUNTIME_DIR", "runtime"), ("JUPYTER_CONFIG_DIR", "config"),
                         ("IPYTHONDIR", "ipython")):
        (tmp / folder).mkdir(parents=True, exist_ok=True)
        env[name] = str(tmp / folder)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, env.get("PYTHONPATH")) if p)
    env["JUPYTER_PLATFORM_DIRS"] = "1"  # jupyter_core's future default, and no deprecation warning
    return env


def _start(app, tmp, base_url, extra_args, env):
    """Start the server; (process, url, log path) once it answers, or None if its port was taken."""
    token = env["IPP_TEST_TOKEN"]
    port = free_port()
    log_path = tmp / f"server-{port}.log"
    argv = [sys.executable, "-m", _APPS[app], "--no-browser", "--allow-root", f"--port={port}",
            "--port-retries=0", "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}",
            f"--ServerApp.base_url={base_url}", f"--ServerApp.root_dir={tmp / 'root'}",
            '--ServerApp.jpserver_extensions={"ipyparallel_ext.toolbar": True}', *extra_args]
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}{base_url}"
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            text = log_path.read_text(errors="replace")
            if "already in use" in text:
                return None
            raise RuntimeError(f"jupyter {app} exited with status {process.returncode}:\n{text[-3000:]}")
        try:
            if requests.get(url + "api/status", headers={"Authorization": f"token {token}"}, timeout=5).ok:
                return process, url, log_path
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    _stop_process(process)
    raise TimeoutError(f"jupyter {app} did not answer within {_START_TIMEOUT} s:\n"
                       f"{log_path.read_text(errors='replace')[-3000:]}")


def _stop_process(process) -> None:
    process.terminate()  # jupyter_server's SIGTERM handler shuts its kernels down first
    try:
        process.wait(_STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(_STOP_TIMEOUT)


def _descendants(pid) -> list:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@contextlib.contextmanager
def running_server(tmp_path, app: str = "server", base_url: str = "/", extra_args=(), env=None):
    """Run a Jupyter server for the duration of the block; yields a :class:`JupyterServer`.

    Parameters
    ----------
    tmp_path : path
        A private folder (pytest's ``tmp_path``): the server's root, runtime and config folders go there.
    app : {'server', 'lab', 'notebook'}
        ``jupyter server`` (the REST API alone), ``jupyter lab``, or ``jupyter notebook`` (Notebook 7).
    base_url : str
        The server's base URL (starts and ends with ``/``).
    extra_args : sequence of str
        More command-line options for the server.
    env : dict, optional
        More environment variables for the server (and what it starts).
    """
    if app not in _APPS:
        raise ValueError(f"app={app!r}: expected one of {sorted(_APPS)}")
    tmp = Path(tmp_path)
    (tmp / "root").mkdir(parents=True, exist_ok=True)
    env = {**_environment(tmp), **(env or {})}
    env["IPP_TEST_TOKEN"] = secrets.token_hex(16)
    for _attempt in range(3):  # another process may take the free port before the server binds it
        started = _start(app, tmp, base_url, extra_args, env)
        if started is not None:
            break
    else:
        raise RuntimeError("jupyter could not bind a free port in 3 attempts")
    process, url, log_path = started
    server = JupyterServer(url, env["IPP_TEST_TOKEN"], tmp / "root", Path(env["JUPYTER_RUNTIME_DIR"]), env,
                           process, log_path)
    try:
        yield server
    finally:
        try:
            server.cli("stop", "--all", check=False)  # clusters outlive servers on purpose: stop ours
        finally:
            children = _descendants(process.pid)
            _stop_process(process)
            _gone, alive = psutil.wait_procs(children, timeout=_STOP_TIMEOUT)
            for proc in alive:
                with contextlib.suppress(psutil.NoSuchProcess):
                    proc.kill()
        assert not alive, f"processes of the server left running: {[p.pid for p in alive]}"
        leftovers = list((server.runtime_dir / "ipyparallel_ext-clusters").glob("cluster-*.json"))
        assert not leftovers, f"cluster files left: {leftovers}"


def server_info(server: JupyterServer) -> dict:
    """The server's ``jpserver-<pid>.json`` (url, token, root_dir ...), as ``jupyter server list`` reads it."""
    path = server.runtime_dir / f"jpserver-{server.process.pid}.json"
    return json.loads(path.read_text())
