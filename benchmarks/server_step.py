"""The ColA server step against its lower limit and against a PEFT LoRA training step.

On MiniLM-L6 (query and value adapted, Low Rank r = 8, batches of Rotten Tomatoes reviews padded
to 64 tokens) it measures, interleaved and repeated, in one run:

(a) ``limit``: frozen-base forward plus backward to the adapted layers' outputs, nothing
    captured: the least work any server step can do;
(b) the ColA server step (``ServerEngine.compute``), unmerged and merged;
(c) a PEFT LoRA training step (forward, backward, AdamW);
(d) K clients in mixed ColA passes against K separate PEFT LoRA steps (one adapter and one
    AdamW per client, as a server training every client's LoRA would hold);

and the peak memory of each step above its loaded model: on a CPU the peak RSS of two steps,
each in a fresh process; on a GPU ``torch.cuda.max_memory_allocated`` over two steps of a fresh
build, in this process.

``--device`` and ``--dtype`` put the model, the batches and every step on a device and in a
dtype (``bf16``: the base model in bfloat16; ColA's adapters stay float32, and merged mode adds
``delta W`` in float32 and restores the exact bfloat16 weights afterwards; PEFT keeps its LoRA
weights in float32 too). ``--device cuda`` fails at once without a GPU; every CUDA timing is
bracketed by ``torch.cuda.synchronize()``. ``--time-budget`` skips the larger K of (d) that
would not fit, and the result file is rewritten after every section, so a run cut short still
leaves what it measured.

    python -m benchmarks.server_step [--repeats 7] [--batch 32] [--clients 1 4 16]
    python -m benchmarks.server_step --device cuda --dtype bf16 --clients 1 4 16 64 256 \\
        --max-server-batch 0 --output server_step_cuda
"""

from __future__ import annotations

import argparse
import functools
import gc
import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from torch import nn

os.environ.setdefault("HF_HUB_OFFLINE", "1")

TARGETS = ["query", "value"]
RANK = 8
DTYPES = {"fp32": "float32", "bf16": "bfloat16"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of a ``--dtype`` name."""
    import torch

    return getattr(torch, DTYPES[name])


def check_device(device: str) -> None:
    """Fail clearly, before any work, if ``device`` is not usable here: a CUDA run must never
    fall back to the CPU and report CPU figures as GPU ones."""
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SystemExit(
                f"--device {device}: torch.cuda.is_available() is False (torch "
                f"{torch.__version__}, CUDA build {torch.version.cuda}); run on a GPU machine "
                "with a CUDA build of torch, or pass --device cpu")
        torch.zeros(1, device=device)  # a bad index ("cuda:7") fails here, not mid-run
    elif device != "cpu":
        raise SystemExit(f"--device: expected cpu or cuda[:N], got {device!r}")


def synchronizer(device: str) -> Callable[[], None] | None:
    """What waits for the device's queued work before a clock is read (``None`` on a CPU)."""
    import torch

    if device.startswith("cuda"):
        return functools.partial(torch.cuda.synchronize, device)
    return None


def make_batches(num: int, size: int, length: int, seed: int = 0,
                 device: str = "cpu") -> list[dict[str, torch.Tensor]]:
    """``num`` batches of ``size`` Rotten Tomatoes reviews padded to ``length`` tokens."""
    from transformers import AutoTokenizer

    from cola_fed.tasks.text_classification import encode, load_rotten_tomatoes, minilm_path

    data = load_rotten_tomatoes()
    tokenizer = AutoTokenizer.from_pretrained(minilm_path())
    batches = []
    for i in range(num):
        lo = seed * 1000 + i * size
        batch = encode(tokenizer, data.texts[lo:lo + size], data.labels[lo:lo + size], length)
        batches.append({k: v.to(device) for k, v in batch.items()})
    return batches


def build(variant: str, clients: int, size: int, length: int, max_server_batch: int | None = None,
          device: str = "cpu", dtype: str = "fp32") -> Callable[[], None]:
    """A zero-argument callable running one step of ``variant``; everything built here, on
    ``device`` and with the base model in ``dtype``."""
    import torch

    import cola_fed
    from cola_fed.tasks.text_classification import load_minilm_classifier

    model, _ = load_minilm_classifier()
    model.to(device=device, dtype=torch_dtype(dtype))
    batches = make_batches(clients, size, length, device=device)

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
            states[f"c{c}"] = state  # float32 on the CPU, as a state arrives from the wire
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


def _limit_step(model: nn.Module, batch: dict[str, torch.Tensor]) -> Callable[[], None]:
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
        # the loss in float32 at least, as the engine's (a bf16 model's logits are upcast)
        logits = model(**inputs).logits
        loss = F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)),
                               batch["labels"])
        torch.autograd.grad(loss, outputs)

    return step


