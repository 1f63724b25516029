"""The `autosink` command. Every subcommand has --help.

Heavy libraries are imported inside the handlers so that `autosink --help`
and `autosink lake check` stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

DEFAULT_REMOTE = "~/.cache/autosink/dvc-remote"
REMOTE_ENV = "AUTOSINK_DVC_REMOTE"


def _params(args: argparse.Namespace) -> dict:
    from autosink.ops.config import load_params

    return load_params(args.params)


def stage_handler(module: str):
    """The handler of a DVC stage command: read params.yaml, run ``autosink.stages.<module>``."""

    def handler(args: argparse.Namespace) -> int:
        from importlib import import_module

        from autosink.ops.config import project_root

        params = _params(args)  # --params relative to where you are, stage paths relative to the repo
        os.chdir(project_root())
        import_module(f"autosink.stages.{module}").run(params, progress=not args.quiet)
        return 0

    return handler


def cmd_validate_data(args: argparse.Namespace) -> int:
    """`autosink validate-data`: the data gate; exit 1, listing every failed check, when it fails."""
    from autosink.data.validation import DataValidationError

    try:
        stage_handler("validate_data")(args)
    except DataValidationError as e:
        print(f"autosink validate-data: {e}", file=sys.stderr)
        return 1
    return 0


def cmd_label_serve(args: argparse.Namespace) -> int:
    from autosink.labelapp.server import serve

    return serve(host=args.host, port=args.port, token=args.token)


def cmd_lake_check(args: argparse.Namespace) -> int:
    from autosink.core.episode import check_episode, find_episodes, format_verdict

    missing = [p for p in args.paths if not Path(p).exists()]
    for p in missing:
        print(f"BAD  {p}  no such file or folder")
    paths = find_episodes([p for p in args.paths if Path(p).exists()])
    if not paths and not missing:
        print("no episodes found in " + " ".join(args.paths), file=sys.stderr)
        return 2
    size = None if args.any_size else (args.width, args.height)
    bad = len(missing)
    for path in paths:
        problems = check_episode(path, check_frames=not args.no_frames, expected_size=size)
        bad += bool(problems)
        whole = problems and problems[0].field == "path"  # the path itself is wrong (a device, a FIFO): in full
        print(format_verdict(path, problems, name=str(path) if whole else None))
        if args.verbose:
            for problem in problems[1:]:
                print(f"       {problem}")
    print(f"{len(paths) + len(missing) - bad} ok, {bad} bad", file=sys.stderr)
    return 1 if bad else 0


def cmd_params_compose(args: argparse.Namespace) -> int:
    from autosink.ops.config import project_root, write_params

    out = write_params(project_root(), args.overrides)
    print(f"wrote {out} from conf/" + (f" with {' '.join(args.overrides)}" if args.overrides else ""))
    return 0


def cmd_params_check(args: argparse.Namespace) -> int:
    from autosink.ops.config import check_params, project_root

    diffs = check_params(project_root())
    if diffs:
        print("params.yaml is stale: it differs from what conf/ composes:", file=sys.stderr)
        for line in diffs:
            print(f"  {line}", file=sys.stderr)
        print("run `make params` (or `autosink params compose`) and commit params.yaml", file=sys.stderr)
        return 1
    print("params.yaml matches conf/")
    return 0


def cmd_remote_init(args: argparse.Namespace) -> int:
    """Point the default `local` remote at $AUTOSINK_DVC_REMOTE (else the default) and create it."""
    from autosink.core.proc import run
    from autosink.ops.config import project_root

    root = project_root()
    url = os.environ.get(REMOTE_ENV, "").strip()
    if url:  # a per-machine choice: .dvc/config.local, never committed
        run(["dvc", "remote", "modify", "--local", "local", "url", url], cwd=root)
    url = run(["dvc", "config", "remote.local.url"], cwd=root).stdout.strip()
    path = Path(os.path.expanduser(url))
    if not path.is_absolute():
        path = (root / ".dvc" / path).resolve()
    path.mkdir(parents=True, exist_ok=True)
    print(f"DVC remote 'local' -> {path}")
    return 0


def cmd_bench_incremental(args: argparse.Namespace) -> int:
    from autosink.ops.bench import main_incremental

    return main_incremental(args.sizes, args.keep, args.json)


def cmd_bench_train(args: argparse.Namespace) -> int:
    from autosink.learn.model import BACKBONES
    from autosink.ops.bench import main_train

    return main_train(args.backbones or list(BACKBONES), args.batches, args.json)


def cmd_bench_edge(args: argparse.Namespace) -> int:
    from autosink.ops.bench import main_edge

    return main_edge(args.model, args.iterations, args.warmup, args.json)


def cmd_bench_all(args: argparse.Namespace) -> int:
    from autosink.ops.bench import main_all

    return main_all(
        args.model, args.iterations, args.warmup, args.quick, args.sizes, args.batches, args.json, args.keep
    )


def cmd_plots(args: argparse.Namespace) -> int:
    from autosink.ops.config import project_root
    from autosink.ops.plots import show_plots

    try:
        page = show_plots(args.out, project_root())
    except RuntimeError as e:  # CommandError included: it shows the command's output
        print(f"autosink plots: {e}", file=sys.stderr)
        return 1
    print(f"plots: {page} (opens offline: the plotting scripts are inside the page)")
    return 0


def cmd_loop(args: argparse.Namespace) -> int:
    from autosink.ops.loop import LoopSettings, main_loop

    settings = LoopSettings(
        rounds=args.rounds,
        households=args.households,
        sessions=args.sessions,
        start=args.start,
        retrain=args.retrain,
        regime=args.regime,
        weak_epochs=args.weak_epochs,
        min_case_accuracy=args.min_case_accuracy,
        min_gain=args.min_gain,
        overrides=args.set,
    )
    return main_loop(settings, args.workdir, args.json, args.plot)


def cmd_promote(args: argparse.Namespace) -> int:
    import json

    from autosink.ops.config import project_root
    from autosink.ops.promote import PromotionError, production_status, promote, rollback

    root = project_root()
    if args.status:
        print(json.dumps(production_status(root), indent=2))
        return 0
    try:
        if args.rollback:
            result = rollback(root, push=not args.no_push, wandb_mode=args.wandb)
        else:
            result = promote(root, experiment=args.experiment, push=not args.no_push, wandb_mode=args.wandb)
    except PromotionError as e:
        print(f"autosink promote: refused: {e}", file=sys.stderr)
        return 1
    print(result["message"] if result["status"] == "unchanged" else f"{result['status']}: {result['version']}")
    if result.get("git_hint"):
        print(f"record it in git: {result['git_hint']}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="autosink",
        description="autosink: the camera-controlled faucet's ML loop (data lake -> labels -> model -> edge).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def stage(name: str, module: str, help_: str, parent=sub, description: str | None = None):
        p = parent.add_parser(name, help=help_, description=description or help_)
        p.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
        p.add_argument("--quiet", action="store_true", help="no progress bars")
        p.set_defaults(func=stage_handler(module))
        return p

    stage(
        "simulate",
        "simulate",
        "DVC stage: render the sample data lake, its hidden ground truth and the case-validation sets",
    )
    stage(
        "extract",
        "extract",
        "DVC stage: validate lake episodes and index their frames in data/extracted (bad ones quarantined)",
    )
    stage("prepare", "prepare", "DVC stage: split the feature store into train/val/test by session (no leakage)")
    stage(
        "validate-data",
        "validate_data",
        "DVC stage: validate the feature store and splits (image features, drift report, checks); "
        "exit 1 when the data gate fails",
    ).set_defaults(func=cmd_validate_data)
    stage(
        "base",
        "base",
        "DVC stage: train the base model on rendered sessions of kitchens outside the lake "
        "-> models/base/model.ckpt (what `train` fine-tunes)",
    )
    stage(
        "train",
        "train",
        "DVC stage: train the water classifier (Lightning; train.*/model.* parameters) -> models/model.ckpt",
        description="DVC stage `train`: train on data/splits + data/feature-store per the model and train "
        "parameters (params.yaml); resumes from models/checkpoints/last.ckpt when the parameters "
        "and data are unchanged. Writes models/model.ckpt and metrics/train.json.",
    )
    stage(
        "evaluate",
        "evaluate",
        "DVC stage: evaluate models/model.ckpt on the held-out test split -> metrics/eval.json, plots",
    )
    stage(
        "validate-model",
        "validate_model",
        "DVC stage: the case gate: score models/model.ckpt (and the production model) on data/cases "
        "-> metrics/cases.json",
    )
    stage(
        "export",
        "export",
        "DVC stage: export models/model.ckpt to models/model.onnx (preprocessing in the graph, parity "
        "checked) + its model card models/model.json",
    )
    stage(
        "water",
        "water",
        "DVC stage: water-savings benchmark of models/model.onnx through the edge loop on held-out "
        "simulated sessions -> metrics/water.json, reports/water_session.png",
    )
    stage(
        "quantize",
        "quantize",
        "DVC stage: static int8 quantisation (QDQ) of models/model.onnx, calibrated on validation frames "
        "-> models/model.int8.onnx + its card; int8 vs fp32 on the test split, the cases and the water "
        "sessions -> metrics/quantize.json",
    )
    label = sub.add_parser(
        "label",
        help="labels: build the feature store, review them",
        description="Sparse-to-dense labels and the feature store.",
    )
    label_sub = label.add_subparsers(dest="label_command", required=True, metavar="COMMAND")
    stage(
        "build",
        "label",
        "DVC stage: dense labels (human labels win) -> data/feature-store",
        parent=label_sub,
        description="DVC stage `label`: propagate the sparse feedback to every frame, apply human labels "
        "from data/labels/, and update the feature store incrementally.",
    )
    serve = label_sub.add_parser(
        "serve",
        help="web app to review and correct labels (http://127.0.0.1:8765/)",
        description="Serve the labeling web app: episodes with their review state, a frame timeline, keyboard "
        "labelling; saves data/labels/<episode>.csv (then run `dvc repro`). Listens on 127.0.0.1 "
        "unless --host says otherwise; any other address needs an access token.",
    )
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)"
    )
    serve.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    serve.add_argument(
        "--token",
        default=None,
        help="access token (16+ characters), required with any --host other than loopback; "
        "default $AUTOSINK_LABEL_TOKEN (prefer the variable: flags show in `ps`)",
    )
    serve.set_defaults(func=cmd_label_serve)

    prom = sub.add_parser(
        "promote",
        help="copy the gated candidate (models/model.onnx) to models/production/, or roll back",
        description="Promote the candidate that passed the case gate (metrics/cases.json) to models/production/ "
        "(tracked by DVC and pushed; wandb artifact alias `production`), keeping the old one in "
        "models/previous/. Refuses a candidate that failed the gate, with the reason.",
    )
    prom.add_argument("--rollback", action="store_true", help="restore the previous production model")
    prom.add_argument("--status", action="store_true", help="show what production and previous hold")
    prom.add_argument(
        "--experiment", default=None, help="experiment name to record (default: $DVC_EXP_NAME or the git branch)"
    )
    prom.add_argument("--no-push", action="store_true", help="do not `dvc push` the promoted model")
    prom.add_argument(
        "--wandb",
        default=None,
        choices=["auto", "online", "offline", "disabled"],
        help="wandb mode for the artifact alias (default auto: online with WANDB_API_KEY)",
    )
    prom.set_defaults(func=cmd_promote)

    loop = sub.add_parser(
        "loop",
        help="the retraining loop, closed: edge + simulated users -> lake -> dvc repro -> gate -> promote",
        description="In a copy of this project (under --workdir; your workspace gets only the report files): "
        "put a first model in production (--start), then per round run the sample lake's households through the "
        "edge runtime with the production model and a simulated user who corrects it, upload the "
        "recorded episodes to the lake, `dvc add` + `dvc repro`, and `autosink promote` the "
        "candidate if the gate passes. Prints per round the case accuracies and the held-out "
        "water metrics; writes metrics/loop.json and reports/loop_rounds.png. Each round trains "
        "a model: minutes per round.",
    )
    loop.add_argument("--rounds", type=int, default=2, help="rounds after the start (default 2)")
    loop.add_argument(
        "--start",
        choices=("base", "weak"),
        default="base",
        help="the model serving round 1: base = the default recipe (the base model fine-tuned on the "
        "sample lake); weak = trained from scratch for --weak-epochs (default base)",
    )
    loop.add_argument(
        "--retrain",
        choices=("warm", "scratch"),
        default="warm",
        help="how each round's candidate is trained: warm = from round 2 on, fine-tune the production "
        "model (model.weights=production, recipe train.warm); scratch = the configured recipe from the base "
        "model every round (default warm)",
    )
    loop.add_argument(
        "--regime",
        default="none",
        help="lighting of the fleet's kitchens and of the held-out water sessions: none, warm-dim or "
        "cold-glare (src/autosink/sim/session.py REGIMES; default none)",
    )
    loop.add_argument(
        "--workdir",
        type=Path,
        default=Path("runs/loop"),
        help="where the copy lives; must not exist or be empty (default runs/loop)",
    )
    loop.add_argument(
        "--households",
        type=int,
        default=None,
        help="households in the fleet: the first N users of the sample lake (default all)",
    )
    loop.add_argument(
        "--sessions",
        type=int,
        default=1,
        help="new sessions per household per round (default 1; 16 households x 2 make about 60 episodes)",
    )
    loop.add_argument(
        "--weak-epochs", type=int, default=1, help="training epochs of the --start weak model (default 1)"
    )
    loop.add_argument(
        "--min-case-accuracy",
        type=float,
        default=None,
        help="the gate's per-case floor in the copy (default: validate_model.min_accuracy)",
    )
    loop.add_argument(
        "--min-gain",
        type=float,
        default=0.02,
        help="the gate's climb rule in the copy: while production fails the case floors, promote a "
        "candidate whose mean case accuracy is this much higher, worst case no worse "
        "(default 0.02)",
    )
    loop.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a Hydra override for the copy's params (repeatable), e.g. --set train.max_epochs=10",
    )
    loop.add_argument("--json", type=Path, default=None, help="report file (default metrics/loop.json)")
    loop.add_argument("--plot", type=Path, default=None, help="plot file (default reports/loop_rounds.png)")
    loop.set_defaults(func=cmd_loop)

    plots = sub.add_parser(
        "plots",
        help="dvc plots show as one page that draws offline (the plotting scripts inlined)",
        description="Run `dvc plots show` with an --html-template that carries vega, vega-lite and vega-embed "
        "inline (downloaded once from the npm registry, checked against its sha512, cached in "
        "~/.cache/autosink/vega or $AUTOSINK_VEGA_CACHE): the page needs no network.",
    )
    plots.add_argument(
        "-o", "--out", type=Path, default=Path("runs/plots"), help="output folder for index.html (default runs/plots)"
    )
    plots.set_defaults(func=cmd_plots)

    lake = sub.add_parser("lake", help="inspect data-lake episodes", description="Inspect data-lake episodes.")
    lake_sub = lake.add_subparsers(dest="lake_command", required=True, metavar="COMMAND")
    check = lake_sub.add_parser(
        "check",
        help="validate episode zips or folders; one verdict line per episode",
        description="Validate episodes (zips, unzipped episode folders, or folders of them). "
        "Prints one verdict line per episode; exits 1 if any is bad.",
    )
    check.add_argument("paths", nargs="+", metavar="PATH", help="episode zip, episode folder, or a folder of them")
    check.add_argument("--no-frames", action="store_true", help="skip decoding the frames (faster)")
    check.add_argument("--width", type=int, default=640, help="expected frame width (default 640)")
    check.add_argument("--height", type=int, default=480, help="expected frame height (default 480)")
    check.add_argument("--any-size", action="store_true", help="accept frames of any size")
    check.add_argument("-v", "--verbose", action="store_true", help="print every problem, not only the first")
    check.set_defaults(func=cmd_lake_check)

    params = sub.add_parser(
        "params",
        help="compose or check params.yaml",
        description="params.yaml is composed from the Hydra configs in conf/.",
    )
    params_sub = params.add_subparsers(dest="params_command", required=True, metavar="COMMAND")
    comp = params_sub.add_parser(
        "compose",
        help="rewrite params.yaml from conf/ (as `dvc exp run` does)",
        description="Rewrite params.yaml from conf/, as `dvc exp run` does.",
    )
    comp.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. sim.seed=3 data=real")
    comp.set_defaults(func=cmd_params_compose)
    chk = params_sub.add_parser(
        "check",
        help="exit 1 if params.yaml differs from what conf/ composes",
        description="Exit 1 (listing the differences) if params.yaml is stale.",
    )
    chk.set_defaults(func=cmd_params_check)

    remote = sub.add_parser("remote", help="DVC remote helpers", description="DVC remote helpers.")
    remote_sub = remote.add_subparsers(dest="remote_command", required=True, metavar="COMMAND")
    init = remote_sub.add_parser(
        "init",
        help=f"create the local DVC remote folder (${REMOTE_ENV} overrides its path)",
        description=f"Create the default local DVC remote (default {DEFAULT_REMOTE}). Set {REMOTE_ENV} "
        "to put it elsewhere; the choice is written to .dvc/config.local, never to git.",
    )
    init.set_defaults(func=cmd_remote_init)
    bench = sub.add_parser("bench", help="benchmarks (print measured numbers)", description="Benchmarks.")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="COMMAND")
    inc = bench_sub.add_parser(
        "incremental",
        help="time `dvc repro validate_data` after adding one episode to lakes of several sizes",
        description="Build scratch copies of this project with lakes of several sizes, run the data pipeline "
        "(up to validate_data), add one episode, and time it again (it should track the new data, "
        "not the lake).",
    )
    inc.add_argument("--sizes", type=int, nargs="+", default=[10, 40, 160], help="lake sizes in episodes")
    inc.add_argument("--keep", type=Path, default=None, help="keep the scratch projects in this folder")
    inc.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    inc.set_defaults(func=cmd_bench_incremental)
    tr = bench_sub.add_parser(
        "train",
        help="training images/s and seconds per epoch of each backbone on this machine",
        description="Measure training throughput (forward + backward + optimizer step, at the configured input "
        "size and batch size) for each backbone, and the epoch time it means for the current split.",
    )
    tr.add_argument("--backbones", nargs="+", default=None, help="default: every backbone of conf/model")
    tr.add_argument("--batches", type=int, default=6, help="timed batches per backbone (after 2 warm-up ones)")
    tr.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    tr.set_defaults(func=cmd_bench_train)

    def latency_args(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--model",
            type=Path,
            default=Path("models/model.onnx"),
            help="the exported model, its card beside it (default: models/model.onnx)",
        )
        p.add_argument("--iterations", type=int, default=500, help="timed frames per model (default 500)")
        p.add_argument("--warmup", type=int, default=20, help="untimed frames first (default 20)")

    edge = bench_sub.add_parser(
        "edge",
        help="edge latency (p50/p99, fps) and peak memory of the exported model vs a ResNet-50",
        description="Time the exported model per 640x480 RGB frame through the edge's own load_model().predict "
        "(onnxruntime, one thread, real frames from the feature store or the case sets) in a fresh "
        "process that imports no torch, with its peak memory; then a ResNet-50 WaterNet (random "
        "weights) exported the same way at the same input; print both and their ratio.",
    )
    latency_args(edge)
    edge.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    edge.set_defaults(func=cmd_bench_edge)
    every = bench_sub.add_parser(
        "all",
        help="every benchmark (what `make bench` runs); writes metrics/bench.json",
        description="Edge latency and memory vs ResNet-50 (as `bench edge`), a no-op `dvc repro` in this "
        "repository (only when the pipeline is up to date; otherwise says so), training images/s "
        "for the configured backbone and, unless --quick, `dvc repro` after one new episode for "
        "several lake sizes (as `bench incremental`, minutes). Prints a table and writes "
        "metrics/bench.json with the date, the machine and the versions.",
    )
    latency_args(every)
    every.add_argument("--quick", action="store_true", help="skip the incremental `dvc repro` benchmark (minutes)")
    every.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[10, 40],
        help="lake sizes in episodes for the incremental benchmark (default 10 40)",
    )
    every.add_argument("--batches", type=int, default=6, help="timed training batches (after 2 warm-up ones)")
    every.add_argument("--keep", type=Path, default=None, help="keep the incremental scratch projects here")
    every.add_argument(
        "--json",
        type=Path,
        default=None,
        help="where to write the results (default: metrics/bench.json in the repository)",
    )
    every.set_defaults(func=cmd_bench_all)
    return parser


def main(argv: list[str] | None = None) -> int:
    from autosink.core.proc import CommandError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, CommandError) as e:  # a failed git/dvc call: its output
        print(f"autosink {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
