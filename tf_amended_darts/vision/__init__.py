"""The CNN task: operators, cells, search spaces, genotypes, super-network,
re-training networks, data, augmentation and FLOPs.

Imports `core` and `nn`; never `language`.
"""
