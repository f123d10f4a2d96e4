"""A tiny training collection written to files (queries, qrels, corpus, negatives run)."""

import json
import socket
import sys
from pathlib import Path

from relevance_lens.data.formats import Passage, write_corpus, write_qrels, write_queries, write_run

TOPICS = [
    ("paris", "what is the capital of france", "paris is the capital of france"),
    ("banana", "which fruit is yellow", "bananas are yellow fruit"),
    ("sort", "how do i sort a list in python", "use sorted or list sort in python"),
    ("apt", "how do i install debian packages", "apt installs debian packages"),
    ("perl", "how do perl regular expressions match", "perl regular expressions match text"),
    ("query", "what is a query document", "a query document is what you match"),
]


def write_collection(folder: Path, n_distractors: int = 6) -> dict[str, Path]:
    queries = {f"q{i}": q for i, (_, q, _) in enumerate(TOPICS)}
    corpus = {f"d{i}": Passage(f"d{i}", name, text) for i, (name, _, text) in enumerate(TOPICS)}
    for j in range(n_distractors):
        corpus[f"x{j}"] = Passage(f"x{j}", "", f"{TOPICS[j % len(TOPICS)][2]} and other words {j}")
    qrels = {f"q{i}": {f"d{i}": 1} for i in range(len(TOPICS))}
    run = {qid: {docid: float(-k) for k, docid in enumerate(sorted(corpus))} for qid in queries}
    paths = {
        n: folder / f
        for n, f in [("queries", "q.tsv"), ("qrels", "qrels.txt"), ("corpus", "c.jsonl"), ("negatives_run", "bm25.run")]
    }
    write_queries(queries, paths["queries"])
    write_qrels(qrels, paths["qrels"])
    write_corpus(corpus, paths["corpus"])
    write_run(run, paths["negatives_run"])
    return {k: str(v) for k, v in paths.items()}


def tiny_collection(folder: Path) -> dict[str, str]:
    """The tiny collection plus a tiny random llama to train on: the settings a training test starts from."""
    from tiny import save_tiny

    paths = {k: str(v) for k, v in write_collection(folder).items()}
    paths["model"] = str(save_tiny("llama", folder / "model"))
    return paths


def tiny_train_settings(collection: dict, output, **overrides) -> dict:
    """Training settings for a seconds-long fp32 run on ``tiny_collection``; ``overrides`` win."""
    settings = dict(
        collection,
        output=str(output),
        data="files",
        group_size=4,
        max_steps=5,
        save_steps=[1, 2],
        lr=1e-2,
        max_length=64,
        queries_per_device=2,
        precision="fp32",
        eval_split=None,
        lora_dropout=0.0,
        rank=2,
        warmup_steps=0,
        compile="off",
    )
    settings.update(overrides)
    return settings


def write_toml(path: Path, settings: dict) -> Path:
    """``settings`` as a flat training TOML file (what ``train --config`` reads)."""
    lines = []
    for key, value in settings.items():
        if value is None:  # TOML has no null: leave the setting at its default
            if key == "eval_split":
                lines.append('eval_split = "none"')
            continue
        lines.append(f"{key} = {json.dumps(value)}")
    path.write_text("\n".join(lines) + "\n")
    return path


def free_port() -> int:
    """A port nothing listens on now (a fixed one can be taken by another run on the machine)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(nproc: int, *target: str) -> list[str]:
    """The command line running ``target`` (``-m MODULE`` or a script, then its arguments) in ``nproc`` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)] + [
        "--master_port",
        str(free_port()),
        *target,
    ]