def _peft_steps(model: nn.Module, batches: list[dict[str, torch.Tensor]]) -> Callable[[], None]:
    """One PEFT LoRA training step per batch, each with its own client's LoRA and AdamW.

    Every client owns its LoRA weights (PEFT's initialisation, drawn per client) and an AdamW
    over them; a step points the PEFT model's LoRA layers at the client's weights (a dict
    assignment per weight) and trains. That is PEFT's multi-adapter model (``add_adapter`` /
    ``set_adapter``) without its bookkeeping, which visits every adapter of every layer at each
    switch: O(K) per switch, O(K^2) per round, 20 s a round at K = 256 on a CPU.
    """
    import peft
    import torch
    from peft.tuners.lora import LoraLayer

    config = peft.LoraConfig(r=RANK, lora_alpha=RANK, lora_dropout=0.0, target_modules=TARGETS)
    peft_model = peft.get_peft_model(model, config)
    peft_model.eval()
    layers = [m for m in peft_model.modules() if isinstance(m, LoraLayer)]
    slots = [linear for m in layers for linear in (m.lora_A["default"], m.lora_B["default"])]
    clients: list[list[torch.nn.Parameter]] = []
    optimizers = []
    for _ in batches:
        for layer in layers:  # a fresh PEFT initialisation for each client
            layer.reset_lora_parameters("default", init_lora_weights=True)
        weights = [torch.nn.Parameter(linear.weight.detach().clone()) for linear in slots]
        clients.append(weights)
        optimizers.append(torch.optim.AdamW(weights, lr=3e-4))

    def step():
        for batch, weights, optimizer in zip(batches, clients, optimizers):
            for linear, weight in zip(slots, weights):
                linear.weight = weight
            optimizer.zero_grad(set_to_none=True)
            peft_model(**batch).loss.backward()
            optimizer.step()

    def state_bytes() -> int:
        """Bytes the server keeps per run: every client's LoRA, its gradients and AdamW slots."""
        total = 0
        for weights in clients:
            for param in weights:
                total += param.numel() * param.element_size()
                if param.grad is not None:
                    total += param.grad.numel() * param.grad.element_size()
        for optimizer in optimizers:
            for state in optimizer.state.values():
                total += sum(t.numel() * t.element_size() for t in state.values()
                             if hasattr(t, "numel") and t.dim() > 0)
        return total

    step.state_bytes = state_bytes
    return step


# --------------------------------------------------------------------------------------------
# peak memory


