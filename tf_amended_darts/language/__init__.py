"""The recurrent (Penn Treebank) task: search space, genotypes, cells and
models, corpus, NT-ASGD and drawings.

Imports `core` and `nn`; never `vision`.
"""
