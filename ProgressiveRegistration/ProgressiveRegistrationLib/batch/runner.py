"""Running a manifest's cases on Dask distributed, resumably.

Each case is registered on a Dask worker by the same functions as ``progreg register`` and
``register-4d`` (:func:`registration.pipeline.register_files`, ``register_4d_files``) into
``OUT/<id>/``, atomically (:class:`core.atomic.OutputFolder`: a killed worker leaves only a
hidden staging folder, which the next run into that folder removes; a case folder that is a
symbolic link is refused before any case runs). When a case's outputs
are complete, a marker ``OUT/<id>/.progreg-case.json`` records the fingerprint of its inputs
(SHA-256 of every input file) and settings; a rerun skips the cases whose marker matches and
redoes the failed, changed and unfinished ones. A failing case (bad input, out of memory, a
worker that died) is recorded with its error and the others go on. Dask reschedules a case
whose worker died on another worker (its ``allowed-failures`` setting).

The cluster: a local one by default (``workers`` processes, the machine's cores split among
them, so that workers × threads = cores), or an existing scheduler (``scheduler``, e.g. one
started by dask-jobqueue on Slurm: docs/BATCH.md). Each worker process loads the model once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import socket
import time
import traceback
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from .. import __version__
from ..core.atomic import STAGING_PREFIX, OutputFolder, write_text
from ..core.device import pick_device
from ..core.errors import InputError
from ..model.modelfile import Model, load_model
from ..registration.pipeline import register_4d_files, register_files
from ..registration.refine_config import DEFAULT as DEFAULT_REFINEMENT
from ..registration.refine_config import RefineConfig
from ..registration.tolerances import UNVERIFIED
from .manifest import Case

log = logging.getLogger(__name__)

MARKER_NAME = ".progreg-case.json"


@dataclass(frozen=True)
class Settings:
    """How every case is registered (the options of ``progreg register``)."""

    model: str | None = None  #: model file; None: the bundled model
    device: str = "auto"
    refinement: RefineConfig | None = DEFAULT_REFINEMENT
    fmt: str = "nrrd"
    report: bool = True
    tolerances: str | None = None
    #: torch threads per worker (set by :func:`run_batch` from the cores and the workers)
    threads: int = 1

    def fingerprint_part(self) -> dict:
        """What of the settings changes a result (not the thread count, nor where it runs)."""
        return {"model": file_digest(self.model) if self.model else "bundled",
                "refinement": None if self.refinement is None else asdict(self.refinement), "format": self.fmt,
                "report": self.report, "tolerances": file_digest(self.tolerances) if self.tolerances else None,
                "device": self.device, "version": __version__}


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, or of a folder's files (relative names and contents, in order)."""
    path = Path(path)
    h = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for f in files:
        if path.is_dir():
            h.update(f.relative_to(path).as_posix().encode("utf-8") + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def fingerprint(case: Case, settings: Settings) -> str:
    """The case's inputs (their contents) and the settings, as one SHA-256."""
    data = {"case": {k: (str(v) if isinstance(v, Path) else [str(p) for p in v] if isinstance(v, tuple) else v)
                     for k, v in asdict(case).items() if k != "id"},
            "inputs": [file_digest(p) for p in case.inputs()], "settings": settings.fingerprint_part()}
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode("utf-8")).hexdigest()


