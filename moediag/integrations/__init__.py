"""Training-framework callbacks around :class:`moediag.Monitor` (transformers, Lightning).

Each module imports its framework only when imported itself.
"""
