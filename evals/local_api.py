"""A small deterministic JSON API on loopback, for the tasks of the local suite.

Tasks of the local suite that need HTTP refer to the API as ``{api_base}``; the
harness starts a :class:`LocalAPI`, substitutes its :attr:`LocalAPI.base_url`
and stops it afterwards::

    from insitu.evals.local_api import LocalAPI

    with LocalAPI() as api:               # data of the shipped suite (v1)
        prompt = task.prompt(api_base=api.base_url)
        ...

The data served is the ``api_data.json`` of a suite version (generated with the
suite by ``insitu.evals.suite.build``), so answers computed by the suite's
reference code and what the API serves cannot drift apart. Every response is a
JSON object; the same request always gets the same bytes.

Endpoints (all ``GET``; errors are ``{"error": "..."}`` with status 400, 401 or 404):

- ``/health``: ``{"status": "ok", "version": ...}``.
- ``/products[?category=C]``: ``{"items": [...], "count": n}``; a product is
  ``{"id", "name", "category", "price": {"amount", "currency"}, "weight": {"value", "unit"},
  "stock"}``.
- ``/products/{id}``: one product.
- ``/rates[?date=YYYY-MM-DD]``: ``{"base": "EUR", "date", "rates": {code: units per EUR}}``;
  without a date, the latest date; ``/rates/dates`` lists the dates available.
- ``/stations``: ``{"items": [{"id", "name", "unit"}]}`` (unit ``"C"`` or ``"F"``).
- ``/stations/{id}/readings[?from=YYYY-MM-DD&to=YYYY-MM-DD]``: ``{"station", "unit",
  "readings": [{"date", "temp"}]}`` (bounds inclusive).
- ``/orders[?page=N&per_page=M&status=S]``: paginated (``per_page`` 1..50, default 20):
  ``{"items", "page", "per_page", "total", "next"}`` where ``next`` is the path of the
  next page or ``null``; an order is ``{"id", "customer_id", "date", "status",
  "items": [{"product_id", "qty"}]}``.
- ``/secure/customers`` and ``/secure/customers/{id}``: need the header ``X-API-Key``
  with the data's ``api_key``; a customer is ``{"id", "name", "country", "tier"}``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from http.server import BaseHTTPRequestHandler
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, urlsplit

from insitu.loopback import LoopbackHTTPServer, LoopbackService

__all__ = ["DEFAULT_VERSION", "LocalAPI", "handle_request", "load_api_data"]

DEFAULT_VERSION = "v1"
MAX_PER_PAGE = 50
DEFAULT_PER_PAGE = 20
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


@cache
def _shipped_data(version: str) -> str:
    path = resources.files("insitu.evals").joinpath("suite", version, "api_data.json")
    if not path.is_file():
        raise FileNotFoundError(f"the local suite has no version {version!r} (no {path})")
    return path.read_text("utf-8")


def load_api_data(version: str = DEFAULT_VERSION) -> dict[str, Any]:
    """Return the API data shipped with a version of the local suite.

    Args:
        version: The suite version, e.g. ``"v1"``.

    Returns:
        A fresh copy of the data (safe to modify).

    Raises:
        FileNotFoundError: No such suite version is installed.
    """
    return json.loads(_shipped_data(version))


def _error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": message}


def _int_param(query: Mapping[str, list[str]], name: str, default: int) -> int:
    values = query.get(name)
    if not values:
        return default
    try:
        return int(values[-1])
    except ValueError:
        raise ValueError(
            f"query parameter {name!r} must be an integer, got {values[-1]!r}"
        ) from None


def _date_param(query: Mapping[str, list[str]], name: str) -> str | None:
    values = query.get(name)
    if not values:
        return None
    value = values[-1]
    if not _DATE.match(value):
        raise ValueError(f"query parameter {name!r} must be a date YYYY-MM-DD, got {value!r}")
    return value


def _find(items: list[dict[str, Any]], raw_id: str, what: str) -> tuple[int, dict[str, Any]]:
    try:
        wanted = int(raw_id)
    except ValueError:
        return _error(404, f"no {what} with id {raw_id!r}")
    for item in items:
        if item["id"] == wanted:
            return 200, item
    return _error(404, f"no {what} with id {wanted}")


def handle_request(
    data: Mapping[str, Any],
    method: str,
    target: str,
    headers: Mapping[str, str] | None = None,
) -> tuple[int, dict[str, Any]]:
    """Answer one request without any socket (what the HTTP server does for each request).

    Args:
        data: The API data (see :func:`load_api_data`).
        method: The HTTP method; only ``GET`` is served.
        target: The request target, path and query, e.g. ``"/orders?page=2"``.
        headers: Request headers (case-insensitive names).

    Returns:
        ``(status, body)``; the body is always a JSON-able dict.
    """
    if method.upper() != "GET":
        return _error(405, f"method {method} is not allowed; every endpoint is GET")
    lowered = {k.lower(): v for k, v in (headers or {}).items()}
    parts = urlsplit(target)
    query = parse_qs(parts.query, keep_blank_values=True)
    segments = [s for s in parts.path.split("/") if s]
    try:
        return _route(data, segments, query, lowered)
    except ValueError as exc:
        return _error(400, str(exc))


def _route(
    data: Mapping[str, Any],
    segments: list[str],
    query: Mapping[str, list[str]],
    headers: Mapping[str, str],
) -> tuple[int, dict[str, Any]]:
    match segments:
        case ["health"]:
            return 200, {"status": "ok", "version": data.get("version", "")}
        case ["products"]:
            items = data["products"]
            category = query.get("category")
            if category:
                items = [p for p in items if p["category"] == category[-1]]
            return 200, {"items": items, "count": len(items)}
        case ["products", raw_id]:
            return _find(data["products"], raw_id, "product")
        case ["rates"]:
            rates = data["rates"]
            date = _date_param(query, "date") or max(rates)
            if date not in rates:
                return _error(
                    404, f"no rates for {date}; dates available: {', '.join(sorted(rates))}"
                )
            return 200, {"base": data["rates_base"], "date": date, "rates": rates[date]}
        case ["rates", "dates"]:
            return 200, {"dates": sorted(data["rates"])}
        case ["stations"]:
            return 200, {"items": data["stations"]}
        case ["stations", raw_id, "readings"]:
            status, station = _find(data["stations"], raw_id, "station")
            if status != 200:
                return status, station
            low, high = _date_param(query, "from"), _date_param(query, "to")
            readings = [
                r
                for r in data["readings"][str(station["id"])]
                if (low is None or r["date"] >= low) and (high is None or r["date"] <= high)
            ]
            return 200, {"station": station["id"], "unit": station["unit"], "readings": readings}
        case ["orders"]:
            return _orders(data, query)
        case ["secure", "customers", *rest] if len(rest) <= 1:
            key = headers.get("x-api-key")
            if key is None:
                return _error(401, "missing X-API-Key header")
            if key != data["api_key"]:
                return _error(401, "invalid API key")
            if not rest:
                return 200, {"items": data["customers"], "count": len(data["customers"])}
            return _find(data["customers"], rest[0], "customer")
    return _error(404, "no such endpoint: /" + "/".join(segments))


def _orders(data: Mapping[str, Any], query: Mapping[str, list[str]]) -> tuple[int, dict[str, Any]]:
    page = _int_param(query, "page", 1)
    per_page = _int_param(query, "per_page", DEFAULT_PER_PAGE)
    if page < 1:
        raise ValueError("page must be >= 1")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise ValueError(f"per_page must be between 1 and {MAX_PER_PAGE}")
    orders = data["orders"]
    status = query.get("status")
    if status:
        orders = [o for o in orders if o["status"] == status[-1]]
    start = (page - 1) * per_page
    items = orders[start : start + per_page]
    more = start + per_page < len(orders)
    next_page = None
    if more:
        next_page = f"/orders?page={page + 1}&per_page={per_page}"
        if status:
            next_page += f"&status={status[-1]}"
    return 200, {
        "items": items,
        "page": page,
        "per_page": per_page,
        "total": len(orders),
        "next": next_page,
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def _answer(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        status, body = handle_request(
            self.server.data, method, self.path, {k: v for k, v in self.headers.items()}
        )
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(LoopbackHTTPServer):
    """The loopback server, holding what its handlers serve."""

    def __init__(self, address: tuple[str, int], data: Mapping[str, Any]) -> None:
        self.data = data
        super().__init__(address, _Handler)


class LocalAPI(LoopbackService):
    """The suite's JSON API served on ``127.0.0.1`` at a free port, in a daemon thread.

    Attributes:
        data: The data served.
        host: Always loopback.
        port: The bound port (0 until started, unless one was asked for).
    """

    def __init__(
        self,
        data: Mapping[str, Any] | None = None,
        *,
        version: str = DEFAULT_VERSION,
        port: int = 0,
    ) -> None:
        """Prepare the server (nothing is bound until :meth:`start`).

        Args:
            data: The data to serve; default: the shipped suite's ``api_data.json``.
            version: The suite version whose data is served when ``data`` is None.
            port: The port to bind; 0 picks a free one.
        """
        self.data: Mapping[str, Any] = data if data is not None else load_api_data(version)
        self.port = port

    @property
    def base_url(self) -> str:
        """The URL tasks' ``{api_base}`` stands for, e.g. ``http://127.0.0.1:PORT``."""
        if not self.running:
            raise RuntimeError("LocalAPI is not running; call start() or use it in a with block")
        return f"http://{self.host}:{self.port}"

    @property
    def api_key(self) -> str:
        """The key the ``/secure`` endpoints accept in ``X-API-Key``."""
        return str(self.data["api_key"])

    def _make_server(self, address: tuple[str, int]) -> _Server:
        return _Server(address, self.data)
