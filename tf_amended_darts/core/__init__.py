"""The bi-level engine, independent of any task.

Estimators and the products they need, the train step, optimisers with
PyTorch semantics, diagnostics, the one strategy factory, checkpoints and
named defaults. Imports `nn` only, never a task domain.
"""
