"""Evaluation of students and teachers: Tatoeba retrieval per layer (METHOD §7) and MLM pseudo-perplexity.

Modules: `texts` reads inputs, `encode` runs a model to per-layer token vectors, `layers` names the
layers and layer sets, `similarity` scores all pairs, `retrieval` and `perplexity` are the two
evaluations, `plot` draws per-layer curves, `runs` finds the students of a distillation run.
"""
