"""LLaVA-NeXT plugin tests: they need the ``llava`` package (LLaVA-NeXT, installed from source with its
pins, see the README) and are skipped with that reason when it is absent. The tiny SigLIP tower goes
into a private hub cache, so HF_HOME is set before transformers is imported."""

import importlib.util
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

HAVE_LLAVA = importlib.util.find_spec("llava") is not None
if HAVE_LLAVA:
    os.environ.setdefault("LLAVA_VQTOKEN_LLAVA_HOME", tempfile.mkdtemp(prefix="llava-next-hub-"))
    from llava_vqtoken.hosts.llava_next.tiny import use_offline_cache

    use_offline_cache(os.environ["LLAVA_VQTOKEN_LLAVA_HOME"])


@pytest.fixture(scope="module")
def installed():
    """The plugin patched into LLaVA-NeXT for one test module, and removed after it."""
    from llava_vqtoken.hosts.llava_next import install, uninstall

    install()
    yield
    uninstall()


@pytest.fixture
def stock_llava_qwen(tmp_path) -> Path:
    """A stock tiny llava_qwen checkpoint (no compressor), built in a fresh process, where the plugin
    is not installed, with the private hub cache of these tests."""
    stock = tmp_path / "llava-qwen-stock"
    code = f"""
from llava_vqtoken.hosts.llava_next.tiny import build_tiny_llava_qwen, use_offline_cache
use_offline_cache({os.environ['LLAVA_VQTOKEN_LLAVA_HOME']!r})
build_tiny_llava_qwen({str(stock)!r})
"""
    subprocess.run([sys.executable, "-c", code], check=True)
    return stock


def pytest_collection_modifyitems(config, items):
    if HAVE_LLAVA:
        return
    skip = pytest.mark.skip(reason="LLaVA-NeXT (package 'llava') is not installed; see README 'LLaVA-NeXT plugin'")
    for item in items:
        if "llava_next" in str(item.fspath):
            item.add_marker(skip)
