"""LLaVA-NeXT plugin tests: they need the ``llava`` package (LLaVA-NeXT, installed from source with its
pins, see the README) and are skipped with that reason when it is absent. The tiny SigLIP tower goes
into a private hub cache, so HF_HOME is set before transformers is imported."""

import importlib.util
import os
import tempfile

import pytest

HAVE_LLAVA = importlib.util.find_spec("llava") is not None
if HAVE_LLAVA:
    os.environ.setdefault("LLAVA_VQTOKEN_LLAVA_HOME", tempfile.mkdtemp(prefix="llava-next-hub-"))
    from llava_vqtoken.llava_next.tiny import use_offline_cache

    use_offline_cache(os.environ["LLAVA_VQTOKEN_LLAVA_HOME"])


def pytest_collection_modifyitems(config, items):
    if HAVE_LLAVA:
        return
    skip = pytest.mark.skip(reason="LLaVA-NeXT (package 'llava') is not installed; see README 'LLaVA-NeXT plugin'")
    for item in items:
        if "llava_next" in str(item.fspath):
            item.add_marker(skip)
