"""A silo: the only holder of its private records (:class:`~clues.silo.silo.Silo`), one handler per request kind."""

from clues.silo.silo import Silo

__all__ = ["Silo"]
