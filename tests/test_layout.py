"""The package layout: the compressor registry covers every configurable name, and the import contract
(import-linter, pyproject.toml) holds."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from llava_vqtoken.config import COMPRESSORS as CONFIG_NAMES
from llava_vqtoken.config import CompressorConfig
from llava_vqtoken.core.compressor import (
    BASELINES,
    COMPRESSORS,
    BaselineCompressor,
    VQTokenCompressor,
    build_compressor,
)


def test_registry_names_every_configurable_compressor():
    assert sorted(COMPRESSORS) == sorted(CONFIG_NAMES)
    assert sorted(BASELINES) == sorted(set(CONFIG_NAMES) - {"vqtoken"})


def test_registry_builds_the_named_class():
    assert type(build_compressor(CompressorConfig(num_tokens=4), 8)) is VQTokenCompressor
    for name in BASELINES:
        assert type(build_compressor(CompressorConfig(name=name, num_tokens=4), 8)) is BaselineCompressor


ROOT = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).with_name("lint-imports")
#: one import against each rule of the contract: (file, import added, the broken import lint-imports names)
VIOLATIONS = [
    ("core/metrics.py", "from ..hosts.hf import tiny", "llava_vqtoken.core.metrics -> llava_vqtoken.hosts.hf.tiny"),
    ("core/keymap.py", "import transformers", "llava_vqtoken.core.keymap -> transformers"),
    ("hosts/hf/features.py", "from ..llava_next import tiny", "llava_vqtoken.hosts.hf.features -> "
     "llava_vqtoken.hosts.llava_next.tiny"),
    ("train/data.py", "from ..eval import tasks", "llava_vqtoken.train.data -> llava_vqtoken.eval.tasks"),
    ("video.py", "from . import spec_rule", "llava_vqtoken.video -> llava_vqtoken.spec_rule"),
    ("config.py", "from . import config_flags", "llava_vqtoken.config -> llava_vqtoken.config_flags"),
]


def lint(tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT), "--no-cache", "--no-logo", "--config", str(tree / "pyproject.toml")], cwd=tree,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(tree)}, timeout=120)


def copy_tree(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / "llava_vqtoken", tmp_path / "llava_vqtoken", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


def test_the_import_contract_holds_and_fails_on_each_kind_of_upward_import(tmp_path):
    tree = copy_tree(tmp_path)
    kept = lint(tree)
    assert kept.returncode == 0, kept.stdout + kept.stderr
    assert "3 kept, 0 broken" in kept.stdout
    for rel, line, _ in VIOLATIONS:
        path = tree / "llava_vqtoken" / rel
        path.write_text(path.read_text() + f"\n{line}  # a violation\n")
    broken = lint(tree)
    assert broken.returncode == 1
    assert "0 kept, 3 broken" in broken.stdout
    for _, _, shown in VIOLATIONS:
        assert shown in broken.stdout, shown


def test_a_new_top_level_module_must_be_placed_on_a_floor(tmp_path):
    tree = copy_tree(tmp_path)
    (tree / "llava_vqtoken" / "extra.py").write_text("from . import config\n")
    out = lint(tree)
    assert out.returncode == 1 and "llava_vqtoken.extra" in out.stdout + out.stderr


def test_one_table_of_model_shapes_feeds_flops_tiny_models_and_benchmarks():
    from llava_vqtoken.benchmarks import bench
    from llava_vqtoken.core.metrics import LLM_SHAPES
    from llava_vqtoken.hosts.hf.tiny import PRESETS
    from llava_vqtoken.shapes import QWEN2, SIGLIP

    assert bench.QWEN is QWEN2 and bench.SIGLIP is SIGLIP
    assert LLM_SHAPES["qwen2-7b"] == (3584, 28, 18_944, 28, 4, 152_064)
    assert PRESETS["0.5b"] == {
        "vision": dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=26, num_attention_heads=16),
        "text": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                     num_key_value_heads=2),
    }
    with pytest.raises(TypeError):
        QWEN2["0.5b"]["hidden_size"] = 1  # read-only: nobody edits the shared table
