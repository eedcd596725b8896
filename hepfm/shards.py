"""Generation and conversion cut into shards on Dask, and merging shards into one store.

``hepfm generate ... --executor dask`` and ``hepfm convert ... --executor dask`` write a *folder of
shards*: each shard is a complete event store written by one Dask task, and a manifest
(``hepfm-dataset.json``) is written last, listing them. The folder is a dataset as it is
(``--data FOLDER``, see ``hepfm.store``), or becomes one store with ``hepfm merge``.

- Generation: shard ``k`` holds the generation jobs (one chunk each) ``[k J, (k+1) J)``, seeded
  exactly as in the one-store run, so the shards read in order hold the very events of
  ``hepfm generate`` with the same seed, whatever the number of workers.
- Conversion: one shard per input file (the converter reads whole files).

Dask is the scheduler: a ``LocalCluster`` of ``workers`` processes by default, or any running
cluster by address (``--scheduler tcp://host:8786``), so dask-jobqueue (SLURM, HTCondor, PBS)
works unchanged. A task that dies with its worker is retried on another. A rerun of the same
command (after a killed client, or failed tasks) skips the complete shards, resumes the partial
ones and writes the manifest: no shard is repeated or lost. Shards are written by the workers, so
with a remote cluster ``--out`` must be on a file system every worker sees.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import __version__
from ._errors import HepfmError, StoreError
from ._files import write_atomic
from ._outputs import check_parents, output_lock
from ._progress import progress
from .batch import EventBlock
from .store import MANIFEST, EventDataset, EventStore, StoreWriter, open_data

__all__ = ["ShardedResult", "dask_client", "finished_shard", "generate_sharded", "convert_sharded", "merge_stores"]

SHARD_NAME = "shard-{:05d}.zarr"
EXECUTORS = ("local", "dask")


@dataclass
class ShardedResult:
    """A finished sharded run: the shard folder, its stores, and how many events each holds."""

    out: Path
    shards: list[Path]
    n_events: int
    reused: int  # shards found complete and left as they were

    def open(self) -> EventStore | EventDataset:
        """The shards as one dataset."""
        return open_data(self.out)


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 2) -> Iterator[Any]:
    """A Dask client: on the cluster at ``scheduler``, or on a local cluster of ``workers`` processes.

    Local workers run one thread each (generators and converters hold the GIL, and torch threads
    would oversubscribe the cores).
    """
    try:
        from dask.distributed import Client, LocalCluster
    except ImportError:
        raise HepfmError("--executor dask needs Dask: pip install 'hepfm[dask]'") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except OSError as exc:
            raise HepfmError(f"--scheduler {scheduler}: no Dask scheduler answers there ({exc})") from None
        with client:
            yield client
        return
    if workers < 1:
        raise HepfmError(f"--workers must be positive, got {workers}")
    with (
        LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        yield client


def _prepare_folder(out: Path, overwrite: bool) -> None:
    """A shard folder is new, resumed, or (with ``overwrite``) emptied of its own shards and manifest only."""
    check_parents(out)
    if out.exists() and not out.is_dir():
        raise StoreError(f"{out}: exists and is not a directory; refusing to touch it")
    if (out / "zarr.json").is_file():
        raise StoreError(f"{out}: is an event store; a sharded run writes a folder of shards (choose another --out)")
    if not out.exists():
        out.mkdir(parents=True)
        return
    ours = [p for p in out.iterdir() if p.name == MANIFEST or (p.name.startswith("shard-") and p.suffix == ".zarr")]
    foreign = [p for p in out.iterdir() if p not in ours and not p.name.startswith(".")]
    if (out / MANIFEST).is_file() and not overwrite:
        raise StoreError(f"{out}: a complete folder of shards already exists; choose another --out or pass --overwrite")
    if overwrite:
        if foreign:
            raise StoreError(f"{out}: holds '{foreign[0].name}', not a shard; --overwrite only replaces shards")
        for p in ours:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


def _run(
    out: Path,
    tasks: list[tuple[Callable[..., int], tuple[Any, ...], int]],
    label: str,
    total: int,
    executor: str,
    scheduler: str | None,
    workers: int,
    provenance: dict[str, Any],
) -> ShardedResult:
    """Run shard tasks (fn, args, expected events), then write the manifest (last)."""
    if executor not in EXECUTORS:
        raise HepfmError(f"--executor {executor}: expected one of {', '.join(EXECUTORS)}")
    paths = [Path(args[-1]) for _, args, _ in tasks]
    reused = sum(1 for p in paths if finished_shard(p) is not None)
    counts: list[int] = [0] * len(tasks)
    with progress(label, total) as advance:
        if executor == "local":
            for i, (fn, args, _) in enumerate(tasks):
                counts[i] = fn(*args)
                advance(counts[i])
        else:
            from dask.distributed import as_completed

            with dask_client(scheduler, workers) as client:
                futures = {
                    client.submit(fn, *args, key=f"hepfm-shard-{i}-{os.getpid()}", pure=False, retries=2): i
                    for i, (fn, args, _) in enumerate(tasks)
                }
                for future in as_completed(futures):
                    i = futures[future]
                    try:
                        counts[i] = future.result()
                    except HepfmError:
                        raise
                    except Exception as exc:
                        raise HepfmError(
                            f"{paths[i]}: the shard's task failed ({type(exc).__name__}: {exc}); rerun the "
                            f"same command to resume"
                        ) from None
                    advance(counts[i])
    for i, (_, _, expected) in enumerate(tasks):
        if expected and counts[i] != expected:
            raise HepfmError(f"{paths[i]}: holds {counts[i]} events, expected {expected}")
    manifest = {
        "format": "hepfm-dataset",
        "shards": [p.name for p in paths],
        "n_events": [int(c) for c in counts],
        "provenance": {**provenance, "hepfm_version": __version__},
    }
    write_atomic(out / MANIFEST, json.dumps(manifest, indent=2))
    return ShardedResult(out, paths, int(sum(counts)), reused)


def finished_shard(path: str | os.PathLike, provenance: dict[str, Any] | None = None) -> int | None:
    """Events of a complete shard at ``path`` (``None`` when there is none, or it is incomplete).

    With ``provenance``, a complete shard written with other settings is refused in one line
    rather than reused.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return None
    try:
        done = EventStore.open(path, check=False)
    except HepfmError:
        return None
    if provenance is not None and done.provenance != provenance:
        raise HepfmError(f"{path}: a complete shard with other settings (attribute 'provenance') is in the way")
    return done.n_events


