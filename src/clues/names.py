"""Silo names, checked wherever they enter (``--silo``, a config's ``[silos]``, a SuperNode's node config).

A silo name becomes a folder (``OUT/silos/<name>`` with the silo's private scores, the server's
``server/adapters/<condition>/<name>``) and part of stage marker file names, so ``../x``, ``a/b`` or an
absolute name would put files outside the output folder. Only a plain, short file name is accepted.
"""

from __future__ import annotations

import re

from clues.errors import CluesError

MAX_LENGTH = 64
_SAFE = re.compile(rf"[A-Za-z0-9][A-Za-z0-9_.-]{{0,{MAX_LENGTH - 1}}}")


def check_silo_name(name, where: str) -> str:
    """Return ``name`` if it is a safe silo name, else raise a one-line error naming it and ``where`` it came from."""
    if not isinstance(name, str) or not _SAFE.fullmatch(name) or ".." in name:
        raise CluesError(f"{where}: invalid silo name {name!r}: use 1-{MAX_LENGTH} letters, digits, '_', '.' or '-', "
                         "starting with a letter or digit, without '..'")
    return name
