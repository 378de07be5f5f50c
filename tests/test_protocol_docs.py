"""The protocol docs are a specification: recompute every worked example in docs/security.md
and docs/edge.md from the code, and check their field tables against the code's field sets.

Markers in the Markdown (HTML comments, invisible when rendered):

- ``<!-- example: NAME -->`` before a fenced block: the block's content is the value
  :func:`examples` computes under ``NAME``. In a ``hex`` block whitespace is ignored (the bytes
  may be grouped and wrapped); any other block must match line by line, trailing spaces
  aside.
- ``<!-- fields: NAME -->`` before a Markdown table: the backticked names in the table's first
  column are exactly the field set :func:`field_sets` gives under ``NAME``.
- ``<!-- graph-names -->`` before a table of graph names: each row's name is recomputed.

``python tests/test_protocol_docs.py`` prints every example block as the docs should hold it,
for updating them after a deliberate protocol change.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from cola_fed.adapters.spec import AdapterSpec
from cola_fed.config import TaskConfig
from cola_fed.edge.graphs import GraphKey
from cola_fed.federation import protocol
from cola_fed.federation.node_store import IDENTITY_FILE
from cola_fed.federation.protocol import (
    Assignment,
    Hello,
    HelloClaim,
    HelloReply,
    HelloTranscript,
    NodeCaps,
    Plan,
    TrainOrder,
    TrainReport,
)
from cola_fed.gl.layout import LayerInfo, Layout
from cola_fed.gl.optim_spec import OptimizerSpec
from cola_fed.wire import codec, crypto
from cola_fed.wire.crypto import (
    HELLO_CONTEXT,
    MAGIC,
    NODE_CLAIM_CONTEXT,
    NODE_TO_SERVER,
    PROTOCOL_VERSION,
    SERVER_TO_NODE,
    SecureChannel,
    associated_data,
    derive_keys,
    exchange_key_for_run,
    fingerprint,
    public_bytes,
    sign_node_claim,
    sign_transcript,
    transcript_hash,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"
SPEC_DOCS = ("security.md", "edge.md")

# the fixed inputs of every worked example (docs/security.md, "Worked examples")
SERVER_IDENTITY_SEED = bytes(range(64, 96))  # Ed25519 private key
NODE_KEY_BYTES = bytes(range(32, 64))  # X25519 private key
NODE_IDENTITY_SEED = bytes(range(96, 128))  # Ed25519 private key
RUN_ID, NODE_ID, HELLO_ID = 1234567890123, 2**63 + 17, 1700000000000000000
SEALED_PLAINTEXT = b"cola-fed example"


def example_plan() -> Plan:
    """The plan of the example transcript: one Linear adapter with bias on a 64 -> 10 layer."""
    return Plan(
        layout=Layout((LayerInfo("head", 64, 10),)),
        task=TaskConfig(name="digits", batch_size=8, max_length=1, eval_batches=1, seed=7),
        node_specs=({"*": AdapterSpec(kind="linear", bias=True)},),
        spec_assignment=Assignment(cycle=(0,)),
        optimizer=OptimizerSpec(name="sgd", lr=0.5, momentum=0.0),
        interval=1,
    )


def _raw_private(key) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                             serialization.NoEncryption())


def examples() -> dict[str, tuple[str, str]]:
    """``name -> (block language, value)`` of every worked example, computed by cola_fed."""
    identity = Ed25519PrivateKey.from_private_bytes(SERVER_IDENTITY_SEED)
    node_key = X25519PrivateKey.from_private_bytes(NODE_KEY_BYTES)
    node_identity = Ed25519PrivateKey.from_private_bytes(NODE_IDENTITY_SEED)
    exchange = exchange_key_for_run(identity, RUN_ID)
    transcript = HelloTranscript(
        run_id=RUN_ID, node_id=NODE_ID, hello_id=HELLO_ID, identity=public_bytes(identity),
        exchange_key=public_bytes(exchange), plan=example_plan(), lineage=RUN_ID).encode()
    digest = transcript_hash(transcript)
    shared = node_key.exchange(exchange.public_key())
    keys = derive_keys(shared, run_id=RUN_ID, node_id=NODE_ID, transcript=digest)
    info = {d: f"cola-fed v{PROTOCOL_VERSION} {d} node {NODE_ID} ".encode() + digest
            for d in (SERVER_TO_NODE, NODE_TO_SERVER)}
    claim_input = NODE_CLAIM_CONTEXT + digest + public_bytes(node_key)
    claim = HelloClaim(
        partition_id=0, num_examples=1437, backend="onnx", state=1,
        identity=public_bytes(node_identity).hex(),
        signature=sign_node_claim(node_identity, digest, public_bytes(node_key)).hex(),
        held=[1])
    server = SecureChannel(exchange, public_bytes(node_key), role="server", run_id=RUN_ID,
                           node_id=NODE_ID, transcript=digest)
    envelope = server.seal(SEALED_PLAINTEXT, kind=protocol.KIND_TRAIN)
    order = TrainOrder(round=1, acknowledged=1, checkpointed=1).encode()
    bundle = codec.encode_bundle({protocol.PART_CONTROL: order})

    def aad(counter: int, direction: str, kind: str) -> str:
        return _spaced(associated_data(version=PROTOCOL_VERSION, run_id=RUN_ID,
                                       node_id=NODE_ID, counter=counter, direction=direction,
                                       kind=kind), (8, 2, 8, 8, 8, 1))

    hexes = {
        "server-identity-public": public_bytes(identity).hex(),
        "exchange-key-info": b"cola-fed v2 exchange key".hex(),
        "exchange-key-private": _raw_private(exchange).hex(),
        "exchange-key-public": public_bytes(exchange).hex(),
        "node-key-public": public_bytes(node_key).hex(),
        "node-identity-public": public_bytes(node_identity).hex(),
        "transcript-sha256": digest.hex(),
        "hello-signature-prefix": HELLO_CONTEXT.hex(),
        "hello-signature": sign_transcript(identity, transcript).hex(),
        "shared-secret": shared.hex(),
        "hkdf-salt": RUN_ID.to_bytes(8, "big").hex(),
        "hkdf-info-server-to-node": _wrap(info[SERVER_TO_NODE].hex()),
        "hkdf-info-node-to-server": _wrap(info[NODE_TO_SERVER].hex()),
        "session-key-server-to-node": keys[SERVER_TO_NODE].hex(),
        "session-key-node-to-server": keys[NODE_TO_SERVER].hex(),
        "node-claim-signature-input": _wrap(claim_input.hex()),
        "node-claim-signature": _wrap(bytes.fromhex(claim.signature).hex()),
        "aad-hello-node-to-server-1": aad(1, NODE_TO_SERVER, protocol.KIND_HELLO),
        "aad-train-server-to-node-1": aad(1, SERVER_TO_NODE, protocol.KIND_TRAIN),
        "aad-train-node-to-server-2": aad(2, NODE_TO_SERVER, protocol.KIND_TRAIN),
        "nonce-1": _spaced(crypto._nonce(1), (4, 8)),
        "nonce-2": _spaced(crypto._nonce(2), (4, 8)),
        "sealed-envelope": _spaced(envelope, (4, 8, len(SEALED_PLAINTEXT), 16)),
        "bundle-train-order": _spaced(bundle, (8, len(bundle) - 8 - len(order))),
    }
    texts = {
        "server-identity-fingerprint": fingerprint(public_bytes(identity)),
        "bundle-header": bundle[8:8 + int.from_bytes(bundle[:8], "little")].decode(),
        "hkdf-info-server-to-node-text": f"cola-fed v{PROTOCOL_VERSION} {SERVER_TO_NODE} node "
                                         f"{NODE_ID} ",
        "sealed-plaintext": SEALED_PLAINTEXT.decode(),
    }
    jsons = {
        "transcript": transcript.decode(),
        "hello-claim": claim.encode().decode(),
        "train-order": order.decode(),
        "train-report": TrainReport(round=1, loss=0.5, num_examples=8, grad_norm=1.25, step=1,
                                    state=2).encode().decode(),
    }
    return {**{k: ("hex", _wrap(v)) for k, v in hexes.items()},
            **{k: ("text", v) for k, v in texts.items()},
            **{k: ("json", v) for k, v in jsons.items()}}


def _spaced(data: bytes, sizes: tuple[int, ...]) -> str:
    """``data`` as hex, its fields (``sizes`` bytes each, the rest last) apart."""
    out, at = [], 0
    for size in sizes:
        out.append(data[at:at + size].hex())
        at += size
    if at < len(data):
        out.append(data[at:].hex())
    return _wrap(" ".join(out))


def _wrap(text: str, width: int = 96) -> str:
    lines, line = [], ""
    for word in re.findall(r"\S+", text):
        while len(word) > width:  # a long field: cut into full lines
            room = width - len(line) - (1 if line else 0)
            room -= room % 2  # whole bytes on a line
            if room < 16:
                lines.append(line)
                line, room = "", width
            line = (line + " " if line else "") + word[:room]
            word = word[room:]
            lines.append(line)
            line = ""
        if line and len(line) + 1 + len(word) > width:
            lines.append(line)
            line = ""
        line = (line + " " if line else "") + word
    if line:
        lines.append(line)
    return "\n".join(lines)


def field_sets() -> dict[str, set[str]]:
    """``table name -> field names`` as the code has them."""
    plan = example_plan()
    transcript = json.loads(HelloTranscript(
        run_id=1, node_id=1, hello_id=1, identity=bytes(32), exchange_key=bytes(32),
        plan=plan, lineage=1).encode())
    hello = Hello(bytes(32), b"{}", bytes(64)).to_record()
    reply = HelloReply(bytes(32), b"").to_record()
    return {
        "hello-records": set(hello.config_records) | set(hello.array_records),
        "hello-clear": set(hello[protocol.CLEAR]),
        "hello-reply-records": set(reply.config_records) | set(reply.array_records),
        "hello-reply-clear": set(reply[protocol.CLEAR]),
        "transcript": set(transcript),
        "plan": set(plan.to_dict()),
        "plan-layout": set(protocol._LAYER_FIELDS),
        "plan-task": set(protocol._TASK_FIELDS),
        "plan-node-spec": set(protocol._SPEC_FIELDS),
        "plan-optimizer": set(protocol._OPTIMIZER_FIELDS),
        "plan-assignment": set(Assignment().to_dict()),
        "HelloClaim": set(HelloClaim.FIELDS),
        "TrainOrder": set(TrainOrder.FIELDS),
        "TrainReport": set(TrainReport.FIELDS),
        "node-caps": set(NodeCaps.keys()),
        "payload-kinds": set(codec.KINDS),
        "adaptation-header": set(codec._FIELD_CHECKS["adaptation"]),
    }


def header_fields() -> dict[str, set[str]]:
    """``payload kind -> header fields`` besides ``format`` and ``kind``."""
    return {kind: set(checks) for kind, checks in codec._FIELD_CHECKS.items()}


# --------------------------------------------------------------------------------------------
# reading the Markdown

_MARKER = re.compile(r"<!-- (example|fields): ([A-Za-z0-9_-]+) -->|<!-- (graph-names) -->")


def _marked(text: str) -> list[tuple[str, str, list[str]]]:
    """``(marker, name, lines)`` of every marked block or table: the lines of the fenced block
    (with its opening fence first) or of the table that follows the marker."""
    found = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        match = _MARKER.fullmatch(line.strip())
        if not match:
            continue
        marker, name = (match[1], match[2]) if match[1] else (match[3], "")
        body = []
        j = i + 1
        while j < len(lines) and not lines[j].strip():
            j += 1
        if lines[j].lstrip().startswith("```"):
            body.append(lines[j].strip())
            j += 1
            while not lines[j].lstrip().startswith("```"):
                body.append(lines[j])
                j += 1
        else:  # a table, perhaps indented in a list item
            while j < len(lines) and lines[j].lstrip().startswith("|"):
                body.append(lines[j])
                j += 1
        found.append((marker, name, body))
    return found


def _doc_blocks() -> dict[str, list[tuple[str, str, list[str]]]]:
    return {doc: _marked((DOCS / doc).read_text(encoding="utf-8")) for doc in SPEC_DOCS}


def _rows(table: list[str]) -> list[list[str]]:
    """A Markdown table's body rows as cells (header and rule skipped)."""
    rows = []
    for line in table[2:]:
        cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
        rows.append([c.strip() for c in cells])
    return rows


