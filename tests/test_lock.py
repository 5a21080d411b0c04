"""The locks of exact versions (locks/*.txt): the set-up installs from them, and the environment the tests run
in is the locked one (issue 14: an unpinned filelock 4.3 broke lmms-eval 0.7.3 on every fresh clone)."""

import importlib.util
import os
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LOCKS = {"main": ROOT / "locks" / "main.txt", "llava-next": ROOT / "locks" / "llava-next.txt"}
BOOTSTRAP_FILES = ["scripts/bootstrap.sh", "scripts/check_lock.py", "setup.py", "locks/main.txt",
                   "locks/llava-next.txt"]
FAKE_PYTHON = '#!/bin/sh\necho "$*" >> "$(dirname "$0")/../calls.log"\n'


def _check_lock():
    spec = importlib.util.spec_from_file_location("check_lock", ROOT / "scripts" / "check_lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_lock = _check_lock()


def _running_lock() -> Path:
    """The environment with LLaVA-NeXT is built from its own lock; every other one from main's."""
    return LOCKS["llava-next" if importlib.util.find_spec("llava") else "main"]


@pytest.mark.parametrize("name", sorted(LOCKS))
def test_lock_has_only_exact_pins(name):
    lines = [s.strip() for s in LOCKS[name].read_text().splitlines() if s.strip() and not s.startswith("#")]
    pins = check_lock.read_lock(LOCKS[name])
    assert len(pins) == len(lines) > 50  # every line a pin, no name twice
    assert all(check_lock.PIN.match(line) for line in lines)
    assert pins["torch"] == "2.14.1" and pins["torchvision"] == "0.29.1"  # the same CUDA build
    assert pins["lmms-eval"] == "0.7.3"
    assert "llava-vqtoken" not in pins and "llava" not in pins  # installed on top with --no-deps
    # lmms-eval 0.7.3 imports filelock._api, which filelock 4.3 removed
    assert tuple(int(p) for p in pins["filelock"].split(".")[:2]) < (4, 3)


def test_llava_next_lock_has_its_host_pins():
    pins = check_lock.read_lock(LOCKS["llava-next"])
    assert pins["transformers"] == "4.45.2" and pins["accelerate"] == "0.34.2"
    assert pins["tokenizers"].startswith("0.20.") and int(pins["huggingface-hub"].split(".")[0]) < 1
    assert {"decord", "deepspeed", "tyro", "einops", "sentencepiece", "requests", "pytest"} <= set(pins)


def test_running_environment_is_the_locked_one():
    lock = _running_lock()
    wrong = {name: (version, _installed(name)) for name, version in check_lock.read_lock(lock).items()
             if _installed(name) != version}
    assert not wrong, f"installed versions differ from {lock.name} (name: (locked, installed)): {wrong}"


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_filelock_has_the_api_lmms_eval_imports():
    import filelock._api

    assert isinstance(filelock.FileLock, filelock._api.FileLockMeta)


def test_check_lock_names_each_difference(tmp_path):
    lock = tmp_path / "lock.txt"
    lock.write_text("# comment\nFoo_Bar==1.0\nbaz==2.0\nqux==3\n")
    pins = check_lock.read_lock(lock)
    assert pins == {"foo-bar": "1.0", "baz": "2.0", "qux": "3"}
    have = {"foo-bar": "1.0", "baz": "2.1", "extra": "0.1", "ours": "0.1.0"}
    assert check_lock.differences(pins, have, {"ours"}) == [
        "baz 2.1 (locked 2.0)", "qux missing (locked 3)", "extra 0.1 not in the lock"]
    assert check_lock.differences(pins, {**pins, "ours": "1"}, {"ours"}) == []
    lock.write_text("foo>=1.0\n")
    with pytest.raises(ValueError, match="not an exact pin"):
        check_lock.read_lock(lock)


def _fake_repo(tmp_path: Path, venv: str) -> tuple[Path, Path]:
    """A copy of what bootstrap.sh reads, and a venv whose python only records how it is called."""
    repo = tmp_path / "repo"
    for rel in BOOTSTRAP_FILES:
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, repo / rel)
    python = repo / venv / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    return repo, repo / venv / "calls.log"


def _bootstrap(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "VENV"}
    return subprocess.run(["bash", str(repo / "scripts" / "bootstrap.sh"), *args], env=env, capture_output=True,
                          text=True, timeout=60)


def test_bootstrap_installs_the_main_lock_and_rebuilds_when_it_changes(tmp_path):
    repo, log = _fake_repo(tmp_path, ".venv")
    assert _bootstrap(repo).returncode == 0
    calls = log.read_text().splitlines()
    pip = "-m pip install -qq --disable-pip-version-check"
    tools = [f"{n}=={v}" for n, v in check_lock.read_lock(repo / "locks/main.txt").items()
             if n in ("pip", "setuptools", "wheel")]
    assert calls == [f"{pip} {' '.join(sorted(tools))}", f"{pip} -r locks/main.txt",
                     f"{pip} --no-deps --no-build-isolation -e .",
                     "scripts/check_lock.py locks/main.txt --ignore llava-vqtoken"]
    assert _bootstrap(repo).returncode == 0
    assert len(log.read_text().splitlines()) == 4  # stamp matches: nothing reinstalled
    with (repo / "locks/main.txt").open("a") as f:
        f.write("# a changed lock\n")
    assert _bootstrap(repo).returncode == 0
    assert log.read_text().splitlines()[4:] == calls  # a changed lock rebuilds


def test_bootstrap_llava_next_installs_its_lock_and_the_source(tmp_path):
    src = tmp_path / "LLaVA-NeXT"
    (src / "llava").mkdir(parents=True)
    (src / "llava" / "__init__.py").write_text("")
    repo, log = _fake_repo(tmp_path, ".venv-llava-next")
    done = _bootstrap(repo, "--llava-next", str(src))
    assert done.returncode == 0, done.stderr
    calls = log.read_text().splitlines()
    pip = "-m pip install -qq --disable-pip-version-check"
    assert calls[1:] == [f"{pip} -r locks/llava-next.txt", f"{pip} --no-deps --no-build-isolation -e .",
                         f"{pip} --no-deps --no-build-isolation -e {src}",
                         "scripts/check_lock.py locks/llava-next.txt --ignore llava-vqtoken llava"]
    assert "tested with LLaVA-NeXT b42941c" in done.stderr  # the fake source is no git checkout


@pytest.mark.parametrize("args, says", [(["--llava-next"], "needs the path"),
                                        (["--llava-next", "/nonexistent"], "no such folder"),
                                        (["--llava-next", "."], "not a LLaVA-NeXT checkout"),
                                        (["--frobnicate"], "unknown argument")])
def test_bootstrap_refuses_bad_arguments_in_one_line(tmp_path, args, says):
    repo, log = _fake_repo(tmp_path, ".venv")
    done = _bootstrap(repo, *args)
    assert done.returncode == 2 and says in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert not log.exists()
