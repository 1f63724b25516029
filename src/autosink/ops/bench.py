"""Benchmarks: the edge model's latency and memory, the pipeline's costs, training speed.

``autosink bench incremental`` answers: does the cost of ``dvc repro`` after one new
episode track the new data, or the size of the lake? It builds lakes of several sizes
(copies of the sample lake's episodes, shifted in time so each is a distinct episode),
runs the pipeline once, adds one episode, and times the second run.

``autosink bench edge`` times ``models/model.onnx`` per frame the way the Pi runs it (the
edge's own ``load_model(...).predict``, one onnxruntime thread, real 640x480 RGB frames) in a
fresh process that imports only the edge side (no torch), records that process's peak memory,
and does the same for a ResNet-50 ``WaterNet`` (random weights: latency does not depend on
them) exported the same way at the same input, the earlier system's architecture, and for the
int8 model (``models/model.int8.onnx`` with its card) when there is one. Then it times the
full decision of the edge loop (:func:`decision_latency`): a camera's JPEG frame decoded to RGB,
the model, the controllers, the valve's GPIO pin written (on an in-memory ``RPi.GPIO``), one
thread, through the edge's real :class:`~autosink.edge.runtime.EdgeRuntime` and its
``edge/config.toml``. Issue 19's targets (decision p99 <= 5 ms, int8 >= 25x faster than the
ResNet-50 fp32) are printed as met or not, never enforced.

``autosink bench all`` (``make bench``) runs both, a no-op ``dvc repro`` in this repository,
training images/s and (unless ``--quick``) the incremental benchmark, prints a table and
writes ``metrics/bench.json`` with the date, the machine and the versions.

Everything here prints measured numbers; nothing asserts a time. This module's top level
imports only the standard library, :mod:`autosink.core.proc` and :mod:`autosink.ops.workspace`
(standard library only at their top level too): the edge worker process imports it.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from datetime import UTC, timedelta
from pathlib import Path
from typing import Any

from autosink.core.proc import CommandError, run
from autosink.ops.workspace import clone_episode, copy_project, read_metrics, read_run_record, tool_env


def incremental(repo_root: Path, sizes: list[int], work: Path) -> list[dict]:
    """Time `dvc repro validate_data` after adding one episode to lakes of each size (real-data mode,
    `dvc add`ed lake): the data pipeline, whose cost should track the new data, not the lake.
    Training and what follows it rerun in full on any new data, whatever the lake's size (and the
    cloned episodes here share a few sessions, too few for the session-level splits to train on)."""
    from autosink.core.episode import find_episodes

    # A tiny sample lake (only its cases and a few templates are used), and the data gate off:
    # cloned episodes are near-duplicates by construction.
    tiny = {
        "sim/default.yaml": {"users": 1, "sessions_per_user": 2, "case_frames": 2},
        "validate/default.yaml": {"enforce": False, "wandb": {"mode": "disabled"}},
    }
    results = []
    for size in sizes:
        root = work / f"lake-{size}" / "autosink"
        root.mkdir(parents=True)
        env = copy_project(repo_root, root, tiny)
        run(["autosink", "params", "compose", "data=real"], cwd=root, env=env)
        run(["dvc", "repro", "simulate"], cwd=root, env=env)
        templates = find_episodes([root / "data/sample-lake"])
        lake = root / "data/data-lake"
        lake.mkdir(parents=True, exist_ok=True)
        for i in range(size + 1):
            clone_episode(templates[i % len(templates)], lake if i < size else root, timedelta(days=1 + i))
        extra = sorted(root.glob("*.zip"))[0]
        run(["dvc", "add", "data/data-lake"], cwd=root, env=env)
        t0 = time.perf_counter()
        run(["dvc", "repro", "validate_data"], cwd=root, env=env)
        first = time.perf_counter() - t0
        frames = read_metrics(root, "extract")["frames"]

        shutil.move(str(extra), lake / extra.name)
        t0 = time.perf_counter()
        run(["dvc", "add", "data/data-lake"], cwd=root, env=env)
        add_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        run(["dvc", "repro", "validate_data"], cwd=root, env=env)
        again = time.perf_counter() - t0
        ext, lab = read_run_record(root, "extract"), read_run_record(root, "label")
        results.append(
            {
                "episodes": size,
                "frames": frames,
                "full_repro_s": round(first, 2),
                "dvc_add_s": round(add_s, 2),
                "repro_after_one_s": round(again, 2),
                "extracted": ext["episodes_extracted"],
                "extract_reused": ext["episodes_reused"],
                "relabelled": lab["episodes_relabelled"],
                "label_reused": lab["episodes_reused"],
            }
        )
        print(_row(results[-1]), flush=True)
    return results


HEADER = ("episodes", "frames", "full_repro_s", "dvc_add_s", "repro_after_one_s", "extracted", "relabelled")


def _row(r: dict) -> str:
    return "  ".join(f"{r[k]:>{len(k)}}" for k in HEADER)


def main_incremental(sizes: list[int], keep: Path | None, json_out: Path | None) -> int:
    from autosink.ops.config import project_root

    repo = project_root()
    work = keep or Path(__import__("tempfile").mkdtemp(prefix="autosink-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    print("  ".join(HEADER))
    try:
        results = incremental(repo, sizes, work)
    finally:
        if keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if json_out:
        json_out.write_text(json.dumps(results, indent=2) + "\n")
    print("(repro_after_one_s should stay flat as the lake grows: only the new episode is extracted and labelled)")
    return 0


def first_step(params: dict, splits_dir: Path, store_dir: Path, cache_root: Path) -> dict:
    """Seconds from a training run's start to its first step, with the frame cache empty (cold)
    and filled by that run (warm): the training and validation frames decoded and resized (or
    read from :class:`~autosink.learn.frames.FrameCache`), one batch drawn, one forward and
    backward pass. The replay of the base's rendered kitchens (``train.replay``) is rendered
    before training too and is not part of this."""
    import torch

    from autosink.learn.frames import WaterDataModule
    from autosink.learn.model import build_preprocess
    from autosink.learn.training import LitWaterNet

    model_cfg, data_cfg = {**params["model"], "weights": "none"}, params["data"]
    train_cfg = {**params["train"], "frame_cache": str(cache_root)}
    out: dict[str, Any] = {"frames": None, "cache": str(cache_root)}
    for name in ("cold", "warm"):
        t0 = time.perf_counter()
        dm = WaterDataModule(build_preprocess(model_cfg, data_cfg), train_cfg, data_cfg, splits_dir, store_dir, False)
        dm.setup("fit")
        x, y, _ = next(iter(dm.train_dataloader()))
        module = LitWaterNet(model_cfg, data_cfg, train_cfg)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(module.net.logits_from_resized(x), y)
        loss.backward()
        out[f"{name}_s"] = round(time.perf_counter() - t0, 2)
        out[f"{name}_decoded"] = dm.frame_cache.misses
        out["frames"] = sum(len(dm.datasets[s]) for s in ("train", "val"))
    return out


def train_throughput(
    params: dict, backbones: list[str], batches: int = 6, warmup: int = 2, threads: int | None = None
) -> list[dict]:
    """Training images/s of each backbone at the configured input size (forward, backward and
    AdamW step on resized frames, as one training step does) and the per-epoch time this means
    for the current training split."""
    import torch

    from autosink.learn.model import WaterNet, count_parameters

    model_cfg, data_cfg, train_cfg = params["model"], params["data"], params["train"]
    torch.set_num_threads(threads or os.cpu_count() or 1)
    h, w, bs = int(model_cfg["input_height"]), int(model_cfg["input_width"]), int(train_cfg["batch_size"])
    split = Path("data/splits/train.csv")
    n_train = sum(1 for _ in split.open()) - 1 if split.exists() else None
    rows = []
    for name in backbones:
        net = WaterNet(name, h, w, int(data_cfg["frame_height"]), int(data_cfg["frame_width"]))
        net.train()
        opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
        x, y = torch.rand(bs, 3, h, w), (torch.rand(bs) > 0.5).float()
        seconds = 0.0
        for i in range(warmup + batches):
            t0 = time.perf_counter()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net.logits_from_resized(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if i >= warmup:
                seconds += time.perf_counter() - t0
        ips = batches * bs / seconds
        rows.append(
            {
                "backbone": name,
                "input": [h, w],
                "batch_size": bs,
                "threads": torch.get_num_threads(),
                "images_per_s": round(ips, 1),
                "train_frames": n_train,
                "epoch_s": round(n_train / ips, 1) if n_train else None,
                "parameters_m": round(count_parameters(net) / 1e6, 2),
            }
        )
    return rows


def main_train(backbones: list[str], batches: int, json_out: Path | None) -> int:
    from autosink.ops.config import load_params, project_root

    os.chdir(project_root())
    params = load_params()
    print(
        f"training throughput, {params['model']['input_height']}x{params['model']['input_width']} input, "
        f"batch {params['train']['batch_size']}, {os.cpu_count()} CPU threads (forward + backward + AdamW)"
    )
    print(f"  {'backbone':<20} {'params':>8} {'images/s':>9} {'s/epoch':>8}")
    rows = []
    for name in backbones:
        row = train_throughput(params, [name], batches=batches)[0]
        rows.append(row)
        epoch = f"{row['epoch_s']:.1f}" if row["epoch_s"] is not None else "n/a"
        print(f"  {name:<20} {row['parameters_m']:>7.2f}M {row['images_per_s']:>9.1f} {epoch:>8}", flush=True)
    if rows[0]["train_frames"]:
        print(f"  (s/epoch for the {rows[0]['train_frames']} frames of data/splits/train.csv)")
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


# --------------------------------------------------------------------------- edge latency and memory

EDGE_MODEL = Path("models/model.onnx")
BASELINE = "resnet50"  # the earlier system's architecture
REQUIRED_KEYS = (
    "edge_p50_ms",
    "edge_p99_ms",
    "resnet50_p50_ms",
    "speedup_vs_resnet50",
    "int8_speedup_vs_resnet50",
    "decision_p50_ms",
    "decision_p99_ms",
)
_MISSING_MODEL = "run `make repro` first (it trains and exports the model)"
EDGE_CONFIG = Path("edge/config.toml")  # the Pi's defaults (the controller, the valve and its inputs)
#: issue 19's targets, printed as met or not (never a failure: timings are this machine's)
DECISION_TARGET_P99_MS = 5.0  # frame bytes in -> valve pin written, one thread
INT8_TARGET_SPEEDUP = 25.0  # int8 model vs the ResNet-50 fp32 baseline, at p50
JPEG_QUALITY = 90  # the USB camera's MJPEG frames are re-created from the real frames at this quality


def _proc_status_mb(field: str) -> float | None:
    """A memory field of /proc/self/status (VmHWM: peak resident set; VmRSS: now) in MB, else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return round(int(line.split()[1]) / 1024, 1)  # kB
    except (OSError, ValueError, IndexError):
        pass
    return None


