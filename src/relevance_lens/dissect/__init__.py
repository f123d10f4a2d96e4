"""Dissect: what the trained update ΔW does. Eval sets (``evalset``), switching parts of ΔW
off (``switch``: LoRA rows or merged weights), ablation sweeps (``ablate``), ΔW statistics
(``weights``), the score-head lens (``lens``), the analyses that write result rows
(``analyses``) and the one registry through which the CLI and studies reach them (``registry``).

May import every stage below it: ``errors``, ``store``, ``evaluate``, ``data``, ``model``,
``score``, ``train``.
"""
