"""Host adapters. Importing ``llava_vqtoken.hosts`` registers the transformers classes."""

from . import hf  # noqa: F401
