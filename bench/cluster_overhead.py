"""What running jobs on a local Dask cluster costs over running them in-process: the terms of
the cost model in docs/scaling.md, measured in one run.

Run: python bench/cluster_overhead.py [MODEL.h5] [--workers 2] [--val-size 2000] [--trivial 400]

Per run: starting the cluster, sending (scattering) the model and the images to every worker,
closing. Per job: a trivial job's round trip (one worker, then all), against one evaluation job
of a sensitivity sweep (the model on --val-size training images, one thread) timed here.
"""

import argparse
import statistics
import time

from npdc.cluster import local_executor
from npdc.compress.sensitivity import sweep_point
from npdc.io.datasets import load_dataset
from npdc.io.job_inputs import evaluation_images
from npdc.io.modelfile import load_model
from npdc.jobs import InProcess, run_jobs
from npdc.threads import set_threads


def nothing(shared, job):
    return job


def seconds(work, repeats=1):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        work()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model", nargs="?", default="data/models/fmnist-resnet18.h5")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--val-size", type=int, default=2000)
    p.add_argument("--trivial", type=int, default=400, help="trivial jobs per timing")
    args = p.parse_args()
    net = load_model(args.model)
    x, y = evaluation_images(load_dataset(args.data), "train", args.val_size)
    shared = (net, x, y)
    job = ("res3a_2a", 1.0, "s", "element", 256)

    set_threads(1)
    InProcess().map(sweep_point, shared, [job])  # compile before timing
    evaluation = seconds(lambda: InProcess().map(sweep_point, shared, [job]), 3)
    print(f"one evaluation job in-process, 1 thread: {evaluation:.3f} s")

    for workers in sorted({1, args.workers}):
        t0 = time.perf_counter()
        executor = local_executor(workers, announce=False)
        start = time.perf_counter() - t0
        with executor:
            run_jobs(nothing, None, range(4 * workers), executor)  # warm the workers
            alone = seconds(lambda: run_jobs(nothing, None, [0], executor), 5)
            sent = seconds(lambda: run_jobs(nothing, shared, [0], executor), 3)
            many = seconds(lambda: run_jobs(nothing, None, range(args.trivial), executor))
            t0 = time.perf_counter()
        close = time.perf_counter() - t0
        per_job = many / args.trivial * workers  # worker-seconds each trivial job costs
        print(f"{workers} worker(s): start {start:.2f} s, close {close:.2f} s, one-job run "
              f"{1e3 * alone:.1f} ms, scatter of model + {len(x)} images "
              f"{1e3 * (sent - alone):.1f} ms, {args.trivial} trivial jobs {many:.2f} s = "
              f"{1e3 * per_job:.2f} ms of a worker each = "
              f"{100 * per_job / evaluation:.2f} % of one evaluation job")


if __name__ == "__main__":
    main()
