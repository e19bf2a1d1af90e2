"""Which engines are busy, from their own IOPub ``status`` messages (the server extension's view).

Nothing runs on the engines for this.  For each engine of a cluster file,
one SUB socket on its IOPub port reads ``status`` messages (signed with the
key of its connection file: messages with a bad or replayed signature are
dropped), all on the server's event loop (``zmq.asyncio``: nothing blocks)::

    engine kernel --IOPub "kernel.<id>.status" {busy|idle|starting}--> SUB --> busy parents
                  <--shell kernel_info_request-- DEALER (once, at start) --> reply: probe done

A kernel publishes ``busy`` and ``idle`` around every request it handles,
with that request as parent, on the shell and the control channel alike; an
engine is busy while some parent has said ``busy`` and not yet ``idle`` (a
control request handled during a long shell request opens and closes its
own pair, so it cannot hide that one).  A watch started while the engine
is in the middle of a request missed that request's ``busy``: so the watch
sends one ``kernel_info_request`` on the shell channel and counts the
engine busy until its reply, which the kernel sends only once the request
ahead of it has finished.  The SUB socket subscribes to the ``kernel.``
topic prefix ipykernel publishes status (and execution) messages under, so
an engine's printed output (topic ``stream.*``) never reaches the server.

Watches start when clusters are listed (:meth:`EngineActivity.follow`)
and stop when their engine or cluster is no longer listed.
"""

from __future__ import annotations

import asyncio
import logging

import zmq
import zmq.asyncio
from jupyter_client.session import Session

from .._client import load_connection_file

log = logging.getLogger("ipyparallel_ext.toolbar")

_PROBE = "probe"  # stands for the request the engine may be running when its watch starts
_TOPICS = (b"kernel.", b"status")  # ipykernel's status topic is kernel.<id>.status; others say status


def engine_session(info: dict) -> Session:
    """A jupyter_client Session that signs and checks messages with the key of connection info ``info``."""
    return Session(key=info["key"].encode(), signature_scheme=info.get("signature_scheme", "hmac-sha256"),
                   username="ipyparallel_ext-toolbar")


def _address(info: dict, channel: str) -> str:
    return f"{info.get('transport', 'tcp')}://{info['ip']}:{info[channel + '_port']}"


async def request(ctx, info: dict, session: Session, channel: str, msg_type: str, timeout=None):
    """Send one request to a kernel's ``channel`` ('shell' or 'control'); its reply.

    None once ``timeout`` seconds passed without it (``timeout=None``: wait
    as long as it takes; cancel the task to stop waiting).
    """
    loop = asyncio.get_running_loop()
    sock = ctx.socket(zmq.DEALER)
    sock.linger = 0
    try:
        sock.connect(_address(info, channel))
        msg = session.msg(msg_type, {})
        await sock.send_multipart(session.serialize(msg))
        deadline = None if timeout is None else loop.time() + timeout
        while True:
            left = None if deadline is None else max(0.0, deadline - loop.time())
            if not await sock.poll(None if left is None else left * 1000):
                return None
            frames = await sock.recv_multipart()
            try:
                reply = session.deserialize(session.feed_identities(frames)[1], content=False)
            except ValueError:  # a bad signature: not the kernel's answer
                continue
            if reply["parent_header"].get("msg_id") == msg["header"]["msg_id"]:
                return reply
    finally:
        sock.close()


class _EngineWatch:
    """The busy/idle state of one engine kernel, kept from its IOPub status messages."""

    def __init__(self, ctx, connection_file: str):
        self.info = load_connection_file(connection_file)
        self.session = engine_session(self.info)
        self.busy_parents = {_PROBE}
        self._sub = ctx.socket(zmq.SUB)
        self._sub.linger = 0
        self._sub.rcvhwm = 0  # never drop an idle: a lost one would leave the engine busy forever
        for topic in _TOPICS:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._sub.connect(_address(self.info, "iopub"))
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._probe(ctx))]

    @property
    def busy(self) -> bool:
        return bool(self.busy_parents)

    async def _probe(self, ctx) -> None:
        # No timeout that would guess: a kernel busy for an hour answers in an hour (close() cancels).
        if await request(ctx, self.info, self.session, "shell", "kernel_info_request"):
            self.busy_parents.discard(_PROBE)

    async def _read(self) -> None:
        while True:
            frames = await self._sub.recv_multipart()
            try:
                msg = self.session.deserialize(self.session.feed_identities(frames)[1])
            except (ValueError, KeyError, IndexError) as exc:  # forged, replayed or truncated
                log.debug("dropped an invalid IOPub message: %s", exc)
                continue
            if msg["header"].get("msg_type") != "status":
                continue
            parent = msg["parent_header"].get("msg_id")
            state = msg["content"].get("execution_state")
            if state == "starting":  # a restarted kernel runs nothing
                self.busy_parents.clear()
            elif state == "busy" and parent:
                self.busy_parents.add(parent)
            elif state == "idle":
                self.busy_parents.discard(parent)

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._sub.close()


class EngineActivity:
    """Busy/idle of the engines of every listed cluster (use it on the server's event loop only)."""

    def __init__(self):
        self._ctx = zmq.asyncio.Context()
        self._watches: dict = {}  # (cluster id, engine id, connection file, pid) -> _EngineWatch

    @property
    def context(self):
        """The zmq.asyncio Context of the watches' sockets (for other requests to engines)."""
        return self._ctx

    def follow(self, clusters: dict) -> None:
        """Watch the running engines of ``clusters`` (``{cluster id: cluster file contents}``), and only those."""
        wanted = set()
        for cluster_id, data in clusters.items():
            for members in data["engines"]["sets"].values():
                for eid, engine in members.items():
                    if engine.get("state", "running") == "running" and engine.get("connection_file"):
                        wanted.add((cluster_id, int(eid), engine["connection_file"], engine.get("pid")))
        for key in [k for k in self._watches if k not in wanted]:
            self._watches.pop(key).close()
        for key in wanted - set(self._watches):
            try:
                self._watches[key] = _EngineWatch(self._ctx, key[2])
            except Exception as exc:  # a connection file removed meanwhile: the next listing retries
                log.debug("cannot watch engine %s of cluster %s: %s", key[1], key[0], exc)

    def busy(self, cluster_id: str) -> int:
        """How many followed engines of ``cluster_id`` are busy."""
        return sum(1 for key, watch in self._watches.items() if key[0] == cluster_id and watch.busy)

    def watched(self, cluster_id: str) -> int:
        """How many engines of ``cluster_id`` are followed."""
        return sum(1 for key in self._watches if key[0] == cluster_id)

    def close(self) -> None:
        """Stop every watch and close the sockets."""
        for watch in self._watches.values():
            watch.close()
        self._watches.clear()
        self._ctx.destroy(linger=0)
