"""transformers (>= 5) LLaVA-OneVision host."""
