"""The suite's data, generated deterministically from a fixed seed, and its writers.

Everything here is a pure function of :data:`SEED`: each data set draws from its
own ``random.Random(f"{SEED}:data:<name>")``, so adding a data set never changes
another. Only ``random()``, ``randint``, ``choice``, ``sample`` and ``shuffle``
are used, whose results are stable across CPython versions.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import math
import random
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from insitu.evals.suite.formats import write_pdf, write_xlsx

SEED = 20240611
VERSION = "v1"

REGIONS = ["North", "South", "East", "West"]
PRODUCTS = {
    "Anvil": 48.0,
    "Bracket": 3.5,
    "Cable": 12.0,
    "Dowel": 0.8,
    "Epoxy": 9.5,
    "Flange": 22.0,
    "Gasket": 1.9,
    "Hinge": 4.2,
}
DEPARTMENTS = ["Operations", "Engineering", "Sales", "Finance", "Research"]
SKILLS = [
    "python",
    "sql",
    "excel",
    "negotiation",
    "statistics",
    "rust",
    "accounting",
    "design",
    "logistics",
]
LOCATIONS = [
    ("Lisbon", "Portugal"),
    ("Porto", "Portugal"),
    ("Berlin", "Germany"),
    ("Munich", "Germany"),
    ("Lyon", "France"),
    ("Paris", "France"),
    ("Utrecht", "Netherlands"),
]
FIRST = [
    "Ada",
    "Bruno",
    "Carla",
    "Dmitri",
    "Elena",
    "Farid",
    "Greta",
    "Hugo",
    "Ines",
    "Jonas",
    "Kaia",
    "Luis",
    "Marta",
    "Nils",
    "Olga",
    "Pavel",
    "Quinn",
    "Rosa",
    "Sven",
    "Tara",
    "Uma",
    "Victor",
    "Wanda",
    "Xavier",
    "Yara",
    "Zeno",
]
LAST = [
    "Almeida",
    "Bauer",
    "Costa",
    "Duval",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Horvat",
    "Ivanova",
    "Jansen",
    "Keller",
    "Lopes",
    "Moreau",
    "Novak",
    "Olsen",
    "Peters",
    "Quist",
    "Rossi",
    "Schmidt",
    "Teixeira",
    "Ulrich",
    "Visser",
    "Weber",
    "Young",
]
LOG_PATHS = {
    "/api/items": (3.0, 80),
    "/api/orders": (2.0, 140),
    "/api/users": (1.5, 60),
    "/api/search": (2.5, 220),
    "/api/cart": (1.2, 90),
    "/api/checkout": (0.6, 310),
    "/health": (1.0, 4),
}
LOG_STATUSES = [
    (200, 70),
    (201, 6),
    (304, 6),
    (400, 4),
    (401, 3),
    (404, 5),
    (500, 3),
    (502, 2),
    (503, 1),
]
GENRES = ["fiction", "history", "science", "poetry", "mystery"]
WAREHOUSES = ["AMS", "BER", "MAD"]
CATEGORIES = ["Fasteners", "Electrical", "Plumbing", "Paint", "Tools"]
BRANCH_CITIES = [
    "Aberdeen",
    "Bologna",
    "Cork",
    "Dresden",
    "Eindhoven",
    "Faro",
    "Ghent",
    "Hamburg",
    "Innsbruck",
    "Krakow",
    "Leeds",
    "Malaga",
    "Nantes",
    "Oslo",
    "Porto",
    "Riga",
    "Seville",
    "Tallinn",
    "Turin",
    "Uppsala",
    "Valencia",
    "Vienna",
    "Zagreb",
    "Zurich",
]
BRANCH_REGIONS = ["North", "Central", "South"]
API_CATEGORIES = ["audio", "kitchen", "garden", "office", "toys"]
ADJECTIVES = [
    "Amber",
    "Brisk",
    "Cobalt",
    "Dusky",
    "Ember",
    "Frosty",
    "Golden",
    "Hollow",
    "Ivory",
    "Jade",
    "Lunar",
    "Misty",
    "Noble",
    "Opal",
    "Pale",
    "Quiet",
    "Rustic",
    "Silver",
    "Tidal",
    "Velvet",
]
NOUNS = [
    "Harbor",
    "Lantern",
    "Meadow",
    "Orchard",
    "Quill",
    "Ridge",
    "Sparrow",
    "Thistle",
    "Willow",
    "Beacon",
    "Canyon",
    "Falcon",
    "Garden",
    "Island",
    "Kettle",
    "Mirror",
]
RATE_DATES = ["2023-12-29", "2024-01-15", "2024-02-15", "2024-03-15"]


def rng_for(name: str) -> random.Random:
    """Return the generator of one data set or task (seeded by name, independent of others)."""
    return random.Random(f"{SEED}:{name}")


def iso(day: dt.date) -> str:
    """Format a date as ``YYYY-MM-DD``."""
    return day.isoformat()


@dataclass
class Dataset:
    """All generated data, in memory (the files are written from it)."""

    sales: list[dict[str, str]] = field(default_factory=list)
    employees: dict[str, Any] = field(default_factory=dict)
    sensors: list[dict[str, str]] = field(default_factory=list)
    log_lines: list[str] = field(default_factory=list)
    library: dict[str, list[tuple[Any, ...]]] = field(default_factory=dict)
    inventory: dict[str, list[list[Any]]] = field(default_factory=dict)
    branches: list[dict[str, Any]] = field(default_factory=list)
    report_pages: list[list[str]] = field(default_factory=list)
    matrices: dict[str, Any] = field(default_factory=dict)
    api: dict[str, Any] = field(default_factory=dict)


def generate() -> Dataset:
    """Generate every data set of the suite."""
    d = Dataset()
    d.sales = _sales()
    d.employees = _employees()
    d.sensors = _sensors()
    d.log_lines = _log()
    d.library = _library()
    d.inventory = _inventory()
    d.branches, d.report_pages = _report()
    d.matrices = _matrices()
    d.api = _api()
    return d


# --------------------------------------------------------------------------- generators


def _sales() -> list[dict[str, str]]:
    rng = rng_for("data:sales")
    rows = []
    start = dt.date(2023, 1, 1)
    for _ in range(240):
        product = rng.choice(list(PRODUCTS))
        price = PRODUCTS[product] * (0.9 + 0.2 * rng.random())
        rows.append(
            {
                "date": start + dt.timedelta(days=rng.randint(0, 364)),
                "region": rng.choice(REGIONS),
                "product": product,
                "units": rng.randint(1, 40),
                "unit_price": f"{price:.2f}",
                "discount_pct": rng.choice([0, 0, 0, 5, 10, 15]),
            }
        )
    rows.sort(key=lambda r: r["date"])
    return [
        {
            "order_id": f"S{i:04d}",
            "date": iso(r["date"]),
            "region": r["region"],
            "product": r["product"],
            "units": str(r["units"]),
            "unit_price": r["unit_price"],
            "discount_pct": str(r["discount_pct"]),
        }
        for i, r in enumerate(rows, start=1)
    ]


def _unique_names(rng: random.Random, count: int) -> list[str]:
    names: list[str] = []
    while len(names) < count:
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        if name not in names:
            names.append(name)
    return names


def _employees() -> dict[str, Any]:
    rng = rng_for("data:employees")
    sizes = [rng.randint(8, 14) for _ in DEPARTMENTS]
    names = _unique_names(rng, sum(sizes))
    departments = []
    number = 0
    ceo_id = "E001"
    for dept, size in zip(DEPARTMENTS, sizes, strict=True):
        staff: list[dict[str, Any]] = []
        for i in range(size):
            number += 1
            emp_id = f"E{number:03d}"
            if number == 1:
                manager = None
            elif i == 0 or (dept == DEPARTMENTS[0] and i < 3):
                manager = ceo_id
            else:
                manager = rng.choice(staff[: max(1, i)])["id"]
            hired = dt.date(2005, 1, 1) + dt.timedelta(days=rng.randint(0, 7100))
            city, country = rng.choice(LOCATIONS)
            staff.append(
                {
                    "id": emp_id,
                    "name": names[number - 1],
                    "title": "Head of " + dept
                    if i == 0
                    else rng.choice(["Associate", "Analyst", "Specialist", "Lead"]),
                    "salary": rng.randint(380, 1500) * 100,
                    "hired": iso(hired),
                    "manager_id": manager,
                    "skills": sorted(rng.sample(SKILLS, rng.randint(1, 4))),
                    "location": {"city": city, "country": country},
                }
            )
        departments.append(
            {"name": dept, "budget_eur": rng.randint(20, 90) * 50000, "employees": staff}
        )
    return {"company": "Northwind Fabrication", "currency": "EUR", "departments": departments}


def _sensors() -> list[dict[str, str]]:
    rng = rng_for("data:sensors")
    start = dt.datetime(2024, 2, 1, 0, 0)
    rows = []
    for i in range(180):
        when = start + dt.timedelta(hours=i)
        sensor = "ABC"[i % 3]
        offset = {"A": 0.0, "B": 1.5, "C": -1.0}[sensor]
        temp = (
            15 + offset + 8 * math.sin(2 * math.pi * (when.hour - 9) / 24) + rng.uniform(-1.5, 1.5)
        )
        power = 120 + 6.5 * temp + 0.18 * temp * temp + rng.uniform(-12, 12)
        missing = rng.random() < 0.04
        rows.append(
            {
                "timestamp": when.strftime("%Y-%m-%dT%H:%M"),
                "sensor": sensor,
                "temperature_c": f"{temp:.2f}",
                "humidity": str(
                    rng.randint(40, 80) if rng.random() > 0.03 else rng.randint(90, 99)
                ),
                "power_w": "" if missing else f"{power:.1f}",
            }
        )
    return rows


def _weighted(rng: random.Random, pairs: list[tuple[Any, float]]) -> Any:
    total = sum(w for _, w in pairs)
    x = rng.random() * total
    for value, weight in pairs:
        x -= weight
        if x < 0:
            return value
    return pairs[-1][0]


def _log() -> list[str]:
    rng = rng_for("data:log")
    t = dt.datetime(2024, 3, 5, 0, 0, 0)
    end = t + dt.timedelta(days=1)
    lines = []
    paths = [(p, w) for p, (w, _) in LOG_PATHS.items()]
    events = [
        ("ERROR", "worker: upstream timeout after {n}s"),
        ("ERROR", "db: connection reset by peer"),
        ("WARN", "cache: eviction storm ({n} keys)"),
        ("INFO", "scheduler: job nightly-report finished in {n}s"),
        ("ERROR", "payment: gateway Timeout (attempt {n})"),
        ("WARN", "auth: slow token refresh ({n}ms)"),
    ]
    while True:
        busy = 9 <= t.hour < 18
        t += dt.timedelta(seconds=rng.randint(5, 60) if busy else rng.randint(30, 200))
        if t.hour == 3 and t.minute < 20:  # a quiet maintenance window
            t = t.replace(minute=20) + dt.timedelta(seconds=rng.randint(0, 59))
        if t >= end:
            break
        stamp = t.strftime("%Y-%m-%dT%H:%M:%SZ")
        if rng.random() < 0.07:
            level, text = rng.choice(events)
            lines.append(f"{stamp} {level} {text.format(n=rng.randint(2, 90))}")
            continue
        path = _weighted(rng, paths)
        status = 200 if path == "/health" else _weighted(rng, LOG_STATUSES)
        base = LOG_PATHS[path][1]
        latency = int(base * (0.5 + 1.5 * rng.random()))
        if rng.random() < 0.03:
            latency *= rng.randint(4, 12)
        method = "POST" if path in ("/api/checkout", "/api/cart") else "GET"
        user = "-" if path == "/health" else f"u{rng.randint(1, 60):03d}"
        level = "INFO" if status < 400 else ("WARN" if status < 500 else "ERROR")
        lines.append(
            f"{stamp} {level} request method={method} path={path} status={status} "
            f"latency_ms={latency} user={user}"
        )
    return lines


def _library() -> dict[str, list[tuple[Any, ...]]]:
    rng = rng_for("data:library")
    author_names = _unique_names(rng, 12)
    countries = ["Brazil", "Canada", "Egypt", "Ireland", "Japan", "Kenya", "Norway"]
    authors = [(i, name, rng.choice(countries)) for i, name in enumerate(author_names, start=1)]
    titles: list[str] = []
    while len(titles) < 60:
        title = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        if title not in titles:
            titles.append(title)
    books = [
        (
            i,
            title,
            rng.randint(1, 12),
            rng.randint(1950, 2023),
            rng.randint(90, 900),
            rng.choice(GENRES),
        )
        for i, title in enumerate(titles, start=1)
    ]
    member_names = _unique_names(rng, 30)
    members = [
        (i, name, iso(dt.date(2019, 1, 1) + dt.timedelta(days=rng.randint(0, 1400))))
        for i, name in enumerate(member_names, start=1)
    ]
    never = set(rng.sample(range(1, 61), 4))
    lendable = [b for b in range(1, 61) if b not in never]
    loans = []
    for i in range(1, 401):
        start = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randint(0, 516))
        due = start + dt.timedelta(days=21)
        open_chance = 0.45 if start >= dt.date(2024, 4, 20) else 0.06
        returned = None
        if rng.random() >= open_chance:
            returned = iso(start + dt.timedelta(days=rng.randint(1, 40)))
        loans.append((i, rng.choice(lendable), rng.randint(1, 30), iso(start), iso(due), returned))
    return {"authors": authors, "books": books, "members": members, "loans": loans}


def _inventory() -> dict[str, list[list[Any]]]:
    rng = rng_for("data:inventory")
    catalog = [["sku", "description", "category", "reorder_level"]]
    stock = [["warehouse", "sku", "qty", "unit_cost", "received"]]
    kinds = {
        "Fasteners": ["hex bolt", "wood screw", "wall anchor", "rivet"],
        "Electrical": ["cable tie", "junction box", "fuse", "socket"],
        "Plumbing": ["pipe elbow", "ball valve", "washer kit", "trap"],
        "Paint": ["primer", "gloss white", "roller", "masking tape"],
        "Tools": ["chisel", "hand saw", "spirit level", "clamp"],
    }
    for n in range(45):
        sku = f"SKU-{1001 + n}"
        category = CATEGORIES[n % len(CATEGORIES)]
        description = f"{rng.choice(kinds[category])} {rng.choice(['S', 'M', 'L', 'XL'])}"
        catalog.append([sku, description, category, rng.randint(5, 30) * 10])
        for warehouse in sorted(rng.sample(WAREHOUSES, rng.randint(1, 3))):
            received = dt.date(2023, 6, 1) + dt.timedelta(days=rng.randint(0, 380))
            cost = round(rng.uniform(0.4, 60.0), 2)
            stock.append([warehouse, sku, rng.randint(0, 500), cost, received])
    header, body = stock[0], stock[1:]
    rng.shuffle(body)
    return {"Stock": [header, *body], "Catalog": catalog}


def _money(value: float) -> str:
    return f"{value:,.2f}"


def _report() -> tuple[list[dict[str, Any]], list[list[str]]]:
    rng = rng_for("data:report")
    branches = []
    for city in BRANCH_CITIES:
        staff = rng.randint(6, 60)
        branches.append(
            {
                "city": city,
                "region": rng.choice(BRANCH_REGIONS),
                "revenue": round(staff * rng.uniform(60000, 140000), 2),
                "staff": staff,
                "opened": iso(dt.date(1994, 1, 1) + dt.timedelta(days=rng.randint(0, 10500))),
            }
        )
    order = list(range(len(branches)))
    rng.shuffle(order)
    pages = []
    intro = [
        "Northwind Fabrication - Annual Branch Report 2023",
        "",
        "This report lists every branch of the company with its revenue for the",
        "financial year 2023 (in euros), its staff at year end and its opening date.",
        "Figures are audited; revenue excludes value-added tax.",
        "",
    ]
    for p in range(3):
        lines = list(intro) if p == 0 else [f"Branch Report 2023 - page {p + 1}", ""]
        lines.append(f"Section {p + 1}: branches {p * 8 + 1} to {p * 8 + 8}")
        lines.append("")
        for index in order[p * 8 : p * 8 + 8]:
            b = branches[index]
            lines.append(
                f"Branch {b['city']} (region {b['region']}): revenue EUR {_money(b['revenue'])}, "
                f"staff {b['staff']}, opened {b['opened']}."
            )
        lines.append("")
        lines.append(f"Page {p + 1} of 3")
        pages.append(lines)
    return branches, pages


def _matrices() -> dict[str, Any]:
    rng = rng_for("data:matrices")
    from insitu.evals.suite.reference import determinant, rank

    while True:
        a = [[rng.randint(-9, 9) for _ in range(5)] for _ in range(5)]
        if determinant(a) != 0:
            break
    b = [rng.randint(-20, 20) for _ in range(5)]
    while True:
        rows = [[rng.randint(-5, 5) for _ in range(6)] for _ in range(4)]
        if rank(rows) == 4:
            break
    i, j = rng.sample(range(4), 2)
    combo = [2 * x - y for x, y in zip(rows[i], rows[j], strict=True)]
    rows.insert(rng.randint(0, 4), combo)
    m = [[rng.randint(-3, 3) for _ in range(4)] for _ in range(4)]
    return {"A": a, "b": b, "B": rows, "M": m}


def _api() -> dict[str, Any]:
    rng = rng_for("data:api")
    names: list[str] = []
    while len(names) < 30:
        name = f"{rng.choice(ADJECTIVES)} {rng.choice(NOUNS)}"
        if name not in names:
            names.append(name)
    products = []
    for i, name in enumerate(names, start=1):
        currency = rng.choice(["EUR", "EUR", "USD", "GBP"])
        unit = rng.choice(["g", "kg", "lb", "oz"])
        grams = rng.randint(80, 9000)
        value = {
            "g": grams,
            "kg": round(grams / 1000, 3),
            "lb": round(grams / 453.59237, 2),
            "oz": round(grams / 28.349523125, 1),
        }[unit]
        products.append(
            {
                "id": i,
                "name": name,
                "category": rng.choice(API_CATEGORIES),
                "price": {"amount": round(rng.uniform(4, 250), 2), "currency": currency},
                "weight": {"value": value, "unit": unit},
                "stock": rng.randint(0, 60),
            }
        )
    rates = {}
    for day in RATE_DATES:
        rates[day] = {
            "CHF": round(rng.uniform(0.93, 0.97), 4),
            "GBP": round(rng.uniform(0.85, 0.88), 4),
            "JPY": round(rng.uniform(155, 162), 2),
            "USD": round(rng.uniform(1.07, 1.11), 4),
        }
    stations = [
        {"id": 1, "name": "Harbor Point", "unit": "C"},
        {"id": 2, "name": "Ridge Top", "unit": "F"},
        {"id": 3, "name": "Meadow Field", "unit": "C"},
        {"id": 4, "name": "Willow Creek", "unit": "F"},
    ]
    readings: dict[str, list[dict[str, Any]]] = {}
    for station in stations:
        series = []
        base = rng.uniform(-2, 6)
        for n in range(91):
            day = dt.date(2024, 1, 1) + dt.timedelta(days=n)
            celsius = base + n * 0.09 + rng.uniform(-4, 4)
            temp = celsius if station["unit"] == "C" else celsius * 9 / 5 + 32
            series.append({"date": iso(day), "temp": round(temp, 1)})
        readings[str(station["id"])] = series
    customer_names = _unique_names(rng, 25)
    customers = [
        {
            "id": i,
            "name": name,
            "country": rng.choice(["PT", "DE", "FR", "NL", "ES"]),
            "tier": rng.choice(["bronze", "bronze", "silver", "gold"]),
        }
        for i, name in enumerate(customer_names, start=1)
    ]
    dates = sorted(dt.date(2024, 1, 2) + dt.timedelta(days=rng.randint(0, 89)) for _ in range(137))
    orders = []
    for i, day in enumerate(dates, start=1):
        picked = rng.sample(range(1, 31), rng.randint(1, 4))
        orders.append(
            {
                "id": i,
                "customer_id": rng.randint(1, 25),
                "date": iso(day),
                "status": rng.choice(["pending", "shipped", "delivered", "delivered", "cancelled"]),
                "items": [{"product_id": p, "qty": rng.randint(1, 5)} for p in sorted(picked)],
            }
        )
    key = "k-" + "".join(rng.choice("0123456789abcdef") for _ in range(16))
    return {
        "version": VERSION,
        "api_key": key,
        "products": products,
        "rates_base": "EUR",
        "rates": rates,
        "stations": stations,
        "readings": readings,
        "customers": customers,
        "orders": orders,
    }


# --------------------------------------------------------------------------- writers


def _csv_text(rows: list[dict[str, str]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _write_sqlite(path: Path, tables: dict[str, list[tuple[Any, ...]]]) -> None:
    if path.exists():
        path.unlink()
    conn = sqlite3.connect(path)
    try:
        conn.executescript(
            """
            CREATE TABLE authors (id INTEGER PRIMARY KEY, name TEXT NOT NULL, country TEXT);
            CREATE TABLE books (
                id INTEGER PRIMARY KEY, title TEXT NOT NULL,
                author_id INTEGER NOT NULL REFERENCES authors(id),
                year INTEGER, pages INTEGER, genre TEXT);
            CREATE TABLE members (id INTEGER PRIMARY KEY, name TEXT NOT NULL, joined TEXT);
            CREATE TABLE loans (
                id INTEGER PRIMARY KEY,
                book_id INTEGER NOT NULL REFERENCES books(id),
                member_id INTEGER NOT NULL REFERENCES members(id),
                loan_date TEXT NOT NULL, due_date TEXT NOT NULL, return_date TEXT);
            """
        )
        conn.executemany("INSERT INTO authors VALUES (?, ?, ?)", tables["authors"])
        conn.executemany("INSERT INTO books VALUES (?, ?, ?, ?, ?, ?)", tables["books"])
        conn.executemany("INSERT INTO members VALUES (?, ?, ?)", tables["members"])
        conn.executemany("INSERT INTO loans VALUES (?, ?, ?, ?, ?, ?)", tables["loans"])
        conn.commit()
        conn.execute("VACUUM")
    finally:
        conn.close()


def write_files(d: Dataset, files_dir: Path) -> list[str]:
    """Write every data file of the suite into ``files_dir``.

    Returns:
        The file names written, sorted.
    """
    files_dir.mkdir(parents=True, exist_ok=True)
    (files_dir / "sales.csv").write_text(_csv_text(d.sales), "utf-8", newline="")
    (files_dir / "sensors.csv").write_text(_csv_text(d.sensors), "utf-8", newline="")
    (files_dir / "employees.json").write_text(
        json.dumps(d.employees, indent=2, ensure_ascii=False) + "\n", "utf-8"
    )
    (files_dir / "matrices.json").write_text(json.dumps(d.matrices) + "\n", "utf-8")
    (files_dir / "server.log").write_text("\n".join(d.log_lines) + "\n", "utf-8")
    _write_sqlite(files_dir / "library.db", d.library)
    write_xlsx(files_dir / "inventory.xlsx", list(d.inventory.items()))
    write_pdf(files_dir / "report.pdf", d.report_pages, title="Annual Branch Report 2023")
    return sorted(p.name for p in files_dir.iterdir())
