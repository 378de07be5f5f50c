"""Conformance vectors of the node's data side: numpy's generator (the batch order), the digits
and MNIST tasks on a node's own CSV, text classification with the shipped tokenizer, and CSVs
the Python node refuses."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path

import numpy as np

from cola_fed.config import TaskConfig
from cola_fed.errors import ColaError
from cola_fed.tasks import get_task

#: seeds of the generator vectors: small, 32-bit, above 2^32, above 2^64 and 2^128
RNG_SEEDS = (0, 1, 7, 42, 12345, 2**32 - 1, 2**32 + 7, 2**63 + 11, 2**64 + 3, 2**128 + 5)
#: permutation sizes: the edge cases, a digits-sized and an MNIST-sized one
PERMUTATION_SIZES = (0, 1, 2, 17, 1797, 60000)


def _rng_vectors() -> list[dict]:
    out = []
    for seed in RNG_SEEDS:
        rng = np.random.default_rng(seed)
        state = rng.bit_generator.state["state"]
        entry = {
            "seed": str(seed),
            "pool": [int(w) for w in rng.bit_generator.seed_seq.pool],
            "state": str(state["state"]),
            "inc": str(state["inc"]),
            "random": [float(x) for x in rng.random(5)],
            "permutations": {},
        }
        for n in PERMUTATION_SIZES:
            order = np.random.default_rng(seed).permutation(n)
            # the big ones by digest: the JS test hashes its int32 little-endian bytes
            entry["permutations"][str(n)] = (
                order.tolist() if n <= 17 else _sha256(order.astype("<i4").tobytes()))
        # interleaved use: permutations after draws (the 32-bit buffer carries over)
        rng = np.random.default_rng(seed)
        first = rng.permutation(5).tolist()
        mixed = [float(rng.random())]
        second = rng.permutation(1797)
        entry["interleaved"] = {"permutation5": first, "random": mixed,
                                "permutation1797": _sha256(second.astype("<i4").tobytes())}
        out.append(entry)
    return out


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---------------------------------------------------------------------------------------------
# numeric tasks on a node's own CSV

#: batches of each stream the vectors pin (more than one epoch: the reshuffle is covered)
STREAM_BATCHES = 24


def feature_csv(features: np.ndarray, labels: np.ndarray, label_at: int,
                decimals: dict[tuple[int, int], str] | None = None) -> str:
    """A feature CSV: columns ``p0..`` with ``label`` at ``label_at``; each value the shortest
    decimal of its float64 value, or the text ``decimals`` gives for ``(row, column)``."""
    names = [f"p{i}" for i in range(features.shape[1])]
    lines = [",".join([*names[:label_at], "label", *names[label_at:]])]
    for r, (row, label) in enumerate(zip(features, labels)):
        values = [(decimals or {}).get((r, c), repr(float(v))) for c, v in enumerate(row)]
        lines.append(",".join([*values[:label_at], str(int(label)), *values[label_at:]]))
    return "\r\n".join(lines) + "\r\n"


def _array(value: np.ndarray, digest: bool) -> dict:
    """An array for the vectors: dtype, shape and its little-endian bytes (hex or SHA-256)."""
    data = np.ascontiguousarray(value).astype(value.dtype.newbyteorder("<")).tobytes()
    out = {"dtype": str(value.dtype), "shape": list(value.shape)}
    out["sha256" if digest else "hex"] = _sha256(data) if digest else data.hex()
    return out


def _batch(batch: dict[str, np.ndarray], digest_keys: tuple[str, ...] = ()) -> dict:
    return {key: _array(value, key in digest_keys) for key, value in batch.items()}


def _client_data_vector(name: str, text: str, folder: Path, config: dict,
                        digest_keys: tuple[str, ...] = (), files: dict | None = None) -> dict:
    path = folder / f"{name}-{len(list(folder.iterdir()))}.csv"
    path.write_text(text, encoding="utf-8", newline="")
    task = get_task(TaskConfig(name=name, data_path=str(path), **config))
    task.files = dict(files or {})
    data = task.client_data(0, 1)
    stream = data.batches(config["batch_size"], seed=config["seed"] + 100)
    return {
        "task": name, "config": config, "csv": text, "batch_seed": config["seed"] + 100,
        "num_examples": data.num_examples,
        "eval_batches": [_batch(b, digest_keys) for b in data.eval_batches],
        "batches": [_batch(next(stream), digest_keys) for _ in range(STREAM_BATCHES)],
    }


def _numeric_vectors(folder: Path) -> list[dict]:
    from cola_fed.tasks.digits import load_digits

    features, labels = load_digits()
    out = []
    # 60 bundled rows, label first; then with the label in the middle, decimals that round
    # (float64 -> float32) and a server-held test set
    text = feature_csv(features[:60], labels[:60], 0)
    out.append(_client_data_vector("digits", text, folder, {
        "batch_size": 4, "eval_batches": 2, "seed": 5, "server_test_size": 0}))
    decimals = {(0, 0): "0.1", (1, 3): "0.3333333333333333", (2, 5): "1e-3", (3, 7): ".5",
                (4, 9): "+0.7", (5, 11): "1.", (6, 13): "0.100000001490116119384765625",
                (7, 15): "0.99999999999999999", (8, 17): "2.9802322387695312e-08"}
    text = feature_csv(features[100:150], labels[100:150], 31, decimals)
    out.append(_client_data_vector("digits", text, folder, {
        "batch_size": 5, "eval_batches": 1, "seed": 2**33 + 1, "server_test_size": 7}))
    rng = np.random.default_rng(11)
    pixels = rng.integers(0, 256, size=(14, 784)) / 255.0
    text = feature_csv(pixels, np.arange(14) % 10, 784)
    out.append(_client_data_vector("mnist", text, folder, {
        "batch_size": 3, "eval_batches": 1, "seed": 0, "server_test_size": 2}, ("x",)))
    return out


def _digits_header(label_at: int = 0) -> str:
    names = [f"p{i}" for i in range(64)]
    return ",".join([*names[:label_at], "label", *names[label_at:]])


def _digits_row(value: str = "0.5", label: str = "1") -> str:
    return ",".join([label, value] + ["0.25"] * 63)


HOSTILE_CSVS = {
    "empty": "",
    "blank lines only": "\n\n\r\n",
    "header only": _digits_header() + "\n",
    "no label column": ",".join(f"p{i}" for i in range(65)) + "\n" + _digits_row() + "\n",
    "repeated column": _digits_header().replace(",p5,", ",p4,") + "\n" + _digits_row() + "\n",
    "too few feature columns": _digits_header().rsplit(",", 1)[0] + "\n",
    "too many fields": _digits_header() + "\n" + _digits_row() + ",0.5\n",
    "too few fields": _digits_header() + "\n" + _digits_row() + "\n1,0.5\n",
    "not a number": _digits_header() + "\n" + _digits_row("abc") + "\n",
    "nan": _digits_header() + "\n" + _digits_row("nan") + "\n",
    "inf": _digits_header() + "\n" + _digits_row("inf") + "\n",
    "underscore": _digits_header() + "\n" + _digits_row("1_0") + "\n",
    "space": _digits_header() + "\n" + _digits_row(" 0.5") + "\n",
    "empty field": _digits_header() + "\n" + _digits_row("") + "\n",
    "hex": _digits_header() + "\n" + _digits_row("0x1") + "\n",
    "quoted comma": _digits_header() + "\n" + _digits_row('"0,5"') + "\n",
    "above range": _digits_header() + "\n" + _digits_row("1.0000001") + "\n",
    "below range": _digits_header() + "\n" + _digits_row("-0.0001") + "\n",
    "overflow": _digits_header() + "\n" + _digits_row("1e400") + "\n",
    "label 10": _digits_header() + "\n" + _digits_row(label="10") + "\n",
    "label -1": _digits_header() + "\n" + _digits_row(label="-1") + "\n",
    "label 1.0": _digits_header() + "\n" + _digits_row(label="1.0") + "\n",
    "label empty": _digits_header() + "\n" + _digits_row(label="") + "\n",
    "label huge": _digits_header() + "\n" + _digits_row(label="9" * 30) + "\n",
    "unterminated quote": _digits_header() + "\n" + _digits_row('"0.5') + "\n",
    "text after closing quote": _digits_header() + "\n" + _digits_row('"0.5"x') + "\n",
    "field over the csv limit": _digits_header() + "\n" + _digits_row("0" * 131073) + "\n",
    "too few rows for the split": _digits_header() + "\n" + (_digits_row() + "\n") * 5,
}
#: a valid file's quirks a node must accept (and the rows it then holds)
ACCEPTED_CSVS = {
    "quoted fields, blank lines, a BOM and a lone CR": "\ufeff" + _digits_header().replace(
        "label", '"label"') + "\r" + (_digits_row('"0.5"') + "\n\n") * 12,
    "quoted line break inside the header": _digits_header().replace("p9", '"p\r\n9"') + "\n"
        + (_digits_row() + "\r\n") * 12,
}
#: the file's name in the vectors' error messages
DATA_NAME = "data.csv"
HOSTILE_CONFIG = {"batch_size": 4, "eval_batches": 2, "seed": 1, "server_test_size": 0}


def _csv_cases(folder: Path) -> dict:
    hostile, accepted = [], []
    for name, text in HOSTILE_CSVS.items():
        path = folder / f"hostile-{len(hostile)}.csv"
        path.write_text(text, encoding="utf-8", newline="")
        try:
            get_task(TaskConfig(name="digits", data_path=str(path), **HOSTILE_CONFIG)
                     ).client_data(0, 1)
        except ColaError as err:
            hostile.append({"name": name, "task": "digits", "config": HOSTILE_CONFIG,
                            "csv": text, "error": type(err).__name__,
                            # the path as the JavaScript test names the file
                            "message": str(err).replace(str(path), DATA_NAME)})
            continue
        raise AssertionError(f"the hostile CSV {name!r} was accepted")
    for name, text in ACCEPTED_CSVS.items():
        vector = _client_data_vector("digits", text, folder, HOSTILE_CONFIG)
        accepted.append({"name": name, **vector})
    return {"hostile": hostile, "accepted": accepted, "data_name": DATA_NAME}


# ---------------------------------------------------------------------------------------------
# text: the MiniLM tokenizer on Rotten Tomatoes, and the text tasks on a tiny CSV

#: texts the tokenizer vectors add to the corpus's: accents, CJK, emoji, controls, specials
HARD_TEXTS = ["Héllo wörld café naïve", "日本語のテキスト", "emoji 😀👍🏽 test",
              "  spaces\tand\nnewlines  ", "", "[CLS] [SEP] [MASK] hi",
              "don't won't U.S.A. 3.14 $5,000", "\u200bzero\u00a0width", "ﬁ ligature",
              "Ⅻ ÅΩ", "a" * 300, "x " * 200]
REPO = Path(__file__).resolve().parents[2]


def _tokenizer_file() -> Path:
    from cola_fed.tasks.text_classification import minilm_path

    return Path(minilm_path()) / "tokenizer.json"


def _text_csv(texts: list[str], labels: list, text_column: str = "text",
              label_column: str = "label") -> str:
    import csv
    import io

    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow([label_column, text_column])
    writer.writerows(zip(labels, texts))
    return out.getvalue()


def _text_vectors(folder: Path) -> dict:
    from tokenizers import Tokenizer

    from cola_fed.tasks.text_classification import load_rotten_tomatoes

    path = _tokenizer_file()
    tokenizer = Tokenizer.from_file(str(path))
    tokenizer.no_padding()
    tokenizer.no_truncation()
    corpus = load_rotten_tomatoes()
    texts = corpus.texts[:200] + HARD_TEXTS
    encodings = tokenizer.encode_batch(texts)
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    rows = corpus.texts[300:340]
    out = {
        "tokenizer": {"path": str(rel), "sha256": _sha256(path.read_bytes())},
        "tokens": [{"text": t, "ids": e.ids, "type_ids": e.type_ids}
                   for t, e in zip(texts, encodings)],
        "tasks": [],
    }
    # the MiniLM demo task: labels as int() reads them (" 1", "+0")
    labels = [[" 1", "+0", "0", "1"][i % 4] for i in range(len(rows))]
    out["tasks"].append(_client_data_vector(
        "text-classification", _text_csv(rows, labels), folder,
        {"batch_size": 4, "eval_batches": 2, "seed": 3, "server_test_size": 3,
         "max_length": 16}, ("input_ids", "token_type_ids", "attention_mask")))
    # the generic task with label names and its own columns; pad id from the plan
    names = [["rotten", "fresh"][i % 2] for i in range(len(rows))]
    config = {"batch_size": 3, "eval_batches": 1, "seed": 8, "server_test_size": 0,
              "max_length": 24, "label_names": "rotten,fresh", "text_column": "review",
              "label_column": "verdict", "pad_id": 7, "eos_id": 102}
    out["tasks"].append(_client_data_vector(
        "sequence-classification", _text_csv(rows, names, "review", "verdict"), folder,
        config, ("input_ids", "attention_mask"), files={"tokenizer.json": path}))
    return out


def vectors() -> dict:
    # floats travel as JSON numbers: repr round-trips and JSON.parse rounds correctly, so exact
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        return {"rng": _rng_vectors(), "numeric": _numeric_vectors(folder),
                "text": _text_vectors(folder), **_csv_cases(folder)}
