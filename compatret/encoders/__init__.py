"""Encoders behind one protocol; `load_encoder` turns a model spec (alias or folder) into one."""

from compatret.encoders.base import Encoder
from compatret.encoders.registry import ALIASES, load_encoder, load_version

__all__ = ["ALIASES", "Encoder", "load_encoder", "load_version"]
