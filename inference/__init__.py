"""Inference: the runtimes and the replica process.

Owns `runtimes/` (one module per format behind the `Runtime` protocol), input validation, the bounded session
cache, micro-batching and the inference app (a replica pinned to one service version, or pool mode for model
tests). Stateless: it loads versions by id from the artifact store. It imports only `shared`.
"""
