"""Turn an experiment's results into the figures people read: a summary (final test metrics,
mean and spread over seeds, per arm and partition), the verdict of each ColA arm against its
counterpart, the cost table, a plot, and the markdown section of ``docs/results.md``.

The verdict rule is fixed here, before any run: two arms are **on par** when their final
accuracies (mean over seeds) differ by at most max(one standard deviation over seeds of the
baseline, one point). Where a task has no accuracy, the loss is compared the same way, with
0.01 in place of the point.
"""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

from cola_fed.experiments.config import ARM_LABELS, ARMS
from cola_fed.experiments.costs import ROLES

#: each ColA arm and the arm a practitioner would otherwise run in its place
COUNTERPARTS = {"cola-central": "peft-central", "cola-col": "fedavg-lora",
                "cola-unmerged": "local-lora"}
#: the smallest difference that counts: one accuracy point, or 0.01 of loss
FLOOR = {"accuracy": 0.01, "loss": 0.01}
#: the section name of the overview of every experiment (no experiment may take it)
OVERVIEW = "*overview*"
#: the roles' short names for the overview's columns
ROLE_NAMES = {"server": "ColA server, per round", "torch-node": "ColA node, PyTorch",
              "onnx-node": "ColA node, ONNX", "fedavg-lora-client": "FedAvg-LoRA client step"}


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """Per ``arm/partition``: the final metrics' mean and std over seeds, mean costs; the
    verdicts; and the largest gap between arms (A) and (B) over every evaluated round (their
    parity check)."""
    runs = _complete_runs(results)
    cells: dict[str, dict[str, Any]] = {}
    for run in runs:
        cell = cells.setdefault(f"{run['arm']}/{run['partition']}",
                                {"arm": run["arm"], "partition": run["partition"], "runs": []})
        cell["runs"].append(run)
    summary: dict[str, Any] = {"cells": {}, "verdicts": [], "parity": None}
    for key, cell in cells.items():
        finals = [run["curve"][-1] for run in cell["runs"] if run["curve"]]
        entry: dict[str, Any] = {"arm": cell["arm"], "partition": cell["partition"],
                                 "seeds": len(finals)}
        for metric in ("accuracy", "loss", "perplexity"):
            values = [f[metric] for f in finals if metric in f]
            if values:
                entry[metric] = statistics.fmean(values)
                entry[f"{metric}-std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        costs = [run["costs"] for run in cell["runs"]]
        for name in dict.fromkeys(k for c in costs for k in c):
            entry[name] = statistics.fmean(c[name] for c in costs if name in c)
        summary["cells"][key] = entry
    for arm, baseline in COUNTERPARTS.items():
        for partition in dict.fromkeys(c["partition"] for c in summary["cells"].values()):
            ours = summary["cells"].get(f"{arm}/{partition}")
            theirs = summary["cells"].get(f"{baseline}/{partition}")
            if ours and theirs:
                summary["verdicts"].append(verdict(ours, theirs))
    summary["parity"] = parity(runs)
    return summary


def _complete_runs(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The runs of :func:`complete_seeds`, or every run while none is complete (a run under
    way writes its first arms)."""
    seeds = set(complete_seeds(results))
    return [r for r in results["runs"] if r["seed"] in seeds] if seeds else results["runs"]


def verdict(ours: dict[str, Any], theirs: dict[str, Any]) -> dict[str, Any]:
    """Whether ``ours`` is on par with, better or worse than ``theirs`` by the fixed rule."""
    metric = "accuracy" if "accuracy" in ours and "accuracy" in theirs else "loss"
    sign = 1.0 if metric == "accuracy" else -1.0  # higher accuracy, lower loss is better
    gap = sign * (ours[metric] - theirs[metric])
    margin = max(theirs[f"{metric}-std"], FLOOR[metric])
    word = "on par" if abs(gap) <= margin else ("better" if gap > 0 else "worse")
    return {"arm": ours["arm"], "baseline": theirs["arm"], "partition": ours["partition"],
            "metric": metric, "difference": gap, "margin": margin, "verdict": word}


def parity(runs: list[dict[str, Any]]) -> float | None:
    """The largest difference in any test metric between arms (A) and (B) at any evaluated
    round of any seed and partition: ColA equals backprop, so this is float32 noise."""
    by = {(r["arm"], r["seed"], r["partition"]): r["curve"] for r in runs}
    gaps = []
    for (arm, seed, partition), curve in by.items():
        other = by.get(("cola-central", seed, partition)) if arm == "peft-central" else None
        if other is None:
            continue
        for a, b in zip(curve, other):
            gaps += [abs(a[m] - b[m]) for m in ("accuracy", "loss") if m in a and m in b]
    return max(gaps) if gaps else None


def plot(results: dict[str, Any], path: Path) -> Path:
    """Test accuracy (or loss) against round, one panel per partition, mean over seeds with a
    band of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = _complete_runs(results)
    partitions = list(dict.fromkeys(r["partition"] for r in runs))
    metric = "accuracy" if any("accuracy" in p for r in runs for p in r["curve"]) else "loss"
    fig, axes = plt.subplots(1, len(partitions), figsize=(6 * len(partitions), 4),
                             squeeze=False)
    for ax, partition in zip(axes[0], partitions):
        for arm in ARMS:
            curves = [r["curve"] for r in runs
                      if r["arm"] == arm and r["partition"] == partition]
            if not curves:
                continue
            rounds = [p["round"] for p in curves[0]]
            values = [[c[i][metric] for c in curves if i < len(c)] for i in range(len(rounds))]
            mean = [statistics.fmean(v) for v in values]
            std = [statistics.stdev(v) if len(v) > 1 else 0.0 for v in values]
            ax.plot(rounds, mean, label=ARM_LABELS[arm], marker="o", markersize=3)
            ax.fill_between(rounds, [m - s for m, s in zip(mean, std)],
                            [m + s for m, s in zip(mean, std)], alpha=0.15)
        ax.set_title(f"{results['experiment']['name']}: {partition}")
        ax.set_xlabel("round (one step per node)")
        ax.set_ylabel(f"server-held test {metric}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def markdown(results: dict[str, Any], *, command: str) -> str:
    """The section of ``docs/results.md`` for this experiment: every figure read from
    ``results`` (a test re-renders it and compares)."""
    summary, experiment = results["summary"], results["experiment"]
    metric = "accuracy" if any("accuracy" in c for c in summary["cells"].values()) else "loss"
    lines = [f"### {experiment['name']}: {experiment['description']}", "",
             f"`{command}`: {experiment['nodes']} nodes, {experiment['rounds']} rounds (one step "
             f"per node per round), {_seeds(results)}; learning "
             f"rate {results['lr']:g}"
             + (f" (chosen from {_rates(results['lr-sweep'])})" if results["lr-sweep"] else "")
             + f"; {results.get('seconds', 0):.0f} s in all.",
             "", f"| arm | partition | test {metric} (mean ± std over seeds) | bytes down / up per "
             "node and round | wall s per run |", "| --- | --- | --- | --- | --- |"]
    for cell in summary["cells"].values():
        lines.append(
            f"| {ARM_LABELS[cell['arm']]} | {cell['partition']} | {cell[metric]:.3f} ± "
            f"{cell[f'{metric}-std']:.3f} | {_mb(cell.get('bytes-down'))} / "
            f"{_mb(cell.get('bytes-up'))} | {cell.get('seconds', 0):.0f} |")
    lines += ["", "| ColA arm | against | partition | difference | margin | verdict |",
              "| --- | --- | --- | --- | --- | --- |"]
    for v in summary["verdicts"]:
        lines.append(f"| {ARM_LABELS[v['arm']]} | {ARM_LABELS[v['baseline']]} | "
                     f"{v['partition']} | {v['difference']:+.3f} | {v['margin']:.3f} | "
                     f"{v['verdict']} |")
    if results.get("costs"):
        lines += ["", *cost_table(results["costs"], name=experiment["name"])]
    if summary["parity"] is not None:
        lines += ["", f"Parity of (A) and (B), the largest test-metric gap at any round: "
                      f"{summary['parity']:.1e}."]
    if results.get("machine"):
        lines += ["", f"The arms ran on {machine_line(results['machine'])}."]
    lines += ["", f"![{experiment['name']}: test {metric} by round, mean and spread over seeds]"
                  f"(../experiments/results/{experiment['name']}.png)"]
    return "\n".join(lines) + "\n"


def cost_table(costs: dict[str, Any], *, name: str) -> list[str]:
    """The markdown lines of the cost table: step time and peak memory per role."""
    machine = f" on {machine_line(costs['machine'])}" if costs.get("machine") else ""
    lines = [f"Costs per role (`cola-fed experiment {name} --costs-only`){machine}: a "
             f"{costs['rounds']}-round ColA run of {costs['nodes']} nodes in "
             f"`{costs.get('mode', 'unmerged')}` mode, and as many FedAvg-LoRA client steps, at "
             "the first seed and partition. Each role has a process of its own (peak RSS is "
             "that process's); times are medians after the first round. The nodes answer one "
             "after another here, so the whole round is the server's work plus every node's.",
             "", "| role: what the time covers | step time | peak memory (RSS) |",
             "| --- | --- | --- |"]
    for role, label in ROLES.items():
        row = costs.get(role, {"error": "not measured"})
        if "error" in row:
            lines.append(f"| {label} | {_cell(row['error'])} | - |")
            continue
        step = f"{row['step-seconds'] * 1e3:.0f} ms"
        if "round-seconds" in row:
            step += f" (whole round {row['round-seconds']:.2f} s)"
        lines.append(f"| {label} | {step} | {row['peak-rss-mb']:.0f} MB |")
    return lines


def _cell(text: str) -> str:
    """``text`` as one markdown table cell: one line, its pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def machine_line(machine: dict[str, Any]) -> str:
    """``2 CPU cores, 24 GiB, no GPU, torch 2.13.0+cpu (2 threads), Python 3.11.9``"""
    gpu = machine.get("gpu") or "no GPU"
    count = machine.get("torch-threads")
    threads = f" ({count} thread{'s' if count != 1 else ''})" if count else ""
    return (f"{machine['cpus']} CPU cores, {machine['memory-gib']:.0f} GiB, {gpu}, torch "
            f"{machine['torch']}{threads}, Python {machine['python']}")


def overview(all_results: list[dict[str, Any]]) -> str:
    """The section atop ``docs/results.md``: every experiment's verdicts, bytes and costs side
    by side, read from the results files (sorted by name)."""
    lines = ["| experiment | partition | (B) vs (A) | ColA col vs FedAvg-LoRA | ColA "
             "personalised vs local LoRA | ColA col: down / up per node and round | "
             "FedAvg-LoRA: down / up |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for results in sorted(all_results, key=lambda r: r["experiment"]["name"]):
        name, summary = results["experiment"]["name"], results["summary"]
        verdicts = {(v["arm"], v["partition"]): v for v in summary["verdicts"]}
        for partition in dict.fromkeys(c["partition"] for c in summary["cells"].values()):
            cells = [_verdict_cell(verdicts.get((arm, partition)))
                     for arm in ("cola-central", "cola-col", "cola-unmerged")]
            wire = [summary["cells"].get(f"{arm}/{partition}", {})
                    for arm in ("cola-col", "fedavg-lora")]
            lines.append(f"| {name} | {partition} | {' | '.join(cells)} | "
                         + " | ".join(f"{_mb(c.get('bytes-down'))} / {_mb(c.get('bytes-up'))}"
                                     for c in wire) + " |")
    lines += ["", "Step time and peak memory per role (the cost run of each experiment; see its "
              "section):", "", "| experiment | " + " | ".join(ROLE_NAMES.values()) + " |",
              "| --- | " + " | ".join("---" for _ in ROLE_NAMES) + " |"]
    for results in sorted(all_results, key=lambda r: r["experiment"]["name"]):
        costs = results.get("costs") or {}
        cells = []
        for role in ROLE_NAMES:
            row = costs.get(role) or {"error": "-"}
            cells.append("-" if "error" in row else
                         f"{row['step-seconds'] * 1e3:.0f} ms, {row['peak-rss-mb']:.0f} MB")
        lines.append(f"| {results['experiment']['name']} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n"


def _verdict_cell(v: dict[str, Any] | None) -> str:
    if v is None:
        return "-"
    return f"{v['verdict']} ({v['difference']:+.3f}, margin {v['margin']:.3f})"


def update_results_page(page: Path, name: str, section: str) -> Path:
    """Put ``section`` between ``<!-- experiment: NAME -->`` and ``<!-- /experiment: NAME -->``
    in ``page`` (appended with its markers if absent); :data:`OVERVIEW` names the overview."""
    begin, end = f"<!-- experiment: {name} -->", f"<!-- /experiment: {name} -->"
    text = page.read_text() if page.exists() else ""
    block = f"{begin}\n{section}{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    page.write_text(text)
    return page


def section_of(page_text: str, name: str) -> str | None:
    """The section between an experiment's markers in a page, or None."""
    begin, end = f"<!-- experiment: {name} -->\n", f"<!-- /experiment: {name} -->"
    if begin not in page_text or end not in page_text:
        return None
    return page_text[page_text.index(begin) + len(begin):page_text.index(end)]


def complete_seeds(results: dict[str, Any]) -> list[int]:
    """The planned seeds whose every arm and partition finished (all of them, unless the run
    was cut short)."""
    experiment, runs = results["experiment"], results["runs"]
    done = {(r["seed"], r["arm"], r["partition"]) for r in runs}
    return [s for s in experiment["seeds"]
            if all((s, arm, partition) in done for arm in experiment["arms"]
                   for partition in experiment["partitions"])]


def _seeds(results: dict[str, Any]) -> str:
    """The seeds run, and which of the planned ones a run cut short left out."""
    planned, done = results["experiment"]["seeds"], complete_seeds(results)
    text = f"seeds {', '.join(map(str, planned))}"
    if done != planned:
        text = (f"seeds {', '.join(map(str, done)) or 'none'} of the planned "
                f"{', '.join(map(str, planned))} (the run was cut short; the tables and the "
                "plot hold the seeds every arm finished)")
    return text


def _rates(sweep: list[dict[str, Any]]) -> str:
    return ", ".join(f"{s['lr']:g}" for s in sweep)


def _mb(value: float | None) -> str:
    return "-" if not value else f"{value / 1e6:.3f} MB"


__all__ = ["COUNTERPARTS", "OVERVIEW", "complete_seeds", "cost_table", "machine_line",
           "markdown", "overview", "parity", "plot", "section_of", "summarize",
           "update_results_page", "verdict"]
