"""Fine-tuning VQToken LLaVA-OneVision models (transformers host) with the HF Trainer and DeepSpeed."""
