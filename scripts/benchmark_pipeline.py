r"""Measures schedules on K logical devices: throughput, idle time, SG overhead.

    python scripts/benchmark_pipeline.py --output=docs/benchmarks.md

Every measurement runs in a fresh process, since logical devices and thread
pools are fixed when TensorFlow starts: the CPU is split into K logical
devices with one intra-op thread and K inter-op threads, so each device runs
one op at a time, like one accelerator. The model has K equal stages (two
dense layers of --width units each; the last stage adds a 10-way head).

For each schedule it reports examples/s, each device's busy fraction and the
synthesizer overhead, the last two read from a TensorFlow profiler trace by
`keras_sg.profiling` (every op of stage k runs in the name scope `stage_k`,
so the trace tells the stages apart). It then feeds
the measured per-stage forward, backward and synthesizer costs to the
simulator (keras_sg.schedules) and reports how far its prediction is from
the measured throughput. Last, on MNIST with two devices, the wall time to
97.5% test accuracy of backprop model-parallel, GPipe and pipelined cDNI.

The fully unlocked step (`fully_unlocked`) is `UnlockedModel`: every stage
above the first runs on the prediction of an input synthesizer from x, so all
stages work on the step's batch at once. To measure a few schedules only,
several times each, and print their medians without writing the report:

    python scripts/benchmark_pipeline.py --table_only --repeats=3 \
        --schedules=backprop_mp,dni_unlocked,fully_unlocked --devices=2,4
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from absl import app, flags

ROOT = Path(__file__).resolve().parents[1]
FLAGS = flags.FLAGS
flags.DEFINE_string("output", str(ROOT / "docs" / "benchmarks.md"), "Report to write.")
flags.DEFINE_string("figures", str(ROOT / "docs" / "figures"), "Folder of the PNGs.")
flags.DEFINE_list("devices", ["2", "4"], "Numbers of logical devices K.")
flags.DEFINE_integer("width", 1024, "Units of each dense layer.")
flags.DEFINE_integer("batch_size", 256, "Examples per step.")
flags.DEFINE_integer("micro_batches", 8, "GPipe micro-batches M.")
flags.DEFINE_integer("rank", 64, "Rank of the cheap (low-rank) synthesizer.")
flags.DEFINE_integer("steps", 20, "Timed steps per measurement.")
flags.DEFINE_integer("profile_steps", 4, "Steps inside the profiler trace.")
flags.DEFINE_float("target_accuracy", 0.975, "MNIST test accuracy to reach.")
flags.DEFINE_integer("max_epochs", 8, "Cap on the time-to-accuracy runs.")
flags.DEFINE_bool("skip_accuracy", False, "Skip the MNIST time-to-accuracy runs.")
flags.DEFINE_string(
    "cache", str(ROOT / "workdirs" / "benchmarks"), "Folder of finished measurements."
)
flags.DEFINE_bool("skip_cluster", False, "Skip the two-server (cluster) runs.")
flags.DEFINE_list(
    "cdni_learning_rates", ["3e-4"], "Extra Adam rates for pipelined cDNI to 97.5%."
)
flags.DEFINE_bool(
    "table_only",
    False,
    "Measure --schedules on logical devices only, --repeats times each, and "
    "print the medians; the report is not written.",
)
flags.DEFINE_list("schedules", None, "Schedules of --table_only (default: all).")
flags.DEFINE_integer("repeats", 3, "Runs of each measurement with --table_only.")
# Internal: one measurement in this process (set by the parent).
flags.DEFINE_string("worker", None, "JSON spec of one measurement (internal).")
flags.DEFINE_list("addresses", None, "Cluster workers of a measurement (internal).")
flags.DEFINE_list("server_pids", None, "Their process ids (internal).")

SCHEDULES = [  # (name, model class, synthesizer)
    ("backprop_mp", "backprop", None),
    ("gpipe", "gpipe", None),
    ("dni_unlocked", "dni", "low_rank"),
    ("pipelined_dni_linear", "pipelined", "linear"),
    ("pipelined_dni_low_rank", "pipelined", "low_rank"),
    ("fully_unlocked", "unlocked", "low_rank"),
]
# Events kept per device in a measurement's saved timeline.
MAX_EVENTS = 4000


# ---------------------------------------------------------------- the worker


def build(spec, keras, keras_sg, devices, input_dim, num_classes=10):
    """The decoupled model of a measurement, compiled."""
    k, width = spec["devices"], spec["width"]
    stages = []
    for s in range(k):
        layers = [keras.Input((input_dim if s == 0 else width,))]
        layers += [keras.layers.Dense(width, activation="relu") for _ in range(2)]
        if s == k - 1:
            layers.append(keras.layers.Dense(num_classes))
        stages.append(keras.Sequential(layers, name=f"block_{s}"))
    kind, synth = spec["model"], spec["synth"]
    conditioned = num_classes if spec.get("cdni") else None

    def synthesizers():
        if synth == "linear":
            return [
                keras_sg.DenseSynthesizer(
                    hidden_layers=0, use_batch_norm=False, num_classes=conditioned
                )
                for _ in range(k - 1)
            ]
        return [
            keras_sg.LowRankSynthesizer(rank=spec["rank"], num_classes=conditioned)
            for _ in range(k - 1)
        ]

    method = "cdni" if conditioned else "dni"
    if kind == "plain":
        model = keras.Sequential([layer for st in stages for layer in st.layers])
    elif kind == "backprop":
        model = keras_sg.DecoupledModel(stages, method="backprop", devices=devices)
    elif kind == "gpipe":
        model = keras_sg.GPipeModel(
            stages, micro_batches=spec["micro_batches"], devices=devices
        )
    elif kind == "dni":
        model = keras_sg.DecoupledModel(
            stages, synthesizers(), method=method, devices=devices
        )
    elif kind == "unlocked":
        # Input synthesizers from x, as cheap as the low-rank synthesizers:
        # one hidden layer of `rank` units, then a dense layer to the cut.
        inputs = [
            keras_sg.DenseInputSynthesizer(
                target_shape=(width,),
                hidden_layers=1,
                units=spec["rank"],
                use_batch_norm=False,
            )
            for _ in range(k - 1)
        ]
        model = keras_sg.UnlockedModel(
            stages,
            synthesizers(),
            input_synthesizers=inputs,
            method=method,
            devices=devices,
        )
    else:
        model = keras_sg.PipelinedModel(
            stages, synthesizers(), method=method, devices=devices
        )
    model.compile(
        optimizer=keras.optimizers.Adam(spec.get("learning_rate", 1e-3)),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def without_autotune(dataset):
    """The dataset with tf.data's autotuning off.

    With every core busy, the autotuner's background work stretched steps to
    multiples of 64 ms (measured: 106 ms a step with it, 79 ms without, K = 4);
    in-memory batches gain nothing from it.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def run_worker(spec):
    import keras_sg

    k = spec["devices"]
    devices = None
    if FLAGS.addresses:
        devices = keras_sg.placement.connect_to_cluster({"worker": FLAGS.addresses})
    elif spec["model"] != "plain":
        devices = keras_sg.placement.split_cpu(
            k, intra_op_threads=1, inter_op_threads=k
        )
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    if spec.get("mnist"):
        return accuracy_worker(spec, keras, keras_sg, tf, np, devices)
    rng = np.random.default_rng(0)
    n = spec["batch_size"] * 8
    x = rng.normal(size=(n, spec["width"])).astype("float32")
    y = rng.integers(0, 10, size=n)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(spec["batch_size"])
    data = without_autotune(data.repeat())
    model = build(spec, keras, keras_sg, devices, spec["width"])
    fit = dict(epochs=1, verbose=0, shuffle=False)
    model.fit(data, steps_per_epoch=5, **fit)  # trace and warm up
    pids = [int(p) for p in FLAGS.server_pids or ()]
    cpu = keras_sg.profiling.cpu_seconds
    cpu_before = [cpu(p) for p in pids] + [time.process_time()]
    start = time.perf_counter()
    model.fit(data, steps_per_epoch=spec["steps"], **fit)
    seconds = time.perf_counter() - start
    cpu_after = [cpu(p) for p in pids] + [time.process_time()]
    result = {
        "spec": spec,
        "examples_per_s": spec["steps"] * spec["batch_size"] / seconds,
        "step_ms": 1000 * seconds / spec["steps"],
    }
    if pids:
        # Each server is pinned to one core: its CPU time over the wall time
        # is that device's CPU load (communication threads included).
        used = [b - a for a, b in zip(cpu_before, cpu_after, strict=True)]
        result.update(cpu=[u / seconds for u in used[:-1]], client=used[-1] / seconds)
        # And the servers' own profiler traces, taken while training goes on:
        # every op a server runs counts, per server (device).
        profile = keras_sg.profiling.trace_servers(
            model, data, FLAGS.addresses, result["step_ms"], duration_ms=1000
        )
        result.update(
            costs=[dict(c) for c in profile.costs],
            hosts=list(profile.devices),
            busy=list(profile.busy),
            traced_step_ms=profile.traced_step_time,
            profile=profile.to_dict(max_events=MAX_EVENTS),
        )
    elif spec["model"] != "plain":
        # Per stage: its ops told apart by the stage_k scope, the optimizer's
        # update shared by the stages as their weights.
        profile = keras_sg.profiling.profile(
            model,
            data,
            steps=spec["profile_steps"],
            skip=0,
            batch_size=spec["batch_size"],
        )
        result.update(
            busy=list(profile.busy),
            costs=[dict(c) for c in profile.stage_costs],
            traced_step_ms=profile.traced_step_time,
            profile=profile.to_dict(max_events=MAX_EVENTS),
        )
    return result


