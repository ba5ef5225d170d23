"""``progreg batch``: a manifest's cases on Dask (a local cluster, or an existing scheduler)."""

from __future__ import annotations

import sys
from pathlib import Path

from ..batch.cohort import cohort_writers
from ..batch.manifest import read_manifest
from ..batch.runner import Settings, run_batch
from ..core.errors import InputError
from ..registration.tolerances import load_tolerances
from .common import refinement


def _bar(quiet: bool):
    def show(done: int, total: int, failed: int, eta_s: float | None) -> None:
        if quiet:
            return
        width = 30
        filled = int(width * done / max(total, 1))
        eta = "" if eta_s is None else f", ETA {int(eta_s // 60)} min {int(eta_s % 60):02d} s"
        print(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} cases" +
              (f", {failed} failed" if failed else "") + eta + " " * 8, end="", file=sys.stderr, flush=True)
        if done == total:
            print(file=sys.stderr)

    return show


def cmd_batch(args) -> int:
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be at least 1")
    if args.gpus_per_worker < 0:
        raise InputError("--gpus-per-worker cannot be negative")
    try:
        import distributed  # noqa: F401
    except ImportError:
        raise InputError("progreg batch runs on Dask: pip install 'dask[distributed]'") from None
    cases = read_manifest(args.manifest)  # every problem listed, before anything runs
    load_tolerances(args.tolerances)
    if args.model and not Path(args.model).is_file():
        raise InputError(f"--model {args.model}: no such model file")
    device = "cuda" if args.gpus_per_worker else args.device
    settings = Settings(model=str(Path(args.model).resolve()) if args.model else None, device=device,
                        refinement=refinement(args), fmt=args.format, report=not args.no_report,
                        tolerances=str(Path(args.tolerances).resolve()) if args.tolerances else None,
                        threads=args.threads_per_worker or 1)
    rows = run_batch(cases, args.out, settings, args.workers, args.scheduler, args.gpus_per_worker, _bar(args.quiet),
                     cohort_writers)
    done = sum(r["status"] == "done" for r in rows)
    skipped = sum(bool(r.get("skipped")) for r in rows)
    print(f"{done} of {len(rows)} cases done ({skipped} unchanged since an earlier run), "
          f"{len(rows) - done} failed; the study: {Path(args.out) / 'cohort.csv'}, {Path(args.out) / 'cohort.html'}")
    for r in rows:
        if r["status"] != "done":
            print(f"  {r['id']}: {r['error']}")
    return 0 if done == len(rows) else 1
