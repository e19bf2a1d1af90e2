"""The toolbar's REST API against a real ``jupyter server`` with real supervised clusters.

One server (base URL ``/jp/``, token on) serves the module; each test stops
the clusters it starts, and leaving the server checks that no cluster,
kernel or engine is left.  This process uses the server's Jupyter runtime
folder too, so its Clients and the CLI see the same clusters as the API.
"""

import asyncio
import json
import os
import sys
import threading
import time
import uuid

import pytest
import zmq
import zmq.asyncio
from _server_fixture import running_server
from conftest import wait_until
from jupyter_client.session import Session

import ipyparallel_ext as ipp
from ipyparallel_ext.error import RemoteError
from ipyparallel_ext.toolbar._activity import EngineActivity

API = "ipyparallel-ext/clusters"
_START = 150  # seconds starting a cluster may take on a busy 2-core machine


_SLOW_START = 3.0  # seconds the "slow" kernelspec waits before starting ipykernel


def _slow_kernelspec(folder) -> None:
    """A kernelspec "slow": ipykernel after a pause, so that a cluster of it is seen starting."""
    spec = folder / "kernels" / "slow"
    spec.mkdir(parents=True)
    code = f"import time, runpy; time.sleep({_SLOW_START}); runpy.run_module('ipykernel_launcher', run_name='__main__')"
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-c", code, "-f", "{connection_file}"], "display_name": "slow", "language": "python"}))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("jupyter")
    _slow_kernelspec(tmp / "data")
    with running_server(tmp, base_url="/jp/", env={"JUPYTER_PATH": str(tmp / "data")}) as server:
        saved = os.environ.get("JUPYTER_RUNTIME_DIR")
        os.environ["JUPYTER_RUNTIME_DIR"] = str(server.runtime_dir)
        try:
            yield server
        finally:
            if saved is None:
                del os.environ["JUPYTER_RUNTIME_DIR"]
            else:
                os.environ["JUPYTER_RUNTIME_DIR"] = saved


def _new_id() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def _model(server, cluster_id) -> dict:
    response = server.request("GET", f"{API}/{cluster_id}")
    assert response.status_code == 200, response.text
    return response.json()


def _listed(server) -> dict:
    response = server.request("GET", API)
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["clusters"]}


def _cli_listed(server) -> dict:
    return json.loads(server.cli("list", "--json").stdout)


def _until(server, cluster_id, timeout=60, **expected) -> dict:
    """Poll the cluster's model until its fields have the ``expected`` values; the model."""
    seen = {}

    def matches():
        seen.update(_model(server, cluster_id))
        return all(seen[k] == v for k, v in expected.items())

    assert wait_until(matches, timeout=timeout, interval=0.1), (expected, seen)
    return seen


def test_every_route_needs_the_token(server):
    routes = [("GET", API), ("POST", API), ("GET", f"{API}/x"), ("PATCH", f"{API}/x"),
              ("DELETE", f"{API}/x"), ("POST", f"{API}/x/interrupt")]
    for method, path in routes:
        response = server.request(method, path, token=False, json={"n": 1})
        assert response.status_code == 403, (method, path, response.status_code)
        wrong = server.request(method, path, token=False, json={"n": 1},
                               headers={"Authorization": "token not-the-token"})
        assert wrong.status_code == 403, (method, path, wrong.status_code)
    assert _listed(server) == {}  # nothing was started by the refused POSTs


