"""Forged, replayed, truncated and garbage frames on every channel: dropped and logged.

A :class:`~._proxy.TamperingProxy` stands between a Client and a real kernel and injects the bad
frames toward the client, on shell, iopub, control and heartbeat, while a request of the client is
running.  Each bad message must be dropped (the running request ends with its genuine result and
output, nothing forged or repeated in them) and logged once (a warning naming the engine), and
the client must keep working.

On iopub, outputs whose parent request is not ours are skipped before any check (every client
attached to a kernel receives every output), so the bad messages there name our running request
as their parent, or are too broken to name any.

Sizes: one engine for the module; 12 bad messages per channel.
"""

import json
import logging
import os
import signal
import time

import pytest
from jupyter_client.session import Session

import ipyparallel_ext as ipp
from ipyparallel_ext import _wire

from conftest import wait_until
from ._proxy import TamperingProxy

DROPPED = "dropped an invalid message"


@ipp.interactive
def say_then_wait(token, path):
    """Runs on an engine: print ``token``, wait for ``path`` to exist, return ``token``."""
    import os
    import time

    print(token, flush=True)
    deadline = time.monotonic() + 30
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    return token


@pytest.fixture(scope="module")
def kernel():
    """One engine kernel (no client of its own); yields (connection info, pid)."""
    cluster = ipp.Cluster(n=1)
    cluster.start_cluster_sync()
    try:
        with open(cluster.connection_files[0]) as f:
            info = json.load(f)
        yield info, cluster.engines[0].provisioner.pid
    finally:
        cluster.stop_cluster_sync()


@pytest.fixture
def tampered(kernel):
    """(proxy, client): a Client that reaches the kernel only through a TamperingProxy."""
    info, _pid = kernel
    proxy = TamperingProxy(info)
    client = ipp.Client(connection_info=[proxy.info])
    try:
        client.wait_for_engines(1, timeout=30)
        yield proxy, client
    finally:
        client.close()
        proxy.close()


def _delim(frames) -> int:
    return [bytes(f) for f in frames].index(_wire.DELIM)


def _content_of(frames) -> dict:
    return json.loads(frames[_delim(frames) + 5])


def _forged(msg_type, content, parent_id, topic=()):
    """A well-formed message about our request, signed with the wrong key (and one unsigned)."""
    session = Session(key=b"not-the-kernel-key")
    msg = session.msg(msg_type, content, parent={"msg_id": parent_id})
    signed = session.serialize(msg)
    unsigned = list(signed)
    unsigned[1] = b""
    return [[*topic, *signed], [*topic, *unsigned]]


def _bad_messages(genuine, forged) -> list:
    """Every kind of bad message, built around one genuine message of the channel."""
    i = _delim(genuine)
    cut_content = list(genuine)
    cut_content[i + 5] = genuine[i + 5][: len(genuine[i + 5]) // 2]
    return [
        *forged,                                                # forged: wrong key, no signature
        list(genuine),                                          # replayed: accepted once already
        genuine[: i + 3],                                       # truncated: parts missing
        cut_content,                                            # truncated: content cut in half
        [b"garbage"],                                           # garbage: no delimiter
        [b""],
        [_wire.DELIM],
        [os.urandom(48) for _ in range(6)],
        [_wire.DELIM, b"0" * 64, b"{not json", b"{", b"{", b"{"],
        [_wire.DELIM, b"0" * 64, b"[]", b"[]", b"[]", b"[]"],   # JSON, but not objects
    ]


def _genuine(proxy, channel, match, timeout=10.0):
    """The last message the kernel sent on ``channel`` for which ``match(frames)`` holds."""
    found = []

    def look():
        found[:] = [f for f in proxy.received[channel] if match(f)]
        return bool(found)

    assert wait_until(look, timeout=timeout), f"no genuine {channel} message seen"
    return found[-1]


@pytest.mark.timeout(90)
@pytest.mark.parametrize("channel", ["shell", "iopub", "control"])
def test_bad_frames_are_dropped_and_logged(tampered, kernel, channel, tmp_path, caplog):
    proxy, client = tampered
    e0 = client[0]
    assert e0.apply_sync(lambda: "warm") == "warm"  # a genuine execute_reply to replay on shell
    token = f"token-{channel}-{os.getpid()}"
    go = tmp_path / "go"
    running = e0.apply_async(say_then_wait, token, str(go))
    parent = running.msg_ids[0]

    if channel == "shell":
        genuine = _genuine(proxy, "shell", lambda f: b"execute_reply" in f[_delim(f) + 2])
        forged = _forged("execute_reply", {"status": "error", "ename": "Forged", "evalue": "",
                                           "traceback": []}, parent)
    elif channel == "iopub":
        genuine = _genuine(proxy, "iopub", lambda f: _content_of(f).get("text") == token + "\n")
        forged = _forged("stream", {"name": "stdout", "text": "FORGED\n"}, parent, topic=[b"stream.stdout"])
    else:
        info, _pid = kernel
        session = Session(key=info["key"].encode())  # the proxy asks the kernel itself: a genuine reply
        proxy.request_on_kernel("control", session.serialize(session.msg("kernel_info_request", {})))
        genuine = _genuine(proxy, "control", lambda f: b"kernel_info_reply" in f[_delim(f) + 2])
        forged = _forged("interrupt_reply", {"status": "ok"}, parent)
    bad = _bad_messages(genuine, forged)

    with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
        for frames in bad:
            proxy.inject(channel, frames)
        dropped = lambda: [r for r in caplog.records if DROPPED in r.getMessage()]  # noqa: E731
        assert wait_until(lambda: len(dropped()) >= len(bad), timeout=10), [r.getMessage() for r in caplog.records]
        time.sleep(0.2)
        assert len(dropped()) == len(bad)  # each one logged, once
        assert all("engine 0" in r.getMessage() for r in dropped())
        assert not [r for r in caplog.records if DROPPED not in r.getMessage()]  # nothing else went wrong

        # Nothing bad got in: the running request ends with its genuine result and output.
        assert not running.ready()
        go.touch()
        assert running.get(timeout=30) == token
        running.wait_for_output(timeout=10)
        assert running.stdout == token + "\n"
        # ... and the client keeps working.
        assert e0.apply_sync(lambda x: 2 * x, 21) == 42
        assert client.ids == [0]


@pytest.mark.timeout(60)
def test_bad_heartbeat_frames_do_not_keep_a_stopped_engine_alive(tampered, kernel, caplog):
    proxy, client = tampered
    _info, pid = kernel
    genuine = _genuine(proxy, "hb", lambda f: True)
    bad = [list(genuine), [b"garbage"], [b""], [b"ping", b"extra"]]  # replayed, garbage, truncated
    os.kill(pid, signal.SIGSTOP)
    try:
        with caplog.at_level(logging.WARNING, logger="ipyparallel_ext"):
            deadline = time.monotonic() + 12  # an unforged silence is judged within 5 s
            i = 0
            while 0 in client.ids and time.monotonic() < deadline:
                proxy.inject("hb", bad[i % len(bad)])
                i += 1
                time.sleep(0.25)
            assert 0 not in client.ids, "forged heartbeats kept a stopped engine alive"
            assert any("heartbeat" in r.getMessage() and "engine 0" in r.getMessage() for r in caplog.records)
    finally:
        os.kill(pid, signal.SIGCONT)
