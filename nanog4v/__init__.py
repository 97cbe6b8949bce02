"""nanog4v: a minimal, readable PyTorch reference implementation of GPT4Video (arXiv 2311.16511)."""
__version__ = "0.1.0"
