"""The ``cola-fed`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
from pathlib import Path


def _demo(args: argparse.Namespace) -> int:
    from cola_fed.centralized import DemoConfig, run_demo

    config = DemoConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    result = run_demo(config)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    print(f"accuracy before {result.accuracy_before:.3f} -> after {result.accuracy_after:.3f}")
    return 0


def _keygen(args: argparse.Namespace) -> int:
    from cola_fed.wire.crypto import fingerprint
    from cola_fed.wire.identity import (
        IDENTITY_FILE,
        default_identity_path,
        generate_identity,
        identity_public_bytes,
        load_identity,
        public_key_path,
        save_identity,
    )

    path = Path(args.out).expanduser() if args.out else default_identity_path()
    if path.is_dir() or (args.out and args.out.endswith(("/", os.sep))):
        path = path / IDENTITY_FILE
    path = path.absolute()
    if path.exists() and not args.force:
        existing = fingerprint(identity_public_bytes(load_identity(path)))
        print(f"{path} exists (fingerprint {existing}); pass --force to replace it (nodes that "
              "pinned or remembered it will refuse the new one)", file=sys.stderr)
        return 1
    replaced = path.exists()
    key = generate_identity()
    save_identity(key, path, overwrite=args.force)
    seen = fingerprint(identity_public_bytes(key))
    print(f"server identity: {path} (Ed25519, mode 0600)")
    print(f"public key:      {public_key_path(path)}")
    print(f"fingerprint:     {seen}")
    print(f"pin it on nodes with: --node-config \"server-key-fingerprint='{seen}'\"")
    if replaced:
        print("nodes that pinned or remembered the old key will refuse this one: re-pin them, "
              "or on each node run: cola-fed trust forget NAME")
    return 0


def _trust_list(args: argparse.Namespace) -> int:
    from cola_fed.wire.identity import KnownServers

    known = KnownServers(args.known_servers)
    entries = known.entries()
    if not entries:
        print(f"no servers remembered in {known.path}")
        return 0
    width = max(len(name) for name in entries)
    for name, seen in entries.items():
        print(f"{name:<{width}}  {seen}")
    return 0


def _trust_forget(args: argparse.Namespace) -> int:
    from cola_fed.wire.identity import KnownServers

    known = KnownServers(args.known_servers)
    if not known.forget(args.name):
        print(f"{args.name!r} is not remembered in {known.path}; see: cola-fed trust list",
              file=sys.stderr)
        return 1
    print(f"forgot {args.name!r} in {known.path}; its next key will be trusted on first use "
          "(or pin it: server-key-fingerprint in the node config)")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    import signal

    from cola_fed.federation.simulate import parse_overrides, simulate
    from cola_fed.progress import RunProgress

    overrides = parse_overrides(args.run_config or [])
    # SIGTERM stops the run as Ctrl-C does (every process it started is stopped on the way out,
    # and the command that resumes is printed), with SIGTERM's exit status
    terminated: list[int] = []

    def on_sigterm(*_: object) -> None:
        terminated.append(signal.SIGTERM)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with RunProgress(f"simulate {args.name}") as progress:  # a bar on a terminal only
            out = simulate(args.name, output_dir=args.out, num_supernodes=args.nodes,
                           resume=args.resume, overrides=overrides, on_start=progress.follow)
    except KeyboardInterrupt:  # every process it started is stopped on the way out
        again = f"cola-fed simulate {args.name}" + (f" --out {args.out}" if args.out else "")
        if args.run_config:
            again += "".join(f" --run-config {shlex.quote(c)}" for c in args.run_config)
        print(f"\n{'terminated' if terminated else 'interrupted'}; the run's checkpoint of "
              f"its last round is kept. Go on with: {again} --resume", file=sys.stderr)
        return 143 if terminated else 130
    metrics = json.loads((out / "metrics.json").read_text())
    if metrics.get("stopped-early"):
        print(f"the run stopped early: {metrics['stopped-early']}", file=sys.stderr)
        for node, reason in sorted(metrics.get("refused-at-hello", {}).items()):
            print(f"  node {node} refused at hello: {reason}", file=sys.stderr)
        print(f"results so far: {out}", file=sys.stderr)
        return 1
    evaluated = [r for r in metrics["rounds"] if "accuracy-mean" in r]
    if evaluated:
        first, last = evaluated[0], evaluated[-1]
        print(f"held-out accuracy: round {first['round']} {first['accuracy-mean']:.3f} -> "
              f"round {last['round']} {last['accuracy-mean']:.3f} "
              f"(± {last['accuracy-std']:.3f} over nodes)")
    print(f"results: {out}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from cola_fed.watch import watch

    if args.interval <= 0 or args.interval != args.interval:
        print(f"--interval: expected seconds > 0, got {args.interval}", file=sys.stderr)
        return 2
    try:
        return watch(args.output_dir, once=args.once, interval=args.interval,
                     show=lambda text: print(text, flush=True))
    except KeyboardInterrupt:  # the run goes on: watching never touches it
        print(file=sys.stderr)
        return 130


def _export_peft(args: argparse.Namespace) -> int:
    from cola_fed.config import RunConfig
    from cola_fed.export_bundle import AUTO_CLASSES, export_node_adapters

    config = RunConfig.from_toml(args.run_config) if args.run_config else RunConfig()
    done = export_node_adapters(config, args.adapters, args.out, base_out=args.base_out)
    auto = AUTO_CLASSES.get(done.task_type or "")
    how = (f"peft.{auto}.from_pretrained({str(done.folder)!r})" if auto else
           "peft.PeftModel.from_pretrained(base_model, folder)")
    print(f"PEFT LoRA adapter written to {done.folder} (base: {done.base_model}); load it "
          f"with {how}")
    return 0


def _export_edge(args: argparse.Namespace) -> int:
    from cola_fed.config import RunConfig
    from cola_fed.edge.export import content_hash, export_train_step
    from cola_fed.edge.graphs import graph_keys
    from cola_fed.federation.strategy import build_plan
    from cola_fed.gl.targets import find_targets
    from cola_fed.tasks import get_task

    config = RunConfig.from_toml(args.run_config) if args.run_config else RunConfig()
    task = get_task(config.task)
    model = task.build_model()
    layout, _ = find_targets(model, task.adapted_targets(model, config.adapter.target_list))
    plan = build_plan(layout, task, config)
    keys = graph_keys(layout, plan.all_specs(), plan.optimizer,
                      form=config.wire.form).values()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    manifests: dict[str, dict[str, str]] = {"onnx": {}, "ort": {}}
    for key in keys:
        model = export_train_step(key)
        files = {"onnx": model}
        if args.ort:
            from cola_fed.edge.mobile import to_ort_format

            files["ort"] = to_ort_format(model)
        for suffix, data in files.items():
            (out / f"{key.name}.{suffix}").write_bytes(data)
            manifests[suffix][key.name] = content_hash(data)
            print(f"{key.name}.{suffix}  {len(data):,} bytes  sha256 "
                  f"{manifests[suffix][key.name][:16]}...")
    # manifest.json lists the hashes the server signs into the plan (its "graphs")
    for suffix, name in (("onnx", "manifest.json"), ("ort", "manifest-ort.json")):
        if manifests[suffix]:
            (out / name).write_text(json.dumps(manifests[suffix], indent=2) + "\n")
    return 0


def _experiment(args: argparse.Namespace) -> int:
    from cola_fed.experiments.config import ExperimentConfig
    from cola_fed.experiments.report import OVERVIEW, markdown, overview, plot, update_results_page
    from cola_fed.experiments.runner import add_costs, run_experiment
    from cola_fed.federation.flower_log import colour_wanted, configure_flower_console

    configure_flower_console(colour=colour_wanted(sys.stdout))  # Flower's lines in this process
    if args.smoke and args.docs:
        print("--docs takes a real run's table; a --smoke run would replace it", file=sys.stderr)
        return 2
    config = ExperimentConfig.load(args.name, smoke=args.smoke)
    out = Path(args.out or ("experiments/results/smoke" if args.smoke
                            else "experiments/results"))
    command = f"cola-fed experiment {config.name}" + (" --smoke" if args.smoke else "")
    path = out / f"{config.name}.json"
    if args.report_only or args.costs_only:
        if not path.exists():
            print(f"no results at {path}: run the experiment first", file=sys.stderr)
            return 1
        results = json.loads(path.read_text())
        if args.costs_only:
            ran = ExperimentConfig.from_dict({**results["experiment"],
                                              "cost_rounds": config.cost_rounds})
            if ran != config:
                print(f"note: {config.name}'s file has changed since the run in {path}; the "
                      "costs are measured on the run's settings", file=sys.stderr)
            add_costs(ran, results, say=lambda line: print(line, flush=True))
            path.write_text(json.dumps(results, indent=1) + "\n")
    else:
        from cola_fed.progress import JobProgress

        with JobProgress(f"experiment {config.name}") as bar:  # a bar on a terminal only
            results = run_experiment(config, out, say=lambda line: print(line, flush=True),
                                     progress=bar.step)
    print(f"plot: {plot(results, out / f'{config.name}.png')}")
    section = markdown(results, command=command)
    print(section)
    if args.docs:
        update_results_page(Path(args.docs), config.name, section)
        every = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
        print(f"updated {update_results_page(Path(args.docs), OVERVIEW, overview(every))}")
    return 0


def _serve_node(args: argparse.Namespace) -> int:
    from cola_fed.federation.page_server import DEFAULT_PAGE_DIR, SuperLinkTarget, serve

    target = SuperLinkTarget(args.superlink, insecure=args.insecure,
                             root_certificates=Path(args.superlink_root_certificates)
                             if args.superlink_root_certificates else None)
    serve(target, host=args.host, port=args.port,
          page_dir=Path(args.page_dir) if args.page_dir else DEFAULT_PAGE_DIR,
          certfile=Path(args.ssl_certfile) if args.ssl_certfile else None,
          keyfile=Path(args.ssl_keyfile) if args.ssl_keyfile else None,
          allowed_hosts=args.allowed_host)
    return 0


def _node_id(args: argparse.Namespace) -> int:
    """A node's identity fingerprint from its state dir, for strategy.partition-owners (the
    Python and the JavaScript node keep node-identity.key in the same format)."""
    from cola_fed.federation.node_store import IDENTITY_FILE, NodeStore
    from cola_fed.wire.crypto import fingerprint, public_bytes

    store = NodeStore(args.state_dir)
    path = (store.folder / IDENTITY_FILE).absolute()
    created = not path.exists() and not path.is_symlink()
    if created and not args.create:
        print(f"{path} does not exist: the node creates its identity at its first hello; "
              "pass --create to create it now", file=sys.stderr)
        return 1
    logging.getLogger("cola_fed").setLevel(logging.WARNING)  # stdout: the fingerprint alone
    seen = fingerprint(public_bytes(store.identity()))
    if created:
        print(f"created a node identity in {path} (mode 0600)", file=sys.stderr)
    if args.partition is not None:
        print(f"{args.partition} {seen}")
    else:
        print(seen)
    return 0


def _app(args: argparse.Namespace) -> int:
    """Write the Flower app folder ``flwr run DIR FEDERATION`` takes, for a user who installed
    the package and has no source checkout: a pyproject.toml whose components are the
    installed :mod:`cola_fed.apps`. A folder that holds anything else is left alone: Flower
    would ship every file in it to the SuperLink."""
    from cola_fed.config import tomllib
    from cola_fed.federation.simulate import COMPONENTS, write_app

    folder = Path(args.out).expanduser().absolute()
    if folder.is_symlink() or (folder.exists() and not folder.is_dir()):
        print(f"--out {folder}: a file or a link is there; give a folder (it is created if "
              "missing)", file=sys.stderr)
        return 1
    if (folder / "pyproject.toml").is_symlink():  # written through, it would land elsewhere
        print(f"--out {folder}: its pyproject.toml is a link; give a new or empty folder",
              file=sys.stderr)
        return 1
    present = sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
    if present and present != ["pyproject.toml"]:
        print(f"--out {folder} holds {', '.join(present[:5])}{', ...' if len(present) > 5 else ''}"
              f": give a new or empty folder (flwr run ships every file in it)", file=sys.stderr)
        return 1
    if present:  # rewritten only if cola-fed app wrote it (another version, say)
        try:
            flwr = tomllib.loads((folder / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
            ours = flwr["components"] == COMPONENTS
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError, KeyError, TypeError):
            ours = False
        if not ours:
            print(f"--out {folder}: its pyproject.toml is not a cola-fed app; give a new or "
                  "empty folder", file=sys.stderr)
            return 1
    write_app(folder)
    print(f"Flower app written to {folder} (components from the installed cola_fed "
          f"package); run it with:\n  flwr run {folder} FEDERATION --stream "
          "--run-config run.toml")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cola-fed", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="centralized ColA fine-tune of MiniLM-L6 on Rotten Tomatoes")
    demo.add_argument("--steps", type=int, default=150)
    demo.add_argument("--batch-size", type=int, default=32)
    demo.add_argument("--lr", type=float, default=1e-3)
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", help="write the result as JSON here")
    demo.set_defaults(run=_demo)
    simulate = sub.add_parser("simulate", help="run a simulation config on Flower's local "
                              "simulation engine and stop every process it started")
    simulate.add_argument("name", help="a built-in simulation (default, digits, ...: "
                          "cola_fed/simulations/NAME.toml) or the path of a .toml file")
    simulate.add_argument("--out", help="results folder (default: results/NAME)")
    simulate.add_argument("--nodes", type=int, help="SuperNodes (default: "
                          "strategy.min-available-nodes)")
    simulate.add_argument("--resume", action="store_true", help="go on from the checkpoint "
                          "in the results folder (a run that was killed)")
    simulate.add_argument("-c", "--run-config", action="append", metavar="'KEY=VALUE ...'",
                          help="override the file's keys, as flwr run --run-config does: "
                          "space-separated pairs with TOML values (strings quoted), e.g. "
                          "\"num-server-rounds=5 optimizer.lr=0.01 task.name='digits'\", "
                          "or a .toml file; repeatable")
    simulate.set_defaults(run=_simulate)
    watch = sub.add_parser("watch", help="follow a running run from another terminal, "
                           "read-only: rounds, nodes, loss, failures, ETA",
                           description="Follow a run from its results folder (metrics.json, "
                           "which the server replaces after every round), read-only, until "
                           "it ends: exit 0 when it finished, 1 when it stopped early or its "
                           "server is gone. Ctrl-C stops watching, not the run.")
    watch.add_argument("output_dir", metavar="OUTPUT_DIR", help="the run's results folder "
                       "(cola-fed simulate --out, or the run config's output-dir)")
    watch.add_argument("--once", action="store_true", help="print one snapshot and exit (0: "
                       "running or finished; 1: stopped early, its server gone, or no run "
                       "there yet)")
    watch.add_argument("--interval", type=float, default=1.0, help="seconds between reads "
                       "(default 1)")
    watch.set_defaults(run=_watch)
    export = sub.add_parser("export-peft", help="turn a node's Low Rank adapters into a PEFT "
                            "LoRA adapter folder")
    export.add_argument("--adapters", required=True,
                        help="an adapters file from a results folder (adapters/*.safetensors)")
    export.add_argument("--run-config", help="the run's TOML config (for the base model and "
                        "its seeded head); default: the default run config")
    export.add_argument("--out", required=True, help="folder to write")
    export.add_argument("--base-out", help="where to write the base model when cola-fed "
                        "writes one (a GGUF file's conversion, a classifier with its head); "
                        "default: OUT/base-model")
    export.set_defaults(run=_export_peft)
    edge = sub.add_parser("export-edge", help="export the ONNX train-step graphs a run's "
                          "ONNX Runtime clients need, with a manifest of their hashes")
    edge.add_argument("--run-config", help="the run's TOML config (default: the default run)")
    edge.add_argument("--out", required=True, help="folder for the .onnx files")
    edge.add_argument("--ort", action="store_true", help="also write ORT-format (.ort) files "
                      "for ONNX Runtime Mobile, with manifest-ort.json")
    edge.set_defaults(run=_export_edge)
    experiment = sub.add_parser(
        "experiment", help="run ColA against PEFT LoRA, FedAvg-LoRA and local LoRA on one task "
        "(experiments/NAME.toml): every arm, seed and partition, as JSON, a plot and a table",
        description="Train one task every way: (A) PEFT LoRA central, (B) ColA central, (C) "
        "ColA on Flower in col and unmerged mode, (D) FedAvg-LoRA on Flower, (E) each node's "
        "LoRA alone; same model, data, steps, learning rate and initial adapters. Run from the "
        "repository root (experiments/NAME.toml), or pass a .toml path. See docs/quickstart.md.")
    experiment.add_argument("name", help="experiments/NAME.toml, or the path of a .toml file")
    experiment.add_argument("--smoke", action="store_true", help="the file's tiny [smoke] "
                            "sizes (what CI runs)")
    experiment.add_argument("--out", help="results folder (default: experiments/results, or "
                            "experiments/results/smoke)")
    experiment.add_argument("--report-only", action="store_true", help="plot and tabulate the "
                            "results already in --out, without running")
    experiment.add_argument("--costs-only", action="store_true", help="measure only the "
                            "cost table (step time and peak memory per role) into the results "
                            "of a finished run, then report")
    experiment.add_argument("--docs", help="also write the table into this page (e.g. "
                            "docs/results.md), between the experiment's markers")
    experiment.set_defaults(run=_experiment)
    keygen = sub.add_parser("keygen", help="write the server's Ed25519 identity key and print "
                            "its fingerprint for nodes to pin")
    keygen.add_argument("--out", help="key file, or an existing folder to write "
                        "server-identity.pem in (default: $COLA_FED_HOME/server-identity.pem, "
                        "else ~/.config/cola-fed/server-identity.pem)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key (nodes "
                        "that pinned or remembered the old one will refuse the new one)")
    keygen.set_defaults(run=_keygen)
    node_id = sub.add_parser("node-id", help="print a node's identity fingerprint from its "
                             "state dir (Python or JavaScript node), for "
                             "strategy.partition-owners")
    node_id.add_argument("--state-dir", required=True, help="the node's state-dir")
    node_id.add_argument("--create", action="store_true", help="create the identity if the "
                         "node has none yet (it would create one at its first hello)")
    node_id.add_argument("--partition", type=int, help="print a whole owners-file line for "
                         "this partition id: '<partition-id> <fingerprint>'")
    node_id.set_defaults(run=_node_id)
    app = sub.add_parser("app", help="write the Flower app folder that `flwr run DIR "
                         "FEDERATION` takes (for an installed package: no source checkout)")
    app.add_argument("--out", required=True, help="a new or empty folder (a folder an "
                     "earlier `cola-fed app` wrote is rewritten)")
    app.set_defaults(run=_app)
    known = argparse.ArgumentParser(add_help=False)
    known.add_argument("--known-servers", help="the known-servers file (default: "
                       "$COLA_FED_HOME/known-servers.json, else "
                       "~/.config/cola-fed/known-servers.json)")
    trust = sub.add_parser("trust", help="the servers this machine trusted on first use")
    trust_sub = trust.add_subparsers(dest="trust_command", required=True)
    listing = trust_sub.add_parser("list", parents=[known], help="print each remembered "
                                   "server and its key fingerprint")
    listing.set_defaults(run=_trust_list)
    forget = trust_sub.add_parser("forget", parents=[known], help="forget a server, so that "
                                  "its next key is trusted on first use (after a verified "
                                  "rotation)")
    forget.add_argument("name", help="the server's name, as cola-fed trust list prints it")
    forget.set_defaults(run=_trust_forget)
    serve_node = sub.add_parser(
        "serve-node", help="serve the browser node's page and forward Flower's Fleet API to "
        "the SuperLink on the same origin (docs/edge.md, \"Run a node in a browser\")")
    serve_node.add_argument("--superlink", required=True, help="the SuperLink's Fleet API, "
                            "HOST:PORT (as flower-supernode --superlink)")
    serve_node.add_argument("--insecure", action="store_true", help="reach the SuperLink over "
                            "plain http (a SuperLink started with --insecure)")
    serve_node.add_argument("--superlink-root-certificates", help="CA file that verifies the "
                            "SuperLink's TLS certificate (default: the system's roots)")
    serve_node.add_argument("--host", default="127.0.0.1", help="address to listen on "
                            "(default 127.0.0.1; anything but loopback needs --ssl-certfile)")
    serve_node.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    serve_node.add_argument("--ssl-certfile", help="serve the page over https with this "
                            "certificate (PEM)")
    serve_node.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    serve_node.add_argument("--allowed-host", action="append", metavar="NAME",
                            help="a name browsers reach the page by (repeatable; default: "
                                 "--host, and localhost for a loopback --host); other Host "
                                 "headers are refused")
    serve_node.add_argument("--page-dir", help="the page's static files (default: "
                            "js/packages/browser/dist-web, built by make js)")
    serve_node.set_defaults(run=_serve_node)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S",
                        stream=sys.stdout)
    from cola_fed.errors import ColaError
    from cola_fed.federation.flower_log import quiet_third_party

    quiet_third_party()  # e.g. torch.onnx's 16 lines about torchvision at each graph export

    try:
        return args.run(args)
    except ColaError as err:
        print(f"cola-fed {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
