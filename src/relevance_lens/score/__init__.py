"""Score: (query, passage) pairs in, scores out. One pair encoder (``batching``: tokenize, sort
by length, cut into token-budget batches), one scorer interface with a plain and a fast
implementation (``scorer``, ``fast``), and whole-run reranking (``rerank``; ``stream``: run file to
run file in bounded memory).

May import ``errors``, ``data`` and ``model``.
"""