def test_start_scale_interrupt_stop(server):
    cluster_id = _new_id()
    response = server.request("POST", API, json={"n": 2, "cluster_id": cluster_id}, timeout=_START)
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/jp/{API}/{cluster_id}"
    model = response.json()
    assert (model["id"], model["engines"], model["launcher"], model["state"]) == (cluster_id, 2, "local", "running")
    assert model["connect_code"] == f"import ipyparallel_ext as ipp\nrc = ipp.Client(cluster_id={cluster_id!r})"
    assert model["pid"] == _cli_listed(server)[cluster_id]["supervisor_pid"]
    assert [s["launcher"] for s in model["sets"].values()] == ["local"]
    _until(server, cluster_id, engines_alive=2, engines_busy=0)
    assert _listed(server)[cluster_id]["engines"] == 2
    listed = _cli_listed(server)[cluster_id]
    assert listed["engines"] == listed["engines_alive"] == 2

    # Busy engines are seen from their IOPub status, and the API interrupts them.
    with ipp.Client(cluster_id=cluster_id) as rc:
        ar = rc[:].apply_async(time.sleep, 60)
        _until(server, cluster_id, engines_busy=2)
        response = server.request("POST", f"{API}/{cluster_id}/interrupt")
        assert response.status_code == 204, response.text
        with pytest.raises(RemoteError, match="KeyboardInterrupt"):
            ar.get(timeout=30)
        _until(server, cluster_id, engines_busy=0, engines_alive=2)
        assert rc[:].apply_sync(lambda: 3) == [3, 3]  # interrupted, not killed

        response = server.request("PATCH", f"{API}/{cluster_id}", json={"n": 3}, timeout=_START)
        assert response.status_code == 200, response.text
        assert response.json()["engines"] == 3
        assert wait_until(lambda: rc.ids == [0, 1, 2], timeout=30), rc.ids
        _until(server, cluster_id, engines_alive=3, engines_busy=0)
        response = server.request("PATCH", f"{API}/{cluster_id}", json={"n": 1}, timeout=_START)
        assert response.json()["engines"] == 1
        assert wait_until(lambda: rc.ids == [0], timeout=30), rc.ids
        assert _cli_listed(server)[cluster_id]["engines"] == 1

    response = server.request("DELETE", f"{API}/{cluster_id}", timeout=_START)
    assert response.status_code == 204, response.text
    assert response.content == b""
    assert server.request("GET", f"{API}/{cluster_id}").status_code == 404
    assert cluster_id not in _listed(server)
    assert cluster_id not in _cli_listed(server)


def test_a_cluster_is_listed_while_it_starts(server):
    cluster_id = _new_id()
    answer = {}
    post = threading.Thread(target=lambda: answer.update(response=server.request(
        "POST", API, json={"n": 1, "cluster_id": cluster_id, "kernel_name": "slow"}, timeout=_START)))
    post.start()
    try:
        seen = {}
        # Listed at once: the engine's kernelspec waits _SLOW_START s before it even starts.
        assert wait_until(lambda: seen.update(_listed(server)) or cluster_id in seen, timeout=_START, interval=0.05)
        model = seen[cluster_id]
        assert (model["state"], model["engines"], model["engines_alive"]) == ("starting", 1, 0)
        conflict = server.request("POST", API, json={"n": 1, "cluster_id": cluster_id})
        assert conflict.status_code == 409, conflict.text
    finally:
        post.join(_START)
    assert answer["response"].status_code == 201, answer["response"].text
    model = _until(server, cluster_id, engines_alive=1, engines_busy=0)
    assert (model["state"], model["kernel_name"]) == ("running", "slow")
    assert _cli_listed(server)[cluster_id]["kernel_name"] == "slow"
    assert server.request("DELETE", f"{API}/{cluster_id}", timeout=_START).status_code == 204


def test_cli_and_api_see_the_same_clusters(server):
    by_cli = _new_id()
    server.cli("start", "-n", "1", "--daemonize", "--cluster-id", by_cli)
    model = _listed(server)[by_cli]
    assert (model["engines"], model["state"]) == (1, "running")
    _until(server, by_cli, engines_alive=1, engines_busy=0)

    by_api = _new_id()
    response = server.request("POST", API, json={"n": 1, "cluster_id": by_api, "kernel_name": "ipyparallel-ext-engine"},
                              timeout=_START)
    assert response.status_code == 201, response.text
    assert sorted(_cli_listed(server)) == sorted([by_cli, by_api])
    assert by_api in server.cli("list").stdout

    # An id that runs already, whoever started it, is a conflict.
    for taken in (by_cli, by_api):
        response = server.request("POST", API, json={"n": 1, "cluster_id": taken})
        assert response.status_code == 409, response.text
        assert taken in response.json()["message"]

    # Each side stops what the other started.
    assert server.request("DELETE", f"{API}/{by_cli}", timeout=_START).status_code == 204
    assert by_cli not in _cli_listed(server)
    assert server.cli("stop", "--cluster-id", by_api).stdout.strip() == f"cluster {by_api} stopped"
    assert _listed(server) == {}


