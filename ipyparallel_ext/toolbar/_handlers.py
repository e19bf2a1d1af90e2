"""The REST API of the toolbar: tornado handlers under ``{base_url}ipyparallel-ext/``.

====== =========================================== =======================================
method path                                        does
====== =========================================== =======================================
GET    ``clusters``                                ``{"clusters": [model, ...]}``
POST   ``clusters``                                start one (``n``, ``engines``,
                                                   ``kernel_name``, ``cluster_id``): 201 + model
GET    ``clusters/{id}``                           its model
PATCH  ``clusters/{id}``                           scale to ``n`` engines: model
DELETE ``clusters/{id}``                           stop it: 204 once stopped
POST   ``clusters/{id}/interrupt``                 interrupt every engine: 204
====== =========================================== =======================================

Every handler needs the server's token (``@tornado.web.authenticated``);
errors are JSON ``{"message": ...}`` (400 naming the bad field, 404 unknown
id, 409 id taken).  The work is :class:`~._clusters.ClusterService`'s.
"""

from __future__ import annotations

import json

import tornado.web
from jupyter_server.base.handlers import APIHandler
from jupyter_server.utils import url_path_join

from ._clusters import ClusterService, RequestError

PREFIX = "ipyparallel-ext"
_ID = r"(?P<cluster_id>[^/]+)"


class _Handler(APIHandler):
    """Shared: the service, JSON bodies, and RequestError as an HTTP error with a message."""

    def initialize(self, service: ClusterService):
        self.service = service

    def body(self):
        try:
            return json.loads(self.request.body or b"{}")
        except ValueError as exc:
            raise tornado.web.HTTPError(400, f"the request body is not JSON: {exc}") from None

    async def _call(self, coro):
        try:
            return await coro
        except RequestError as exc:
            raise tornado.web.HTTPError(exc.status, exc.message) from None


class ClustersHandler(_Handler):
    @tornado.web.authenticated
    async def get(self):
        self.finish({"clusters": await self._call(self.service.list())})

    @tornado.web.authenticated
    async def post(self):
        model = await self._call(self.service.start(self.body()))
        self.set_status(201)
        self.set_header("Location", url_path_join(self.base_url, PREFIX, "clusters", model["id"]))
        self.finish(model)


class ClusterHandler(_Handler):
    @tornado.web.authenticated
    async def get(self, cluster_id):
        self.finish(await self._call(self.service.get(cluster_id)))

    @tornado.web.authenticated
    async def patch(self, cluster_id):
        self.finish(await self._call(self.service.scale(cluster_id, self.body())))

    @tornado.web.authenticated
    async def delete(self, cluster_id):
        await self._call(self.service.stop(cluster_id))
        self.set_status(204)
        self.finish()


class InterruptHandler(_Handler):
    @tornado.web.authenticated
    async def post(self, cluster_id):
        await self._call(self.service.interrupt(cluster_id))
        self.set_status(204)
        self.finish()


def handlers(base_url: str, service: ClusterService) -> list:
    """The routes of the API under ``base_url``, for ``web_app.add_handlers``."""
    root = url_path_join(base_url, PREFIX, "clusters")
    args = {"service": service}
    return [(root, ClustersHandler, args), (url_path_join(root, _ID), ClusterHandler, args),
            (url_path_join(root, _ID, "interrupt"), InterruptHandler, args)]