def _names(cell: str) -> set[str]:
    return set(re.findall(r"`([^`]+)`", cell))


# --------------------------------------------------------------------------------------------
# the tests


def test_every_worked_example_is_the_code_s():
    computed = examples()
    documented: dict[str, str] = {}
    wrong = []
    for doc, blocks in _doc_blocks().items():
        for marker, name, body in blocks:
            if marker != "example":
                continue
            assert name not in documented, f"{doc}: example {name!r} twice"
            assert name in computed, f"{doc}: example {name!r} is not one the test computes"
            language, value = computed[name]
            fence = body[0].removeprefix("```").strip()
            assert fence == language, f"{doc}: example {name!r} must be a ```{language} block"
            text = "\n".join(body[1:])
            documented[name] = text
            if language == "hex":
                ok = re.sub(r"\s", "", text).lower() == re.sub(r"\s", "", value)
            else:  # trailing spaces are not kept by every editor: the hex examples hold them
                ok = [t.rstrip() for t in text.split("\n")] == [
                    v.rstrip() for v in value.split("\n")]
            if not ok:
                wrong.append(f"{doc}, example {name}:\n  documented {text[:200]!r}\n"
                             f"  the code's {value[:200]!r}")
    assert not wrong, ("the docs' worked examples are not what the code computes (update them "
                       "with `python tests/test_protocol_docs.py`):\n" + "\n".join(wrong))
    missing = sorted(set(computed) - set(documented))
    assert not missing, f"worked examples not in the docs: {missing}"