def _edge_worker() -> None:
    """The fresh edge process: spec JSON on stdin -> one line of result JSON on stdout.

    Imports what the Pi's inference imports (numpy, onnxruntime, the edge package; OpenCV to
    decode the frames, as the camera does) and nothing else, so its peak memory is the edge's.
    Frames are decoded one at a time, outside the timed call, like camera frames arriving.
    """
    spec = json.loads(sys.stdin.read())
    import cv2  # the edge's camera decodes with OpenCV: part of its footprint
    import numpy as np

    from autosink.edge.inference import load_model

    rss_imports = _proc_status_mb("VmRSS")
    model = load_model(spec["model"], threads=int(spec["threads"]))
    rss_loaded = _proc_status_mb("VmRSS")
    h, w = model.height, model.width

    def decode(path: str):
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is None or bgr.shape != (h, w, 3):
            return None
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    paths = [p for p in spec["frames"] if decode(p) is not None]
    if paths:

        def frame(i: int):
            return decode(paths[i % len(paths)])
    else:  # no real frames of the model's size: a few fixed noise frames (latency does not depend on content)
        synthetic = np.random.default_rng(0).integers(0, 256, size=(4, h, w, 3), dtype=np.uint8)

        def frame(i: int):
            return synthetic[i % len(synthetic)]

    warmup, iterations = int(spec["warmup"]), int(spec["iterations"])
    ms, probs = [], []
    for i in range(warmup + iterations):
        x = frame(i)
        t0 = time.perf_counter()
        p = model.predict(x)
        dt = time.perf_counter() - t0
        if i >= warmup:
            ms.append(dt * 1000.0)
            probs.append(p)
    lat = np.asarray(ms)
    opts = model.session.get_session_options()
    peak = _proc_status_mb("VmHWM")
    if peak is None:
        import resource

        peak = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # kB on Linux
    result = {
        "model": str(model.path),
        "backbone": model.card.get("backbone"),
        "version": model.version,
        "precision": model.card.get("precision", "fp32"),
        "model_mb": round(model.path.stat().st_size / 1e6, 2),
        "input": [h, w],
        "model_input": model.card.get("input_size"),
        "crop": model.card.get("crop"),
        "threads": int(opts.intra_op_num_threads),
        "inter_op_threads": int(opts.inter_op_num_threads),
        "iterations": iterations,
        "warmup": warmup,
        "frame_source": "real" if paths else "synthetic",
        "distinct_frames": len(paths) or 4,
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p90_ms": round(float(np.percentile(lat, 90)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
        "mean_ms": round(float(lat.mean()), 3),
        "min_ms": round(float(lat.min()), 3),
        "max_ms": round(float(lat.max()), 3),
        "fps": round(1000.0 / float(lat.mean()), 1),
        "p_water_range": [round(min(probs), 4), round(max(probs), 4)],
        "peak_rss_mb": peak,
        "rss_after_imports_mb": rss_imports,
        "rss_after_load_mb": rss_loaded,
        "torch_imported": "torch" in sys.modules,
    }
    print(json.dumps(result), flush=True)