def _peak_memory(variant: str, clients: int, size: int, length: int,
                 max_server_batch: int | None = None, device: str = "cpu", dtype: str = "fp32",
                 steps: int = 2) -> float:
    """Peak memory (MB) of ``steps`` steps of a fresh build of ``variant`` above what the build
    holds: RSS on a CPU (run it in a fresh process), allocated CUDA memory on a GPU."""
    import torch

    from benchmarks.common import reset_peak_rss, rss_mb

    cuda = device.startswith("cuda")
    step = build(variant, clients, size, length, max_server_batch, device, dtype)
    gc.collect()
    if cuda:
        torch.cuda.synchronize(device)
        baseline = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
    else:
        baseline = rss_mb()
        reset_peak_rss()
    for _ in range(steps):
        step()
    if not cuda:
        return rss_mb("VmHWM") - baseline
    torch.cuda.synchronize(device)
    peak = (torch.cuda.max_memory_allocated(device) - baseline) / 2**20
    del step
    gc.collect()
    torch.cuda.empty_cache()
    return peak


def peak_memory(variant: str, clients: int, size: int, length: int,
                max_server_batch: int | None = None, device: str = "cpu",
                dtype: str = "fp32") -> float:
    """Peak memory (MB) of two steps above the loaded model: on a CPU the RSS of a fresh
    process (it counts activations and everything a step allocates, optimizer state included),
    on a GPU ``torch.cuda.max_memory_allocated`` of a fresh build in this process."""
    args = (variant, clients, size, length, max_server_batch, device, dtype)
    if device.startswith("cuda"):
        return _peak_memory(*args)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_peak_memory, args)


