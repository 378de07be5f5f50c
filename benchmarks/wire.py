"""Bytes on the wire per client-round, and the cost of sealing them.

MiniLM-L6 with Low Rank (r = 8) adapters on ``query`` and ``value``, Rotten Tomatoes batches of
32 reviews padded to 128 tokens. For several batches it measures the adaptation-data payload
against the reference code's form (fp32, every padded row, one ``x`` per layer), losslessly and
with the opt-in fp16/bf16 casts; whether a general-purpose compressor (zlib, lzma) gains on top;
the whole client-round (adaptation data down; adapter state and the next batch up, sealed) in
each exact form (``wire.form``: rows, the weight-space gradient G, the adapters' parameter
gradient, or the smallest per layer) against a FedAvg-LoRA client round of the same adapters
(the adapters down and up, sealed); the crossover row count above which G is smaller, here and
on SmolLM2-135M's ``q_proj``/``v_proj`` shapes; the server step with each form computed, against
the limit (frozen forward plus backward to the adapted outputs), interleaved; and seal/open
throughput of AES-256-GCM on one core.

    python -m benchmarks.wire [--batches 8]
"""

from __future__ import annotations

import argparse
import lzma
import os
import statistics
import sys
import time
import zlib

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--length", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args(argv)

    import torch
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    import cola_fed
    from benchmarks.common import write_result
    from cola_fed.tasks.text_classification import (
        encode,
        load_minilm_classifier,
        load_rotten_tomatoes,
    )
    from cola_fed.wire import (
        SecureChannel,
        encode_adaptation,
        encode_adapter_state,
        encode_batch,
        public_bytes,
    )

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    from cola_fed.gl.forms import FORMS, to_form
    from cola_fed.gl.layout import assign_specs

    data = load_rotten_tomatoes()
    model, tokenizer = load_minilm_classifier()
    engine = cola_fed.ServerEngine(model, targets=["query", "value"])
    learner = cola_fed.GradientLearner(engine.layout, cola_fed.AdapterSpec(kind="lowrank", rank=8))
    state = learner.adapter_state()
    specs = assign_specs(engine.layout, cola_fed.AdapterSpec(kind="lowrank", rank=8))
    for params in state.values():
        params["B"].normal_(0, 0.01, generator=torch.Generator().manual_seed(0))

    server_key, node_key = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    transcript = bytes(32)  # the SHA-256 of a hello transcript: any 32 bytes will do here
    server = SecureChannel(server_key, public_bytes(node_key), role="server", run_id=1,
                           node_id=7, transcript=transcript)
    node = SecureChannel(node_key, public_bytes(server_key), role="node", run_id=1, node_id=7,
                         transcript=transcript)

    rows: list[dict] = []
    blobs = {}
    for i in range(args.batches):
        lo = i * args.batch_size
        batch = encode(tokenizer, data.texts[lo:lo + args.batch_size],
                       data.labels[lo:lo + args.batch_size], args.length)
        adaptation = engine.compute({"c": batch}, {"c": state})["c"]
        reference = sum(args.batch_size * args.length * (info.d_in + info.d_out) * 4
                        for info in engine.layout)
        row = {"reference_bytes": reference,
               "tokens": int(batch["attention_mask"].sum())}
        for dtype in ("float32", "float16", "bfloat16"):
            blob = encode_adaptation(adaptation, dtype=dtype)
            row[f"{dtype}_bytes"] = len(blob)
            row[f"{dtype}_ratio"] = len(blob) / reference
            blobs[dtype] = blob
        row["zlib_ratio_on_float32"] = len(zlib.compress(blobs["float32"], 6)) / len(
            blobs["float32"])
        row["lzma_ratio_on_float32"] = len(lzma.compress(blobs["float32"], preset=1)) / len(
            blobs["float32"])
        upstream = encode_adapter_state(learner.adapter_state()) + encode_batch(
            {k: v for k, v in batch.items()})
        down = server.seal(blobs["float32"], kind="train")
        up = node.seal(upstream, kind="train")
        row["client_round_bytes_float32"] = len(down) + len(up)
        row["upstream_bytes"] = len(up)
        # FedAvg-LoRA: the same adapters down and up, sealed
        lora = encode_adapter_state(state)
        fedavg = len(server.seal(lora, kind="train")) + len(
            node.seal(lora, kind="train"))
        row["fedavg_lora_client_round_bytes"] = fedavg
        for form in FORMS:
            shaped = to_form(adaptation, engine.layout, specs, form, adapters=state)
            for dtype in ("float32", "float16"):
                blob = encode_adaptation(shaped, dtype=dtype)
                total = len(server.seal(blob, kind="train")) + len(up)
                row[f"{form}_{dtype}_client_round_bytes"] = total
                row[f"{form}_{dtype}_vs_fedavg_lora"] = total / fedavg
        rows.append(row)
        say(f"batch {i}: {row['tokens']} tokens, lossless {row['float32_ratio']:.3f}x, "
            f"fp16 {row['float16_ratio']:.3f}x, zlib on top {row['zlib_ratio_on_float32']:.3f}; "
            f"client round vs FedAvg-LoRA: rows {row['rows_float32_vs_fedavg_lora']:.1f}x, "
            f"G {row['weight-gradient_float32_vs_fedavg_lora']:.1f}x, auto "
            f"{row['auto_float32_vs_fedavg_lora']:.2f}x (fp16 "
            f"{row['auto_float16_vs_fedavg_lora']:.2f}x)")
        last_batch = batch

    # the server step with each form computed, against the limit, interleaved
    import copy

    from benchmarks.common import interleaved_medians
    from benchmarks.server_step import _limit_step

    limit = _limit_step(copy.deepcopy(model), last_batch)

    def server_step(form: str):
        def step():
            out = engine.compute({"c": last_batch}, {"c": state})["c"]
            to_form(out, engine.layout, specs, form, adapters=state)
        return step

    say(f"server step by form vs the limit, {args.repeats} interleaved repeats ...")
    timings = interleaved_medians({"limit": limit, **{f: server_step(f) for f in FORMS}},
                                  args.repeats)
    by_form = {name: {**t, "vs_limit": t["median_s"] / timings["limit"]["median_s"]}
               for name, t in timings.items()}

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    # sealing throughput: one core, a 32 MiB payload, medians over repeats
    payload = os.urandom(32 * 2**20)
    seal_s, open_s = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        sealed = server.seal(payload, kind="train")
        seal_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        node.open(sealed, kind="train")
        open_s.append(time.perf_counter() - start)
    mb = len(payload) / 1e6
    result = {
        "config": vars(args) | {"model": "all-MiniLM-L6-v2", "targets": ["query", "value"],
                                "rank": 8},
        "per_batch": rows,
        "median": {
            "reference_bytes": med("reference_bytes"),
            "lossless_bytes": med("float32_bytes"),
            "lossless_ratio": med("float32_ratio"),
            "float16_ratio": med("float16_ratio"),
            "bfloat16_ratio": med("bfloat16_ratio"),
            "zlib_ratio_on_lossless": med("zlib_ratio_on_float32"),
            "lzma_ratio_on_lossless": med("lzma_ratio_on_float32"),
            "client_round_bytes": med("client_round_bytes_float32"),
            "upstream_bytes": med("upstream_bytes"),
            "fedavg_lora_client_round_bytes": med("fedavg_lora_client_round_bytes"),
            **{f"{form}_{dtype}_{what}": med(f"{form}_{dtype}_{what}")
               for form in FORMS for dtype in ("float32", "float16")
               for what in ("client_round_bytes", "vs_fedavg_lora")},
        },
        "crossover_rows": {
            "minilm_query_value": crossover([(384, 384), (384, 384)]),
            "smollm2_q_proj_v_proj": crossover([(576, 576), (576, 192)]),
        },
        "server_step_by_form": by_form,
        "aes_gcm_mb_per_s": {"seal": mb / statistics.median(seal_s),
                             "open": mb / statistics.median(open_s)},
    }
    for key, value in {**result["median"], **result["crossover_rows"]}.items():
        say(f"  {key:40s} {value:,.3f}")
    for name, t in by_form.items():
        say(f"  server step {name:20s} {t['median_s'] * 1e3:8.1f} ms  {t['vs_limit']:.3f} x limit")
    say(f"  seal {result['aes_gcm_mb_per_s']['seal']:.0f} MB/s, "
        f"open {result['aes_gcm_mb_per_s']['open']:.0f} MB/s")
    say(f"wrote {write_result('wire', result)}")


def crossover(shapes: list[tuple[int, int]]) -> float:
    """Rows above which the weight-space form of layers sharing one input ``(d_in, d_out)``
    is smaller than their rows: ``sum d_out (d_in + 1) / (d_in + sum d_out)``."""
    d_in = shapes[0][0]
    return sum(o * (d_in + 1) for _, o in shapes) / (d_in + sum(o for _, o in shapes))


if __name__ == "__main__":
    main()