def test_the_example_transcript_and_claim_decode_as_the_node_decodes_them():
    computed = examples()
    transcript = computed["transcript"][1].encode()
    decoded = HelloTranscript.decode(transcript)
    assert (decoded.run_id, decoded.node_id, decoded.lineage) == (RUN_ID, NODE_ID, RUN_ID)
    assert decoded.encode() == transcript  # canonical: re-encoding gives the same bytes
    assert hashlib.sha256(transcript).hexdigest() == computed["transcript-sha256"][1]
    for name, cls in (("hello-claim", HelloClaim), ("train-order", TrainOrder),
                      ("train-report", TrainReport)):
        data = computed[name][1].encode()
        assert cls.decode(data).encode() == data
    # HKDF (RFC 5869) written out with the standard library, from the documented salt and info
    # strings: the labels are the ones the docs give
    raw = {name: bytes.fromhex(re.sub(r"\s", "", value)) for name, (language, value)
           in computed.items() if language == "hex" and ":" not in value}
    for ikm, info, okm in (
            (SERVER_IDENTITY_SEED, "exchange-key-info", "exchange-key-private"),
            (raw["shared-secret"], "hkdf-info-server-to-node", "session-key-server-to-node"),
            (raw["shared-secret"], "hkdf-info-node-to-server", "session-key-node-to-server")):
        prk = hmac.new(raw["hkdf-salt"], ikm, hashlib.sha256).digest()
        assert hmac.new(prk, raw[info] + b"\x01", hashlib.sha256).digest() == raw[okm], okm
    assert raw["hkdf-info-server-to-node"].startswith(
        computed["hkdf-info-server-to-node-text"][1].encode())
    # the envelope opens on the node's side of the example session
    identity = Ed25519PrivateKey.from_private_bytes(SERVER_IDENTITY_SEED)
    exchange = exchange_key_for_run(identity, RUN_ID)
    node = SecureChannel(X25519PrivateKey.from_private_bytes(NODE_KEY_BYTES),
                         public_bytes(exchange), role="node", run_id=RUN_ID, node_id=NODE_ID,
                         transcript=transcript_hash(transcript))
    envelope = bytes.fromhex(re.sub(r"\s", "", computed["sealed-envelope"][1]))
    assert node.open(envelope, kind=protocol.KIND_TRAIN) == SEALED_PLAINTEXT


