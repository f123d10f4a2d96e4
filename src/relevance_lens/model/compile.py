"""Compiled decoder blocks: ``torch.compile`` per block, shared by training and fast scoring."""

from __future__ import annotations

import shutil

import torch

from relevance_lens.model.reranker import Reranker
from relevance_lens.model.roles import blocks


def compile_blocks(reranker: Reranker) -> None:
    """``torch.compile`` each decoder block in place (dynamic shapes: one compile for all batches).

    Identical blocks share one compiled graph (parameters are graph inputs), so the cost is
    about one block's compile, not one per layer.
    """
    for block in blocks(reranker.base_model, reranker.architecture):
        block.compile(dynamic=True)


def can_compile(device: torch.device) -> str | None:
    """None when torch.compile can run here; otherwise why not."""
    if not hasattr(torch, "compile"):
        return "torch.compile is missing (torch < 2.0)"
    if device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")):
        return "torch.compile on CPU needs a C++ compiler (g++ or clang++) on PATH"
    return None
