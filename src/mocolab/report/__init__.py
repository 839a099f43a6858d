"""`mocolab report`: a static HTML page of what runs learned (curves, nearest neighbours, an
embedding map, tables)."""

from .build import Options, write_report

__all__ = ["Options", "write_report"]
