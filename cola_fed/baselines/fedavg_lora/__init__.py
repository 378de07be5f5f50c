"""FedAvg over PEFT LoRA adapters: the baseline a Flower user would otherwise pick.

Every client holds the frozen base model and trains LoRA on it (FlowerTune's pattern); the
server averages the clients' LoRA weights with Flower's own ``FedAvg``. Built from the same
flat run config as a cola-fed run, on any cola-fed task, starting from ColA's initial adapters.

- :mod:`.lora`: the PEFT LoRA model of a task and its train/evaluate operations;
- :mod:`.client_app`, :mod:`.server_app`: the Flower ``ClientApp``/``ServerApp`` pair
  (``cola_fed.baselines.fedavg_lora.server_app:app``, ``...client_app:app``);
- :mod:`.run`: :func:`run_fedavg_lora` (the pair, in process) and :func:`run_local_lora`
  (every node alone, no federation);
- :mod:`.options`: the baseline's own run config keys (``local-steps``, ``optimizer-state``,
  ``results-file``).
"""

from cola_fed.baselines.fedavg_lora.run import run_fedavg_lora, run_local_lora

__all__ = ["run_fedavg_lora", "run_local_lora"]
