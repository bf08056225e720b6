"""One way to run independent jobs: `run_jobs(fn, shared, jobs, executor)` returns
[fn(shared, job) for job in jobs], in the order of `jobs`, whatever order they finish in.

`shared` is what every job reads and none changes (a model, a dataset); it is handed to each
executor once per call, not once per job, so a job itself is a few numbers. `fn` is a
module-level function so that an executor in other processes can find it by name.

The executor here is the in-process one; another (a cluster's) provides the same `map`.
"""

from npdc.progress import progress_bar


class InProcess:
    """Run the jobs one after another in this process (the default)."""

    def map(self, fn, shared, jobs, progress=None):
        results = []
        for job in jobs:
            results.append(fn(shared, job))
            if progress is not None:
                progress.update()
        return results


def run_jobs(fn, shared, jobs, executor=None, progress=False, desc="jobs"):
    """[fn(shared, job) for job in jobs] on `executor` (in-process when None), in order; one
    progress bar over finished jobs when `progress`."""
    jobs = list(jobs)
    executor = executor or InProcess()
    bar = progress_bar(total=len(jobs), desc=desc, unit="job", enabled=progress)
    try:
        results = executor.map(fn, shared, jobs, bar)
    finally:
        bar.close()
    if len(results) != len(jobs):
        raise RuntimeError(f"the executor returned {len(results)} results for {len(jobs)} jobs")
    return results
