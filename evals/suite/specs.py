"""The tasks of the local suite: each a question and the reference function that answers it.

A task is declared by a function decorated with :func:`task`, which receives the
in-memory :class:`~insitu.evals.suite.data.Dataset` (only to choose the
question's parameters, e.g. a region that exists) and its own random generator,
and returns the question and a reference function. The reference function reads
only the shipped files and the API, through a :class:`Context`.

Phases order the suite: phase 0 uses the early capabilities only; phase 1 adds
``linalg`` and ``xlsx``; phase 2 adds ``pdf``, ``equations``, ``finance``,
``pagination`` and ``auth``. Earlier capabilities recur in every phase, so a
tool library built early can be reused late, and must grow for what is new.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import random
import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from insitu.evals.suite.data import (
    API_CATEGORIES,
    BRANCH_REGIONS,
    DEPARTMENTS,
    GENRES,
    LOCATIONS,
    PRODUCTS,
    RATE_DATES,
    REGIONS,
    WAREHOUSES,
    Dataset,
    rng_for,
)
from insitu.evals.suite.reference import (
    Context,
    add_months,
    bisect,
    determinant,
    fixed,
    full_years,
    inverse,
    least_squares,
    matmul,
    parse_date,
    percentile_linear,
    percentile_nearest_rank,
    rank,
    real_roots,
    solve,
    to_kg,
    unique_max,
    unique_min,
)

Ref = Callable[[Context], str]
Builder = Callable[[Dataset, random.Random], tuple[str, Ref]]

PHASE_CAPABILITIES = {
    0: ("csv", "json", "stats", "dates", "units", "logs", "sqlite", "http_api"),
    1: ("linalg", "xlsx"),
    2: ("pdf", "equations", "finance", "pagination", "auth"),
}


@dataclass(frozen=True)
class Spec:
    """One task of the suite, before its answer is computed.

    Attributes:
        id: Stable identifier (also the name of the declaring function).
        phase: 0, 1 or 2 (early, middle, late).
        capabilities: What solving it takes (tags).
        question: The question, with ``{api_base}`` where the API's URL goes.
        grader: ``"exact"``, ``"numeric"`` or ``"judge"``.
        files: Data files it needs (names in ``files/``).
        places: For numeric answers, the decimals asked for (None: an integer).
        ref: Computes the answer text from a :class:`Context`.
    """

    id: str
    phase: int
    capabilities: tuple[str, ...]
    question: str
    grader: str
    files: tuple[str, ...]
    places: int | None
    ref: Ref

    @property
    def tolerance(self) -> float | None:
        """Relative tolerance of a numeric answer."""
        if self.grader != "numeric":
            return None
        return 0.0 if self.places is None else 1e-6

    @property
    def abs_tol(self) -> float | None:
        """Absolute tolerance of a numeric answer: one unit in the last place asked for."""
        if self.grader != "numeric":
            return None
        return 0.0 if self.places is None else 10.0**-self.places


_REGISTRY: list[tuple[str, int, tuple[str, ...], tuple[str, ...], str, int | None, Builder]] = []


def task(
    phase: int,
    capabilities: tuple[str, ...],
    *,
    files: tuple[str, ...] = (),
    grader: str = "numeric",
    places: int | None = None,
) -> Callable[[Builder], Builder]:
    """Declare a task (the decorated function's name is its id)."""

    def register(builder: Builder) -> Builder:
        _REGISTRY.append((builder.__name__, phase, capabilities, files, grader, places, builder))
        return builder

    return register


def _answer_format(grader: str, places: int | None) -> str:
    if grader != "numeric":
        return ""
    if places is None:
        return " Answer with the integer only."
    unit = "place" if places == 1 else "places"
    return f" Answer with the number rounded to {places} decimal {unit}."


def make_specs(data: Dataset) -> list[Spec]:
    """Build every task's spec, in suite order (phase, then a fixed shuffle within the phase)."""
    specs = []
    for name, phase, caps, files, grader, places, builder in _REGISTRY:
        question, ref = builder(data, rng_for(f"task:{name}"))
        specs.append(
            Spec(
                id=name,
                phase=phase,
                capabilities=caps,
                question=question + _answer_format(grader, places),
                grader=grader,
                files=files,
                places=places,
                ref=ref,
            )
        )
    ordered: list[Spec] = []
    for phase in sorted(PHASE_CAPABILITIES):
        group = [s for s in specs if s.phase == phase]
        rng_for(f"order:{phase}").shuffle(group)
        ordered.extend(group)
    return ordered


# --------------------------------------------------------------------------- shared parsing

SALES = "sales.csv"
SENSORS = "sensors.csv"
EMPLOYEES = "employees.json"
MATRICES = "matrices.json"
LOG = "server.log"
LIBRARY = "library.db"
INVENTORY = "inventory.xlsx"
REPORT = "report.pdf"

REVENUE_RULE = "the revenue of an order is units × unit_price × (1 − discount_pct / 100)"
MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
_REQUEST = re.compile(
    r"^(?P<ts>\S+) (?P<level>[A-Z]+) request method=(?P<method>\S+) path=(?P<path>\S+) "
    r"status=(?P<status>\d+) latency_ms=(?P<latency>\d+) user=(?P<user>\S+)$"
)
_BRANCH = re.compile(
    r"^Branch (?P<city>.+) \(region (?P<region>\w+)\): revenue EUR (?P<revenue>[\d,]+\.\d\d), "
    r"staff (?P<staff>\d+), opened (?P<opened>\d{4}-\d{2}-\d{2})\.$"
)


def revenue(row: dict[str, str]) -> float:
    """Revenue of one sales row."""
    return int(row["units"]) * float(row["unit_price"]) * (1 - int(row["discount_pct"]) / 100)


def requests(ctx: Context) -> list[dict[str, Any]]:
    """The request lines of the access log, parsed."""
    out = []
    for line in ctx.lines(LOG):
        match = _REQUEST.match(line)
        if match:
            item: dict[str, Any] = match.groupdict()
            item["status"] = int(item["status"])
            item["latency"] = int(item["latency"])
            item["time"] = dt.datetime.strptime(item["ts"], "%Y-%m-%dT%H:%M:%SZ")
            out.append(item)
    return out


def employees(ctx: Context) -> list[dict[str, Any]]:
    """Every employee, with its department name added."""
    return [
        {**e, "department": dept["name"]}
        for dept in ctx.json(EMPLOYEES)["departments"]
        for e in dept["employees"]
    ]


def branches(ctx: Context) -> list[dict[str, Any]]:
    """The branch lines of the PDF report, parsed."""
    out = []
    for line in ctx.pdf_lines(REPORT):
        match = _BRANCH.match(line)
        if match:
            b: dict[str, Any] = match.groupdict()
            b["revenue"] = float(b["revenue"].replace(",", ""))
            b["staff"] = int(b["staff"])
            b["opened"] = parse_date(b["opened"])
            out.append(b)
    return out


def numbers_text(values: list[Any]) -> str:
    """Render numbers as a comma-separated list."""
    return ", ".join(str(v) for v in values)


def ordinal(n: int) -> str:
    """1 -> first, ..."""
    return ["first", "second", "third", "fourth", "fifth"][n - 1]


def polynomial_text(coefficients: list[int]) -> str:
    """Render integer coefficients (highest degree first) as ``x^4 - 3x^2 + ...``."""
    degree = len(coefficients) - 1
    terms = []
    for i, c in enumerate(coefficients):
        power = degree - i
        if c == 0:
            continue
        magnitude = abs(c)
        body = "" if magnitude == 1 and power else str(magnitude)
        if power >= 1:
            body += "x" if power == 1 else f"x^{power}"
        sign = "-" if c < 0 else "+"
        terms.append((sign, body))
    first_sign, first_body = terms[0]
    text = ("-" if first_sign == "-" else "") + first_body
    for sign, body in terms[1:]:
        text += f" {sign} {body}"
    return text


def api_intro() -> str:
    return "A JSON API runs at {api_base}."


# =========================================================================== phase 0


@task(0, ("csv",), files=(SALES,), places=2)
def csv_region_revenue(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    region = rng.choice(REGIONS)

    def ref(ctx: Context) -> str:
        return fixed(sum(revenue(r) for r in ctx.csv(SALES) if r["region"] == region), 2)

    return (
        f"sales.csv lists sales orders; {REVENUE_RULE}. "
        f"What is the total revenue of all orders in the {region} region?",
        ref,
    )


@task(0, ("csv",), files=(SALES,), grader="exact")
def csv_top_product_units(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        units: Counter[str] = Counter()
        for r in ctx.csv(SALES):
            units[r["product"]] += int(r["units"])
        return unique_max(units)

    return (
        "sales.csv lists sales orders. Which product sold the most units in total over all "
        "orders? Answer with the product name only.",
        ref,
    )


@task(0, ("csv",), files=(SALES,))
def csv_orders_above(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    threshold = rng.choice([300, 400, 500])

    def ref(ctx: Context) -> str:
        return str(sum(1 for r in ctx.csv(SALES) if revenue(r) > threshold))

    return (
        f"sales.csv lists sales orders; {REVENUE_RULE}. How many orders have a revenue "
        f"strictly greater than {threshold}?",
        ref,
    )


@task(0, ("csv", "dates"), files=(SALES,), grader="exact")
def csv_best_month(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        totals: defaultdict[int, float] = defaultdict(float)
        for r in ctx.csv(SALES):
            totals[parse_date(r["date"]).month] += revenue(r)
        return MONTHS[unique_max(totals) - 1]

    return (
        f"sales.csv lists sales orders of 2023; {REVENUE_RULE}. Which calendar month had the "
        "highest total revenue? Answer with the month's English name, e.g. March.",
        ref,
    )


@task(0, ("json",), files=(EMPLOYEES,))
def json_dept_headcount(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    dept = rng.choice(DEPARTMENTS)

    def ref(ctx: Context) -> str:
        return str(sum(1 for e in employees(ctx) if e["department"] == dept))

    return (
        f"employees.json describes a company. How many employees does the {dept} department have?",
        ref,
    )


@task(0, ("json",), files=(EMPLOYEES,), grader="exact")
def json_top_paid_skill(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    counts = Counter(
        s for dept in d.employees["departments"] for e in dept["employees"] for s in e["skills"]
    )
    skill = rng.choice(sorted(s for s, n in counts.items() if n >= 4))

    def ref(ctx: Context) -> str:
        return unique_max({e["name"]: e["salary"] for e in employees(ctx) if skill in e["skills"]})

    return (
        f'employees.json describes a company. Among the employees who list the skill "{skill}", '
        "who has the highest salary? Answer with the full name.",
        ref,
    )


@task(0, ("json",), files=(EMPLOYEES,))
def json_country_payroll(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    country = rng.choice(sorted({c for _, c in LOCATIONS}))

    def ref(ctx: Context) -> str:
        return str(sum(e["salary"] for e in employees(ctx) if e["location"]["country"] == country))

    return (
        "employees.json describes a company (salaries are annual, in EUR). What is the total "
        f"annual salary of all employees located in {country}?",
        ref,
    )


@task(0, ("json", "stats"), files=(EMPLOYEES,), places=1)
def json_dept_median_salary(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    dept = rng.choice(DEPARTMENTS)

    def ref(ctx: Context) -> str:
        salaries = [e["salary"] for e in employees(ctx) if e["department"] == dept]
        return fixed(statistics.median(salaries), 1)

    return (
        f"employees.json describes a company. What is the median salary of the employees of "
        f"the {dept} department?",
        ref,
    )


@task(0, ("stats",), places=4)
def stats_sample_stdev(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    values = [round(rng.uniform(10, 90), 1) for _ in range(30)]

    def ref(ctx: Context) -> str:
        return fixed(statistics.stdev(values), 4)

    return (
        "What is the sample standard deviation (n − 1 in the denominator) of these numbers: "
        f"{numbers_text(values)}?",
        ref,
    )


@task(0, ("stats",), places=2)
def stats_percentile(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    values = [rng.randint(1, 500) for _ in range(25)]
    p = rng.choice([10, 35, 65, 90])

    def ref(ctx: Context) -> str:
        return fixed(percentile_linear(values, p), 2)

    return (
        f"What is the {p}th percentile of these numbers, computed by linear interpolation "
        "between closest ranks (the default method of numpy.percentile): "
        f"{numbers_text(values)}?",
        ref,
    )


@task(0, ("stats", "csv"), files=(SENSORS,), places=4)
def stats_sensor_correlation(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        rows = [r for r in ctx.csv(SENSORS) if r["power_w"]]
        x = [float(r["temperature_c"]) for r in rows]
        y = [float(r["power_w"]) for r in rows]
        return fixed(statistics.correlation(x, y), 4)

    return (
        "sensors.csv holds hourly sensor readings. Using every row whose power_w is not empty, "
        "what is the Pearson correlation coefficient between temperature_c and power_w?",
        ref,
    )


@task(0, ("dates",))
def dates_days_between(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    start = dt.date(1990, 1, 1) + dt.timedelta(days=rng.randint(0, 14000))
    end = start + dt.timedelta(days=rng.randint(400, 20000))

    def ref(ctx: Context) -> str:
        return str((end - start).days)

    return (
        f"How many days are there from {start.isoformat()} to {end.isoformat()} (the number of "
        "days to add to the first date to reach the second)?",
        ref,
    )


@task(0, ("dates",), grader="exact")
def dates_weekday(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    day = dt.date(1800, 1, 1) + dt.timedelta(days=rng.randint(0, 146000))

    def ref(ctx: Context) -> str:
        return WEEKDAYS[day.weekday()]

    return (
        f"On which day of the week is {day.isoformat()} (Gregorian calendar)? Answer with the "
        "English weekday name.",
        ref,
    )


@task(0, ("dates",), grader="exact")
def dates_add_months(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    while True:
        year, month, day = rng.randint(1995, 2040), rng.randint(1, 12), rng.randint(28, 31)
        try:
            start = dt.date(year, month, day)
            break
        except ValueError:
            continue
    months = rng.randint(5, 40)

    def ref(ctx: Context) -> str:
        return add_months(start, months).isoformat()

    return (
        f"What date is {months} calendar months after {start.isoformat()}? If the day of the "
        "month does not exist in the resulting month, use that month's last day. Answer as "
        "YYYY-MM-DD.",
        ref,
    )


@task(0, ("units",), places=3)
def units_miles_km(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    miles = round(rng.uniform(3, 500), 2)

    def ref(ctx: Context) -> str:
        return fixed(miles * 1.609344, 3)

    return f"Convert {miles} miles to kilometres (1 mile = 1.609344 km).", ref


@task(0, ("units",), places=2)
def units_fahrenheit_celsius(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    fahrenheit = round(rng.uniform(-40, 250), 1)

    def ref(ctx: Context) -> str:
        return fixed((fahrenheit - 32) * 5 / 9, 2)

    return f"Convert {fahrenheit} °F to degrees Celsius.", ref


@task(0, ("units",), places=2)
def units_lb_oz_grams(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    pounds, ounces = rng.randint(1, 30), rng.randint(1, 15)

    def ref(ctx: Context) -> str:
        return fixed((pounds + ounces / 16) * 453.59237, 2)

    return (
        f"How many grams is {pounds} lb {ounces} oz (1 lb = 453.59237 g = 16 oz)?",
        ref,
    )


@task(0, ("logs",), files=(LOG,))
def logs_count_5xx(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return str(sum(1 for r in requests(ctx) if 500 <= r["status"] <= 599))

    return (
        "server.log is a web server's log; request lines carry method, path, status, "
        "latency_ms and user fields. How many requests were answered with a 5xx status code?",
        ref,
    )


@task(0, ("logs",), files=(LOG,), grader="exact")
def logs_top_path(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return unique_max(Counter(r["path"] for r in requests(ctx)))

    return (
        "server.log is a web server's log. Which request path received the most requests? "
        "Answer with the path, e.g. /api/example.",
        ref,
    )


@task(0, ("logs", "stats"), files=(LOG,))
def logs_p95_latency(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    path = rng.choice(["/api/items", "/api/orders", "/api/search", "/api/users"])

    def ref(ctx: Context) -> str:
        latencies = [r["latency"] for r in requests(ctx) if r["path"] == path]
        return str(percentile_nearest_rank(latencies, 95))

    return (
        "server.log is a web server's log. What is the 95th percentile of latency_ms over the "
        f"requests to {path}, by the nearest-rank method (the ⌈0.95·n⌉-th smallest value)?",
        ref,
    )


@task(0, ("sqlite",), files=(LIBRARY,))
def sql_genre_count(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    genre, year = rng.choice(GENRES), rng.randint(1970, 2010)

    def ref(ctx: Context) -> str:
        rows = ctx.sql(
            LIBRARY, "SELECT COUNT(*) FROM books WHERE genre = ? AND year < ?", (genre, year)
        )
        return str(rows[0][0])

    return (
        f"library.db is an SQLite database of a lending library. How many books of genre "
        f"'{genre}' were published before {year}?",
        ref,
    )


@task(0, ("sqlite",), files=(LIBRARY,), grader="exact")
def sql_author_most_loans(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        rows = ctx.sql(
            LIBRARY,
            "SELECT a.name, COUNT(*) FROM loans l JOIN books b ON b.id = l.book_id "
            "JOIN authors a ON a.id = b.author_id GROUP BY a.id",
        )
        return unique_max(dict(rows))

    return (
        "library.db is an SQLite database of a lending library. Whose books were borrowed most "
        "often (every row of the loans table is one borrowing)? Answer with the author's name.",
        ref,
    )


@task(0, ("sqlite", "dates"), files=(LIBRARY,))
def sql_overdue_on_date(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    day = (dt.date(2023, 6, 1) + dt.timedelta(days=rng.randint(0, 360))).isoformat()

    def ref(ctx: Context) -> str:
        rows = ctx.sql(
            LIBRARY,
            "SELECT COUNT(*) FROM loans WHERE loan_date <= ? AND due_date < ? "
            "AND (return_date IS NULL OR return_date > ?)",
            (day, day, day),
        )
        return str(rows[0][0])

    return (
        "library.db is an SQLite database of a lending library. A loan is overdue on a day D if "
        "it started on or before D, its due date is before D, and it had not been returned by D "
        f"(return_date empty or after D). How many loans were overdue on {day}?",
        ref,
    )


@task(0, ("http_api",), places=2)
def api_product_price(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    product = rng.randint(1, len(d.api["products"]))

    def ref(ctx: Context) -> str:
        return fixed(ctx.api(f"/products/{product}")["price"]["amount"], 2)

    return (
        f"{api_intro()} GET {{api_base}}/products/<id> describes one product. What is the price "
        f"amount of product {product}, in the product's own currency?",
        ref,
    )


@task(0, ("http_api",))
def api_low_stock_count(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    low = Counter(p["category"] for p in d.api["products"] if p["stock"] < 10)
    category = rng.choice(sorted(c for c in API_CATEGORIES if low[c] >= 2))

    def ref(ctx: Context) -> str:
        items = ctx.api("/products")["items"]
        return str(sum(1 for p in items if p["category"] == category and p["stock"] < 10))

    return (
        f"{api_intro()} GET {{api_base}}/products lists products. How many products of "
        f"category '{category}' have a stock below 10?",
        ref,
    )


@task(0, ("http_api",), places=6)
def api_cross_rate(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    day = rng.choice(RATE_DATES)

    def ref(ctx: Context) -> str:
        rates = ctx.api(f"/rates?date={day}")["rates"]
        return fixed(rates["GBP"] / rates["USD"], 6)

    return (
        f"{api_intro()} GET {{api_base}}/rates?date={day} gives exchange rates as units of each "
        "currency per 1 EUR. By those rates, how many British pounds (GBP) is 1 US dollar (USD) "
        "worth?",
        ref,
    )


# =========================================================================== phase 1


@task(1, ("csv", "stats"), files=(SALES,), places=3)
def csv_product_mean_units(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    product = rng.choice(list(PRODUCTS))

    def ref(ctx: Context) -> str:
        return fixed(
            statistics.fmean(int(r["units"]) for r in ctx.csv(SALES) if r["product"] == product), 3
        )

    return (
        f"sales.csv lists sales orders. What is the mean number of units per order of "
        f"product {product}?",
        ref,
    )


@task(1, ("csv", "stats", "dates"), files=(SALES,), places=2)
def csv_quarter_median_revenue(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    region, quarter = rng.choice(REGIONS), rng.randint(1, 4)

    def ref(ctx: Context) -> str:
        values = [
            revenue(r)
            for r in ctx.csv(SALES)
            if r["region"] == region and (parse_date(r["date"]).month - 1) // 3 + 1 == quarter
        ]
        return fixed(statistics.median(values), 2)

    return (
        f"sales.csv lists sales orders of 2023; {REVENUE_RULE}. What is the median order "
        f"revenue of the {region} region in quarter Q{quarter} of 2023?",
        ref,
    )


@task(1, ("json", "dates"), files=(EMPLOYEES,))
def json_tenure_count(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    years = rng.choice([5, 8, 10, 12])
    on = dt.date(2024, 6, 30)

    def ref(ctx: Context) -> str:
        return str(
            sum(1 for e in employees(ctx) if full_years(parse_date(e["hired"]), on) >= years)
        )

    return (
        f"employees.json describes a company. How many employees had completed at least {years} "
        f"full years of service on {on.isoformat()}, counting from their hired date?",
        ref,
    )


@task(1, ("json",), files=(EMPLOYEES,))
def json_chain_depth(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    staff = {e["id"]: e for dept in d.employees["departments"] for e in dept["employees"]}

    def depth(emp_id: str) -> int:
        count = 0
        while staff[emp_id]["manager_id"]:
            emp_id = staff[emp_id]["manager_id"]
            count += 1
        return count

    name = rng.choice(sorted(e["name"] for e in staff.values() if depth(e["id"]) >= 3))

    def ref(ctx: Context) -> str:
        people = {e["id"]: e for e in employees(ctx)}
        current = next(e for e in people.values() if e["name"] == name)
        count = 0
        while current["manager_id"]:
            current = people[current["manager_id"]]
            count += 1
        return str(count)

    return (
        "employees.json describes a company; manager_id names each employee's manager. "
        f"Following manager_id links upward from {name}, how many managers are above them, up "
        "to and including the person who has no manager?",
        ref,
    )


@task(1, ("stats", "csv"), files=(SENSORS,), places=4)
def stats_sensor_slope(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    sensor = rng.choice("ABC")

    def ref(ctx: Context) -> str:
        rows = [r for r in ctx.csv(SENSORS) if r["power_w"] and r["sensor"] == sensor]
        x = [float(r["temperature_c"]) for r in rows]
        y = [float(r["power_w"]) for r in rows]
        return fixed(statistics.linear_regression(x, y).slope, 4)

    return (
        f"sensors.csv holds hourly sensor readings. For sensor {sensor}, using the rows whose "
        "power_w is not empty, what is the slope of the ordinary least-squares line predicting "
        "power_w from temperature_c?",
        ref,
    )


@task(1, ("stats", "csv"), files=(SENSORS,))
def stats_humidity_outliers(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        values = [float(r["humidity"]) for r in ctx.csv(SENSORS)]
        mean, sd = statistics.fmean(values), statistics.pstdev(values)
        return str(sum(1 for v in values if abs(v - mean) / sd > 2))

    return (
        "sensors.csv holds hourly sensor readings. How many humidity values lie more than 2 "
        "population standard deviations away from the mean humidity (over all rows)?",
        ref,
    )


@task(1, ("stats",), places=4)
def stats_weighted_mean(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    values = [round(rng.uniform(1, 100), 2) for _ in range(12)]
    weights = [rng.randint(1, 9) for _ in range(12)]

    def ref(ctx: Context) -> str:
        total = sum(v * w for v, w in zip(values, weights, strict=True))
        return fixed(total / sum(weights), 4)

    return (
        f"What is the weighted mean of the values {numbers_text(values)} with the respective "
        f"weights {numbers_text(weights)}?",
        ref,
    )


@task(1, ("dates",))
def dates_business_days(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    start = dt.date(2025, 1, 1) + dt.timedelta(days=rng.randint(0, 900))
    end = start + dt.timedelta(days=rng.randint(30, 120))
    span = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
    holidays = sorted(rng.sample([x for x in span if x.weekday() < 5], 3))

    def ref(ctx: Context) -> str:
        days = [start + dt.timedelta(days=i) for i in range((end - start).days + 1)]
        return str(sum(1 for x in days if x.weekday() < 5 and x not in holidays))

    return (
        f"How many business days (Monday to Friday) are there from {start.isoformat()} to "
        f"{end.isoformat()}, both included, not counting these holidays: "
        f"{', '.join(h.isoformat() for h in holidays)}?",
        ref,
    )


@task(1, ("dates",))
def dates_iso_week(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    year = rng.randint(2000, 2040)
    day = dt.date(year, 12, 28) + dt.timedelta(days=rng.randint(0, 7))

    def ref(ctx: Context) -> str:
        return str(day.isocalendar()[1])

    return f"What is the ISO 8601 week number of {day.isoformat()}?", ref


@task(1, ("dates",))
def dates_unix_timestamp(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    hours = rng.choice([-7, -3, 2, 5, 9])
    offset = dt.timezone(dt.timedelta(hours=hours))
    when = dt.datetime(2000, 1, 1, tzinfo=offset) + dt.timedelta(seconds=rng.randint(0, 10**9))
    label = f"UTC{hours:+03d}:00"

    def ref(ctx: Context) -> str:
        return str(int(when.timestamp()))

    return (
        f"What is the Unix timestamp (seconds since 1970-01-01T00:00:00Z) of "
        f"{when.strftime('%Y-%m-%d %H:%M:%S')} at {label}?",
        ref,
    )


@task(1, ("units",), places=3)
def units_fuel_economy(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    mpg = round(rng.uniform(12, 60), 1)

    def ref(ctx: Context) -> str:
        return fixed(100 * 3.785411784 / (mpg * 1.609344), 3)

    return (
        f"A car does {mpg} miles per US gallon. What is its consumption in litres per 100 km "
        "(1 US gallon = 3.785411784 L, 1 mile = 1.609344 km)?",
        ref,
    )


@task(1, ("http_api", "units"), places=3)
def api_category_weight(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    category = rng.choice(API_CATEGORIES)

    def ref(ctx: Context) -> str:
        items = ctx.api(f"/products?category={category}")["items"]
        return fixed(
            sum(to_kg(p["weight"]["value"], p["weight"]["unit"]) * p["stock"] for p in items), 3
        )

    return (
        f"{api_intro()} GET {{api_base}}/products lists products with their unit weight (in g, "
        "kg, lb or oz; 1 lb = 0.45359237 kg, 1 oz = 28.349523125 g) and stock. What is the total "
        f"weight in kilograms of all units in stock of the products of category '{category}'?",
        ref,
    )


@task(1, ("http_api", "units", "stats"), places=2)
def api_station_mean_celsius(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    station = rng.choice([s for s in d.api["stations"] if s["unit"] == "F"])
    start = dt.date(2024, 1, 1) + dt.timedelta(days=rng.randint(0, 40))
    end = start + dt.timedelta(days=rng.randint(10, 40))

    def ref(ctx: Context) -> str:
        body = ctx.api(f"/stations/{station['id']}/readings?from={start}&to={end}")
        temps = [r["temp"] for r in body["readings"]]
        mean = statistics.fmean(temps)
        return fixed((mean - 32) * 5 / 9 if body["unit"] == "F" else mean, 2)

    return (
        f"{api_intro()} GET {{api_base}}/stations lists weather stations and "
        "{api_base}/stations/<id>/readings?from=YYYY-MM-DD&to=YYYY-MM-DD their daily "
        "temperatures (in the station's unit). What is the mean daily temperature, in degrees "
        f"Celsius, of station '{station['name']}' from {start} to {end} (both included)?",
        ref,
    )


@task(1, ("http_api", "units"), grader="exact")
def api_cheapest_in_eur(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    day = rng.choice(RATE_DATES)
    category = rng.choice(API_CATEGORIES)

    def ref(ctx: Context) -> str:
        rates = ctx.eur_rates[day]
        items = ctx.api(f"/products?category={category}")["items"]
        return unique_min(
            {p["name"]: p["price"]["amount"] / rates[p["price"]["currency"]] for p in items}
        )

    return (
        f"{api_intro()} GET {{api_base}}/products lists products priced in various currencies, "
        f"and {{api_base}}/rates?date={day} gives units of each currency per 1 EUR. Once every "
        f"price is converted to EUR at those rates, which product of category '{category}' is "
        "the cheapest? Answer with the product name.",
        ref,
    )


@task(1, ("http_api", "dates"), grader="exact")
def api_warmest_day(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    choices = []
    for station in d.api["stations"]:
        for month in (1, 2, 3):
            temps = [
                r["temp"]
                for r in d.api["readings"][str(station["id"])]
                if int(r["date"][5:7]) == month
            ]
            if temps.count(max(temps)) == 1:
                choices.append((station, month))
    station, month = rng.choice(choices)

    def ref(ctx: Context) -> str:
        readings = ctx.api(f"/stations/{station['id']}/readings")["readings"]
        return unique_max(
            {r["date"]: r["temp"] for r in readings if parse_date(r["date"]).month == month}
        )

    return (
        f"{api_intro()} GET {{api_base}}/stations lists weather stations and "
        "{api_base}/stations/<id>/readings their daily temperatures. On which date of "
        f"{MONTHS[month - 1]} 2024 did station '{station['name']}' record its highest "
        "temperature? Answer as YYYY-MM-DD.",
        ref,
    )


@task(1, ("logs", "dates"), files=(LOG,))
def logs_busiest_hour(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return str(unique_max(Counter(r["time"].hour for r in requests(ctx))))

    return (
        "server.log is a web server's log (timestamps in UTC). During which hour of the day "
        "(0–23, UTC) were the most requests made?",
        ref,
    )


@task(1, ("logs",), files=(LOG,))
def logs_users_4xx(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        users = {r["user"] for r in requests(ctx) if 400 <= r["status"] <= 499 and r["user"] != "-"}
        return str(len(users))

    return (
        "server.log is a web server's log. How many distinct users (the user field; '-' is no "
        "user) received at least one response with a 4xx status code?",
        ref,
    )


@task(1, ("logs",), files=(LOG,))
def logs_timeout_errors(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return str(
            sum(
                1
                for line in ctx.lines(LOG)
                if line.split(" ")[1] == "ERROR" and "timeout" in line.lower()
            )
        )

    return (
        "server.log is a web server's log; the second field of every line is its level. How "
        "many ERROR lines mention a timeout (the word 'timeout' in any letter case)?",
        ref,
    )


@task(1, ("logs",), files=(LOG,), grader="judge")
def logs_top3_error_paths(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        counts = Counter(r["path"] for r in requests(ctx) if r["status"] >= 500)
        ranked = counts.most_common()
        values = [n for _, n in ranked]
        if len(set(values[:4])) < 4:
            raise ValueError(f"ambiguous top three: {ranked[:4]}")
        return ", ".join(f"{p} ({n})" for p, n in ranked[:3])

    return (
        "server.log is a web server's log. Which three request paths had the most responses "
        "with a status of 500 or more? List them from most to fewest, with their counts.",
        ref,
    )


@task(1, ("sqlite", "dates", "stats"), files=(LIBRARY,), places=2)
def sql_avg_loan_days(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        rows = ctx.sql(
            LIBRARY, "SELECT loan_date, return_date FROM loans WHERE return_date IS NOT NULL"
        )
        return fixed(statistics.fmean((parse_date(b) - parse_date(a)).days for a, b in rows), 2)

    return (
        "library.db is an SQLite database of a lending library. Over the loans that have been "
        "returned, what is the mean number of days from loan_date to return_date?",
        ref,
    )


@task(1, ("sqlite",), files=(LIBRARY,), grader="exact")
def sql_member_most_pages(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        rows = ctx.sql(
            LIBRARY,
            "SELECT m.name, SUM(b.pages) FROM loans l JOIN books b ON b.id = l.book_id "
            "JOIN members m ON m.id = l.member_id GROUP BY m.id",
        )
        return unique_max(dict(rows))

    return (
        "library.db is an SQLite database of a lending library. Which member borrowed the most "
        "pages in total (the pages of every book of every loan, counting repeated loans)? "
        "Answer with the member's name.",
        ref,
    )


@task(1, ("linalg",))
def linalg_det_inline(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    while True:
        m = [[rng.randint(-6, 6) for _ in range(4)] for _ in range(4)]
        if determinant(m) != 0:
            break

    def ref(ctx: Context) -> str:
        return str(int(determinant(m)))

    return f"What is the determinant of the 4×4 matrix (rows listed in order) {m}?", ref


@task(1, ("linalg",), places=6)
def linalg_solve_inline(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    while True:
        a = [[rng.randint(-9, 9) for _ in range(3)] for _ in range(3)]
        if determinant(a) != 0:
            break
    b = [rng.randint(-30, 30) for _ in range(3)]
    names = ["x", "y", "z"]
    equations = "; ".join(
        " + ".join(f"{c}*{n}" for c, n in zip(row, names, strict=True)).replace("+ -", "- ")
        + f" = {rhs}"
        for row, rhs in zip(a, b, strict=True)
    )

    def ref(ctx: Context) -> str:
        return fixed(solve(a, b)[1], 6)

    return f"Solve the linear system {equations}. What is the value of y?", ref


@task(1, ("linalg", "json"), files=(MATRICES,), places=6)
def linalg_solve_file(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    k = rng.randint(1, 5)

    def ref(ctx: Context) -> str:
        m = ctx.json(MATRICES)
        return fixed(solve(m["A"], m["b"])[k - 1], 6)

    return (
        "matrices.json holds a square matrix A (a list of rows) and a vector b. Solve A x = b; "
        f"what is the component x_{k} of the solution (components numbered from 1)?",
        ref,
    )


@task(1, ("linalg", "json"), files=(MATRICES,), places=6)
def linalg_inverse_entry(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    i, j = rng.randint(1, 5), rng.randint(1, 5)

    def ref(ctx: Context) -> str:
        return fixed(inverse(ctx.json(MATRICES)["A"])[i - 1][j - 1], 6)

    return (
        "matrices.json holds a square matrix A (a list of rows). What is the entry in row "
        f"{i}, column {j} (numbered from 1) of the inverse of A?",
        ref,
    )


@task(1, ("xlsx",), files=(INVENTORY,), places=2)
def xlsx_warehouse_value(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    warehouse = rng.choice(WAREHOUSES)

    def ref(ctx: Context) -> str:
        rows = [r for r in ctx.xlsx(INVENTORY, "Stock") if r["warehouse"] == warehouse]
        return fixed(sum(r["qty"] * r["unit_cost"] for r in rows), 2)

    return (
        "inventory.xlsx has a sheet Stock (one row per stock line) and a sheet Catalog. What is "
        f"the total value (qty × unit_cost) of the stock held in warehouse {warehouse}?",
        ref,
    )


@task(1, ("xlsx",), files=(INVENTORY,))
def xlsx_below_reorder(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        totals: Counter[str] = Counter()
        for r in ctx.xlsx(INVENTORY, "Stock"):
            totals[r["sku"]] += r["qty"]
        catalog = ctx.xlsx(INVENTORY, "Catalog")
        return str(sum(1 for c in catalog if totals[c["sku"]] < c["reorder_level"]))

    return (
        "inventory.xlsx has a sheet Stock (warehouse, sku, qty, ...) and a sheet Catalog (sku, "
        "..., reorder_level). How many SKUs of the catalog have a total quantity, summed over "
        "all warehouses, below their reorder level?",
        ref,
    )


@task(1, ("xlsx",), files=(INVENTORY,), grader="exact")
def xlsx_category_qty(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        category = {c["sku"]: c["category"] for c in ctx.xlsx(INVENTORY, "Catalog")}
        totals: Counter[str] = Counter()
        for r in ctx.xlsx(INVENTORY, "Stock"):
            totals[category[r["sku"]]] += r["qty"]
        return unique_max(totals)

    return (
        "inventory.xlsx has a sheet Stock (warehouse, sku, qty, ...) and a sheet Catalog (sku, "
        "description, category, ...). Which category has the largest total quantity in stock? "
        "Answer with the category name.",
        ref,
    )


# =========================================================================== phase 2


@task(2, ("csv",), files=(SALES,), grader="judge")
def csv_top3_products_revenue(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        totals: defaultdict[str, float] = defaultdict(float)
        for r in ctx.csv(SALES):
            totals[r["product"]] += revenue(r)
        ranked = sorted(totals.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{p} ({fixed(v, 2)})" for p, v in ranked[:3])

    return (
        f"sales.csv lists sales orders; {REVENUE_RULE}. Which three products brought the most "
        "revenue? List them from highest to lowest, with their revenue.",
        ref,
    )


@task(2, ("csv", "dates"), files=(SALES,), grader="exact")
def csv_weekday_revenue(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    region = rng.choice(REGIONS)

    def ref(ctx: Context) -> str:
        totals: defaultdict[int, float] = defaultdict(float)
        for r in ctx.csv(SALES):
            if r["region"] == region:
                totals[parse_date(r["date"]).weekday()] += revenue(r)
        return WEEKDAYS[unique_max(totals)]

    return (
        f"sales.csv lists sales orders; {REVENUE_RULE}. In the {region} region, on which day of "
        "the week was the total revenue highest? Answer with the English weekday name.",
        ref,
    )


@task(2, ("csv", "http_api"), files=(SALES,), places=2)
def csv_region_revenue_usd(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    region, day = rng.choice(REGIONS), RATE_DATES[0]

    def ref(ctx: Context) -> str:
        total = sum(revenue(r) for r in ctx.csv(SALES) if r["region"] == region)
        return fixed(total * ctx.api(f"/rates?date={day}")["rates"]["USD"], 2)

    return (
        f"sales.csv lists sales orders with prices in EUR; {REVENUE_RULE}. {api_intro()} "
        f"GET {{api_base}}/rates?date={day} gives units of each currency per 1 EUR. What is the "
        f"total revenue of the {region} region in US dollars at that date's rate?",
        ref,
    )


@task(2, ("json", "http_api"), files=(EMPLOYEES,), places=2)
def json_payroll_usd(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    dept, day = rng.choice(DEPARTMENTS), rng.choice(RATE_DATES)
    currency = rng.choice(["USD", "GBP", "CHF"])

    def ref(ctx: Context) -> str:
        total = sum(e["salary"] for e in employees(ctx) if e["department"] == dept)
        return fixed(total * ctx.api(f"/rates?date={day}")["rates"][currency], 2)

    return (
        f"employees.json describes a company (salaries are annual, in EUR). {api_intro()} "
        f"GET {{api_base}}/rates?date={day} gives units of each currency per 1 EUR. What is the "
        f"total annual salary of the {dept} department in {currency} at that date's rate?",
        ref,
    )


@task(2, ("json", "stats"), files=(EMPLOYEES,), places=2)
def json_skill_salary_stdev(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    counts = Counter(
        s for dept in d.employees["departments"] for e in dept["employees"] for s in e["skills"]
    )
    skill = rng.choice(sorted(s for s, n in counts.items() if n >= 5))

    def ref(ctx: Context) -> str:
        return fixed(
            statistics.pstdev(e["salary"] for e in employees(ctx) if skill in e["skills"]), 2
        )

    return (
        "employees.json describes a company. What is the population standard deviation of the "
        f'salaries of the employees who list the skill "{skill}"?',
        ref,
    )


@task(2, ("stats",), places=4)
def stats_geometric_mean(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    values = [round(rng.uniform(0.5, 40), 2) for _ in range(15)]

    def ref(ctx: Context) -> str:
        return fixed(math.exp(math.fsum(math.log(v) for v in values) / len(values)), 4)

    return f"What is the geometric mean of {numbers_text(values)}?", ref


@task(2, ("stats", "csv"), files=(SENSORS,), places=3)
def stats_moving_average_max(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    sensor, window = rng.choice("ABC"), rng.choice([4, 6, 8])

    def ref(ctx: Context) -> str:
        rows = sorted(
            (r for r in ctx.csv(SENSORS) if r["sensor"] == sensor), key=lambda r: r["timestamp"]
        )
        temps = [float(r["temperature_c"]) for r in rows]
        averages = [statistics.fmean(temps[i - window : i]) for i in range(window, len(temps) + 1)]
        return fixed(max(averages), 3)

    return (
        f"sensors.csv holds hourly sensor readings. Take the temperature_c readings of sensor "
        f"{sensor} in time order and compute the moving average over every {window} consecutive "
        "readings (full windows only). What is the largest of these averages?",
        ref,
    )


@task(2, ("dates",), grader="exact")
def dates_timezone_arrival(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    origin = rng.choice([(5, 30), (9, 0), (-3, 0), (1, 0)])
    target = rng.choice([(-5, 0), (-8, 0), (10, 0), (0, 0)])
    departure = dt.datetime(2025, 1, 1) + dt.timedelta(minutes=5 * rng.randint(0, 300000))
    hours, minutes = rng.randint(2, 16), 5 * rng.randint(0, 11)

    def zone(h: int, m: int) -> dt.timezone:
        return dt.timezone(dt.timedelta(hours=h, minutes=m if h >= 0 else -m))

    def label(h: int, m: int) -> str:
        return f"UTC{'+' if h >= 0 else '-'}{abs(h):02d}:{m:02d}"

    def ref(ctx: Context) -> str:
        start = departure.replace(tzinfo=zone(*origin))
        arrival = (start + dt.timedelta(hours=hours, minutes=minutes)).astimezone(zone(*target))
        return arrival.strftime("%Y-%m-%d %H:%M")

    return (
        f"A flight departs at {departure.strftime('%Y-%m-%d %H:%M')} local time in a zone at "
        f"{label(*origin)} and flies {hours} h {minutes} min. What is the local date and time of "
        f"arrival in a zone at {label(*target)}? Answer as YYYY-MM-DD HH:MM.",
        ref,
    )


@task(2, ("dates",), grader="exact")
def dates_nth_weekday(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    n, weekday = rng.randint(1, 4), rng.randint(0, 6)
    year, month = rng.randint(2000, 2060), rng.randint(1, 12)

    def ref(ctx: Context) -> str:
        first = dt.date(year, month, 1)
        offset = (weekday - first.weekday()) % 7
        return (first + dt.timedelta(days=offset + 7 * (n - 1))).isoformat()

    return (
        f"What is the date of the {ordinal(n)} {WEEKDAYS[weekday]} of {MONTHS[month - 1]} "
        f"{year}? Answer as YYYY-MM-DD.",
        ref,
    )


@task(2, ("units",), places=1)
def units_area(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    acres, hectares = round(rng.uniform(1, 300), 2), round(rng.uniform(0.5, 50), 2)

    def ref(ctx: Context) -> str:
        return fixed(acres * 4046.8564224 + hectares * 10000, 1)

    return (
        f"A farm has a field of {acres} acres and a field of {hectares} hectares. What is their "
        "total area in square metres (1 acre = 4046.8564224 m²)?",
        ref,
    )


@task(2, ("logs", "dates"), files=(LOG,))
def logs_longest_gap(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        times = [
            dt.datetime.strptime(line.split(" ")[0], "%Y-%m-%dT%H:%M:%SZ")
            for line in ctx.lines(LOG)
        ]
        return str(int(max((b - a).total_seconds() for a, b in itertools.pairwise(times))))

    return (
        "server.log is a web server's log; every line starts with a timestamp. What is the "
        "longest time, in seconds, between two consecutive lines?",
        ref,
    )


@task(2, ("logs", "stats"), files=(LOG,), places=2)
def logs_error_rate_path(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    path = rng.choice(["/api/items", "/api/orders", "/api/search", "/api/cart", "/api/checkout"])

    def ref(ctx: Context) -> str:
        statuses = [r["status"] for r in requests(ctx) if r["path"] == path]
        return fixed(100 * sum(1 for s in statuses if s >= 400) / len(statuses), 2)

    return (
        "server.log is a web server's log. What percentage of the requests to "
        f"{path} got a status code of 400 or more? (Answer in percent, e.g. 12.34.)",
        ref,
    )


@task(2, ("sqlite",), files=(LIBRARY,), grader="judge")
def sql_never_loaned(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        rows = ctx.sql(
            LIBRARY,
            "SELECT title FROM books WHERE id NOT IN (SELECT book_id FROM loans) ORDER BY title",
        )
        return ", ".join(t for (t,) in rows)

    return (
        "library.db is an SQLite database of a lending library. Which books have never been "
        "borrowed? List their titles in alphabetical order.",
        ref,
    )


@task(2, ("sqlite", "dates"), files=(LIBRARY,), places=2)
def sql_late_return_pct(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        rows = ctx.sql(
            LIBRARY, "SELECT due_date, return_date FROM loans WHERE return_date IS NOT NULL"
        )
        late = sum(1 for due, back in rows if parse_date(back) > parse_date(due))
        return fixed(100 * late / len(rows), 2)

    return (
        "library.db is an SQLite database of a lending library. Of the loans that have been "
        "returned, what percentage were returned after their due date? (Answer in percent.)",
        ref,
    )


@task(2, ("linalg", "json"), files=(MATRICES,))
def linalg_trace_power(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    power = rng.randint(5, 9)

    def ref(ctx: Context) -> str:
        m = ctx.json(MATRICES)["M"]
        result = m
        for _ in range(power - 1):
            result = matmul(result, m)
        return str(sum(result[i][i] for i in range(len(m))))

    return (
        f"matrices.json holds a square integer matrix M (a list of rows). What is the trace of "
        f"M^{power} (M multiplied by itself, {power} factors)?",
        ref,
    )


@task(2, ("linalg", "json"), files=(MATRICES,))
def linalg_rank(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return str(rank(ctx.json(MATRICES)["B"]))

    return "matrices.json holds a matrix B (a list of rows). What is the rank of B?", ref


@task(2, ("linalg", "stats", "csv"), files=(SENSORS,), places=4)
def linalg_quadratic_fit(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    sensor = rng.choice("ABC")

    def ref(ctx: Context) -> str:
        rows = [r for r in ctx.csv(SENSORS) if r["power_w"] and r["sensor"] == sensor]
        design = [
            [1, Fraction(r["temperature_c"]), Fraction(r["temperature_c"]) ** 2] for r in rows
        ]
        coefficients = least_squares(design, [Fraction(r["power_w"]) for r in rows])
        return fixed(coefficients[1], 4)

    return (
        f"sensors.csv holds hourly sensor readings. For sensor {sensor}, using the rows whose "
        "power_w is not empty, fit power_w = a + b·t + c·t² by ordinary least squares, where t "
        "is temperature_c. What is b?",
        ref,
    )


@task(2, ("xlsx", "dates"), files=(INVENTORY,))
def xlsx_oldest_received(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    warehouse = rng.choice(WAREHOUSES)
    on = dt.date(2024, 6, 30)

    def ref(ctx: Context) -> str:
        dates = [r["received"] for r in ctx.xlsx(INVENTORY, "Stock") if r["warehouse"] == warehouse]
        return str((on - min(dates)).days)

    return (
        "inventory.xlsx has a sheet Stock with a received date per stock line. How many days "
        f"old, on {on.isoformat()}, was the oldest stock line of warehouse {warehouse} (days "
        "from its received date)?",
        ref,
    )


@task(2, ("xlsx", "stats"), files=(INVENTORY,), places=4)
def xlsx_cost_stdev(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    category = rng.choice(sorted({row[2] for row in d.inventory["Catalog"][1:]}))

    def ref(ctx: Context) -> str:
        skus = {c["sku"] for c in ctx.xlsx(INVENTORY, "Catalog") if c["category"] == category}
        costs = [r["unit_cost"] for r in ctx.xlsx(INVENTORY, "Stock") if r["sku"] in skus]
        return fixed(statistics.stdev(costs), 4)

    return (
        "inventory.xlsx has a sheet Stock (warehouse, sku, qty, unit_cost, received) and a "
        "sheet Catalog (sku, description, category, reorder_level). What is the sample standard "
        f"deviation of unit_cost over the stock lines of category {category}?",
        ref,
    )


@task(2, ("pdf",), files=(REPORT,), places=2)
def pdf_total_revenue(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return fixed(math.fsum(b["revenue"] for b in branches(ctx)), 2)

    return (
        "report.pdf is a company's annual branch report. What is the total revenue, in EUR, of "
        "all branches listed in it?",
        ref,
    )


@task(2, ("pdf",), files=(REPORT,), grader="exact")
def pdf_revenue_per_staff(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return unique_max({b["city"]: b["revenue"] / b["staff"] for b in branches(ctx)})

    return (
        "report.pdf is a company's annual branch report. Which branch has the highest revenue "
        "per staff member? Answer with the branch's city name.",
        ref,
    )


@task(2, ("pdf", "stats"), files=(REPORT,), places=2)
def pdf_region_mean_staff(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    region = rng.choice(BRANCH_REGIONS)

    def ref(ctx: Context) -> str:
        return fixed(
            statistics.fmean(b["staff"] for b in branches(ctx) if b["region"] == region), 2
        )

    return (
        "report.pdf is a company's annual branch report. What is the mean staff count of the "
        f"branches in region {region}?",
        ref,
    )


@task(2, ("pdf", "dates"), files=(REPORT,))
def pdf_oldest_branch_years(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    on = dt.date(2023, 12, 31)

    def ref(ctx: Context) -> str:
        oldest = min(b["opened"] for b in branches(ctx))
        return str(full_years(oldest, on))

    return (
        "report.pdf is a company's annual branch report. How many full years had the oldest "
        f"branch been open on {on.isoformat()}?",
        ref,
    )


@task(2, ("pdf", "http_api"), files=(REPORT,), places=2)
def pdf_region_revenue_usd(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    region, day = rng.choice(BRANCH_REGIONS), RATE_DATES[0]

    def ref(ctx: Context) -> str:
        total = math.fsum(b["revenue"] for b in branches(ctx) if b["region"] == region)
        return fixed(total * ctx.api(f"/rates?date={day}")["rates"]["USD"], 2)

    return (
        f"report.pdf is a company's annual branch report (revenue in EUR). {api_intro()} "
        f"GET {{api_base}}/rates?date={day} gives units of each currency per 1 EUR. What is the "
        f"total revenue of the branches of region {region} in US dollars at that date's rate?",
        ref,
    )


@task(2, ("equations",), places=6)
def eq_cubic_root(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    p, q = rng.randint(2, 9), rng.choice([n for n in range(-30, 31) if n])

    def ref(ctx: Context) -> str:
        bound = 1 + max(p, abs(q))
        return fixed(bisect(lambda x: x**3 + p * x + q, -bound, bound), 6)

    return (
        f"The equation {polynomial_text([1, 0, p, q])} = 0 has exactly one real solution. "
        "What is it?",
        ref,
    )


@task(2, ("equations",), places=6)
def eq_transcendental(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    k = rng.randint(2, 9)

    def ref(ctx: Context) -> str:
        return fixed(bisect(lambda x: x / k - math.exp(-x), 0.0, float(k)), 6)

    return f"Find the real number x > 0 such that e^(−x) = x / {k}.", ref


@task(2, ("equations",), places=6)
def eq_largest_root(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    while True:
        coefficients = [1] + [rng.randint(-9, 9) for _ in range(4)]
        try:
            roots = real_roots(coefficients)
        except ValueError:
            continue
        if roots:
            break

    def ref(ctx: Context) -> str:
        return fixed(max(real_roots(coefficients)), 6)

    return f"What is the largest real root of {polynomial_text(coefficients)}?", ref


@task(2, ("finance",), places=2)
def fin_loan_payment(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    principal = rng.randint(50, 600) * 1000
    rate = rng.randint(25, 79) / 10
    years = rng.randint(10, 30)

    def ref(ctx: Context) -> str:
        i, n = rate / 100 / 12, years * 12
        return fixed(principal * i / (1 - (1 + i) ** -n), 2)

    return (
        f"A loan of {principal} is repaid in equal monthly instalments over {years} years at a "
        f"nominal annual interest rate of {rate}% compounded monthly (an annuity, payments at "
        "the end of each month). What is the monthly payment?",
        ref,
    )


@task(2, ("finance",), places=2)
def fin_compound_savings(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    initial, monthly = rng.randint(1, 50) * 500, rng.randint(1, 20) * 25
    rate, years = rng.randint(10, 60) / 10, rng.randint(5, 25)

    def ref(ctx: Context) -> str:
        i, n = rate / 100 / 12, years * 12
        return fixed(initial * (1 + i) ** n + monthly * ((1 + i) ** n - 1) / i, 2)

    return (
        f"A savings account starts with {initial} and receives a deposit of {monthly} at the end "
        f"of every month. Interest is {rate}% a year, compounded monthly. What is the balance "
        f"after {years} years, just after the last deposit?",
        ref,
    )


@task(2, ("finance",), places=2)
def fin_npv(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    rate = rng.randint(4, 12)
    flows = [-rng.randint(50, 200) * 1000] + [
        rng.randint(10, 60) * 1000 for _ in range(rng.randint(5, 8))
    ]

    def ref(ctx: Context) -> str:
        return fixed(sum(cf / (1 + rate / 100) ** t for t, cf in enumerate(flows)), 2)

    return (
        f"A project has yearly cash flows {numbers_text(flows)} (the first one now, then one "
        f"at the end of each year). What is its net present value at a discount rate of {rate}% "
        "a year?",
        ref,
    )


@task(2, ("finance", "equations"), places=2)
def fin_irr(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    while True:
        flows = [-rng.randint(50, 200) * 1000] + [
            rng.randint(10, 70) * 1000 for _ in range(rng.randint(4, 8))
        ]
        if sum(flows[1:]) > -flows[0] * 1.1:
            break

    def ref(ctx: Context) -> str:
        def npv(r: float) -> float:
            return sum(cf / (1 + r) ** t for t, cf in enumerate(flows))

        return fixed(100 * bisect(npv, 0.0, 1.0), 2)

    return (
        f"A project has yearly cash flows {numbers_text(flows)} (the first one now, then one at "
        "the end of each year). What is its internal rate of return, in percent a year?",
        ref,
    )


@task(2, ("http_api", "pagination"))
def api_orders_product_qty(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    product = rng.randint(1, len(d.api["products"]))
    status = rng.choice(["shipped", "delivered"])

    def ref(ctx: Context) -> str:
        orders = ctx.api_pages("/orders?per_page=50")
        return str(
            sum(
                i["qty"]
                for o in orders
                if o["status"] == status
                for i in o["items"]
                if i["product_id"] == product
            )
        )

    return (
        f"{api_intro()} GET {{api_base}}/orders lists orders, one page at a time (each page "
        "gives the path of the next page in 'next', null on the last page). Over all orders "
        f"with status '{status}', how many units of product {product} were ordered?",
        ref,
    )


@task(2, ("http_api", "pagination", "dates"), grader="exact")
def api_orders_busiest_date(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    def ref(ctx: Context) -> str:
        return unique_max(Counter(o["date"] for o in ctx.api_pages("/orders")))

    return (
        f"{api_intro()} GET {{api_base}}/orders lists orders, one page at a time (each page "
        "gives the path of the next page in 'next', null on the last page). On which date were "
        "the most orders placed? Answer as YYYY-MM-DD.",
        ref,
    )


@task(2, ("http_api", "pagination", "units"), places=2)
def api_delivered_value_eur(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    day = rng.choice(RATE_DATES)

    def ref(ctx: Context) -> str:
        rates = ctx.eur_rates[day]
        prices = {
            p["id"]: p["price"]["amount"] / rates[p["price"]["currency"]]
            for p in ctx.api("/products")["items"]
        }
        orders = ctx.api_pages("/orders?status=delivered")
        return fixed(sum(prices[i["product_id"]] * i["qty"] for o in orders for i in o["items"]), 2)

    return (
        f"{api_intro()} GET {{api_base}}/orders lists orders page by page ('next' gives the "
        "next page; it accepts ?status=...), {api_base}/products lists product prices in various "
        f"currencies, and {{api_base}}/rates?date={day} gives units of each currency per 1 EUR. "
        "What is the total value in EUR (quantity × price, converted at those rates) of all "
        "orders with status 'delivered'?",
        ref,
    )


@task(2, ("http_api", "auth"))
def api_gold_customers(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    country = rng.choice(["PT", "DE", "FR", "NL", "ES"])
    tier = rng.choice(["silver", "gold"])
    key = d.api["api_key"]

    def ref(ctx: Context) -> str:
        items = ctx.api("/secure/customers", {"X-API-Key": key})["items"]
        return str(sum(1 for c in items if c["country"] == country and c["tier"] == tier))

    return (
        f"{api_intro()} GET {{api_base}}/secure/customers lists customers; it requires the "
        f"header X-API-Key: {key}. How many customers in country {country} have the tier "
        f"'{tier}'?",
        ref,
    )


@task(2, ("http_api", "auth", "pagination"), grader="exact")
def api_top_customer(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    key = d.api["api_key"]

    def ref(ctx: Context) -> str:
        counts = Counter(
            o["customer_id"] for o in ctx.api_pages("/orders") if o["status"] != "cancelled"
        )
        best = unique_max(counts)
        return ctx.api(f"/secure/customers/{best}", {"X-API-Key": key})["name"]

    return (
        f"{api_intro()} GET {{api_base}}/orders lists orders page by page ('next' gives the next "
        "page), and {api_base}/secure/customers/<id> describes a customer (it requires the "
        f"header X-API-Key: {key}). Which customer placed the most orders that were not "
        "cancelled? Answer with the customer's name.",
        ref,
    )


@task(2, ("http_api", "auth", "pagination"))
def api_country_units(d: Dataset, rng: random.Random) -> tuple[str, Ref]:
    country = rng.choice(sorted({c["country"] for c in d.api["customers"]}))
    key = d.api["api_key"]

    def ref(ctx: Context) -> str:
        customers = ctx.api("/secure/customers", {"X-API-Key": key})["items"]
        ids = {c["id"] for c in customers if c["country"] == country}
        orders = ctx.api_pages("/orders")
        return str(
            sum(
                i["qty"]
                for o in orders
                if o["customer_id"] in ids and o["status"] != "cancelled"
                for i in o["items"]
            )
        )

    return (
        f"{api_intro()} GET {{api_base}}/orders lists orders page by page ('next' gives the next "
        "page), and {api_base}/secure/customers lists customers with their country (it "
        f"requires the header X-API-Key: {key}). How many units in total (the sum of the "
        f"quantities of their items) did customers from country {country} order, not counting "
        "cancelled orders?",
        ref,
    )
