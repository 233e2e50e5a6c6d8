"""Reference code: reads the suite's files (and API) and computes with exact or careful numerics.

The reference answers of the suite are computed only from what a solver sees:
the files as shipped, read back with :class:`Context`, and the local API's
responses. Nothing here looks at the in-memory data the files were written from.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from fractions import Fraction
from functools import cached_property
from pathlib import Path
from typing import Any

from insitu.evals.suite.formats import read_pdf_text, read_xlsx

ApiCall = Callable[[str, Mapping[str, str] | None], tuple[int, Any]]


def fixed(value: float | Fraction, places: int) -> str:
    """Format a number with ``places`` decimals (never ``-0.00``)."""
    text = f"{float(value):.{places}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def http_api(base_url: str) -> ApiCall:
    """Return an :data:`ApiCall` that does real HTTP GETs against ``base_url``."""

    def call(target: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        request = urllib.request.Request(base_url.rstrip("/") + target, headers=dict(headers or {}))
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read() or b"{}")

    return call


class Context:
    """What reference functions read: the suite's files (cached) and the API.

    Attributes:
        files_dir: The directory of the data files.
    """

    def __init__(self, files_dir: Path, api: ApiCall) -> None:
        self.files_dir = Path(files_dir)
        self._api = api
        self._cache: dict[tuple[str, str], Any] = {}

    def _cached(self, kind: str, name: str, load: Callable[[Path], Any]) -> Any:
        key = (kind, name)
        if key not in self._cache:
            self._cache[key] = load(self.files_dir / name)
        return self._cache[key]

    def csv(self, name: str) -> list[dict[str, str]]:
        """Rows of a CSV file as dicts of strings."""

        def load(path: Path) -> list[dict[str, str]]:
            with path.open(newline="", encoding="utf-8") as handle:
                return list(csv.DictReader(handle))

        return self._cached("csv", name, load)

    def json(self, name: str) -> Any:
        """A parsed JSON file."""
        return self._cached("json", name, lambda p: json.loads(p.read_text("utf-8")))

    def lines(self, name: str) -> list[str]:
        """The lines of a text file, without line ends."""
        return self._cached("lines", name, lambda p: p.read_text("utf-8").splitlines())

    def xlsx(self, name: str, sheet: str) -> list[dict[str, Any]]:
        """Rows of a sheet as dicts keyed by the header row."""
        book = self._cached("xlsx", name, read_xlsx)
        header, *rows = book[sheet]
        return [dict(zip(header, row, strict=True)) for row in rows]

    def pdf_lines(self, name: str) -> list[str]:
        """The text lines of every page of a PDF, in order."""
        pages = self._cached("pdf", name, read_pdf_text)
        return [line for page in pages for line in page]

    def sql(self, name: str, query: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Run a read-only query on an SQLite file."""
        conn = sqlite3.connect(f"file:{self.files_dir / name}?mode=ro", uri=True)
        try:
            return conn.execute(query, tuple(params)).fetchall()
        finally:
            conn.close()

    def api(self, target: str, headers: Mapping[str, str] | None = None) -> Any:
        """GET ``target`` from the local API; a status other than 200 is an error."""
        status, body = self._api(target, headers)
        if status != 200:
            raise RuntimeError(f"GET {target} answered {status}: {body}")
        return body

    def api_pages(self, target: str, headers: Mapping[str, str] | None = None) -> list[Any]:
        """Every item of a paginated endpoint, following ``next`` links."""
        items: list[Any] = []
        next_target: str | None = target
        while next_target:
            body = self.api(next_target, headers)
            items.extend(body["items"])
            next_target = body["next"]
        return items

    @cached_property
    def eur_rates(self) -> dict[str, dict[str, float]]:
        """Rates of every date served by the API (units of currency per EUR)."""
        dates = self.api("/rates/dates")["dates"]
        return {day: {"EUR": 1.0, **self.api(f"/rates?date={day}")["rates"]} for day in dates}


# --------------------------------------------------------------------------- helpers


def parse_date(text: str) -> dt.date:
    """Parse ``YYYY-MM-DD``."""
    return dt.date.fromisoformat(text)


def unique_max(scores: Mapping[Any, float], what: str = "maximum") -> Any:
    """Return the key with the largest score, insisting that it is unique.

    Raises:
        ValueError: Two keys share the top score (the task would be ambiguous).
    """
    best = max(scores.values())
    keys = [k for k, v in scores.items() if v == best]
    if len(keys) != 1:
        raise ValueError(f"ambiguous {what}: {keys} share {best}")
    return keys[0]


def unique_min(scores: Mapping[Any, float], what: str = "minimum") -> Any:
    """Like :func:`unique_max`, for the smallest score."""
    return unique_max({k: -v for k, v in scores.items()}, what)


def percentile_linear(values: Sequence[float], p: float) -> float:
    """Percentile by linear interpolation between closest ranks (numpy's default, R-7)."""
    ordered = sorted(values)
    h = (len(ordered) - 1) * p / 100
    low = math.floor(h)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (h - low) * (ordered[high] - ordered[low])


