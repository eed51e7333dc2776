r"""Runs one TensorFlow server: a task of the cluster that holds model stages.

    python scripts/tf_server.py --workers=localhost:2222,localhost:2223 --task=1 \
        [--intra_op_threads=1 --inter_op_threads=2 --cpus=1]

Start one per worker address, then train with the same addresses, for example
`python scripts/train.py ... --config.placement.workers=localhost:2222,localhost:2223`.
The server serves until it is killed.
"""

import os

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FLAGS = flags.FLAGS
flags.DEFINE_list("workers", None, "Every worker's host:port, in task order.")
flags.DEFINE_integer("task", None, "This server's index in --workers.")
flags.DEFINE_string("job", "worker", "The job name stages are placed under.")
flags.DEFINE_integer("intra_op_threads", None, "Threads inside one op.")
flags.DEFINE_integer("inter_op_threads", None, "Ops run at once.")
flags.DEFINE_list("cpus", None, "Pin the server to these cores (Linux).")
flags.mark_flags_as_required(["workers", "task"])


def main(argv):
    del argv
    import keras_sg

    server = keras_sg.placement.start_server(
        FLAGS.workers,
        FLAGS.task,
        job_name=FLAGS.job,
        intra_op_threads=FLAGS.intra_op_threads,
        inter_op_threads=FLAGS.inter_op_threads,
        cpus=[int(c) for c in FLAGS.cpus] if FLAGS.cpus else None,
    )
    print(f"serving {server.target} as /job:{FLAGS.job}/task:{FLAGS.task}", flush=True)
    server.join()


if __name__ == "__main__":
    app.run(main)