@pytest.mark.parametrize("body, field", [
    ({}, "n"),
    ({"n": 0}, "n"),
    ({"n": -2}, "n"),
    ({"n": "2"}, "n"),
    ({"n": True}, "n"),
    ({"n": 1.5}, "n"),
    ({"n": 1, "engines": "pbs"}, "engines"),
    ({"n": 1, "engines": "no-such-launcher"}, "engines"),
    ({"n": 1, "engines": 3}, "engines"),
    ({"n": 1, "kernel_name": "no-such-kernel"}, "kernel_name"),
    ({"n": 1, "kernel_name": ""}, "kernel_name"),
    ({"n": 1, "cluster_id": "../escape"}, "cluster_id"),
    ({"n": 1, "cluster_id": ""}, "cluster_id"),
    ({"n": 1, "launcher_options": []}, "launcher_options"),
    ({"n": 1, "launcher_options": {"no_such_option": 1}}, "launcher_options"),
    ({"n": 1, "restart_engines": "yes"}, "restart_engines"),
    ({"n": 1, "colour": "blue"}, "colour"),
    ([1, 2], "body"),
])
def test_bad_start_requests_name_the_field(server, body, field):
    response = server.request("POST", API, json=body)
    assert response.status_code == 400, response.text
    assert response.json()["message"].startswith(field) or field in response.json()["message"], response.text


def test_bad_json_and_unknown_ids(server):
    response = server.request("POST", API, data=b"{not json")
    assert response.status_code == 400
    assert "not JSON" in response.json()["message"]
    for method, path in [("GET", f"{API}/nope"), ("PATCH", f"{API}/nope"), ("DELETE", f"{API}/nope"),
                         ("POST", f"{API}/nope/interrupt")]:
        response = server.request(method, path, json={"n": 1})
        assert response.status_code == 404, (method, response.text)
        assert "no running cluster with id 'nope'" in response.json()["message"]


def test_bad_scale_requests_name_the_field(server):
    cluster_id = _new_id()
    server.cli("start", "-n", "1", "--daemonize", "--cluster-id", cluster_id)
    try:
        for body, field in [({"n": -1}, "n"), ({"n": "3"}, "n"), ({}, "n"), ({"n": 1, "m": 2}, "m")]:
            response = server.request("PATCH", f"{API}/{cluster_id}", json=body)
            assert response.status_code == 400, response.text
            assert field in response.json()["message"]
        assert _model(server, cluster_id)["engines"] == 1
    finally:
        server.cli("stop", "--cluster-id", cluster_id)


# -- how engines_busy is counted, against a purpose-built kernel whose messages the test writes ----------


