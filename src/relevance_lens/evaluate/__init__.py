"""Evaluate: ranking metrics through ir_measures (``metrics``) and the paired significance tests
the analyses report (``stats``).

A leaf stage: it imports nothing of relevance_lens but ``errors``.
"""