class _BenchGPIO:
    """``RPi.GPIO`` for the decision worker (put in its place in ``sys.modules``): the edge's own
    :mod:`~autosink.edge.devices` classes drive it as they drive the real module on the Pi. It
    keeps levels in memory, counts writes per pin and reads, and hands every output write with
    its ``perf_counter`` time to ``on_output``: the moment the valve call reached the pin."""

    BOARD, BCM = 10, 11
    OUT, IN = 0, 1
    LOW, HIGH = 0, 1
    PUD_OFF, PUD_DOWN, PUD_UP = 20, 21, 22

    def __init__(self, input_levels: dict[int, int] | None = None) -> None:
        self.mode: int | None = None
        self.directions: dict[int, int] = {}
        self.levels: dict[int, int] = dict(input_levels or {})
        self.writes: dict[int, list[int]] = {}  # output pin -> levels written, in order
        self.reads = 0
        self.cleaned: list[int | None] = []
        self.on_output: Any = None

    def setmode(self, mode: int) -> None:
        if self.mode is not None and self.mode != mode:
            raise ValueError("A different mode has already been set!")
        self.mode = mode

    def getmode(self) -> int | None:
        return self.mode

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF, initial: int = -1) -> None:
        if self.mode is None:
            raise RuntimeError("Please set pin numbering mode using GPIO.setmode")
        self.directions[pin] = direction
        if direction == self.OUT:
            self.levels[pin] = self.LOW if initial == -1 else int(initial)
        else:  # an input keeps the level the worker put on it (the handle, the button)
            self.levels.setdefault(pin, self.HIGH if pull_up_down == self.PUD_UP else self.LOW)

    def output(self, pin: int, value: int) -> None:
        t = time.perf_counter()
        if self.directions.get(pin) != self.OUT:
            raise RuntimeError("The GPIO channel has not been set up as an OUTPUT")
        self.levels[pin] = int(value)
        self.writes.setdefault(pin, []).append(int(value))
        if self.on_output is not None:
            self.on_output(pin, int(value), t)

    def input(self, pin: int) -> int:
        if pin not in self.directions:
            raise RuntimeError("You must setup() the GPIO channel first")
        self.reads += 1
        return self.levels[pin]

    def cleanup(self, pin: int | None = None) -> None:
        self.cleaned.append(pin)
        for p in list(self.directions) if pin is None else [pin]:
            self.directions.pop(p, None)


def _gpio_pin(spec: str | None) -> int | None:
    """The BCM pin of a ``"gpio:<pin>"`` device spec, else None."""
    kind, _, arg = str(spec or "").strip().partition(":")
    return int(arg) if kind == "gpio" and arg.isdigit() else None


def _stats_ms(values: list[float]) -> dict:
    import numpy as np

    a = np.asarray(values) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "min_ms": round(float(a.min()), 3),
        "max_ms": round(float(a.max()), 3),
    }


