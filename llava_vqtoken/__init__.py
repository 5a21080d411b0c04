"""llava-vqtoken: VQToken video-token compression for LLaVA-OneVision video LLMs."""

__version__ = "0.1.0"