def percentile_nearest_rank(values: Sequence[float], p: float) -> float:
    """Percentile by the nearest-rank method: the ceil(p/100 * n)-th smallest value."""
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def add_months(day: dt.date, months: int) -> dt.date:
    """Add calendar months, clamping the day to the end of the target month."""
    index = day.month - 1 + months
    year, month = day.year + index // 12, index % 12 + 1
    last = (dt.date(year + month // 12, month % 12 + 1, 1) - dt.timedelta(days=1)).day
    return dt.date(year, month, min(day.day, last))


def full_years(start: dt.date, end: dt.date) -> int:
    """Completed years from ``start`` to ``end``."""
    years = end.year - start.year
    if (end.month, end.day) < (start.month, start.day):
        years -= 1
    return years


def to_kg(value: float, unit: str) -> float:
    """Convert a weight to kilograms."""
    factors = {"g": 0.001, "kg": 1.0, "lb": 0.45359237, "oz": 0.028349523125}
    return value * factors[unit]


# --------------------------------------------------------------------------- exact linear algebra


def _fractions(matrix: Sequence[Sequence[Any]]) -> list[list[Fraction]]:
    return [[Fraction(x) for x in row] for row in matrix]


def determinant(matrix: Sequence[Sequence[Any]]) -> Fraction:
    """Determinant by exact Gaussian elimination."""
    m = _fractions(matrix)
    n = len(m)
    det = Fraction(1)
    for col in range(n):
        pivot = next((r for r in range(col, n) if m[r][col] != 0), None)
        if pivot is None:
            return Fraction(0)
        if pivot != col:
            m[col], m[pivot] = m[pivot], m[col]
            det = -det
        det *= m[col][col]
        for r in range(col + 1, n):
            factor = m[r][col] / m[col][col]
            for c in range(col, n):
                m[r][c] -= factor * m[col][c]
    return det


def rank(matrix: Sequence[Sequence[Any]]) -> int:
    """Rank by exact row reduction."""
    m = _fractions(matrix)
    rows, cols = len(m), len(m[0]) if m else 0
    r = 0
    for c in range(cols):
        pivot = next((i for i in range(r, rows) if m[i][c] != 0), None)
        if pivot is None:
            continue
        m[r], m[pivot] = m[pivot], m[r]
        for i in range(rows):
            if i != r and m[i][c] != 0:
                factor = m[i][c] / m[r][c]
                m[i] = [a - factor * b for a, b in zip(m[i], m[r], strict=True)]
        r += 1
        if r == rows:
            break
    return r


def solve(matrix: Sequence[Sequence[Any]], rhs: Sequence[Any]) -> list[Fraction]:
    """Solve ``matrix @ x = rhs`` exactly (Gauss-Jordan).

    Raises:
        ValueError: The matrix is singular.
    """
    n = len(matrix)
    m = [[*row, Fraction(b)] for row, b in zip(_fractions(matrix), rhs, strict=True)]
    for col in range(n):
        pivot = next((r for r in range(col, n) if m[r][col] != 0), None)
        if pivot is None:
            raise ValueError("singular matrix")
        m[col], m[pivot] = m[pivot], m[col]
        lead = m[col][col]
        m[col] = [x / lead for x in m[col]]
        for r in range(n):
            if r != col and m[r][col] != 0:
                factor = m[r][col]
                m[r] = [a - factor * b for a, b in zip(m[r], m[col], strict=True)]
    return [row[n] for row in m]


def inverse(matrix: Sequence[Sequence[Any]]) -> list[list[Fraction]]:
    """The exact inverse (columns solved one by one)."""
    n = len(matrix)
    columns = [solve(matrix, [int(i == j) for i in range(n)]) for j in range(n)]
    return [[columns[j][i] for j in range(n)] for i in range(n)]


def matmul(a: Sequence[Sequence[Any]], b: Sequence[Sequence[Any]]) -> list[list[Any]]:
    """Matrix product."""
    return [
        [sum(x * y for x, y in zip(row, col, strict=True)) for col in zip(*b, strict=True)]
        for row in a
    ]


def least_squares(design: Sequence[Sequence[Any]], target: Sequence[Any]) -> list[Fraction]:
    """Exact least-squares coefficients via the normal equations."""
    x = _fractions(design)
    y = [Fraction(v) for v in target]
    xt = [list(col) for col in zip(*x, strict=True)]
    xtx = matmul(xt, x)
    xty = [sum(a * b for a, b in zip(row, y, strict=True)) for row in xt]
    return solve(xtx, xty)


# --------------------------------------------------------------------------- root finding


def bisect(f: Callable[[float], float], low: float, high: float, iterations: int = 200) -> float:
    """A root of ``f`` in ``[low, high]``, where ``f`` changes sign.

    Raises:
        ValueError: ``f`` does not change sign on the interval.
    """
    f_low, f_high = f(low), f(high)
    if f_low == 0:
        return low
    if f_high == 0:
        return high
    if (f_low < 0) == (f_high < 0):
        raise ValueError(f"no sign change on [{low}, {high}]")
    for _ in range(iterations):
        mid = (low + high) / 2
        f_mid = f(mid)
        if f_mid == 0 or high - low < 1e-15 * max(1.0, abs(mid)):
            return mid
        if (f_mid < 0) == (f_low < 0):
            low, f_low = mid, f_mid
        else:
            high = mid
    return (low + high) / 2


def real_roots(coefficients: Sequence[float], step: float = 1e-3) -> list[float]:
    """Simple real roots of a polynomial (highest degree first), by scanning and bisection.

    Scans the Cauchy bound for sign changes; insists that the polynomial stays
    clear of zero elsewhere, so that no double root is silently missed.

    Raises:
        ValueError: The polynomial comes close to zero without changing sign.
    """

    def p(x: float) -> float:
        value = 0.0
        for c in coefficients:
            value = value * x + c
        return value

    lead = coefficients[0]
    bound = 1 + max(abs(c / lead) for c in coefficients[1:])
    roots = []
    x = -bound
    previous = p(x)
    while x < bound:
        nxt = x + step
        current = p(nxt)
        if (previous < 0) != (current < 0):
            roots.append(bisect(p, x, nxt))
        elif min(abs(previous), abs(current)) < 1e-4:
            raise ValueError(f"polynomial nearly touches zero near {x}")
        x, previous = nxt, current
    return roots
