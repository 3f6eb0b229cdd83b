"""Layers with exact higher derivatives; knows nothing of search.

Convolutions and pooling that pad like PyTorch, batch norm with hand-written
derivatives of every order, the contexts that change how they run (frozen or
synchronised statistics, a shared ReLU), and argument validators.
"""