def accuracy_worker(spec, keras, keras_sg, tf, np, devices):
    """Wall time of training (evaluation excluded) to the target test accuracy."""
    manual_dir = keras_sg.data.manual_dir_from_env("mnist")
    train_x, train_y = keras_sg.data.load_split("mnist", "train", manual_dir=manual_dir)
    test = without_autotune(
        keras_sg.data.image_dataset(
            "mnist",
            "test",
            1000,
            flatten=True,
            manual_dir=manual_dir,
        )
    )
    model = build(spec, keras, keras_sg, devices, 784)
    # Whole batches only (the pipeline's buffers and GPipe's split want them):
    # each epoch drops its last, partial batch.
    steps = len(train_x) // spec["batch_size"]
    seconds, curve = 0.0, []
    for epoch in range(spec["max_epochs"]):
        start = time.perf_counter()
        train = without_autotune(
            keras_sg.data.batches(
                train_x,
                train_y,
                spec["batch_size"],
                flatten=True,
                shuffle=True,
                seed=0,
                first_epoch=epoch,
            )
        )
        model.fit(train, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        seconds += time.perf_counter() - start
        accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
        curve.append((epoch + 1, seconds, accuracy))
        if accuracy >= spec["target_accuracy"]:
            break
    reached = curve[-1][2] >= spec["target_accuracy"]
    return {"spec": spec, "curve": curve, "seconds": seconds if reached else None}


# ---------------------------------------------------------------- the parent


def measure(spec):
    """One measurement in a fresh process; kept in --cache so a rerun skips it."""
    cache = Path(FLAGS.cache) / (re.sub(r"[^A-Za-z0-9]+", "_", spec["name"]) + ".json")
    if cache.exists():
        cached = json.loads(cache.read_text())
        # Traced runs saved before keras_sg.profiling lack "profile": stale.
        traced = not spec.get("mnist") and spec["model"] != "plain"
        if cached["spec"] == spec and ("profile" in cached or not traced):
            return cached
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    command = [sys.executable, __file__, f"--worker={json.dumps(spec)}"]
    servers = start_servers(spec["devices"], env) if spec.get("cluster") else []
    try:
        if servers:
            addresses, pids = zip(*((a, str(p.pid)) for a, p in servers), strict=True)
            command += [f"--addresses={','.join(addresses)}"]
            command += [f"--server_pids={','.join(pids)}"]
        done = subprocess.run(
            command, capture_output=True, text=True, env=env, cwd=ROOT
        )
    finally:
        for _, server in servers:
            server.kill()
            server.wait()
    if done.returncode:
        raise RuntimeError(f"measurement {spec} failed:\n{done.stderr[-3000:]}")
    line = [s for s in done.stdout.splitlines() if s.startswith("{")][-1]
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(line)
    return json.loads(line)


def start_servers(n, env):
    """n TensorFlow servers on 127.0.0.1, server k pinned to core k mod cores,
    one intra-op thread each: n devices that each run one op at a time."""
    import socket

    ports = []
    for _ in range(n):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            ports.append(probe.getsockname()[1])
    addresses = [f"127.0.0.1:{p}" for p in ports]
    cores = sorted(os.sched_getaffinity(0))
    servers = []
    for k, address in enumerate(addresses):
        server = subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "scripts" / "tf_server.py"),
                f"--workers={','.join(addresses)}",
                f"--task={k}",
                "--intra_op_threads=1",
                "--inter_op_threads=2",
                f"--cpus={cores[k % len(cores)]}",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        servers.append((address, server))
        if not server.stdout.readline().startswith("serving"):
            for _, started in servers:
                started.kill()
            raise RuntimeError(f"TensorFlow server {k} at {address} did not start")
    return servers