@pytest.mark.parametrize("name", sorted(field_sets()))
def test_a_field_table_lists_exactly_the_code_s_fields(name):
    tables = [(doc, body) for doc, blocks in _doc_blocks().items()
              for marker, table, body in blocks if marker == "fields" and table == name]
    assert tables, f"no table marked <!-- fields: {name} --> in docs/{' or docs/'.join(SPEC_DOCS)}"
    for doc, body in tables:
        assert len(body) >= 3, f"{doc}: the table marked {name!r} is empty"
        documented = set().union(*(_names(row[0]) for row in _rows(body)))
        expected = field_sets()[name]
        assert documented == expected, (
            f"{doc}, table {name!r}: documents {sorted(documented - expected)} that the code "
            f"lacks, lacks {sorted(expected - documented)}")


def test_the_payload_table_gives_each_kind_its_header_fields():
    tables = [(doc, body) for doc, blocks in _doc_blocks().items()
              for marker, table, body in blocks if marker == "fields" and table == "payload-kinds"]
    for doc, body in tables:
        for row in _rows(body):
            (kind,) = _names(row[0])
            assert _names(row[-1]) == header_fields()[kind], (
                f"{doc}, payload kind {kind!r}: header fields {sorted(_names(row[-1]))}, the "
                f"codec's {sorted(header_fields()[kind])}")


