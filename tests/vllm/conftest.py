"""vLLM host tests. They run in the vLLM environment (``scripts/bootstrap.sh --vllm``, .venv-vllm), as
test.sh does in CI; the main suite, where vLLM is not installed, does not collect them.

The checkpoints, inputs and reference answers come from the transformers host, run once per session in
the main environment (.venv: transformers 5.24; vLLM's environment has transformers 5.19).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
from vllm_support import ROOT, Reference, main_python

# this folder is itself importable as a namespace package "vllm" (origin None); the real one has an origin
_spec = importlib.util.find_spec("vllm")
HAVE_VLLM = _spec is not None and _spec.origin is not None
if not HAVE_VLLM:  # the main suite: these run in .venv-vllm (test.sh)
    collect_ignore_glob = ["test_*.py"]


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    out = tmp_path_factory.mktemp("vllm-ref")
    script = Path(__file__).with_name("hf_reference.py")
    subprocess.run([str(main_python()), str(script), str(out)], check=True, cwd=ROOT)
    return Reference(out, json.loads((out / "reference.json").read_text()))