def predict(result):
    """The simulator's examples/s for a run, from the run's own measured costs."""
    from keras_sg import schedules

    spec, costs = result["spec"], result["costs"]
    k, batch = spec["devices"], spec["batch_size"]
    forward = [c["F"] for c in costs]
    # A device's other work (transfers, on the servers) counts as backward.
    backward = [c["B"] + c.get("C", 0.0) for c in costs]
    synth = [c["S"] for c in costs]
    inputs = [c.get("I", 0.0) for c in costs]
    update = [c.get("U", 0.0) for c in costs]
    # The simulator has no optimizer step: add it where it sits in each
    # schedule. After a backward pass the lowest stage updates last (the
    # others' updates overlap its backward); GPipe updates all devices at once
    # after the flush; pipelined DNI updates every device in every step.
    if spec["model"] == "backprop":
        sim = schedules.simulate("naive", k, 1, forward, backward)
        return batch / (sim.step_time + update[0]) * 1000
    if spec["model"] == "dni":  # stages in sequence, synthesizer in each stage
        fwd = [f + s for f, s in zip(forward, synth, strict=True)]
        sim = schedules.simulate("naive", k, 1, fwd, backward)
        return batch / (sim.step_time + update[0]) * 1000
    if spec["model"] == "unlocked":  # every device on the batch at once
        sim = schedules.simulate(
            "fully_unlocked", k, 1, forward, backward, synth[:-1], input_synth=inputs
        )
        return batch / (sim.step_time + max(update)) * 1000
    if spec["model"] == "gpipe":
        m = spec["micro_batches"]
        sim = schedules.simulate(
            "gpipe", k, m, [f / m for f in forward], [b / m for b in backward]
        )
        return batch / (sim.step_time + max(update)) * 1000
    m = 8
    with_update = [b + u for b, u in zip(backward, update, strict=True)]
    sim = schedules.simulate("pipelined_dni", k, m, forward, with_update, synth[:-1])
    return m * batch / sim.step_time * 1000


