"""Model: the backbone and where it comes from (``backbone``: short names, GGUF, cache), the
one table of module roles per architecture (``roles``), the RankLLaMA reranker (``reranker``),
LoRA on chosen roles and layers (``lora``), hooks into the decoder stack (``hooks``),
compiled decoder blocks (``compile``) and the manifest that vouches for a saved folder (``manifest``).

May import ``errors`` and ``data``.
"""
