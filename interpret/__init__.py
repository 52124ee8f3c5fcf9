"""Gene saliency for the cell language model, checked against marker databases.

Modules: ``attribution`` (Captum on the log1p(CP10k) input, through candidate scoring),
``aggregate`` (per-label rankings in scanpy's rank_genes_groups layout), ``markers`` (PanglaoDB /
CellMarker 2.0 validation, wilcoxon comparison), ``faithfulness`` (deletion test), ``figures``,
``result`` and ``api`` (``explain``, exported as ``instructcell_agent.explain``). Nothing heavy is
imported here.
"""
