"""Trying insitu offline in Studio, and building a deployment image from langgraph.json."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OFFLINE_ENV = {
    "LANGGRAPH_CLI_NO_ANALYTICS": "1",
    "LANGGRAPH_NO_VERSION_CHECK": "1",
    "LANGSMITH_TRACING": "false",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_scripted_endpoint_serves_the_openai_protocol_until_ctrl_c() -> None:
    from langchain_openai import ChatOpenAI

    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "insitu", "scripted-endpoint", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}/v1"
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, server.stderr.read()
                time.sleep(0.2)
        llm = ChatOpenAI(base_url=url, api_key="not-needed", model="any", max_retries=0)
        reply = llm.invoke("What is this?")
        assert "scripted" in reply.content
    finally:
        server.send_signal(signal.SIGINT)
        out, errors = server.communicate(timeout=30)
    assert server.returncode == 0
    assert f"OPENAI_BASE_URL={url}" in out
    assert "scripted demo model" in errors and "Traceback" not in errors


def test_langgraph_json_builds_an_image_with_bubblewrap_and_pip(tmp_path: Path) -> None:
    config = json.loads((ROOT / "langgraph.json").read_text())
    assert config["python_version"] == "3.11"
    done = subprocess.run(
        [
            "langgraph",
            "dockerfile",
            "-c",
            str(ROOT / "langgraph.json"),
            str(tmp_path / "Dockerfile"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **OFFLINE_ENV},
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    dockerfile = (tmp_path / "Dockerfile").read_text()
    assert "install -y --no-install-recommends bubblewrap" in dockerfile
    assert "pip uninstall -y pip" not in dockerfile  # tools install their dependencies with pip
    assert (
        "insitu.graphs.episode:graph" in dockerfile and "insitu.graphs.evolve:graph" in dockerfile
    )