# --------------------------------------------------------------------------------------------
# the benchmark


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch", type=int, default=32, help="samples per batch in (a)-(c)")
    parser.add_argument("--length", type=int, default=64, help="tokens per sample")
    parser.add_argument("--client-batch", type=int, default=8, help="samples per client in (d)")
    parser.add_argument("--clients", type=int, nargs="*", default=[1, 4, 16],
                        help="values of K in (d); none skips (d)")
    parser.add_argument("--max-server-batch", type=int, default=32,
                        help="most samples in one mixed ColA pass in (d); 0: no limit, all K "
                             "clients in one pass")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32",
                        help="dtype of the base model (default fp32)")
    parser.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                        help="skip a K in (d) whose predicted end (from the previous K, scaled "
                             "by K) falls after this many seconds from the start")
    parser.add_argument("--output", default=None,
                        help="result name under benchmarks/results/ (default server_step, "
                             "or server_step_DEVICE_DTYPE off cpu/fp32)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU threads (default torch's own); 1 steadies the timings "
                             "on a CPU shared with other work")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory probes")
    args = parser.parse_args(argv)
    if args.max_server_batch < 0 or min(args.clients, default=1) < 1 or args.repeats < 1:
        parser.error("--max-server-batch must be >= 0, --clients and --repeats >= 1")
    if args.output is None:
        plain = args.device == "cpu" and args.dtype == "fp32"
        args.output = ("server_step" if plain
                       else f"server_step_{args.device.replace(':', '')}_{args.dtype}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    check_device(args.device)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    started = time.perf_counter()
    device, dtype = args.device, args.dtype
    server_batch = args.max_server_batch or None

    from benchmarks.common import interleaved_medians, paired_ratio, write_result

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    sync = synchronizer(device)
    result: dict[str, Any] = {
        "config": vars(args) | {"model": "all-MiniLM-L6-v2", "targets": TARGETS, "rank": RANK},
        "single": {}, "clients": {}, "skipped_clients": [],
        "memory_measure": ("torch.cuda.max_memory_allocated over 2 steps of a fresh build, "
                           "minus allocated after the build" if device.startswith("cuda")
                           else "peak RSS over 2 steps in a fresh process, minus RSS after "
                           "the build"),
    }
    memory: dict[str, float] = {}

    def save() -> None:
        result["seconds"] = time.perf_counter() - started
        if memory:
            result["peak_memory_mb"] = memory
        write_result(args.output, result, device=device)

    say(f"(a)-(c): batch {args.batch} x {args.length} tokens, {args.repeats} repeats, "
        f"{device} {dtype}")
    single = ["limit", "cola-unmerged", "cola-merged", "peft-lora"]
    steps = {v: build(v, 1, args.batch, args.length, device=device, dtype=dtype)
             for v in single}
    times = interleaved_medians(steps, args.repeats, synchronize=sync)
    del steps
    med = {v: times[v]["median_s"] for v in single}
    result["single"] = {
        "times": times,
        "ratios": {
            "cola_unmerged_over_limit": med["cola-unmerged"] / med["limit"],
            "cola_merged_over_limit": med["cola-merged"] / med["limit"],
            "cola_unmerged_over_peft": med["cola-unmerged"] / med["peft-lora"],
            "cola_merged_over_peft": med["cola-merged"] / med["peft-lora"],
        },
        # the median of each round's ratio: steadier on a machine whose load drifts
        "paired_ratios": {
            "cola_unmerged_over_limit": paired_ratio(times, "cola-unmerged", "limit"),
            "cola_merged_over_limit": paired_ratio(times, "cola-merged", "limit"),
        },
    }
    for v in single:
        say(f"  {v:14s} median {med[v] * 1000:8.2f} ms")
    paired = result["single"]["paired_ratios"]
    say(f"  unmerged / limit {med['cola-unmerged'] / med['limit']:.3f} (paired "
        f"{paired['cola_unmerged_over_limit']:.3f}), merged / limit "
        f"{med['cola-merged'] / med['limit']:.3f} (paired "
        f"{paired['cola_merged_over_limit']:.3f})")
    if not args.no_memory:
        for v in single:
            memory[v] = peak_memory(v, 1, args.batch, args.length, device=device, dtype=dtype)
            say(f"  peak memory {v:14s} {memory[v]:8.1f} MB")
    save()

    previous: tuple[int, float] | None = None  # (K, seconds its section took)
    for k in args.clients:
        elapsed = time.perf_counter() - started
        if args.time_budget is not None and previous is not None:
            predicted = previous[1] * k / previous[0]
            if elapsed + predicted > args.time_budget:
                say(f"(d): skipping K = {k}: about {predicted:.0f} s predicted after "
                    f"{elapsed:.0f} s, over the {args.time_budget:.0f} s budget")
                result["skipped_clients"].append(
                    {"clients": k, "elapsed_s": elapsed, "predicted_s": predicted})
                continue
        section_start = time.perf_counter()
        say(f"(d): K = {k} clients x {args.client_batch} samples, passes of at most "
            f"{server_batch or k * args.client_batch} samples")
        steps = {"cola-mixed": build("cola-mixed", k, args.client_batch, args.length,
                                     server_batch, device, dtype),
                 "peft-separate": build("peft-separate", k, args.client_batch, args.length,
                                        device=device, dtype=dtype)}
        t = interleaved_medians(steps, max(3, args.repeats // 2), synchronize=sync)
        ratio = t["cola-mixed"]["median_s"] / t["peft-separate"]["median_s"]
        result["clients"][str(k)] = {
            "times": t,
            "cola_mixed_over_peft_separate": ratio,
            "server_state_bytes_kept": {name: step.state_bytes() for name, step in steps.items()},
            "cola_adapter_bytes_per_request": steps["cola-mixed"].request_bytes,
        }
        del steps
        say(f"  cola mixed {t['cola-mixed']['median_s']:.4f} s, "
            f"peft separate {t['peft-separate']['median_s']:.4f} s, ratio {ratio:.3f}")
        if not args.no_memory:
            for v in ("cola-mixed", "peft-separate"):
                memory[f"{v}-K{k}"] = peak_memory(v, k, args.client_batch, args.length,
                                                  server_batch, device, dtype)
            say(f"  peak memory cola mixed {memory[f'cola-mixed-K{k}']:.1f} MB, "
                f"peft separate {memory[f'peft-separate-K{k}']:.1f} MB")
        previous = (k, time.perf_counter() - section_start)
        save()

    save()
    say(f"wrote {args.output}.json")


if __name__ == "__main__":
    main()