def done_row(case: Case, out: Path, key: str) -> dict | None:
    """The recorded row of a case done with this fingerprint, or None."""
    try:
        marker = json.loads((out / case.id / MARKER_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if marker.get("fingerprint") != key or marker.get("row", {}).get("status") != "done":
        return None
    return {**marker["row"], "skipped": True}


# --- on the worker ------------------------------------------------------------------------

_MODELS: dict[tuple[str | None, str], Model] = {}


def _model(settings: Settings, device: str) -> Model:
    """The model, loaded once per worker process."""
    key = (settings.model, device)
    if key not in _MODELS:
        _MODELS[key] = load_model(settings.model, device)
    return _MODELS[key]


def case_row(case: Case, status: str, error: str = "", summary: dict | None = None, seconds: float = 0.0,
             worker: str = "") -> dict:
    """A line of ``cohort.csv``: status, error, TRE before / network / refined (mm), folding (%),
    lung volume change (%), the quality verdict, seconds, worker."""
    row = {"id": case.id, "kind": "4dct" if case.is_4d else "pair", "status": status, "error": error,
           "refined": None, "tre_before_mm": None, "tre_network_mm": None, "tre_after_mm": None, "folding_percent": None,
           "lung_volume_change_percent": None, "quality": None, "seconds": round(seconds, 2), "worker": worker}
    if summary is None:
        return row
    row["refined"] = int(bool(summary.get("refinement")))
    if case.is_4d:
        phases = summary.get("phases", [])
        row["folding_percent"] = max((p["folding_percent"] for p in phases), default=None)
        changes = [p["volume_change_percent"] for p in phases]
        row["lung_volume_change_percent"] = max(changes, key=abs) if changes else None  # the extreme phase
        verdicts = [q["overall"] for q in summary.get("quality", {}).values()]
        row["quality"] = next((v for v in ("FAIL", "WARN", UNVERIFIED, "PASS") if v in verdicts), None)
        return row
    for key in ("before", "network", "after"):
        stats = summary.get(f"tre_{key}_mm")
        row[f"tre_{key}_mm"] = round(stats["mean"], 4) if stats else None
    row["folding_percent"] = summary["folding_percent"]
    quality = summary.get("quality")
    if quality:
        row["quality"] = quality["overall"]
        row["lung_volume_change_percent"] = round(quality["measured"]["lung_volume_change_percent"], 3)
    return row


def run_case(case: Case, out: str | Path, settings: Settings, key: str) -> dict:
    """Register ``case`` into ``out/<id>/`` (on a worker); its row of ``cohort.csv``. Never
    raises for a case's own failure: the error is in the row."""
    import torch

    torch.set_num_threads(max(1, settings.threads))
    folder = Path(out) / case.id
    marker = folder / MARKER_NAME
    worker = f"{socket.gethostname()}:{os.getpid()}"
    t0 = time.perf_counter()
    try:
        marker.unlink(missing_ok=True)  # from here on the case is not done, whatever was there
        device, _ = pick_device(settings.device)  # "auto": what this worker has
        model = _model(settings, device)
        if case.is_4d:
            summary = register_4d_files(list(case.phases), folder, case.reference, model=model, device=device,
                                        refinement=settings.refinement, fmt=settings.fmt, report=settings.report,
                                        tolerances=settings.tolerances)
        else:
            summary = register_files(case.fixed, case.moving, folder, case.fixed_landmarks, case.moving_landmarks,
                                     model, device, fmt=settings.fmt, refinement=settings.refinement,
                                     moving_segmentation=case.moving_segmentation, report=settings.report,
                                     tolerances=settings.tolerances)
        row = case_row(case, "done", summary=summary, seconds=time.perf_counter() - t0, worker=worker)
        write_text(marker, json.dumps({"fingerprint": key, "row": row}, indent=1) + "\n")
        return row
    except InputError as err:
        return case_row(case, "failed", str(err), seconds=time.perf_counter() - t0, worker=worker)
    except MemoryError:
        return case_row(case, "failed", "out of memory", seconds=time.perf_counter() - t0, worker=worker)
    except Exception as err:  # noqa: BLE001 - one case's failure must not stop the cohort
        last = traceback.extract_tb(err.__traceback__)[-1]
        return case_row(case, "failed", f"{type(err).__name__}: {err} ({Path(last.filename).name}:{last.lineno})",
                        seconds=time.perf_counter() - t0, worker=worker)


# --- on the client ------------------------------------------------------------------------

def _cluster(workers: int, threads: int, gpus_per_worker: int, scheduler: str | None):
    """(client, cluster or None): a client of ``scheduler``, or of a new local cluster."""
    from distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler, timeout="30s"), None
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                           silence_logs=logging.ERROR, resources={"GPU": gpus_per_worker} if gpus_per_worker else None,
                           env={"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return Client(cluster), cluster


def run_batch(cases: list[Case], out: str | Path, settings: Settings = Settings(), workers: int | None = None,
              scheduler: str | None = None, gpus_per_worker: int = 0,
              progress: Callable[[int, int, int, float | None], None] | None = None,
              write_cohort: Callable[[Path, list[dict]], dict] | None = None) -> list[dict]:
    """Register every case not already done into ``out/<id>/``; the rows of every case.

    ``workers``: local worker processes (default: one per two cores, at least one);
    ``scheduler``: the address of an existing Dask scheduler instead; ``gpus_per_worker``:
    the workers' ``GPU`` resource (each case takes one). ``progress(done, total, failed,
    eta_s)``; ``write_cohort(out, rows)``: the writers of the cohort's table and page,
    called after every case (the table is always up to date)."""
    from distributed import as_completed

    out = Path(out)
    cores = os.cpu_count() or 1
    workers = max(1, workers or cores // 2)
    threads = max(1, cores // workers) if not scheduler else max(1, settings.threads)
    settings = dataclasses.replace(settings, threads=threads)
    with OutputFolder(out, exclusive=False) as folder:
        folder.check_links(f"{case.id}/{MARKER_NAME}" for case in cases)  # a linked case folder: refused, now
        keys = {case.id: fingerprint(case, settings) for case in cases}
        rows: dict[str, dict] = {}
        todo = []
        for case in cases:
            row = done_row(case, out, keys[case.id])
            if row is None:
                todo.append(case)
            else:
                rows[case.id] = row

        def publish():
            ordered = [rows[c.id] for c in cases if c.id in rows]
            if write_cohort is not None:
                folder.write(write_cohort(out, ordered))
            return ordered

        if progress:
            progress(len(rows), len(cases), 0, None)
        if not todo:
            return publish()
        client, cluster = _cluster(workers, threads, gpus_per_worker, scheduler)
        futures = {}
        try:
            for case in todo:
                future = client.submit(run_case, case, str(out), settings, keys[case.id], pure=False,
                                       key=f"progreg-{case.id}-{keys[case.id][:12]}",
                                       resources={"GPU": 1} if gpus_per_worker else None)
                futures[future] = case
            t0, finished, failed = time.monotonic(), 0, 0
            for future in as_completed(futures):
                case = futures[future]
                try:
                    row = future.result()
                except Exception as err:  # noqa: BLE001 - a worker that died every time it tried
                    row = case_row(case, "failed", f"the worker running it died ({type(err).__name__}: {err}); "
                                                   "out of memory?")
                rows[case.id] = row
                finished += 1
                failed += row["status"] != "done"
                eta = (time.monotonic() - t0) / finished * (len(todo) - finished)
                if progress:
                    progress(len(rows), len(cases), failed, eta)
                publish()
        except BaseException:
            for future in futures:
                future.cancel()
            raise
        finally:
            client.close()
            if cluster is not None:
                cluster.close()
                # The workers are gone: what they had staged will never land.
                for case in todo:
                    for stale in (out / case.id).glob(f"{STAGING_PREFIX}*"):
                        shutil.rmtree(stale, ignore_errors=True)
        return publish()