def test_the_node_caps_table_gives_the_code_s_defaults():
    tables = [body for blocks in _doc_blocks().values()
              for marker, table, body in blocks if marker == "fields" and table == "node-caps"]
    defaults = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(NodeCaps)}
    for body in tables:
        for row in _rows(body):
            (key,) = _names(row[0])
            assert float(row[1].replace(",", "")) == defaults[key], f"node cap {key}: default"


def test_the_documented_graph_names_are_the_code_s():
    tables = [body for blocks in _doc_blocks().values()
              for marker, _, body in blocks if marker == "graph-names"]
    assert tables, "no table marked <!-- graph-names -->"
    for body in tables:
        for spec, layer, optimizer, form, name in _rows(body):
            d_in, d_out = map(int, layer.strip("`").split("x"))
            optimizer = optimizer.strip("`")
            key = GraphKey(AdapterSpec(**json.loads(spec.strip("`"))), d_in, d_out,
                           optimizer.removesuffix("-nesterov"), optimizer.endswith("-nesterov"),
                           form.strip("`"))
            assert key.name == name.strip("`"), (
                f"graph name of {spec} {layer} {optimizer} {form}: documented {name}, the "
                f"code's {key.name}")


#: labels and constants written in the docs' prose: each occurrence must be the code's
_LABELS = {
    r"cola-fed hello v\d+": HELLO_CONTEXT[:-1].decode(),
    r"cola-fed node claim v\d+": NODE_CLAIM_CONTEXT[:-1].decode(),
    r"cola-fed v\d+ exchange key": "cola-fed v2 exchange key",
    r"cola-fed v\d+ (?=server->node|node->server)": f"cola-fed v{PROTOCOL_VERSION} ",
    r"CFS\d": MAGIC.decode(),
    r"[Pp]rotocol(?: version)? \d+": None,  # checked below
}


def test_labels_and_versions_in_the_prose_are_the_code_s():
    stale = []
    for doc in SPEC_DOCS:
        text = (DOCS / doc).read_text(encoding="utf-8")
        for pattern, value in _LABELS.items():
            for match in re.finditer(pattern, text):
                found = match[0]
                if value is None:
                    ok = found.rsplit(" ", 1)[1] == str(PROTOCOL_VERSION)
                else:
                    ok = found == value
                if not ok:
                    stale.append(f"{doc}: {found!r}")
    assert not stale, f"stale labels or versions in the protocol docs: {stale}"
    security = (DOCS / "security.md").read_text(encoding="utf-8")
    assert f"`{IDENTITY_FILE}`" in security
    for value in (RUN_ID, NODE_ID, HELLO_ID):  # the worked examples' inputs table
        assert f"| {value} " in security or f"= {value} " in security, value


if __name__ == "__main__":  # print the example blocks, for updating the docs
    for name, (language, value) in examples().items():
        print(f"<!-- example: {name} -->\n```{language}\n{value}\n```\n")
