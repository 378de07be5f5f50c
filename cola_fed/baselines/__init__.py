"""Baselines that cola-fed is measured against, built from the same run config.

Each baseline is what a Flower user would otherwise pick, written as a real Flower app (a
``ServerApp``/``ClientApp`` pair) so that it runs wherever cola-fed runs: in process over
:class:`cola_fed.federation.local_grid.LocalGrid`, in Flower's simulation, or deployed.

- :mod:`cola_fed.baselines.fedavg_lora`: FedAvg over PEFT LoRA adapters, every client holding
  the frozen base model (FlowerTune's pattern).
"""
