"""clues: find the high-quality records inside private data silos, then train one model on them.

Implements CLUES (Zhao et al., NeurIPS 2024): training-dynamics scores against trusted public
validation data, a global threshold from a tiny public anchor set, and collaborative training
(adapter merging or federated learning) on the records each silo keeps.
"""

__version__ = "0.1.0"
