"""Generators of interaction streams (schema v1) with ground truth, for tests and benchmarks.

They live outside the core modules: the engine never imports them and never reads their truth.
``synth``: the synthetic stream (``python -m stream.datasets.synth``); ``phrasings``: a
population built from real crowd-sourced request phrasings.
"""