def _decision_worker() -> None:
    """The fresh edge process for the full decision latency: spec JSON on stdin -> one line of
    result JSON on stdout. Imports only the edge side (no torch).

    It times the real :class:`~autosink.edge.runtime.EdgeRuntime` loop, one thread, frame after
    frame: a USB camera's JPEG (MJPEG) bytes decoded with OpenCV to RGB at the camera size (as
    ``opencv:<index>`` does: ``VideoCapture.read`` decodes, then BGR -> RGB), the model through
    the edge's :class:`~autosink.edge.inference.ModelReloader` (``load_model``, its self-test;
    the loop's ``predict`` + ``normalize_probability``), the shadow controller, the GPIO inputs
    (reed switch: handle open; button: not pressed), the controller with the edge's configured
    :class:`~autosink.edge.controller.ControllerConfig`, and the configured ``GpioValve`` (made by
    ``make_valve`` as on the Pi) writing its pin on a :class:`_BenchGPIO` in ``RPi.GPIO``'s place.

    The loop has no one-step method, so it runs as on the Pi (``run()``) over an in-memory
    :class:`~autosink.edge.camera.IteratorCamera` (no frame pacing: ``fps`` 0), and each step is
    cut out by timestamps: decoding starts (the step's start: the camera's frame arrived), the
    frame decoded, ``predict`` returned, the valve's pin written (the step's end: the decision is
    applied). What the loop does after the valve write (recorder, reload check, stats) is not part
    of the decision latency; neither recorder nor uploader is attached. On the Pi the camera
    thread decodes in parallel with the loop; here it is in the same thread, as issue 19 asks.
    The JPEGs are encoded once, before the loop; ``cv2.setNumThreads(1)``: one thread throughout.
    """
    spec = json.loads(sys.stdin.read())
    import types

    import cv2
    import numpy as np

    cv2.setNumThreads(1)
    from autosink.edge.settings import load_config

    cfg = load_config(spec.get("config"))
    c_valve, c_in = cfg["valve"], cfg["inputs"]
    valve_spec = str(c_valve["kind"])
    if _gpio_pin(valve_spec) is None and valve_spec.strip() != "gpio":  # serial/fake: time the Pi's relay
        valve_spec = "gpio"
    # inputs at rest: the faucet handle open (active), the button not pressed (inactive)
    active, inactive = (0, 1) if c_in["pull_up"] else (1, 0)
    inputs = {"faucet": c_in["faucet"] or None, "button": c_in["button"] or None}
    levels = {}
    for name, level in (("faucet", active), ("button", inactive)):
        pin = _gpio_pin(inputs[name])
        if pin is not None:
            levels[pin] = level
    gpio = _BenchGPIO(levels)
    rpi = types.ModuleType("RPi")
    rpi.GPIO = gpio  # type: ignore[attr-defined]
    sys.modules["RPi"], sys.modules["RPi.GPIO"] = rpi, gpio  # type: ignore[assignment]

    from autosink.edge.camera import IteratorCamera
    from autosink.edge.clock import SystemClock
    from autosink.edge.controller import ControllerConfig
    from autosink.edge.devices import make_input, make_valve
    from autosink.edge.feedback import GpioFeedback
    from autosink.edge.inference import ModelReloader, load_model
    from autosink.edge.runtime import EdgeRuntime

    steps: list[dict[str, Any]] = []  # one per camera frame: perf_counter times and what was decided
    probs: list[float] = []
    threads = int(spec["threads"])

    class Timed:
        """The loaded model as the loop sees it, with ``predict`` timed into the current step."""

        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.threshold, self.height, self.width = inner.threshold, inner.height, inner.width
            self.version, self.card, self.path = inner.version, inner.card, inner.path

        def predict(self, frame: Any) -> float:
            try:
                p = self.inner.predict(frame)
                if steps:
                    probs.append(p)
                return p
            finally:
                if steps and "predicted" not in steps[-1]:
                    steps[-1]["predicted"] = time.perf_counter()

    reloader = ModelReloader(
        spec["model"],
        threads=threads,
        selftest_max_s=cfg["model"]["selftest_max_s"],
        background=False,
        loader=lambda p: Timed(load_model(p, threads=threads)),
    )
    model = reloader.model
    h, w = model.height, model.width

    jpegs = []
    for path in spec["frames"]:
        bgr = cv2.imread(path, cv2.IMREAD_COLOR)
        if bgr is not None and bgr.shape == (h, w, 3):
            ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            if ok:
                jpegs.append(buf.tobytes())
    source = "real" if jpegs else "synthetic"
    if not jpegs:  # the edge worker's noise frames (JPEG compresses noise badly: a slow decode)
        noise = np.random.default_rng(0).integers(0, 256, size=(4, h, w, 3), dtype=np.uint8)
        jpegs = [cv2.imencode(".jpg", x, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])[1].tobytes() for x in noise]

    def mjpeg_frames():
        i = 0
        while True:
            step = {"start": time.perf_counter()}
            steps.append(step)
            bgr = cv2.imdecode(np.frombuffer(jpegs[i % len(jpegs)], np.uint8), cv2.IMREAD_COLOR)
            rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
            step["decoded"] = time.perf_counter()
            yield rgb
            i += 1

    clock = SystemClock()
    valve = make_valve(valve_spec, active_high=c_valve["active_high"])
    kw = {"pull_up": c_in["pull_up"], "debounce_s": c_in["debounce_s"]}
    feedback = GpioFeedback(
        make_input(inputs["faucet"], **kw),
        make_input(inputs["button"], **kw),
        handle_open_forces_on=c_in["handle_open_forces_on"],
    )
    warmup, iterations = int(spec["warmup"]), int(spec["iterations"])
    runtime = EdgeRuntime(
        camera=IteratorCamera(mjpeg_frames(), clock.monotonic, name="bench-mjpeg", size=(w, h)),
        model=reloader,
        valve=valve,
        controller=ControllerConfig.from_dict(cfg["controller"]),
        feedback=feedback,
        clock=clock,
        fps=0.0,
        max_frames=warmup + iterations,
        read_timeout_s=cfg["camera"]["read_timeout_s"],
        reopen_after_s=cfg["camera"]["reopen_after_s"],
        reload_check_s=cfg["model"]["reload_check_s"],
        flow_l_min=c_valve["flow_l_min"],
        install_signals=False,
    )
    open_level = gpio.HIGH if valve.active_high else gpio.LOW

    def on_output(pin: int, level: int, t: float) -> None:
        if pin == valve.pin and steps and "written" not in steps[-1]:
            d = runtime.controller.last
            steps[-1].update(written=t, level=level, open=level == open_level, reason=d.reason, decided=d.open)

    gpio.on_output = on_output
    stats = runtime.run()

    timed = steps[warmup : warmup + iterations]
    done = [s for s in timed if {"decoded", "predicted", "written"} <= set(s)]
    if not done:
        raise RuntimeError(f"no timed step reached the valve ({len(steps)} steps, stats: {stats.line()})")
    reasons: dict[str, int] = {}
    for s in done:
        reasons[s["reason"]] = reasons.get(s["reason"], 0) + 1
    parts = {
        "": [s["written"] - s["start"] for s in done],
        "decode_": [s["decoded"] - s["start"] for s in done],
        "model_": [s["predicted"] - s["decoded"] for s in done],
        "control_": [s["written"] - s["predicted"] for s in done],
    }
    result: dict[str, Any] = {
        "model": str(model.path),
        "backbone": model.card.get("backbone"),
        "version": model.version,
        "precision": model.card.get("precision", "fp32"),
        "camera": [h, w],
        "frame_source": source,
        "distinct_frames": len(jpegs),
        "jpeg_quality": JPEG_QUALITY,
        "jpeg_kb_mean": round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1),
        "iterations": iterations,
        "warmup": warmup,
        "threads": threads,
        "opencv_threads": cv2.getNumThreads(),
        "config": spec.get("config") or "defaults",
        "controller": dict(cfg["controller"]),
        "valve": repr(valve),
        "valve_pin": valve.pin,
        "inputs": inputs,
    }
    for prefix, seconds in parts.items():
        result.update({f"{prefix}{k}": v for k, v in _stats_ms(seconds).items()})
    writes = gpio.writes.get(valve.pin, [])
    result.update(
        {
            "timed_steps": len(done),
            "valve_pin_writes": len(writes),  # every step writes it, plus the closes at start and exit
            "valve_open_steps": sum(1 for s in done if s["open"]),
            "valve_matches_controller": all(s["open"] == s["decided"] for s in done),
            "valve_closed_at_exit": bool(writes) and writes[-1] != open_level and valve.pin in gpio.cleaned,
            "gpio_input_reads": gpio.reads,
            "reasons": dict(sorted(reasons.items())),
            "p_water_range": [round(min(probs), 4), round(max(probs), 4)] if probs else None,
            "frames_run": stats.frames,
            "model_errors": stats.model_errors,
            "stalls": stats.stalls,
            "valve_changes": stats.valve_changes,
            "stop_reason": stats.stop_reason,
            "peak_rss_mb": _proc_status_mb("VmHWM"),
            "torch_imported": "torch" in sys.modules,
        }
    )
    print(json.dumps(result), flush=True)