def draw(results, path):
    """The measured timelines of some runs, one panel each, two steps."""
    from keras_sg import profiling

    profiling.draw_timelines(
        [profiling.ProfileResult.from_dict(r["profile"]) for r in results],
        path,
        titles=[r["spec"]["name"] for r in results],
        steps=2,
    )


def main(argv):
    del argv
    if FLAGS.worker:
        print(json.dumps(run_worker(json.loads(FLAGS.worker))), flush=True)
        return
    if FLAGS.table_only:
        print(medians_table())
        return
    base = dict(
        width=FLAGS.width,
        batch_size=FLAGS.batch_size,
        micro_batches=FLAGS.micro_batches,
        rank=FLAGS.rank,
        steps=FLAGS.steps,
        profile_steps=FLAGS.profile_steps,
        autotune=False,
    )
    runs = {}
    for k in map(int, FLAGS.devices):
        for name, model, synth in SCHEDULES:
            spec = dict(
                base, name=f"{name} (K={k})", devices=k, model=model, synth=synth
            )
            print(f"[measure] {spec['name']}", flush=True)
            runs[name, k] = measure(spec)
    plain = measure(
        dict(
            base,
            name="plain Keras, default threading",
            devices=2,
            model="plain",
            synth=None,
        )
    )

    cluster = {}
    if not FLAGS.skip_cluster:
        for name, model, synth in SCHEDULES:
            spec = dict(
                base,
                name=f"{name} (2 servers)",
                devices=2,
                model=model,
                synth=synth,
                cluster=True,
            )
            print(f"[measure] {spec['name']}", flush=True)
            cluster[name] = measure(spec)

    accuracy = {}
    if not FLAGS.skip_accuracy:
        rows = [
            ("backprop_mp", "backprop", None, False, 1e-3),
            ("gpipe", "gpipe", None, False, 1e-3),
            ("pipelined_cdni", "pipelined", "linear", True, 1e-3),
        ]
        for rate in FLAGS.cdni_learning_rates:
            for synth in ("linear", "low_rank"):
                name = f"pipelined_cdni{'' if synth == 'linear' else ', low-rank'}"
                rows.append((f"{name} (Adam {rate})", "pipelined", synth, True))
                rows[-1] += (float(rate),)
        for name, model, synth, cdni, rate in rows:
            spec = dict(
                base,
                name=name,
                devices=2,
                model=model,
                synth=synth,
                cdni=cdni,
                mnist=True,
                **({} if rate == 1e-3 else {"learning_rate": rate}),
                target_accuracy=FLAGS.target_accuracy,
                max_epochs=FLAGS.max_epochs,
                cluster=not FLAGS.skip_cluster,
            )
            print(f"[accuracy] {name}", flush=True)
            accuracy[name] = measure(spec)

    figures = Path(FLAGS.figures)
    figures.mkdir(parents=True, exist_ok=True)
    for k in map(int, FLAGS.devices):
        draw(
            [runs[n, k] for n in ("backprop_mp", "gpipe", "pipelined_dni_low_rank")],
            figures / f"measured_timeline_K{k}.png",
        )
    if cluster:
        draw(
            [cluster[n] for n in ("backprop_mp", "gpipe", "pipelined_dni_low_rank")],
            figures / "measured_timeline_servers.png",
        )
    Path(FLAGS.output).write_text(report(runs, plain, cluster, accuracy))
    print(f"wrote {FLAGS.output}")


