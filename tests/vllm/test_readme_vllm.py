"""The README's "vLLM plugin" blocks run as written: build and convert the embedded default, serve it with
vLLM's OpenAI-compatible server on 127.0.0.1, send the generated clip; the prompt holds K + 1 = 33 video tokens.

Paths under runs/ go to a temporary folder; the port is a free one."""

from __future__ import annotations

import json
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vllm_support import ROOT, main_python

SECTION = "## vLLM plugin"
STARTUP_S = 600
TEXT_TOKENS = 22  # the chat template's tokens around the video for "what moves left" (tiny tokenizer)


def readme_blocks() -> tuple[list[str], str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(SECTION):]
    section = section[: section.find("\n## ", 1)] if "\n## " in section[1:] else section
    bash = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    lines = [line.split("  #")[0].strip() for line in bash.splitlines() if line.strip()]
    return lines, python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(port: int, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"the server exited with {server.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                return
        except OSError:
            time.sleep(2)
    raise AssertionError(f"the server did not come up in {STARTUP_S} s")


def test_readme_serves_a_clip(tmp_path: Path):
    lines, client = readme_blocks()
    port = free_port()

    def local(s: str) -> str:
        return s.replace("runs/", f"{tmp_path}/").replace(":8000", f":{port}").replace("--port 8000", f"--port {port}")

    assert lines[0] == "scripts/bootstrap.sh --vllm"  # what test.sh has already done
    *build, serve = [local(line) for line in lines[1:]]
    for line in build:
        subprocess.run(shlex.split(line), cwd=ROOT, check=True)
    assert serve.startswith(".venv-vllm/bin/python -m vllm.entrypoints.openai.api_server ")
    args = shlex.split(serve)
    args[0] = sys.executable  # this environment's Python (CI runs in .venv-vllm)
    log = tmp_path / "serve.log"
    with log.open("w") as out:
        server = subprocess.Popen(args, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_healthy(port, server, log)
            run = subprocess.run([str(main_python()), "-c", local(client)], cwd=ROOT, capture_output=True,
                                 text=True, timeout=300)
        finally:
            server.terminate()
            server.wait(timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    prompt_tokens = int(run.stdout.split()[0])
    assert prompt_tokens == 32 + 1 + TEXT_TOKENS, json.dumps(run.stdout)
