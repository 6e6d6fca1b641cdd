"""Federated CLUES on Flower (Message API): the ClientApp wraps a :class:`~clues.silo.Silo`, the ServerApp
runs :class:`~clues.federated.FederatedServer` over the Grid; the simulation and deployment engines share both."""