def decision_latency(
    model: Path,
    frames: list[Path] | None = None,
    *,
    config: Path | None = None,
    iterations: int = 500,
    warmup: int = 20,
    threads: int = 1,
    timeout: float = 1800,
) -> dict:
    """The full decision latency of the edge loop with ``model`` (its card beside it): camera
    JPEG -> RGB -> model -> controller -> valve pin, per frame, in a fresh edge-only process (see
    :func:`_decision_worker`). ``frames``: images of the card's size, re-encoded as JPEG (others
    are skipped; none: synthetic frames); ``config``: the edge's TOML (None: its defaults).
    Returns p50/p90/p99/mean/min/max ms of the whole step and ``decode_``/``model_``/``control_``
    ones of its parts (``control``: normalising, both controllers, the inputs, the valve write),
    and what was decided (``reasons``, the valve's writes)."""
    from autosink.core.modelcard import card_path_for

    model = Path(model)
    for path in (model, card_path_for(model)):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; {_MISSING_MODEL}")
    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    spec = {
        "model": str(model.resolve()),
        "frames": [str(Path(p).resolve()) for p in frames or []],
        "config": str(Path(config).resolve()) if config else None,
        "iterations": int(iterations),
        "warmup": int(warmup),
        "threads": int(threads),
    }
    return _run_worker("_decision_worker", spec, timeout, f"decision latency worker on {model}")


def edge_latency(
    model: Path,
    frames: list[Path] | None = None,
    *,
    iterations: int = 500,
    warmup: int = 20,
    threads: int = 1,
    timeout: float = 1800,
) -> dict:
    """Per-frame latency of ``model`` (an ONNX file with its card beside it) through the edge's own
    ``load_model(path, threads=...).predict``, in a fresh process that imports only the edge side;
    that process's peak memory too. ``frames``: RGB images of the card's size (others are
    skipped; none: synthetic frames). Returns p50/p90/p99/mean/min/max ms, fps, peak_rss_mb..."""
    from autosink.core.modelcard import card_path_for

    model = Path(model)
    for path in (model, card_path_for(model)):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; {_MISSING_MODEL}")
    if iterations < 1 or warmup < 0:
        raise ValueError(f"iterations must be >= 1 and warmup >= 0, got {iterations} and {warmup}")
    spec = {
        "model": str(model.resolve()),
        "frames": [str(Path(p).resolve()) for p in frames or []],
        "iterations": int(iterations),
        "warmup": int(warmup),
        "threads": int(threads),
    }
    return _run_worker("_edge_worker", spec, timeout, f"edge latency worker on {model}")


