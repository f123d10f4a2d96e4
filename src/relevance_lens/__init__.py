"""relevance-lens: LoRA passage rerankers and where relevance lives inside them."""

__version__ = "0.1.0"
