"""What the REST API does to clusters, through the same functions as ``ipyparallel-ext cluster``.

Clusters are the supervised clusters of the machine's cluster files
(:mod:`..cluster._files`): started with :func:`.._cli.start_daemon`, listed
with :func:`.._cli.cluster_summary`, scaled through the supervisor's control
channel, stopped with :func:`.._cli.stop_cluster`; so the CLI and the
browser see and manage the same clusters.  Every call that can wait
(starting engines, stopping them, reading files and ``/proc``) runs in a
small thread pool of its own, never on the server's event loop; what the
API knows only in memory (clusters it is starting or stopping) and the
engine watches (:mod:`._activity`) live on the event loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import time
import uuid

from .. import _cli
from .._client import load_connection_file
from ..cluster import _files
from ..cluster._launcher import make_launcher
from ..cluster._local import ENGINE_KERNEL_NAME, EngineSpecManager
from ..cluster._supervisor import ControlError, request
from ..error import EngineStartError
from ._activity import EngineActivity, engine_session
from ._activity import request as engine_request

_ID = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # ids name files: no '/', no '..' tricks, no spaces
_INTERRUPT_WAIT = 10.0  # seconds an engine may take to answer an interrupt_request (its control channel)
_START_FIELDS = {"n", "engines", "kernel_name", "cluster_id", "launcher_options", "restart_engines"}


class RequestError(Exception):
    """A request the API refuses: ``status`` (400, 404, 409 ...) and a message saying why."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def connect_code(cluster_id: str) -> str:
    """The two lines a notebook runs to use cluster ``cluster_id``."""
    return f"import ipyparallel_ext as ipp\nrc = ipp.Client(cluster_id={cluster_id!r})"


def _count(body: dict, field: str, minimum: int) -> int:
    value = body.get(field)
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
        raise RequestError(400, f"{field}: expected {what} (a number of engines), got {value!r}")
    return value


def _object(body, what: str = "the request body") -> dict:
    if not isinstance(body, dict):
        raise RequestError(400, f"{what}: expected a JSON object, got {type(body).__name__}")
    return body


def _parsed(argv: list):
    """``ipyparallel-ext`` options ``argv`` parsed as the CLI does, and the options it does not know."""
    return _cli.build_parser().parse_known_args(argv)


def _cluster_id(value) -> str:
    if value is None:
        return uuid.uuid4().hex[:8]  # as `cluster start` picks one
    if not isinstance(value, str) or not _ID.fullmatch(value):
        raise RequestError(400, f"cluster_id: expected 1 to 64 letters, digits, '_', '-' or '.', got {value!r}")
    return value


def _launcher_options(engines, options) -> list:
    """``cluster start`` options for ``engines`` (a launcher name) and its ``launcher_options``."""
    if not isinstance(engines, str):
        raise RequestError(400, f"engines: expected a launcher name such as 'local', got {engines!r}")
    options = _object(options, "launcher_options")
    try:
        make_launcher(engines, options)  # what `cluster start` checks before it starts a supervisor
    except (ValueError, NotImplementedError) as exc:
        raise RequestError(400, f"engines: {exc}") from None
    except ImportError as exc:
        raise RequestError(400, f"engines: the {engines!r} launcher is not available here ({exc})") from None
    except TypeError as exc:
        raise RequestError(400, f"launcher_options: {exc}") from None
    argv = ["--engines", engines]
    for key, value in options.items():
        argv += ["--launcher-option", f"{key}={json.dumps(value)}"]
    return argv


def _kernel_options(kernel_name) -> list:
    """``cluster start`` options for engines of kernelspec ``kernel_name`` (None: the default)."""
    if kernel_name is None:
        return []
    if not isinstance(kernel_name, str) or not kernel_name:
        raise RequestError(400, f"kernel_name: expected the name of a kernelspec, got {kernel_name!r}")
    installed = {*EngineSpecManager().find_kernel_specs(), ENGINE_KERNEL_NAME}
    if kernel_name not in installed:
        raise RequestError(400, f"kernel_name: no kernelspec named {kernel_name!r}"
                                f" (installed: {', '.join(sorted(installed))})")
    return ["--kernel", kernel_name]


def start_args(body) -> tuple:
    """``(cluster id, parsed cluster start options)`` for a POST /clusters body; RequestError naming a bad field.

    Checks what can be checked before starting anything: the fields, the
    launcher and the kernelspec (reads kernelspec files: call it in a thread).
    """
    body = _object(body)
    unknown = sorted(set(body) - _START_FIELDS)
    if unknown:
        raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(_START_FIELDS))}")
    cluster_id = _cluster_id(body.get("cluster_id"))
    argv = ["cluster", "start", "--daemonize", "-n", str(_count(body, "n", 1)), "--cluster-id", cluster_id]
    engines = body.get("engines", "local")
    launcher = _launcher_options(engines, body.get("launcher_options", {}))
    argv += _kernel_options(body.get("kernel_name"))
    restart = body.get("restart_engines", False)
    if not isinstance(restart, bool):
        raise RequestError(400, f"restart_engines: expected true or false, got {restart!r}")
    argv += ["--restart-engines"] if restart else []
    args, not_known = _parsed(argv + launcher)
    if not_known:  # a field turned into an option the CLI does not take: ours to fix, not the caller's
        raise RuntimeError(f"`ipyparallel-ext cluster start` does not take {not_known}")
    return cluster_id, args


