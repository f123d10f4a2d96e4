"""Data: the file formats (queries, corpora, TREC runs and qrels, Tevatron JSONL; ``formats``),
CSV and Parquet tables with columns chosen by role (``tables``), labelled-pairs tables split into
queries, corpus, qrels and a run (``pairs``),
the BM25 first stage (``bm25``) and the embedded FAQ collection with its builder (``faq``, from
Debian's .deb files through ``debfile`` and ``docparse``).

May import ``errors`` and ``evaluate`` (the FAQ builder scores BM25 on what it builds).
"""
