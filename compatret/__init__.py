"""compatret: retrieval with backward-compatible embeddings (upgrade the model, keep the index)."""

from compatret.errors import CompatretError
from compatret.versions import Compat, ModelVersion

__all__ = ["Compat", "CompatretError", "ModelVersion"]
__version__ = "0.1.0"
