"""The HTTP server inside the daemon (contract.md §4), started as one more service when `[http]` is set.

Read-only: only GET (and HEAD) routes exist, and every answer is read from the state database
through a read-only connection of its own, on a worker thread, so a slow page never holds up the
event loop or the uplink's reads. A request from a non-loopback address must carry
`Authorization: Bearer <token>`, else 401.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from aiohttp import web
from pydantic import TypeAdapter, ValidationError

from gateway import status
from gateway.db import connect
from gateway.http import queries
from gateway.http.models import (
    LABEL_STATES,
    MAX_LIMIT,
    ORDER_STATES,
    DeviceList,
    EventList,
    LabelList,
    OrderList,
    StatusDocument,
)
from gateway.http.page import PageData, pick_language, render
from gateway.metrics import CONTENT_TYPE, read_state_figures
from gateway.service import Service
from gateway.timeutil import utc_now

log = logging.getLogger(__name__)

T = TypeVar("T")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_LOOP_STALL_S = 5.0

_DEVICES = TypeAdapter(DeviceList)
_LABELS = TypeAdapter(LabelList)
_ORDERS = TypeAdapter(OrderList)
_EVENTS = TypeAdapter(EventList)


class BadParameter(ValueError):
    """A query parameter that cannot be used; the message starts with its name."""


def _is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _states(request: web.Request, name: str, allowed: Sequence[str]) -> list[str]:
    """`?state=a,b` (or repeated): the states asked for; BadParameter naming the parameter otherwise."""
    wanted = [part for value in request.query.getall(name, []) for part in value.split(",")]
    for value in wanted:
        if value not in allowed:
            raise BadParameter(f'{name}: unknown state "{value}"; expected one of {", ".join(allowed)}')
    return wanted


def _limit(request: web.Request, default: int) -> int:
    text = request.query.get("limit")
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= MAX_LIMIT:
        raise BadParameter(f'limit: "{text}" is not a whole number from 1 to {MAX_LIMIT}')
    return int(text)


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


class HttpService(Service):
    """The status page, the JSON API, /metrics and /healthz."""

    name = "http"

    def setup(self) -> None:
        self.http = self.gateway.config.http
        self.stopping = False
        self._last_tick = 0.0
        self._status_drift_logged = False
        if self.http is None:
            return
        self.token = self.http.token()
        self.gateway.add_task("http", self.serve)

    async def stop(self) -> None:
        self.stopping = True  # /healthz says 503 "stopping" while the daemon winds down

    # -- the server ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard])
        app.router.add_get("/", self.page)
        app.router.add_get("/api/status", self.api_status)
        app.router.add_get("/api/devices", self.api_devices)
        app.router.add_get("/api/labels", self.api_labels)
        app.router.add_get("/api/orders", self.api_orders)
        app.router.add_get("/api/events", self.api_events)
        app.router.add_get("/metrics", self.metrics)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def serve(self) -> None:
        """Listen on `http.listen` until cancelled (a port in use fails here, and the supervisor retries)."""
        assert self.http is not None
        runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        await runner.setup()
        try:
            site = web.TCPSite(runner, self.http.host, self.http.port, reuse_address=True)
            await site.start()
            log.info("status page on http://%s/", self.http.listen)
            loop = asyncio.get_running_loop()
            while True:  # the heartbeat /healthz reads: a loop that stops turning is not healthy
                self._last_tick = loop.time()
                await asyncio.sleep(1.0)
        finally:
            await runner.cleanup()

    @web.middleware
    async def _guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not _is_loopback(request.remote):
            given = request.headers.get("Authorization", "")
            scheme, _, credential = given.partition(" ")
            expected = self.token
            if not (
                expected is not None
                and scheme.lower() == "bearer"
                and hmac.compare_digest(credential.strip().encode(), expected.encode())
            ):
                return web.json_response(
                    {"error": "Authorization: a bearer token is needed from outside this machine"},
                    status=401,
                    headers={"WWW-Authenticate": 'Bearer realm="store-gateway"'},
                )
        try:
            return await handler(request)
        except BadParameter as exc:
            return web.json_response({"error": str(exc)}, status=400)
        except FileNotFoundError as exc:
            return web.json_response({"error": f"state.path: {exc}"}, status=503)
        except sqlite3.Error as exc:
            log.warning("http: %s %s: state database: %s", request.method, request.path, exc)
            return web.json_response({"error": f"state database: {exc}"}, status=503)

    async def _read(self, job: Callable[[sqlite3.Connection], T]) -> T:
        """Run `job` on a read-only connection of its own, on a worker thread."""
        path = self.gateway.config.state.path

        def run() -> T:
            conn = connect(path, readonly=True)
            try:
                return job(conn)
            finally:
                conn.close()

        return await asyncio.to_thread(run)

    # -- routes ----------------------------------------------------------------------------

    async def _status(self) -> dict[str, Any]:
        report = await asyncio.to_thread(status.collect, self.gateway.config.state.path, self.gateway.config)
        try:
            StatusDocument.model_validate(report)  # docs/openapi.yaml describes what `status --json` prints
        except ValidationError as exc:
            if not self._status_drift_logged:  # a bug of ours: say it once, and still serve the document
                log.error("http: the status document no longer matches docs/openapi.yaml: %s", exc)
                self._status_drift_logged = True
        return report

    async def api_status(self, request: web.Request) -> web.Response:
        return web.json_response(await self._status(), dumps=status.render_json)

    async def api_devices(self, request: web.Request) -> web.Response:
        configured = list(self.gateway.config.device_ids())
        found = await self._read(lambda conn: queries.devices(conn, configured))
        return _json(_DEVICES.dump_json(found))

    async def api_labels(self, request: web.Request) -> web.Response:
        states, limit = _states(request, "state", LABEL_STATES), _limit(request, MAX_LIMIT)
        found = await self._read(lambda conn: queries.labels(conn, states, limit))
        return _json(_LABELS.dump_json(found))

    async def api_orders(self, request: web.Request) -> web.Response:
        states, limit = _states(request, "state", ORDER_STATES), _limit(request, 200)
        found = await self._read(lambda conn: queries.orders(conn, states, limit))
        return _json(_ORDERS.dump_json(found))

    async def api_events(self, request: web.Request) -> web.Response:
        limit = _limit(request, 50)
        store = self.gateway.config.store.id
        found = await self._read(lambda conn: queries.events(conn, store, limit))
        return _json(_EVENTS.dump_json(found))

    async def metrics(self, request: web.Request) -> web.Response:
        config = self.gateway.config
        configured = list(config.device_ids())
        figures = await self._read(lambda conn: read_state_figures(conn, config.state.path, configured))
        body = self.gateway.metrics.render(figures)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def healthz(self, request: web.Request) -> web.Response:
        reason = None
        stall = asyncio.get_running_loop().time() - self._last_tick
        if self.stopping:
            reason = "stopping"
        elif not self.gateway.db.writer_alive:
            reason = "the state database writer is not running"
        elif stall > _LOOP_STALL_S:
            reason = f"the event loop did not turn for {stall:.0f} s"
        if reason is None:
            return web.Response(text="ok\n")
        return web.Response(text=reason + "\n", status=503)

    async def page(self, request: web.Request) -> web.Response:
        lang = pick_language(request.query.get("lang"), request.headers.get("Accept-Language"))
        configured = list(self.gateway.config.device_ids())
        report = await self._status()

        def read(conn: sqlite3.Connection) -> PageData:
            return PageData(
                status=report,
                devices=queries.devices(conn, configured),
                unconfirmed=queries.labels(conn, ("pending", "sent", "failed"), 20),
                orders=queries.orders(conn, ("reserved", "ready"), 50),
                events=queries.events(conn, self.gateway.config.store.id, 50),
            )

        data = await self._read(read)
        html = render(data, lang, ZoneInfo(self.gateway.config.store.timezone), utc_now())
        response = web.Response(text=html, content_type="text/html")
        response.headers["Content-Language"] = lang
        response.headers["Cache-Control"] = "no-store"
        response.headers["Vary"] = "Accept-Language"
        # nothing on the page may come from elsewhere, and it may not be framed by another site
        response.headers["Content-Security-Policy"] = (
            "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'; connect-src 'self'; "
            "frame-ancestors 'none'"
        )
        return response
