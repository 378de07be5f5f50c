"""Experiments: ColA against PEFT LoRA, FedAvg-LoRA and local LoRA, side by side, with costs
(``cola-fed experiment NAME``, ``experiments/NAME.toml``; see docs/results.md)."""