def _model(cluster_id: str, data: dict, busy: int, state: str = "running") -> dict:
    row = _cli.cluster_summary(cluster_id, data)
    saved_sets = data["engines"].get("launchers", {})
    return {"id": cluster_id, "engines": row["engines"], "engines_alive": row["engines_alive"],
            "engines_busy": min(busy, row["engines_alive"]), "launcher": row["launcher"],
            "kernel_name": row["kernel_name"], "uptime": time.time() - data["cluster"]["supervisor"]["start_time"],
            "pid": row["supervisor_pid"], "host": row["host"], "state": state,
            "sets": {set_id: saved_sets.get(set_id, {"launcher": row["launcher"], "state": "running"})
                     for set_id in data["engines"]["sets"]},
            "connect_code": connect_code(cluster_id)}


class ClusterService:
    """The clusters of this machine as the REST API shows and changes them (call on the server's loop)."""

    def __init__(self, threads: int = 4):
        self._pool = concurrent.futures.ThreadPoolExecutor(threads, thread_name_prefix="ipyparallel_ext-toolbar")
        self._starting: dict = {}  # cluster id -> (POST body's n and engines, monotonic start)
        self._stopping: set = set()
        self.activity = EngineActivity()

    async def _in_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _running(self) -> dict:
        running = await self._in_thread(_files.running_cluster_files)
        self.activity.follow({cid: data for cid, (_path, data) in running.items()})
        return running

    def _model_of(self, cluster_id, data) -> dict:
        state = "stopping" if cluster_id in self._stopping else "running"
        return _model(cluster_id, data, self.activity.busy(cluster_id), state)

    async def list(self) -> list:
        """Every cluster: running ones (by id), then those this server is starting."""
        running = await self._running()
        models = [self._model_of(cid, data) for cid, (_path, data) in sorted(running.items())]
        for cluster_id, (n, launcher, since) in sorted(self._starting.items()):
            if cluster_id not in running:
                models.append({"id": cluster_id, "engines": n, "engines_alive": 0, "engines_busy": 0,
                               "launcher": launcher, "kernel_name": None, "uptime": 0.0, "pid": None,
                               "host": None, "state": "starting", "sets": {},
                               "connect_code": connect_code(cluster_id), "waited": time.monotonic() - since})
        return models

    async def _find(self, cluster_id: str) -> tuple:
        running = await self._running()
        if cluster_id not in running:
            raise RequestError(404, _files.no_such_cluster(cluster_id, running))
        return running[cluster_id]

    async def get(self, cluster_id: str) -> dict:
        """The model of a running cluster (404 if there is none of that id)."""
        _path, data = await self._find(cluster_id)
        return self._model_of(cluster_id, data)

    async def start(self, body) -> dict:
        """Start a supervised cluster as ``cluster start --daemonize`` does; its model once its engines run."""
        cluster_id, args = await self._in_thread(start_args, body)
        if cluster_id in self._starting or cluster_id in await self._running():
            raise RequestError(409, f"a cluster with id {cluster_id!r} is already running")
        launcher = body.get("engines", "local")
        self._starting[cluster_id] = (body["n"], launcher, time.monotonic())
        try:
            await self._in_thread(_cli.start_daemon, args, cluster_id)
        except (ValueError, EngineStartError) as exc:
            raise RequestError(500, f"cluster {cluster_id} did not start: {exc}") from None
        finally:
            del self._starting[cluster_id]
        return await self.get(cluster_id)

    async def scale(self, cluster_id: str, body) -> dict:
        """Grow or shrink a cluster to ``body["n"]`` engines; its model afterwards."""
        body = _object(body)
        unknown = sorted(set(body) - {"n"})
        if unknown:
            raise RequestError(400, f"unknown field(s) {', '.join(unknown)}; expected n")
        n = _count(body, "n", 0)
        _path, data = await self._find(cluster_id)
        try:
            await self._in_thread(lambda: request(data["cluster"]["supervisor"], "scale",
                                                  timeout=_cli.request_timeout(data), n=n))
        except ControlError as exc:
            raise RequestError(500, f"cluster {cluster_id} could not scale to {n}: {exc}") from None
        return await self.get(cluster_id)

    async def stop(self, cluster_id: str) -> None:
        """Stop a cluster's engines and supervisor; return once it stopped."""
        path, data = await self._find(cluster_id)
        if cluster_id in self._stopping:
            raise RequestError(409, f"cluster {cluster_id} is stopping already")
        self._stopping.add(cluster_id)
        try:
            await self._in_thread(_cli.stop_cluster, path, data)
        except ControlError as exc:
            raise RequestError(500, f"cluster {cluster_id} did not stop: {exc}") from None
        finally:
            self._stopping.discard(cluster_id)
        await self._running()  # drop its engine watches

    async def interrupt(self, cluster_id: str) -> list:
        """Interrupt whatever every engine of the cluster runs (KeyboardInterrupt there); the engine ids.

        An ``interrupt_request`` on each engine's control channel: the
        kernel sends itself SIGINT, wherever its launcher put it.
        """
        _path, data = await self._find(cluster_id)
        engines = {int(eid): e for members in data["engines"]["sets"].values() for eid, e in members.items()
                   if e.get("state", "running") == "running"}
        ctx = self.activity.context

        async def interrupt_one(engine):
            info = await self._in_thread(load_connection_file, engine["connection_file"])
            return await engine_request(ctx, info, engine_session(info), "control", "interrupt_request",
                                        _INTERRUPT_WAIT)

        replies = await asyncio.gather(*(interrupt_one(e) for e in engines.values()), return_exceptions=True)
        failed = [eid for eid, reply in zip(engines, replies) if not isinstance(reply, dict)]
        if failed:
            raise RequestError(500, f"cluster {cluster_id}: engine(s) {failed} did not answer the interrupt"
                                    f" request within {_INTERRUPT_WAIT:g} s")
        return sorted(engines)

    def close(self) -> None:
        """Stop the engine watches and the thread pool (clusters keep running)."""
        self.activity.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