async def _until_async(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def _busy_from_signed_status(tmp_path):
    ctx = zmq.asyncio.Context()
    iopub = ctx.socket(zmq.XPUB)  # an XPUB sees the watch's subscription arrive: no lost first message
    shell = ctx.socket(zmq.ROUTER)
    info = {"transport": "tcp", "ip": "127.0.0.1", "key": uuid.uuid4().hex, "signature_scheme": "hmac-sha256",
            "iopub_port": iopub.bind_to_random_port("tcp://127.0.0.1"),
            "shell_port": shell.bind_to_random_port("tcp://127.0.0.1"), "control_port": 1, "hb_port": 1}
    path = tmp_path / "engine-0.json"
    path.write_text(json.dumps(info))
    session = Session(key=info["key"].encode())
    forger = Session(key=b"not the key")
    cluster = {"engines": {"sets": {"s": {"0": {"connection_file": str(path), "pid": 1, "state": "running"}}}}}
    activity = EngineActivity()
    try:
        activity.follow({"c": cluster})
        assert activity.busy("c") == 1  # until it answers the probe: it may be running something
        assert await iopub.recv() == b"\x01kernel."
        idents, frames = session.feed_identities(await shell.recv_multipart())
        probe = session.deserialize(frames)
        assert probe["header"]["msg_type"] == "kernel_info_request"
        session.send(shell, "kernel_info_reply", {"status": "ok"}, parent=probe, ident=idents)
        await _until_async(lambda: activity.busy("c") == 0)

        def status(state, parent, signer=session):
            msg = signer.msg("status", {"execution_state": state}, parent=parent)
            return [b"kernel.x.status", *signer.serialize(msg)]

        request = session.msg("execute_request", {})
        for frames in (status("busy", forger.msg("execute_request", {}), forger),  # a forged busy
                       status("busy", request)):
            await iopub.send_multipart(frames)
        await _until_async(lambda: activity.busy("c") == 1)
        await iopub.send_multipart(status("idle", request))
        await _until_async(lambda: activity.busy("c") == 0)  # the forged busy was not counted

        # A replayed busy is dropped: its signature was seen.
        first = session.msg("execute_request", {})
        genuine = status("busy", first)
        await iopub.send_multipart(genuine)
        await iopub.send_multipart(status("idle", first))
        await _until_async(lambda: activity.busy("c") == 0)
        later = session.msg("execute_request", {})
        await iopub.send_multipart(genuine)
        await iopub.send_multipart(status("busy", later))
        await _until_async(lambda: activity.busy("c") == 1)
        await iopub.send_multipart(status("idle", later))
        await _until_async(lambda: activity.busy("c") == 0)

        # A control request during a long shell request does not make it look idle.
        long, control, marker = (session.msg(t, {}) for t in ("execute_request", "kernel_info_request", "comm_info_request"))
        for frames in (status("busy", long), status("busy", control), status("idle", control), status("busy", marker)):
            await iopub.send_multipart(frames)
        watch = activity._watches[("c", 0, str(path), 1)]
        await _until_async(lambda: marker["header"]["msg_id"] in watch.busy_parents)  # all of them were read
        assert watch.busy_parents == {long["header"]["msg_id"], marker["header"]["msg_id"]}
        for frames in (status("idle", marker), status("idle", long)):
            await iopub.send_multipart(frames)
        await _until_async(lambda: activity.busy("c") == 0)

        activity.follow({})  # the cluster went: its watch stops
        assert activity.watched("c") == 0 and activity.busy("c") == 0
    finally:
        activity.close()
        iopub.close()
        shell.close()
        ctx.term()


def test_busy_comes_from_signed_status_messages_only(tmp_path):
    asyncio.run(_busy_from_signed_status(tmp_path))


def test_an_mpi_cluster_from_the_api(server):
    cluster_id = _new_id()
    response = server.request("POST", API, json={"n": 2, "cluster_id": cluster_id, "engines": "mpi"}, timeout=_START)
    assert response.status_code == 201, response.text
    model = _until(server, cluster_id, engines_alive=2, engines_busy=0)
    assert model["launcher"] == "mpi"
    [engine_set] = model["sets"].values()
    assert (engine_set["launcher"], engine_set["ranks"]) == ("mpi", 2)  # what the launcher reports
    assert _cli_listed(server)[cluster_id]["launcher"] == "mpi"
    bad = server.request("POST", API, json={"n": 1, "engines": "mpi", "launcher_options": {"no_such": 1}})
    assert bad.status_code == 400 and bad.json()["message"].startswith("launcher_options"), bad.text
    assert server.request("DELETE", f"{API}/{cluster_id}", timeout=_START).status_code == 204
