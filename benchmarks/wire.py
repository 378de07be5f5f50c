"""Bytes on the wire per client-round, and the cost of sealing them.

MiniLM-L6 with Low Rank (r = 8) adapters on ``query`` and ``value``, Rotten Tomatoes batches of
32 reviews padded to 128 tokens. For several batches it measures the adaptation-data payload
against the reference code's form (fp32, every padded row, one ``x`` per layer), losslessly and
with the opt-in fp16/bf16 casts; whether a general-purpose compressor (zlib, lzma) gains on top;
the whole client-round (adaptation data down; adapter state and the next batch up, sealed); and
seal/open throughput of AES-256-GCM on one core.

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
        generate_private_key,
        public_bytes,
    )

    def say(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    data = load_rotten_tomatoes()
    model, tokenizer = load_minilm_classifier()
    engine = cola_fed.ServerEngine(model, targets=["query", "value"])
    learner = cola_fed.GradientLearner(engine.layout, cola_fed.AdapterSpec(kind="lowrank", rank=8))
    state = learner.adapter_state()
    for params in state.values():
        params["B"].normal_(0, 0.01, generator=torch.Generator().manual_seed(0))

    server_key, node_key = generate_private_key(), generate_private_key()
    server = SecureChannel(server_key, public_bytes(node_key), role="server", run_id=1, node_id=7)
    node = SecureChannel(node_key, public_bytes(server_key), role="node", run_id=1, node_id=7)

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
        down = server.seal(blobs["float32"], round=i + 1, kind="train")
        up = node.seal(upstream, round=i + 1, kind="train")
        row["client_round_bytes_float32"] = len(down) + len(up)
        row["upstream_bytes"] = len(up)
        rows.append(row)
        say(f"batch {i}: {row['tokens']} tokens, lossless {row['float32_ratio']:.3f}x, "
            f"fp16 {row['float16_ratio']:.3f}x, zlib on top {row['zlib_ratio_on_float32']:.3f}")

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    # sealing throughput: one core, a 32 MiB payload, medians over repeats
    payload = os.urandom(32 * 2**20)
    seal_s, open_s = [], []
    for r in range(args.repeats):
        start = time.perf_counter()
        sealed = server.seal(payload, round=1000 + r, kind="train")
        seal_s.append(time.perf_counter() - start)
        start = time.perf_counter()
        node.open(sealed, round=1000 + r, kind="train")
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
        },
        "aes_gcm_mb_per_s": {"seal": mb / statistics.median(seal_s),
                             "open": mb / statistics.median(open_s)},
    }
    for key, value in result["median"].items():
        say(f"  {key:28s} {value:,.3f}")
    say(f"  seal {result['aes_gcm_mb_per_s']['seal']:.0f} MB/s, "
        f"open {result['aes_gcm_mb_per_s']['open']:.0f} MB/s")
    say(f"wrote {write_result('wire', result)}")


if __name__ == "__main__":
    main()
