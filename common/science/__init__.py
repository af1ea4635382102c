"""The science a researcher reads and copies: the probe, statistics, interventions, curvature, networks, optimizers,
datasets and environments, the ALE pipeline. It imports only ``common.errors`` and itself."""