def _run_worker(name: str, spec: dict, timeout: float, what: str) -> dict:
    """Run ``autosink.ops.bench.<name>`` in a fresh Python process: spec JSON in, the last line out."""
    proc = run(
        [sys.executable, "-c", f"from autosink.ops.bench import {name}; {name}()"],
        input=json.dumps(spec),
        timeout_s=timeout,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed ({proc.returncode}):\n{proc.stdout}{proc.stderr}")
    return json.loads(lines[-1])


def bench_frames(root: Path, n: int = 16) -> tuple[list[Path], str]:
    """Up to ``n`` real camera frames, evenly spread: from the feature store, else the case sets.
    Returns (paths, where they came from); no frames: ([], "synthetic")."""
    import csv

    store = root / "data/feature-store"
    candidates: list[Path] = []
    source = "synthetic"
    manifest = store / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="") as f:
            candidates = [store / row["path"] for row in csv.DictReader(f) if row.get("path")]
        source = "data/feature-store"
    candidates = [p for p in candidates if p.is_file()]
    if not candidates:
        candidates, source = sorted((root / "data/cases").glob("*/*.png")), "data/cases"
    if not candidates:
        return [], "synthetic"
    step = max(1, len(candidates) // n)
    return candidates[::step][:n], source


def export_baseline(params: dict, out_dir: Path, backbone: str = BASELINE, seed: int = 0) -> Path:
    """A ``WaterNet`` with ``backbone`` (random weights) exported exactly as the export stage does
    the trained one (same camera frame, model input, crop and opset), with a card, into ``out_dir``."""
    import torch

    from autosink.learn.export import OPSET, export_onnx, write_model_card
    from autosink.learn.model import build_model

    model_cfg, data_cfg = params["model"], params["data"]
    torch.manual_seed(seed)
    net = build_model({**model_cfg, "backbone": backbone, "weights": "none"}, data_cfg)
    h, w = int(data_cfg["frame_height"]), int(data_cfg["frame_width"])
    path = Path(out_dir) / f"{backbone}.onnx"
    export_onnx(net, path, height=h, width=w, opset=int(params.get("export", {}).get("opset", OPSET)))
    write_model_card(
        path,
        backbone=backbone,
        threshold=0.5,
        version=f"bench-{backbone}-random-weights",
        data_version="none",
        height=h,
        width=w,
        metrics={},
        input_size=(net.preprocess.height, net.preprocess.width),
        crop=net.preprocess.crop,
    )
    return path


def latency_keys(edge: dict, baseline: dict, name: str = BASELINE) -> dict:
    """The flat bench.json keys of the edge-vs-baseline comparison (speedup: baseline p50 / edge p50)."""
    keys = {}
    for prefix, r in (("edge", edge), (name, baseline)):
        for k in ("p50_ms", "p99_ms", "mean_ms", "fps", "peak_rss_mb"):
            keys[f"{prefix}_{k}"] = r[k]
    keys[f"speedup_vs_{name}"] = _ratio(baseline["p50_ms"], edge["p50_ms"])
    return keys


def _ratio(slow: float | None, fast: float | None) -> float | None:
    return round(slow / fast, 2) if slow is not None and fast else None


def int8_path_for(model: Path) -> Path:
    """``models/model.onnx`` -> ``models/model.int8.onnx``: where the quantize stage puts the int8
    model (its card: ``models/model.int8.json``)."""
    name = model.name[:-5] if model.name.endswith(".onnx") else model.name
    return model.with_name(f"{name}.int8.onnx")


def int8_keys(edge: dict, baseline: dict, int8: dict | None, note: str | None = None) -> dict:
    """The flat bench.json keys of the int8 model: its latency, its speedups over the fp32 edge
    model and the ResNet-50 fp32 baseline (their p50 / its p50), whether it meets issue 19's
    :data:`INT8_TARGET_SPEEDUP`; all None, with ``note`` saying why, when there is no int8 model."""
    row = int8 or {}
    keys: dict[str, Any] = {f"int8_{k}": row.get(k) for k in ("p50_ms", "p99_ms", "mean_ms", "fps", "peak_rss_mb")}
    vs_base = _ratio(baseline["p50_ms"], int8["p50_ms"]) if int8 else None
    keys.update(
        {
            "int8_speedup_vs_fp32": _ratio(edge["p50_ms"], int8["p50_ms"]) if int8 else None,
            f"int8_speedup_vs_{BASELINE}": vs_base,
            "int8_target_speedup": INT8_TARGET_SPEEDUP,
            "int8_target_met": None if vs_base is None else vs_base >= INT8_TARGET_SPEEDUP,
        }
    )
    if int8 and note is None and int8["p50_ms"] >= edge["p50_ms"]:
        note = (
            f"int8 is not faster than fp32 on this CPU: p50 {int8['p50_ms']:.3f} ms (int8) vs "
            f"{edge['p50_ms']:.3f} ms (fp32), p99 {int8['p99_ms']:.3f} vs {edge['p99_ms']:.3f} ms"
        )
    keys["int8_note"] = note
    return keys


def decision_keys(decision: dict | None) -> dict:
    """The flat bench.json keys of the full decision latency (None when it was not measured)."""
    d = decision or {}
    p99 = d.get("p99_ms")
    return {
        "decision_p50_ms": d.get("p50_ms"),
        "decision_p99_ms": p99,
        "decision_decode_p50_ms": d.get("decode_p50_ms"),
        "decision_model_p50_ms": d.get("model_p50_ms"),
        "decision_control_p50_ms": d.get("control_p50_ms"),
        "decision_target_p99_ms": DECISION_TARGET_P99_MS,
        "decision_target_met": None if p99 is None else p99 <= DECISION_TARGET_P99_MS,
    }


def edge_report(
    edge: dict,
    baseline: dict,
    *,
    int8: dict | None = None,
    int8_note: str | None = None,
    decision: dict | None = None,
    seconds: dict | None = None,
    input_mismatch: list[str] | None = None,
) -> dict:
    """What :func:`compare_edge` returns (and ``bench all`` puts in bench.json): the flat keys, then
    each measurement in full (``edge``, ``resnet50``, ``int8`` or None, ``decision``)."""
    return {
        **latency_keys(edge, baseline),
        **int8_keys(edge, baseline, int8, int8_note),
        **decision_keys(decision),
        "edge": edge,
        BASELINE: baseline,
        "int8": int8,
        "decision": decision,
        "seconds": dict(seconds or {}),
        "input_mismatch": list(input_mismatch or []),
    }


def compare_edge(root: Path, params: dict, model: Path, *, iterations: int, warmup: int, frames: int = 16) -> dict:
    """On the same frames, one after the other, each in a fresh edge-only process: the edge model,
    its int8 version when ``model.int8.onnx`` and its card sit beside it, a ResNet-50 exported
    the same way (per-frame ``predict``), then the full decision latency of the edge loop with the
    edge model and ``edge/config.toml`` (:func:`decision_latency`)."""
    import tempfile

    from autosink.core.modelcard import card_path_for

    model = model if model.is_absolute() else root / model
    for path in (model, card_path_for(model)):  # before the (slow) baseline export
        if not path.is_file():
            raise FileNotFoundError(f"{path}: not found; {_MISSING_MODEL}")
    q8 = int8_path_for(model)
    missing = [p.name for p in (q8, card_path_for(q8)) if not p.is_file()]
    paths, source = bench_frames(root, frames)
    config = root / EDGE_CONFIG if (root / EDGE_CONFIG).is_file() else None
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autosink-bench-") as tmp:
        base_path = export_baseline(params, Path(tmp))
        seconds[f"export_{BASELINE}"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        edge = edge_latency(model, paths, iterations=iterations, warmup=warmup)
        seconds["edge"] = round(time.perf_counter() - t0, 1)
        int8 = None
        if not missing:
            t0 = time.perf_counter()
            int8 = edge_latency(q8, paths, iterations=iterations, warmup=warmup)
            seconds["int8"] = round(time.perf_counter() - t0, 1)
        t0 = time.perf_counter()
        base = edge_latency(base_path, paths, iterations=iterations, warmup=warmup)
        seconds[BASELINE] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    decision = decision_latency(model, paths, config=config, iterations=iterations, warmup=warmup)
    seconds["decision"] = round(time.perf_counter() - t0, 1)
    base["model"] = f"{BASELINE} (random weights, exported to a temporary folder)"
    for r in (edge, base, int8, decision):
        if r is not None:
            r["frames_from"] = source if r["frame_source"] == "real" else "synthetic"
    note = None
    if missing:
        note = f"no int8 model beside {model.name} ({', '.join(missing)} missing): not measured"
    elif int8 and int8.get("precision") != "int8":
        note = f"{card_path_for(q8).name} says precision {int8.get('precision')!r}, not 'int8'"
    mismatch = [
        k
        for k, want in (
            ("model_input", [int(params["model"]["input_height"]), int(params["model"]["input_width"])]),
            ("crop", list(params["model"].get("crop") or []) or None),
        )
        if edge.get(k) != want
    ]
    return edge_report(
        edge, base, int8=int8, int8_note=note, decision=decision, seconds=seconds, input_mismatch=mismatch
    )


# --------------------------------------------------------------------------- dvc, machine, versions


def dvc_noop_repro(root: Path) -> dict:
    """Time `dvc repro` in ``root`` when the pipeline is up to date (it runs nothing, changes nothing).

    Checks `dvc status` first: a stale pipeline is reported (``up_to_date: False`` and what is
    stale), never reproduced. After the run, ``changed`` says whether dvc.lock changed or a stage
    ran (it should not)."""
    import hashlib

    env = tool_env()
    t0 = time.perf_counter()
    try:
        proc = run(["dvc", "status", "--json"], cwd=root, env=env, check=False)
    except CommandError as e:  # no dvc
        return {"up_to_date": None, "repro_s": None, "status_s": None, "note": f"`dvc status` failed: {e}"}
    status_s = round(time.perf_counter() - t0, 2)
    try:
        status = json.loads(proc.stdout.strip().splitlines()[-1]) if proc.returncode == 0 else None
    except (ValueError, IndexError):
        status = None
    if status is None:
        return {
            "up_to_date": None,
            "repro_s": None,
            "status_s": status_s,
            "note": f"`dvc status` failed ({proc.returncode}): {(proc.stdout + proc.stderr).strip()[-300:]}",
        }
    if status:
        return {
            "up_to_date": False,
            "repro_s": None,
            "status_s": status_s,
            "stale": sorted(status),
            "note": "the pipeline is not up to date (run `make repro`); the no-op `dvc repro` was not timed",
        }
    lock = root / "dvc.lock"

    def lock_hash() -> str | None:
        return hashlib.sha256(lock.read_bytes()).hexdigest() if lock.is_file() else None

    before = lock_hash()
    t0 = time.perf_counter()
    proc = run(["dvc", "repro"], cwd=root, env=env, check=False)
    repro_s = round(time.perf_counter() - t0, 2)
    out = proc.stdout + proc.stderr
    ran = [line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage '")]
    result = {
        "up_to_date": True,
        "repro_s": repro_s,
        "status_s": status_s,
        "returncode": proc.returncode,
        "ran_stages": ran,
        "changed": bool(ran) or lock_hash() != before,
    }
    if proc.returncode != 0:
        result["note"] = f"`dvc repro` failed: {out.strip()[-300:]}"
    return result


def machine_info() -> dict:
    """CPU model (from /proc/cpuinfo), cores, memory, OS and Python of this machine."""
    import platform

    fields: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    cpu = next((fields[k] for k in ("model name", "Model", "Hardware", "cpu model") if fields.get(k)), None)
    mem_gb = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = round(int(line.split()[1]) / 1024**2, 1)
    except (OSError, ValueError):
        pass
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gb": mem_gb,
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "arch": platform.machine(),
        "os": platform.platform(),
        "python": platform.python_version(),
    }


VERSIONED = (
    "autosink",
    "torch",
    "torchvision",
    "pytorch-lightning",
    "onnx",
    "onnxruntime",
    "numpy",
    "opencv-python-headless",
    "dvc",
)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in VERSIONED:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _utc_now() -> str:
    from datetime import datetime

    return datetime.now(UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


# --------------------------------------------------------------------------- report


def _fmt(v: Any, spec: str = ".2f") -> str:
    return "n/a" if v is None else format(v, spec)


def format_edge(report: dict) -> list[str]:
    edge, base, int8 = report["edge"], report[BASELINE], report.get("int8")
    frames = (
        f"{edge['distinct_frames']} real {edge['input'][1]}x{edge['input'][0]} RGB frames from {edge['frames_from']}"
        if edge["frame_source"] == "real"
        else f"synthetic {edge['input'][1]}x{edge['input'][0]} frames (no real ones found)"
    )
    inp = edge.get("model_input") or ["?", "?"]
    lines = [
        f"edge inference: load_model(...).predict, onnxruntime, {edge['threads']} thread, "
        f"{edge['iterations']} frames after {edge['warmup']} warm-up; {frames}; model input "
        f"{inp[1]}x{inp[0]}, crop {edge.get('crop')}",
        f"  {'model':<36} {'prec':<5} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'fps':>7} {'peak RSS MB':>12} "
        f"{'file MB':>8}",
    ]
    rows = [(f"{Path(edge['model']).name} ({edge['backbone']})", edge)]
    if int8:
        rows.append((f"{Path(int8['model']).name} ({int8['backbone']})", int8))
    rows.append((f"{BASELINE} (random weights)", base))
    for label, r in rows:
        lines.append(
            f"  {label[:36]:<36} {str(r.get('precision', 'fp32'))[:5]:<5} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['mean_ms']:>8.2f} {r['fps']:>7.1f} {_fmt(r['peak_rss_mb'], '.1f'):>12} {r['model_mb']:>8.1f}"
        )
    lines.append(
        f"  speedup vs {BASELINE} (p50): {_fmt(report[f'speedup_vs_{BASELINE}'])}x; "
        f"edge process imports torch: {'YES' if edge['torch_imported'] else 'no'}; "
        f"its RSS after imports {_fmt(edge['rss_after_imports_mb'], '.1f')} MB, "
        f"after loading the model {_fmt(edge['rss_after_load_mb'], '.1f')} MB"
    )
    target = report.get("int8_target_speedup", INT8_TARGET_SPEEDUP)
    vs_base = report.get(f"int8_speedup_vs_{BASELINE}")
    if int8:
        met = "met" if vs_base is not None and vs_base >= target else "NOT met"
        lines.append(
            f"  int8: {_fmt(vs_base)}x faster than {BASELINE} fp32 (target >= {target:g}x: {met}), "
            f"{_fmt(report.get('int8_speedup_vs_fp32'))}x vs the fp32 model (p50)"
        )
    if report.get("int8_note") or not int8:
        lines.append(f"  int8: {report.get('int8_note') or 'not measured'}")
    if report.get("input_mismatch"):
        lines.append(
            f"  NOTE: {edge['model']}'s card differs from params.yaml in {report['input_mismatch']}: "
            f"the {BASELINE} uses params.yaml (re-run `make repro`?)"
        )
    lines += format_decision(report)
    return lines


def format_decision(report: dict) -> list[str]:
    """The decision-latency lines: whole step p50/p99 against the target, and its parts."""
    d = report.get("decision")
    if not d:
        return ["decision latency: not measured"]
    target = report.get("decision_target_p99_ms", DECISION_TARGET_P99_MS)
    met = "met" if d["p99_ms"] <= target else "NOT met"
    frames = f"{d['distinct_frames']} real frames" if d["frame_source"] == "real" else "synthetic frames (no real ones)"
    reasons = ", ".join(f"{k} {v}" for k, v in d.get("reasons", {}).items())
    return [
        f"decision latency (the EdgeRuntime loop, {d['threads']} thread: {d['camera'][1]}x{d['camera'][0]} JPEG "
        f"q{d['jpeg_quality']} ({frames}, {d['jpeg_kb_mean']:.0f} KB) -> OpenCV decode to RGB -> model -> "
        f"controller -> GPIO valve write), {d['timed_steps']} steps after {d['warmup']} warm-up:",
        f"  p50 {d['p50_ms']:.2f} ms, p99 {d['p99_ms']:.2f} ms (target p99 <= {target:g} ms on this machine: {met}); "
        f"p50 of its parts: decode {d['decode_p50_ms']:.2f} ms, model {d['model_p50_ms']:.2f} ms, "
        f"controller+valve {d['control_p50_ms']:.3f} ms",
        f"  valve pin {d['valve_pin']} written {d['valve_pin_writes']} times, open in {d['valve_open_steps']} of "
        f"{d['timed_steps']} steps; decisions: {reasons}; model errors {d['model_errors']}",
    ]


def format_report(report: dict) -> str:
    m = report["machine"]
    lines = [
        f"autosink bench, {report['date']}, {m['cpu']} ({m['cores']} cores, {_fmt(m['memory_gb'], '.1f')} GB), "
        f"git {str(report.get('git_revision'))[:12]}"
        + (f", load average {m['load_average'][0]:.2f} at the start" if m.get("load_average") else "")
    ]
    lines += format_edge(report)
    noop = report["dvc_noop"]
    if noop["repro_s"] is not None:
        lines.append(
            f"no-op `dvc repro` in this repository: {noop['repro_s']:.2f} s (`dvc status` {noop['status_s']:.2f} s)"
            + ("; WARNING: it ran " + ", ".join(noop["ran_stages"]) if noop.get("changed") else "")
        )
    else:
        lines.append(
            f"no-op `dvc repro`: not measured: {noop.get('note')}"
            + (f" (stale: {', '.join(noop['stale'])})" if noop.get("stale") else "")
        )
    tr = report.get("train")
    if tr:
        lines.append(
            f"training: {tr['images_per_s']:.1f} images/s ({tr['backbone']}, {tr['input'][0]}x{tr['input'][1]}, "
            f"batch {tr['batch_size']}, {tr['threads']} threads; forward + backward + AdamW)"
            + (f", {tr['epoch_s']} s per epoch of {tr['train_frames']} frames" if tr.get("epoch_s") else "")
        )
    fs = report.get("first_step") or {}
    if fs.get("cold_s") is not None:
        lines.append(
            f"first training step: {fs['cold_s']:.1f} s with the frame cache cold ({fs['cold_decoded']} frames "
            f"decoded), {fs['warm_s']:.1f} s warm ({fs['warm_decoded']} decoded) of {fs['frames']} train+val frames"
        )
    elif fs:
        lines.append(f"first training step: not measured: {fs.get('note')}")
    inc = report.get("incremental")
    if inc:
        lines.append("`dvc repro` after adding one episode (scratch copies, data=real):")
        lines.append("  " + "  ".join(HEADER))
        lines += ["  " + _row(r) for r in inc]
    else:
        lines.append(f"`dvc repro` after one new episode: skipped ({report.get('incremental_skipped', 'not run')})")
    secs = report.get("seconds", {})
    if secs:
        lines.append("took " + ", ".join(f"{k} {v:.0f} s" for k, v in secs.items()))
    return "\n".join(lines)


def _from_cwd(path: Path) -> Path:
    """A path given on the command line: relative to where you are if it exists there, else to the repo."""
    return path.resolve() if not path.is_absolute() and path.exists() else path


def main_edge(model: Path, iterations: int, warmup: int, json_out: Path | None) -> int:
    from autosink.ops.config import load_params, project_root

    model, json_out = _from_cwd(model), json_out and json_out.resolve()
    root = project_root()
    os.chdir(root)
    params = load_params()
    report = compare_edge(root, params, model, iterations=iterations, warmup=warmup)
    print("\n".join(format_edge(report)))
    if json_out:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(
            json.dumps({"date": _utc_now(), "machine": machine_info(), "versions": versions(), **report}, indent=2)
            + "\n"
        )
        print(f"wrote {json_out}")
    return 0


def main_all(
    model: Path,
    iterations: int,
    warmup: int,
    quick: bool,
    sizes: list[int],
    batches: int,
    json_out: Path | None,
    keep: Path | None,
) -> int:
    """`autosink bench all` / `make bench`: everything, a table, and metrics/bench.json."""
    import tempfile

    from autosink.core.proc import git_revision
    from autosink.ops.config import load_params, project_root

    json_out = json_out.resolve() if json_out else None
    keep = keep.resolve() if keep else None
    model = _from_cwd(model)
    start = time.perf_counter()
    root = project_root()
    os.chdir(root)
    json_out = json_out or root / "metrics" / "bench.json"
    params = load_params()
    report: dict[str, Any] = {
        "date": _utc_now(),
        "machine": machine_info(),
        "versions": versions(),
        "git_revision": git_revision(root),
    }
    print(f"autosink bench: {report['machine']['cpu']}, {report['machine']['cores']} cores", flush=True)

    print(
        f"edge latency: exporting a {BASELINE} the same way, then {iterations} frames through each model "
        "(the int8 one too, if any) and the edge loop ...",
        flush=True,
    )
    edge = compare_edge(root, params, model, iterations=iterations, warmup=warmup)
    seconds = edge.pop("seconds")
    report.update(edge)

    print("no-op `dvc repro` ...", flush=True)
    t0 = time.perf_counter()
    report["dvc_noop"] = dvc_noop_repro(root)
    report["dvc_noop_repro_s"] = report["dvc_noop"]["repro_s"]
    seconds["dvc_noop"] = round(time.perf_counter() - t0, 1)

    backbone = params["model"]["backbone"]
    print(f"training throughput ({backbone}) ...", flush=True)
    t0 = time.perf_counter()
    report["train"] = train_throughput(params, [backbone], batches=batches)[0]
    report["train_images_per_s"] = report["train"]["images_per_s"]
    seconds["train"] = round(time.perf_counter() - t0, 1)

    print("time to the first training step, frame cache cold then warm ...", flush=True)
    t0 = time.perf_counter()
    if Path("data/splits/train.csv").exists():
        with tempfile.TemporaryDirectory(prefix="autosink-frame-cache-") as cache:
            report["first_step"] = first_step(params, Path("data/splits"), Path("data/feature-store"), Path(cache))
        report["train_first_step_cold_s"] = report["first_step"]["cold_s"]
        report["train_first_step_warm_s"] = report["first_step"]["warm_s"]
    else:
        report["first_step"] = {"note": "no data/splits/train.csv: run `make repro` first"}
        report["train_first_step_cold_s"] = report["train_first_step_warm_s"] = None
    seconds["first_step"] = round(time.perf_counter() - t0, 1)

    if quick:
        report["incremental"], report["incremental_skipped"] = None, "--quick"
    else:
        print(f"`dvc repro` after one new episode, lakes of {sizes} episodes (minutes) ...", flush=True)
        print("  " + "  ".join(HEADER), flush=True)
        t0 = time.perf_counter()
        work = keep or Path(tempfile.mkdtemp(prefix="autosink-bench-"))
        work.mkdir(parents=True, exist_ok=True)
        try:
            report["incremental"] = incremental(root, sizes, work)
        finally:
            if keep is None:
                shutil.rmtree(work, ignore_errors=True)
        seconds["incremental"] = round(time.perf_counter() - t0, 1)
    seconds["total"] = round(time.perf_counter() - start, 1)
    report["seconds"] = seconds

    print()
    print(format_report(report))
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {json_out.relative_to(root) if json_out.is_relative_to(root) else json_out}")
    return 0
