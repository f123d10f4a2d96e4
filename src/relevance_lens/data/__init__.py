"""Data: the file formats (queries, corpora, TREC runs and qrels, Tevatron JSONL; ``formats``),
the BM25 first stage (``bm25``) and the embedded FAQ collection with its builder (``faq``, from
Debian's .deb files through ``debfile`` and ``docparse``).

May import ``errors`` and ``evaluate`` (the FAQ builder scores BM25 on what it builds).
"""
