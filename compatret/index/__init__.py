"""Galleries on LanceDB, exact search kernels, and the service that upgrades and queries them."""

from compatret.index.gallery import Gallery, GalleryMeta
from compatret.index.service import QueryResult, Service

__all__ = ["Gallery", "GalleryMeta", "QueryResult", "Service"]
