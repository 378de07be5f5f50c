"""Conformance vectors: what a second implementation of the cola-fed node must reproduce.

Each module here (``wire``, ``flower``, ``protocol``, ``learner``, ``tasks``, ``node``) has a
``vectors() -> dict`` that computes, from the Python code itself and deterministically, the
bytes a node must produce and the hostile inputs it must refuse (with the Python error class
it raises). ``python -m tests.conformance OUT_DIR`` writes each as ``OUT_DIR/<module>.json``;
the build writes them to ``js/conformance/`` and the JavaScript tests read them, so both
implementations are always checked against the same, current code. Bytes travel as
lower-case hex strings.
"""

AREAS = ("wire", "flower", "protocol", "learner", "tasks", "node")
