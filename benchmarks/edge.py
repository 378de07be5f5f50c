"""Edge train step: ONNX Runtime vs PyTorch eager, per step, on MiniLM-L6 shapes.

d_in = d_out = 384, 2,048 rows (32 reviews x 64 tokens), Low Rank r = 8, Linear, MLP hidden 128;
AdamW and SGD with momentum; both on one thread, interleaved and repeated, medians. PyTorch eager
is the ``GradientLearner`` step (closed-form VJP + functional optimizer). (The whole-client-round
RSS comparison of the issue needs the ONNX client backend, which is not built yet.)

    python -m benchmarks.edge [--repeats 30]
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--rows", type=int, default=2048)
    args = parser.parse_args(argv)

    import torch

    from benchmarks.common import interleaved_medians, write_result
    from cola_fed import AdaptationData, AdapterSpec, GradientLearner, OptimizerSpec
    from cola_fed.edge.export import export_train_step
    from cola_fed.edge.graphs import GraphKey
    from cola_fed.edge.ort_learner import OrtLearner
    from cola_fed.gl.layout import LayerInfo, Layout

    torch.set_num_threads(1)
    layout = Layout((LayerInfo("q", 384, 384),))
    rng = np.random.default_rng(0)
    data = AdaptationData({"q": rng.standard_normal((args.rows, 384)).astype(np.float32)},
                          {"q": (rng.standard_normal((args.rows, 384)) * 1e-3).astype(np.float32)},
                          {"q": "q"})
    specs = {"lowrank": AdapterSpec(kind="lowrank", rank=8), "linear": AdapterSpec(kind="linear"),
             "mlp": AdapterSpec(kind="mlp", hidden=128, depth=1)}
    optimizers = {"adamw": OptimizerSpec(name="adamw", lr=1e-4),
                  "sgd": OptimizerSpec(name="sgd", lr=1e-3, momentum=0.9)}
    results = {}
    for kind, spec in specs.items():
        for opt_name, optimizer in optimizers.items():
            key = GraphKey(spec, 384, 384, optimizer.name, optimizer.nesterov)
            eager = GradientLearner(layout, spec, optimizer=optimizer, seed=0)
            state = {n: {p: v.numpy() for p, v in ps.items()}
                     for n, ps in eager.adapter_state().items()}
            edge = OrtLearner(layout, spec, optimizer, {key.name: export_train_step(key)}, state)
            times = interleaved_medians({"ort": lambda e=edge: e.fit(data),
                                         "torch-eager": lambda g=eager: g.fit(data)},
                                        args.repeats, warmup=3)
            speedup = times["torch-eager"]["median_s"] / times["ort"]["median_s"]
            results[f"{kind}-{opt_name}"] = {"times": times, "ort_speedup_over_eager": speedup}
            print(f"{kind:8s} {opt_name:5s} ort {times['ort']['median_s'] * 1e3:7.2f} ms  "
                  f"eager {times['torch-eager']['median_s'] * 1e3:7.2f} ms  "
                  f"speedup {speedup:.2f}x", file=sys.stderr, flush=True)
    path = write_result("edge", {"config": vars(args) | {"threads": 1}, "steps": results})
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
