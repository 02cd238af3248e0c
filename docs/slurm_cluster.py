"""Start Dask workers on a SLURM cluster (dask-jobqueue) for the sweep phases 5-8.

Run it on the login node, in the project venv, and leave it running:

    .venv/bin/python docs/slurm_cluster.py --jobs 4 --cores 8 --memory 32GB --walltime 04:00:00 --queue cpu

It submits ``--jobs`` SLURM jobs of ``--cores`` single-threaded workers each and prints the
scheduler's address; give that to a sweep phase from another shell:

    .venv/bin/husai run 05_ablations --profile full -p scheduler=tcp://10.1.2.3:8786

``--dry-run`` prints the job script and submits nothing (it needs no SLURM). Ctrl-C cancels
the jobs. See docs/dask.md for what the workers must share with the client.
"""

from __future__ import annotations

import argparse
import time

from dask_jobqueue import SLURMCluster


def make_cluster(cores: int = 8, memory: str = "32GB", walltime: str = "04:00:00", queue: str | None = None,
                 account: str | None = None, host: str | None = None, gpus: int = 0) -> SLURMCluster:
    """A SLURMCluster whose every job runs ``cores`` one-thread worker processes (``gpus`` > 0: one
    worker per job with that many GPUs). The scheduler runs here, on ``host`` (default: dask's choice)."""
    # One point is one small SAE training: single-threaded processes, one per core, as the local
    # pool does, so torch threads of one worker never fight the others for cores.
    processes, extra = (1, [f"--gres=gpu:{gpus}"]) if gpus else (cores, [])
    return SLURMCluster(cores=cores, processes=processes, memory=memory, walltime=walltime, queue=queue,
                        account=account, job_extra_directives=extra, scheduler_options={"host": host} if host else {},
                        job_script_prologue=[f"export OMP_NUM_THREADS={cores // processes}"])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="SLURM jobs to submit (default 2)")
    ap.add_argument("--cores", type=int, default=8, help="cores per job = worker processes per job (default 8)")
    ap.add_argument("--memory", default="32GB", help="memory per job (default 32GB)")
    ap.add_argument("--walltime", default="04:00:00", help="time limit per job (default 04:00:00)")
    ap.add_argument("--queue", help="SLURM partition (-p)")
    ap.add_argument("--account", help="SLURM account (-A)")
    ap.add_argument("--host", help="address the scheduler listens on, reachable from the compute nodes")
    ap.add_argument("--gpus", type=int, default=0, help="GPUs per job; then one worker per job (default 0)")
    ap.add_argument("--dry-run", action="store_true", help="print the job script; submit nothing")
    args = ap.parse_args(argv)
    cluster = make_cluster(args.cores, args.memory, args.walltime, args.queue, args.account, args.host, args.gpus)
    try:
        if args.dry_run:
            print(cluster.job_script())
            return 0
        cluster.scale(jobs=args.jobs)
        print(f"scheduler: {cluster.scheduler_address}\n"
              f"e.g. .venv/bin/husai run 05_ablations --profile full -p scheduler={cluster.scheduler_address}\n"
              "Ctrl-C cancels the worker jobs.", flush=True)
        while True:
            time.sleep(60)
    except KeyboardInterrupt:
        return 0
    finally:
        cluster.close()


if __name__ == "__main__":
    raise SystemExit(main())
