"""clues on Flower (Message API): only transport, no logic and no command line of its own.

The ClientApp (:mod:`~clues.flower.client_app`) hands each message to a :class:`~clues.silo.Silo`;
the ServerApp (:mod:`~clues.flower.server_app`) runs a clues server over the Grid
(:mod:`~clues.flower.grid`); :mod:`~clues.flower.records` is the one translation between the two
worlds. :mod:`~clues.flower.simulation` and :mod:`~clues.flower.deployment` start the engines for
``clues run --fleet flower`` and ``clues federate``.
"""
