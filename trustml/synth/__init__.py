"""Synthetic NLU data: from a few annotated golden utterances per intent to thousands of annotated ones.

Modules: :mod:`~trustml.synth.annotation` (the ``[value](slot)`` notation), :mod:`~trustml.synth.formats`
(text/YAML/JSONL/SNIPS/Rasa I/O), :mod:`~trustml.synth.catalog` (slot value catalogs),
:mod:`~trustml.synth.induction` (Bayesian model merging), :mod:`~trustml.synth.grammar` (the induced
grammar), :mod:`~trustml.synth.fst` (pynini compilation and sampling), :mod:`~trustml.synth.resampling`
(Jaccard-guided slot value swaps), :mod:`~trustml.synth.allocation` (entropy-based budgets),
:mod:`~trustml.synth.synthesis` (the pipeline); the ``trustml-synth`` app is :mod:`trustml.cli.synth`.
"""
