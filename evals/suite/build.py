"""Generate the local suite: data files, API data, and tasks with reference answers.

Run ``python -m insitu.evals.suite.build`` to regenerate the shipped version in
place (``evals/suite/v1``), or ``--out DIR`` to write it elsewhere. The output is
a pure function of the seed in :mod:`insitu.evals.suite.data`: a test regenerates
it into a temporary directory and compares it with the shipped copy, so the data,
the reference code and the answers cannot drift apart.

Layout of a version directory::

    tasks.jsonl     one task a line, in suite order
    suite.json      summary: version, seed, counts per capability and phase
    api_data.json   what the local API (insitu.evals.local_api) serves
    files/          the data files tasks refer to
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from insitu.evals.local_api import handle_request
from insitu.evals.suite.data import SEED, VERSION, generate, write_files
from insitu.evals.suite.reference import ApiCall, Context
from insitu.evals.suite.specs import PHASE_CAPABILITIES, Spec, make_specs

SUITE_ROOT = Path(__file__).resolve().parent
OUTPUTS = ("tasks.jsonl", "suite.json", "api_data.json", "files")


def shipped_dir(version: str = VERSION) -> Path:
    """The directory of a shipped suite version inside the package."""
    return SUITE_ROOT / version


def in_process_api(data: Mapping[str, Any]) -> ApiCall:
    """An :data:`ApiCall` answering from ``data`` without a socket."""

    def call(target: str, headers: Mapping[str, str] | None = None) -> tuple[int, Any]:
        return handle_request(data, "GET", target, headers)

    return call


def task_records(specs: Sequence[Spec], ctx: Context) -> list[dict[str, Any]]:
    """Compute every task's answer with its reference function and return the JSONL records."""
    records = []
    for order, spec in enumerate(specs):
        try:
            answer = spec.ref(ctx)
        except Exception as exc:
            raise RuntimeError(f"reference code of task {spec.id!r} failed: {exc}") from exc
        records.append(
            {
                "id": spec.id,
                "order": order,
                "phase": spec.phase,
                "capabilities": list(spec.capabilities),
                "question": spec.question,
                "answer": answer,
                "grader": spec.grader,
                "tolerance": spec.tolerance,
                "abs_tol": spec.abs_tol,
                "files": [f"files/{name}" for name in spec.files],
            }
        )
    return records


def summary(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The ``suite.json`` summary of a list of task records."""
    counts: Counter[str] = Counter()
    first: dict[str, int] = {}
    for record in records:
        for cap in record["capabilities"]:
            counts[cap] += 1
            first.setdefault(cap, record["order"])
    phases = {}
    for phase, new in PHASE_CAPABILITIES.items():
        orders = [r["order"] for r in records if r["phase"] == phase]
        phases[str(phase)] = {
            "tasks": len(orders),
            "first_order": min(orders),
            "last_order": max(orders),
            "new_capabilities": list(new),
        }
    return {
        "version": VERSION,
        "seed": SEED,
        "generator": "python -m insitu.evals.suite.build",
        "task_count": len(records),
        "graders": dict(sorted(Counter(r["grader"] for r in records).items())),
        "phases": phases,
        "capabilities": {
            cap: {"tasks": counts[cap], "first_order": first[cap]} for cap in sorted(counts)
        },
    }


def build(out_dir: Path) -> list[dict[str, Any]]:
    """Write a complete suite version into ``out_dir`` (replacing a previous build there).

    Args:
        out_dir: The version directory to write, e.g. ``evals/suite/v1``.

    Returns:
        The task records written to ``tasks.jsonl``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in OUTPUTS:
        target = out_dir / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    data = generate()
    write_files(data, out_dir / "files")
    (out_dir / "api_data.json").write_text(
        json.dumps(data.api, indent=1, ensure_ascii=False) + "\n", "utf-8"
    )
    ctx = Context(out_dir / "files", in_process_api(data.api))
    records = task_records(make_specs(data), ctx)
    with (out_dir / "tasks.jsonl").open("w", encoding="utf-8", newline="\n") as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    (out_dir / "suite.json").write_text(json.dumps(summary(records), indent=2) + "\n", "utf-8")
    return records


def reference_answers(suite_dir: Path, api: ApiCall) -> dict[str, tuple[str, str]]:
    """Recompute every task's question and answer from a built suite's files and an API.

    Used by the tests against the shipped files and a live :class:`LocalAPI`.

    Args:
        suite_dir: A version directory (with ``files/``).
        api: How to reach the API (e.g. :func:`insitu.evals.suite.reference.http_api`).

    Returns:
        Task id to ``(question, answer)``.
    """
    ctx = Context(Path(suite_dir) / "files", api)
    return {
        r["id"]: (r["question"], r["answer"]) for r in task_records(make_specs(generate()), ctx)
    }


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: regenerate the suite."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=shipped_dir(), help="version directory")
    args = parser.parse_args(argv)
    records = build(args.out)
    print(f"wrote {len(records)} tasks to {args.out}")


if __name__ == "__main__":
    main()
