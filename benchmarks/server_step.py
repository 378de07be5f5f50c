"""The ColA server step against its lower limit and against a PEFT LoRA training step.

On MiniLM-L6 (query and value adapted, Low Rank r = 8, batches of Rotten Tomatoes reviews padded
to 64 tokens, CPU) it measures, interleaved and repeated, in one run:

(a) ``limit``: frozen-base forward plus backward to the adapted layers' outputs, nothing
    captured: the least work any server step can do;
(b) the ColA server step (``ServerEngine.compute``), unmerged and merged;
(c) a PEFT LoRA training step (forward, backward, AdamW);
(d) K clients in one mixed ColA pass against K separate PEFT LoRA steps (one adapter and one
    AdamW per client, as a server training every client's LoRA would hold);

and the peak memory of each above the loaded model, each in a fresh process.

    python -m benchmarks.server_step [--repeats 7] [--batch 32] [--clients 1 4 16]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = ["query", "value"]
RANK = 8


def make_batches(num: int, size: int, length: int, seed: int = 0) -> list[dict]:
    from cola_fed.tasks.text_classification import (
        encode,
        load_minilm_classifier,
        load_rotten_tomatoes,
    )

    data = load_rotten_tomatoes()
    _, tokenizer = load_minilm_classifier()
    batches = []
    for i in range(num):
        lo = seed * 1000 + i * size
        batches.append(encode(tokenizer, data.texts[lo:lo + size], data.labels[lo:lo + size],
                              length))
    return batches


def build(variant: str, clients: int, size: int, length: int, max_server_batch: int | None = None):
    """A zero-argument callable running one step of ``variant``; everything built here."""
    import torch

    import cola_fed
    from cola_fed.tasks.text_classification import load_minilm_classifier

    model, _ = load_minilm_classifier()
    batches = make_batches(clients, size, length)

    if variant == "limit":
        return _limit_step(model, batches[0])
    if variant.startswith("cola"):
        mode = "merged" if variant == "cola-merged" else "unmerged"
        engine = cola_fed.ServerEngine(model, targets=TARGETS, mode=mode,
                                       max_batch_size=max_server_batch)
        spec = cola_fed.AdapterSpec(kind="lowrank", rank=RANK)
        states = {}
        for c in range(clients):
            learner = cola_fed.GradientLearner(engine.layout, spec, seed=c)
            state = learner.adapter_state()
            for params in state.values():  # a trained-looking B, so nothing is trivially zero
                params["B"].normal_(0, 0.01, generator=torch.Generator().manual_seed(c))
            states[f"c{c}"] = state
        client_batches = {f"c{c}": batches[c] for c in range(clients)}

        def step():
            engine.compute(client_batches, states)

        # The engine keeps nothing per client: adapter states arrive with each request and
        # are dropped after it. Report what arrives, for comparison with PEFT's kept state.
        step.state_bytes = lambda: 0
        step.request_bytes = sum(t.numel() * t.element_size() for state in states.values()
                                 for params in state.values() for t in params.values())
        return step
    if variant.startswith("peft"):
        return _peft_steps(model, batches)
    raise ValueError(variant)


def _limit_step(model, batch):
    import torch
    import torch.nn.functional as F

    from cola_fed.gl.targets import find_targets

    model.requires_grad_(False)
    _, modules = find_targets(model, TARGETS)
    outputs: list[torch.Tensor] = []

    def keep(module, args, output):
        if not output.requires_grad:
            output = output.detach().requires_grad_(True)
        outputs.append(output)
        return output

    for module in modules.values():
        module.register_forward_hook(keep)
    inputs = {k: v for k, v in batch.items() if k != "labels"}

    def step():
        outputs.clear()
        loss = F.cross_entropy(model(**inputs).logits, batch["labels"])
        torch.autograd.grad(loss, outputs)

    return step


def _peft_steps(model, batches):
    import peft
    import torch

    config = peft.LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, target_modules=TARGETS)
    peft_model = peft.get_peft_model(model, config, adapter_name="c0")
    for c in range(1, len(batches)):
        peft_model.add_adapter(f"c{c}", config)
    optimizers = []
    for c in range(len(batches)):
        peft_model.set_adapter(f"c{c}")
        params = [p for p in peft_model.parameters() if p.requires_grad]
        optimizers.append(torch.optim.AdamW(params, lr=3e-4))
    peft_model.eval()

    def step():
        for c, (batch, optimizer) in enumerate(zip(batches, optimizers)):
            peft_model.set_adapter(f"c{c}")
            optimizer.zero_grad(set_to_none=True)
            peft_model(**batch).loss.backward()
            optimizer.step()

    def state_bytes() -> int:
        """Bytes the server keeps per run: every client's LoRA, its gradients and AdamW slots."""
        total = 0
        for name, param in peft_model.named_parameters():
            if "lora_" in name:
                total += param.numel() * param.element_size()
                if param.grad is not None:
                    total += param.grad.numel() * param.grad.element_size()
        for optimizer in optimizers:
            for slots in optimizer.state.values():
                total += sum(t.numel() * t.element_size() for t in slots.values()
                             if hasattr(t, "numel") and t.dim() > 0)
        return total

    step.state_bytes = state_bytes
    return step



