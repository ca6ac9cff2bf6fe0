"""Fairness measurements: embedding association tests and group metrics as plain functions and dataclasses.

``weat`` computes the Word Embedding Association Test effect size (Caliskan et al. 2017) on vectors, batched;
``word_lists`` ships the WEAT 1-10 word lists and loads custom ones from YAML; ``ceat`` runs the
Contextualized Embedding Association Test (Guo & Caliskan 2021) on any Hugging Face encoder, combining the
effect sizes of many random contexts with a random-effects meta-analysis. Import the submodules directly;
this package imports nothing so that importing it stays cheap.
"""