def medians_table():
    """Measures --schedules on K logical devices, --repeats times each (in
    turn, so that a change of the machine's load hits every schedule), and
    returns a Markdown table of the medians."""
    import statistics

    chosen = FLAGS.schedules or [name for name, _, _ in SCHEDULES]
    known = {name: (model, synth) for name, model, synth in SCHEDULES}
    for name in chosen:
        if name not in known:
            raise ValueError(
                f"`--schedules` must name schedules of {list(known)}. "
                f"Received: {name!r}"
            )
    base = dict(
        width=FLAGS.width,
        batch_size=FLAGS.batch_size,
        micro_batches=FLAGS.micro_batches,
        rank=FLAGS.rank,
        steps=FLAGS.steps,
        profile_steps=FLAGS.profile_steps,
        autotune=False,
    )
    runs = {}
    for repeat in range(FLAGS.repeats):
        for k in map(int, FLAGS.devices):
            for name in chosen:
                model, synth = known[name]
                spec = dict(
                    base,
                    name=f"{name} (K={k}, run {repeat + 1})",
                    devices=k,
                    model=model,
                    synth=synth,
                )
                print(f"[measure] {spec['name']}", flush=True)
                result = measure(spec)
                print(f"  {result['examples_per_s']:.0f} examples/s", flush=True)
                runs.setdefault((name, k), []).append(result)
    lines = [
        "| K | schedule | examples/s, median (runs) | vs backprop_mp | busy per "
        "device | SG overhead per stage | simulator's examples/s (error) |",
        "| --- " * 7 + "|",
    ]
    for k in map(int, FLAGS.devices):
        medians = {
            name: statistics.median(r["examples_per_s"] for r in runs[name, k])
            for name in chosen
        }
        for name in chosen:
            results = sorted(runs[name, k], key=lambda r: r["examples_per_s"])
            middle = results[(len(results) - 1) // 2]  # the median run (low)
            speed = medians[name]
            each = ", ".join(f"{r['examples_per_s']:.0f}" for r in runs[name, k])
            cells = [
                str(k),
                name,
                f"{speed:.0f} ({each})",
                f"{speed / medians['backprop_mp']:.2f}x"
                if "backprop_mp" in medians
                else "–",
                ", ".join(f"{b:.0%}" for b in middle["busy"]),
            ]
            overhead = "–"
            if known[name][1]:
                ratios = [
                    (c["S"] + c.get("I", 0.0)) / (c["F"] + c["B"])
                    for c in middle["costs"][:-1]
                ]
                overhead = ", ".join(f"{o:.0%}" for o in ratios)
            predicted = predict(middle)
            error = (predicted - middle["examples_per_s"]) / middle["examples_per_s"]
            cells += [overhead, f"{predicted:.0f} ({error:+.0%})"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _table(rows, base, gpipe, with_trace):
    head = "| schedule | examples/s | vs backprop MP | vs GPipe | busy per device "
    head += "| SG overhead per stage | simulator's examples/s (error) |"
    if not with_trace:
        head += " CPU load per server | client CPU |"
    lines = [head, "| --- " * (7 if with_trace else 9) + "|"]
    for name, _, synth in SCHEDULES:
        r = rows[name]
        busy = ", ".join(f"{b:.0%}" for b in r["busy"])
        cells = [
            r["spec"]["name"],
            f"{r['examples_per_s']:.0f}",
            f"{r['examples_per_s'] / base:.2f}x",
            f"{r['examples_per_s'] / gpipe:.2f}x",
            busy,
        ]
        overhead = "–"
        if synth:
            # Gradient and input synthesizers (I: fully unlocked only).
            ratios = [
                (c["S"] + c.get("I", 0.0)) / (c["F"] + c["B"]) for c in r["costs"][:-1]
            ]
            overhead = ", ".join(f"{o:.0%}" for o in ratios)
        predicted = predict(r)
        error = (predicted - r["examples_per_s"]) / r["examples_per_s"]
        cells += [overhead, f"{predicted:.0f} ({error:+.0%})"]
        if not with_trace:
            cells.append(", ".join(f"{c:.0%}" for c in r["cpu"]))
            cells.append(f"{r['client']:.0%} of a core")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def report(runs, plain, cluster, accuracy):
    lines = [
        "# Benchmarks: schedules on two kinds of devices",
        "",
        "Written by `scripts/benchmark_pipeline.py` from the measurements it made"
        " on this project's 2-core CPU machine (numbers vary run to run on a"
        " shared machine; ratios within one table come from one run). Busy"
        " fractions, per-stage costs and the measured timelines are read from"
        " TensorFlow profiler traces by `keras_sg.profiling`"
        " ([api.md](api.md#profiling-keras_sgprofiling)).",
        "",
        "```",
        f"python scripts/benchmark_pipeline.py --devices={','.join(FLAGS.devices)} "
        f"--width={FLAGS.width} --batch_size={FLAGS.batch_size} "
        f"--micro_batches={FLAGS.micro_batches} --rank={FLAGS.rank} "
        f"--steps={FLAGS.steps}",
        "```",
        "",
        f"Model: K equal stages of two dense layers of {FLAGS.width} units (the last "
        f"adds a 10-way head), batch {FLAGS.batch_size}, Adam; tf.data autotuning"
        " off: with every core busy, the autotuner's background work stretched"
        " steps to multiples of 64 ms (the step-time quantum of our first report;"
        " K = 4 backprop: 106 ms a step with autotuning, 79 ms without, measured"
        " outside this script). Two kinds of device:",
        "",
        "- **Two TensorFlow servers** (`scripts/tf_server.py`), each pinned to one"
        " core with one intra-op thread, the stages placed on their tasks through"
        " `keras_sg.placement.connect_to_cluster`. A device here really runs one"
        " thing at a time, like an accelerator, and stages talk over gRPC. Busy"
        " fractions and per-device costs come from each server's own profiler"
        " trace; the training client (data, step dispatch) is not pinned and"
        " shares the two cores.",
        "- **K logical CPU devices** in one process (`split_cpu`, one intra-op"
        " thread, K inter-op threads). Busy fractions, per-stage costs and the"
        " synthesizer overhead come from the TensorFlow profiler trace (XPlane),"
        " ops told apart by their `stage_k` name scope. Caution: logical devices"
        " share one pool of inter-op threads, so one device can run two ops at"
        " once (backprop's weight and input gradients of a layer, for example)."
        " Backprop model-parallel is then less serial than on real devices, and"
        " this setting understates what unlocking gains.",
        "",
    ]
    if cluster:
        base = cluster["backprop_mp"]["examples_per_s"]
        gpipe = cluster["gpipe"]["examples_per_s"]
        lines += [
            "## K = 2 devices: two TensorFlow server processes, one core each",
            "",
            "Busy per device: the union of the op intervals in each server's own"
            " profiler trace (taken remotely while training ran), every op counted:"
            " the stages', the optimizer's and the transfers'. CPU load: the"
            " server's CPU time over the wall time of the timed steps.",
            "",
            *_table(cluster, base, gpipe, with_trace=False),
            "",
            "![timelines on two servers](figures/measured_timeline_servers.png)",
            "",
            "What keeps pipelined DNI from the 2x limit here, as the timelines show:",
            "",
            "- Between two steps both servers wait, about 10 ms at this size. Keras"
            " runs one step per call and waits for it to finish; the client then"
            " takes the next batch and sends the next step's work and batch over"
            " gRPC. In trials outside this script (`steps_per_execution=4`,"
            " asynchronous eager execution, the servers at a lower priority, or the"
            " input batch kept on the first server) the gap shrank by 2 ms at most."
            " The simulator has no such per-step cost, which is most of its error"
            " on the servers.",
            "- Keras's Adam is about 30% of each device's work (purple): unfused"
            " element-wise ops over every weight and both moments. Every schedule"
            " pays it, so it dilutes what unlocking gains.",
            "",
        ]
    for k in map(int, FLAGS.devices):
        rows = {name: runs[name, k] for name, _, _ in SCHEDULES}
        base = rows["backprop_mp"]["examples_per_s"]
        gpipe = rows["gpipe"]["examples_per_s"]
        lines += [
            f"## K = {k} logical devices in one process",
            "",
            *_table(rows, base, gpipe, with_trace=True),
            "",
        ]
        if k > 2:
            lines += [
                f"With K = {k} logical devices on 2 cores, stages share cores:"
                " the table shows the schedules' structure, not a K-fold speed-up.",
                "",
            ]
        lines += [
            f"![measured timelines, K={k}](figures/measured_timeline_K{k}.png)",
            "",
        ]
    best = max(
        runs[n, 2]["examples_per_s"]
        for n, _, _ in SCHEDULES
        if n.startswith("pipelined")
    )
    lines += [
        "## Against the fastest backprop on the same two cores",
        "",
        f"A plain `keras.Sequential` of the same layers (K = 2 model), default"
        f" threading, no placement: {plain['examples_per_s']:.0f} examples/s."
        f" The best pipelined DNI on logical devices (K = 2): {best:.0f} examples/s"
        f" ({best / plain['examples_per_s']:.2f}x).",
    ]
    if cluster:
        best_cluster = max(
            cluster[n]["examples_per_s"] for n, _, _ in SCHEDULES if "pipelined" in n
        )
        lines.append(
            f" On the two servers: {best_cluster:.0f} examples/s"
            f" ({best_cluster / plain['examples_per_s']:.2f}x)."
        )
    lines.append("")
    if accuracy:
        where = "two servers, one core each" if cluster else "two logical devices"
        lines += [
            f"## Wall time to {FLAGS.target_accuracy:.1%} MNIST test accuracy"
            f" (K = 2, {where})",
            "",
            "Training time only (test evaluation after each epoch excluded);"
            f" at most {FLAGS.max_epochs} epochs. Same model for all, Adam (rate in"
            " the table); pipelined cDNI uses linear synthesizers conditioned on the"
            f" labels, or low-rank ones (rank {FLAGS.rank}) where the name says so.",
            "",
            "| schedule | Adam rate | seconds | epochs | test accuracy per epoch |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, r in accuracy.items():
            curve = ", ".join(f"{a:.4f}" for _, _, a in r["curve"])
            seconds = (
                f"{r['seconds']:.0f}" if r["seconds"] is not None else "not reached"
            )
            rate = r["spec"].get("learning_rate", 1e-3)
            lines.append(
                f"| {name} | {rate:g} | {seconds} | {len(r['curve'])} | {curve} |"
            )
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    app.run(main)