def _peak_memory(variant: str, clients: int, size: int, length: int,
                 max_server_batch: int | None = None, steps: int = 2) -> float:
    import gc

    from benchmarks.common import reset_peak_rss, rss_mb

    step = build(variant, clients, size, length, max_server_batch)
    gc.collect()
    baseline = rss_mb()
    reset_peak_rss()
    for _ in range(steps):
        step()
    return rss_mb("VmHWM") - baseline


def peak_memory(variant: str, clients: int, size: int, length: int,
                max_server_batch: int | None = None) -> float:
    """Peak RSS (MB) of two steps above the loaded model, measured in a fresh process.

    It counts activations and everything a step allocates, optimizer state included.
    """
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peak_memory, (variant, clients, size, length, max_server_batch))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32, help="samples per batch in (a)-(c)")
    parser.add_argument("--length", type=int, default=64, help="tokens per sample")
    parser.add_argument("--client-batch", type=int, default=8, help="samples per client in (d)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--max-server-batch", type=int, default=32,
                        help="most samples in one mixed ColA pass in (d)")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    args = parser.parse_args(argv)

    from benchmarks.common import interleaved_medians, write_result

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    say(f"(a)-(c): batch {args.batch} x {args.length} tokens, {args.repeats} repeats")
    single = ["limit", "cola-unmerged", "cola-merged", "peft-lora"]
    steps = {v: build(v, 1, args.batch, args.length) for v in single}
    times = interleaved_medians(steps, args.repeats)
    del steps
    med = {v: times[v]["median_s"] for v in single}
    result: dict = {
        "config": vars(args) | {"model": "all-MiniLM-L6-v2", "targets": TARGETS, "rank": RANK},
        "single": {
            "times": times,
            "ratios": {
                "cola_unmerged_over_limit": med["cola-unmerged"] / med["limit"],
                "cola_merged_over_limit": med["cola-merged"] / med["limit"],
                "cola_unmerged_over_peft": med["cola-unmerged"] / med["peft-lora"],
                "cola_merged_over_peft": med["cola-merged"] / med["peft-lora"],
            },
        },
        "clients": {},
    }
    for v in single:
        say(f"  {v:14s} median {med[v] * 1000:8.1f} ms")

    for k in args.clients:
        say(f"(d): K = {k} clients x {args.client_batch} samples")
        steps = {"cola-mixed": build("cola-mixed", k, args.client_batch, args.length,
                                     args.max_server_batch),
                 "peft-separate": build("peft-separate", k, args.client_batch, args.length)}
        t = interleaved_medians(steps, max(3, args.repeats // 2))
        ratio = t["cola-mixed"]["median_s"] / t["peft-separate"]["median_s"]
        result["clients"][str(k)] = {
            "times": t,
            "cola_mixed_over_peft_separate": ratio,
            "server_state_bytes_kept": {name: step.state_bytes() for name, step in steps.items()},
            "cola_adapter_bytes_per_request": steps["cola-mixed"].request_bytes,
        }
        del steps
        say(f"  cola mixed {t['cola-mixed']['median_s']:.3f} s, "
            f"peft separate {t['peft-separate']['median_s']:.3f} s, ratio {ratio:.2f}")

    if not args.no_memory:
        say("peak memory above the warmed-up model, each in a fresh process")
        memory = {v: peak_memory(v, 1, args.batch, args.length) for v in single}
        for k in args.clients:
            for v in ("cola-mixed", "peft-separate"):
                memory[f"{v}-K{k}"] = peak_memory(v, k, args.client_batch, args.length,
                                                  args.max_server_batch)
        result["peak_memory_mb"] = memory
        for name, mb in memory.items():
            say(f"  {name:20s} {mb:8.1f} MB")

    path = write_result("server_step", result)
    say(f"wrote {path}")


if __name__ == "__main__":
    main()