def generate_sharded(
    plan: Any,
    executor: str = "dask",
    scheduler: str | None = None,
    shard_events: int | None = None,
) -> ShardedResult:
    """Run a ``GenerationPlan`` as shards into the folder ``plan.out`` (see the module docstring).

    Args:
        plan: From ``hepfm.generate.plan_generation`` (``plan.workers`` sizes a local cluster).
        executor: ``dask`` (a cluster) or ``local`` (shard by shard in this process).
        scheduler: Address of a running Dask scheduler (default: a local cluster).
        shard_events: Events per shard, rounded up to whole chunks (default 16 chunks).
    """
    from .generate import write_shard

    chunk = plan.chunk_events
    per = max(1, math.ceil((shard_events or 16 * chunk) / chunk))
    if shard_events is not None and shard_events < 1:
        raise HepfmError(f"--shard-events must be positive, got {shard_events}")
    _prepare_folder(plan.out, plan.overwrite)
    n_jobs = math.ceil(plan.n_events / chunk)
    inner = dataclasses.replace(plan, overwrite=False)
    tasks = []
    for k, j0 in enumerate(range(0, n_jobs, per)):
        j1 = min(j0 + per, n_jobs)
        expected = min(j1 * chunk, plan.n_events) - j0 * chunk
        tasks.append((write_shard, (inner, (j0, j1), os.fspath(plan.out / SHARD_NAME.format(k))), expected))
    provenance = {"generator": plan.generator.name, "seed": plan.seed, "n_events_requested": plan.n_events}
    with output_lock(plan.out):  # a second run into the same folder is refused in one line
        return _run(
            plan.out,
            tasks,
            f"generate {plan.generator.name} ({executor})",
            plan.n_events,
            executor,
            scheduler,
            plan.workers,
            provenance,
        )


def _convert_shard(plan: Any, out: str) -> int:
    from .convert import _provenance, run_conversion

    shard = dataclasses.replace(plan, out=Path(out), overwrite=False, action="new")
    done = finished_shard(out, _provenance(shard))
    return done if done is not None else run_conversion(shard).store.n_events


def convert_sharded(plan: Any, executor: str = "dask", scheduler: str | None = None, workers: int = 2) -> ShardedResult:
    """Run a ``ConversionPlan`` as one shard per input file into the folder ``plan.out``.

    Every shard has the plan's targets, processes and topology, so the shards form one dataset.
    """
    _prepare_folder(plan.out, plan.overwrite)
    tasks = []
    for k, (path, info) in enumerate(zip(plan.inputs, plan.infos, strict=True)):
        labels = None if plan.labels is None else [plan.labels[k]]
        shard = dataclasses.replace(plan, inputs=[path], infos=[info], labels=labels)
        tasks.append((_convert_shard, (shard, os.fspath(plan.out / SHARD_NAME.format(k))), info.n_events))
    provenance = {"converter": plan.converter.name, "inputs": [os.fspath(p) for p in plan.inputs]}
    total = sum(info.n_events for info in plan.infos)
    with output_lock(plan.out):
        return _run(
            plan.out,
            tasks,
            f"convert {plan.converter.name} ({executor})",
            total,
            executor,
            scheduler,
            workers,
            provenance,
        )


def merge_stores(
    sources: str | os.PathLike | list[str | os.PathLike],
    out: str | os.PathLike,
    chunk_events: int | None = None,
    overwrite: bool = False,
) -> EventStore:
    """Write the events of several stores (a shard folder, a glob, a list), in order, into one store.

    The merged store's statistics are recomputed while writing; its provenance lists the sources'.
    An interrupted merge is resumed by the same call.
    """
    data = open_data(sources)
    stores = data.stores if isinstance(data, EventDataset) else [data]
    writer = StoreWriter(
        out,
        data.schema,
        targets=data.targets,
        processes=data.processes,
        chunk_events=chunk_events or stores[0].chunk_events,
        provenance={"merged_from": [s.sources[0] for s in stores], "stores": [s.provenance for s in stores]},
        overwrite=overwrite,
        topology=data.topology,
    )
    skip = writer.n_events
    with progress("merge", data.n_events) as advance:
        advance(skip)
        start = skip
        while start < data.n_events:
            stop = min(start + writer.chunk, data.n_events)
            writer.append(EventBlock.from_arrays(data.read(start, stop)))
            advance(stop - start)
            start = stop
    return writer.close()
