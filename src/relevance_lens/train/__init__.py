"""Train: LoRA reranker training on the Hugging Face Trainer (``config``: the typed settings;
``groups``: query groups and the listwise loss; ``trainer``: the run itself) and the run
folder's layout (``rundir``: ``checkpoint-<step>``, ``final``, ``run.json``), owned here alone.

May import ``errors``, ``provenance``, ``evaluate``, ``data``, ``model`` and ``score``.
"""
