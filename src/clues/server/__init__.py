"""The coordinator's side: servers that reach the silos only through a :class:`~clues.server.fleet.Fleet`.

:mod:`~clues.server.merging` (``clues run``: train, score, select, retrain, merge) and
:mod:`~clues.server.federated` (``clues federate``: FedAvg rounds with scoring at the global model)
both take a fleet; :mod:`~clues.server.overlap` is the check both start with, :mod:`~clues.server.results`
writes what they share, :mod:`~clues.server.stages` makes their stages resumable.
"""
