"""Small builders of valid tool specs, for tests and benchmarks of the store.

The specs are real tools (``validate_source`` accepts them) but their schemas
are written here rather than derived in the sandbox, which the store never
needs.
"""

from __future__ import annotations

from collections.abc import Sequence

from insitu.tool_store.contract import ToolSpec, ToolTest


def make_spec(
    name: str,
    description: str,
    *,
    inputs: Sequence[str] = ("values",),
    body: str = "return {'result': 0}",
    network: bool = False,
    dependencies: Sequence[str] = (),
    tests: Sequence[ToolTest] | None = None,
) -> ToolSpec:
    """Build a valid typed-signature tool spec.

    Args:
        name: ``verb_object`` name.
        description: One paragraph.
        inputs: Input field names (each typed ``str`` in the signature, ``string``
            in the schema).
        body: The body of ``run`` (one line, indented for you).
        network: The network flag.
        dependencies: Declared PyPI requirements.
        tests: Test cases (default: one that checks the output is a dict).

    Returns:
        The spec; different ``body`` strings give different content hashes.
    """
    params = ", ".join(f"{field}: str" for field in inputs)
    meta = {
        "name": name,
        "description": description,
        "dependencies": list(dependencies),
        "network": network,
    }
    source = f"__TOOL_META__ = {meta!r}\n\n\ndef run({params}) -> dict:\n    {body}\n"
    return ToolSpec(
        name=name,
        description=description,
        source=source,
        input_schema={
            "type": "object",
            "properties": {field: {"type": "string"} for field in inputs},
            "required": list(inputs),
        },
        output_schema={"type": "object", "properties": {"result": {}}},
        dependencies=list(dependencies),
        network=network,
        tests=list(tests)
        if tests is not None
        else [ToolTest(name="smoke", input={f: "x" for f in inputs}, check="output is not None")],
    )


#: (name, description, input fields) of thirty varied tools.
CATALOGUE: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("compute_mean", "Computes the arithmetic mean of a list of numbers.", ("values",)),
    ("compute_median", "Returns the median value of a list of numbers.", ("values",)),
    ("compute_std_dev", "Computes the population standard deviation of numbers.", ("values",)),
    ("parse_csv_rows", "Parses CSV text into a list of rows (lists of cells).", ("text",)),
    ("write_csv_file", "Writes rows of cells to a CSV file on disk.", ("rows", "path")),
    ("fetch_web_page", "Downloads a web page over HTTP and returns its HTML.", ("url",)),
    ("extract_links", "Extracts every hyperlink target from an HTML document.", ("html",)),
    ("count_words", "Counts the words in a text and returns the total.", ("text",)),
    ("convert_temperature", "Converts a temperature between Celsius and Fahrenheit.", ("value",)),
    ("convert_currency", "Converts an amount of money between two currencies.", ("amount",)),
    ("parse_iso_date", "Parses an ISO 8601 date string into year, month and day.", ("text",)),
    ("add_days_to_date", "Adds a number of days to a calendar date.", ("date", "days")),
    ("resize_image", "Resizes an image file to a given width and height.", ("path", "width")),
    ("read_json_file", "Reads a JSON file and returns the parsed object.", ("path",)),
    ("validate_email", "Checks whether a string is a syntactically valid email address.", ("s",)),
    ("hash_text_sha256", "Returns the SHA-256 hex digest of a text.", ("text",)),
    ("sort_numbers", "Sorts a list of numbers in ascending or descending order.", ("values",)),
    ("find_primes", "Lists every prime number up to a limit.", ("limit",)),
    ("solve_quadratic", "Solves a quadratic equation ax^2+bx+c=0 for its real roots.", ("a",)),
    ("translate_text", "Translates a text from one natural language into another.", ("text",)),
    ("summarize_text", "Summarizes a long text into a few sentences.", ("text",)),
    ("detect_language", "Detects which natural language a text is written in.", ("text",)),
    ("compress_files", "Compresses files into a zip archive.", ("paths",)),
    ("send_email", "Sends an email message through an SMTP server.", ("to", "body")),
    ("query_sqlite", "Runs a SQL query on a SQLite database file and returns rows.", ("sql",)),
    ("generate_password", "Generates a random password of a given length.", ("length",)),
    ("compute_factorial", "Computes the factorial of a non-negative integer.", ("n",)),
    ("matrix_multiply", "Multiplies two matrices given as nested lists.", ("a", "b")),
    ("plot_line_chart", "Draws a line chart of x/y data and saves it as a PNG.", ("x", "y")),
    ("get_weather", "Returns the current weather forecast for a city.", ("city",)),
)


def catalogue_specs() -> list[ToolSpec]:
    """Return the thirty :data:`CATALOGUE` tools as specs."""
    return [make_spec(n, d, inputs=i) for n, d, i in CATALOGUE]
