"""Baselines that cola-fed is measured against, built from the same run config.

Each baseline is what a Flower user would otherwise pick, written as a real Flower app (a
``ServerApp``/``ClientApp`` pair) so that it runs wherever cola-fed runs: in process over
:class:`cola_fed.federation.local_grid.LocalGrid`, in Flower's simulation, or deployed.

- :mod:`cola_fed.baselines.fedavg_lora`: FedAvg over PEFT LoRA adapters, every client holding
  the frozen base model (FlowerTune's pattern).

Two things set this package apart from the rest of the library. It imports Flower (like
``cola_fed.federation`` and the CLI, and unlike the algorithm's packages), because a baseline
is a Flower app. And it trusts its clients as Flower's ``FedAvg`` does: it exists to measure
against, not to deploy, so it has none of cola-fed's defences (a node with valid keys can
poison the average with NaN or huge weights, or stop a round with a reply of the wrong shape).
"""
