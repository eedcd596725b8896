"""Make an event store from a generator plugin: process mixtures, worker processes, resumable.

Events are produced in jobs of one chunk each. Job ``j`` holds the process mixture in the requested
fractions, every process drawn with a seed derived from (seed, j, process), and is shuffled inside,
so the output is byte-identical for the same seed whatever the number of workers, and a resumed
run continues exactly where the interrupted one stopped.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from . import __version__, plugins
from ._errors import HepfmError, describe_validation_error
from ._limits import MAX_CHUNK, MAX_EVENTS, MAX_SEED, MAX_WORKERS, in_range
from ._progress import progress
from .batch import EventBlock
from .schema import EventSchema
from .store import DEFAULT_CHUNK, EventStore, StoreWriter

__all__ = [
    "parse_processes",
    "find_generator",
    "generator_switches",
    "job_counts",
    "GenerationPlan",
    "plan_generation",
    "run_generation",
    "write_shard",
    "generate_store",
]


def parse_processes(specs: list[str]) -> dict[str, float]:
    """``["a=0.3", "b"]`` -> fractions; unspecified ones share what is left equally."""
    if not specs:
        raise HepfmError("give at least one PROCESS[=FRACTION]")
    fixed: dict[str, float] = {}
    free: list[str] = []
    for spec in specs:
        name, sep, value = spec.partition("=")
        name = name.strip()
        if not name:
            raise HepfmError(f"process spec '{spec}': empty process name")
        if name in fixed or name in free:
            raise HepfmError(f"process '{name}' is given twice")
        if not sep:
            free.append(name)
            continue
        try:
            frac = float(value)
        except ValueError:
            raise HepfmError(f"process spec '{spec}': fraction '{value}' is not a number") from None
        if not 0 < frac <= 1 or not math.isfinite(frac):
            raise HepfmError(f"process spec '{spec}': fraction must be in (0, 1]")
        fixed[name] = frac
    left = 1.0 - sum(fixed.values())
    if left < -1e-9 or (not free and abs(left) > 1e-6):
        raise HepfmError(f"process fractions sum to {sum(fixed.values()):g}; they must sum to 1")
    if free and left <= 1e-9:
        raise HepfmError(f"processes {free} have no fraction left (the others already sum to 1)")
    fractions = dict(fixed)
    fractions.update({name: left / len(free) for name in free})
    return fractions


def find_generator(processes: list[str], name: str | None = None) -> type:
    """The generator plugin that knows all ``processes`` (or the one named)."""
    registry = plugins.generators()
    candidates = [registry.get(name)] if name is not None else [r.cls for r in registry]
    for cls in candidates:
        if all(p in cls.processes for p in processes):
            return cls
    known = sorted({p for cls in candidates for p in cls.processes})
    unknown = [p for p in processes if p not in known]
    if unknown:
        raise HepfmError(f"unknown process '{unknown[0]}'; known: {', '.join(known)}")
    raise HepfmError(f"no single generator makes all of {processes}; mix processes of one generator")


def generator_switches(cls: type) -> dict[str, str]:
    """Command-line switch -> parameter: every boolean field of a generator's ``Params`` is a ``--NAME`` flag.

    ``hepfm generate ... --fast`` sets ``fast: true`` for a generator with a boolean ``fast`` parameter
    (underscores in a name become dashes: ``--NAME-WITH-DASHES``).
    """
    fields = getattr(getattr(cls, "Params", None), "model_fields", {})
    return {f"--{name.replace('_', '-')}": name for name, f in fields.items() if f.annotation is bool}


def job_counts(fractions: list[float], size: int, job: int) -> np.ndarray:
    """Events per process in one job: largest remainder, ties rotated by job so no process is favoured."""
    raw = np.asarray(fractions) * size
    counts = np.floor(raw).astype(int)
    short = size - counts.sum()
    k = len(fractions)
    order = sorted(range(k), key=lambda i: (-(raw[i] - counts[i]), (i - job) % k))
    for i in order[:short]:
        counts[i] += 1
    return counts


# worker state: one generator instance per process (Pythia initialisation is expensive)
_STATE: dict[str, Any] = {}


def _init_worker(cls: type, params: dict[str, Any], schema: dict[str, Any], plan: dict[str, Any]) -> None:
    schema_obj = EventSchema.model_validate(schema)
    _STATE["gen"] = cls(cls.Params.model_validate(params), schema_obj)
    _STATE["plan"] = plan


def _run_job(job: int) -> EventBlock:
    gen, plan = _STATE["gen"], _STATE["plan"]
    size = min(plan["chunk"], plan["n_events"] - job * plan["chunk"])
    counts = job_counts(plan["fractions"], size, job)
    blocks = []
    for label, (process, count) in enumerate(zip(plan["processes"], counts, strict=True)):
        if count == 0:
            continue
        seed = int(np.random.SeedSequence([plan["seed"], job, label]).generate_state(1)[0])
        block = gen.generate(process, int(count), seed)
        block.targets["process"] = np.full(int(count), plan["labels"][process], np.int32)
        blocks.append(block)
    block = EventBlock.concatenate(blocks)
    perm = np.random.default_rng([plan["seed"], job, 2**31 - 1]).permutation(len(block))
    return block.take(perm)


@dataclass
class GenerationPlan:
    """Everything a generation run needs, validated before anything is written."""

    generator: type
    params: BaseModel
    schema: EventSchema
    fractions: dict[str, float]
    n_events: int
    out: Path
    seed: int
    workers: int
    chunk_events: int
    overwrite: bool

    def describe(self) -> str:
        mix = ", ".join(f"{k}={v:.3g}" for k, v in self.fractions.items())
        params = ", ".join(f"{k}={v}" for k, v in self.params.model_dump().items())
        return (
            f"generate {self.n_events} events with '{self.generator.name}' ({params}): {mix}; "
            f"seed={self.seed} workers={self.workers} chunk={self.chunk_events} -> {self.out}"
        )


def plan_generation(
    processes: dict[str, float],
    n_events: int,
    out: str | os.PathLike,
    seed: int = 0,
    workers: int = 1,
    generator: str | None = None,
    params: dict[str, Any] | None = None,
    schema: EventSchema | None = None,
    chunk_events: int = DEFAULT_CHUNK,
    overwrite: bool = False,
    sharded: bool = False,
) -> GenerationPlan:
    """Validate a generation request (processes, generator and its params, sizes) without running it.

    Args:
        processes: Process name -> fraction (see ``parse_processes``).
        n_events: Total events.
        out: Store path.
        seed: Master seed; the same seed gives byte-identical stores.
        workers: Worker processes (each with its own generator instance).
        generator: Generator plugin name (default: the one that knows the processes).
        params: The generator's parameters (validated by its ``Params``).
        schema: Event schema (default EveNet's).
        chunk_events: Events per chunk and per job.
        overwrite: Replace an existing store.
        sharded: ``out`` is a folder of shards (``hepfm.shards.generate_sharded`` checks it).
    """
    in_range("--events", n_events, 1, MAX_EVENTS)
    in_range("--workers", workers, 1, MAX_WORKERS)
    in_range("--chunk-events", chunk_events, 1, MAX_CHUNK)
    in_range("--seed", seed, 0, MAX_SEED)
    cls = find_generator(list(processes), generator)
    if not sharded:
        StoreWriter.preflight(out, overwrite)
    try:
        gen_params = cls.Params.model_validate(params or {})
    except ValidationError as exc:
        raise HepfmError(f"generator '{cls.name}' params: {describe_validation_error(exc)}") from None
    return GenerationPlan(
        cls,
        gen_params,
        schema or EventSchema(),
        dict(processes),
        int(n_events),
        Path(out),
        int(seed),
        int(workers),
        int(chunk_events),
        overwrite,
    )


def _layout(plan: GenerationPlan) -> dict[str, Any]:
    """What every writer of this plan (one store, or each shard) is given: targets, jobs, provenance."""
    cls, names = plan.generator, list(plan.fractions)
    probe = cls(plan.params, plan.schema)
    job_plan = {
        "processes": names,
        "fractions": [plan.fractions[p] for p in names],
        "labels": {p: i for i, p in enumerate(names)},
        "seed": plan.seed,
        "n_events": plan.n_events,
        "chunk": plan.chunk_events,
    }
    provenance = {
        "generator": cls.name,
        "params": plan.params.model_dump(mode="json"),
        "processes": dict(zip(names, job_plan["fractions"], strict=True)),
        "seed": plan.seed,
        "n_events_requested": plan.n_events,
        "hepfm_version": __version__,
    }
    return {
        "targets": {"process": {"dtype": "int32", "shape": []}, **probe.targets()},
        "processes": names,
        "topology": probe.topology() if hasattr(probe, "topology") else {},
        "provenance": provenance,
        "job_plan": job_plan,
        "init_args": (cls, plan.params.model_dump(mode="json"), plan.schema.model_dump(mode="json"), job_plan),
    }


def _writer(plan: GenerationPlan, layout: dict[str, Any], out: Path, provenance: dict, overwrite: bool) -> StoreWriter:
    return StoreWriter(
        out,
        plan.schema,
        targets=layout["targets"],
        processes=layout["processes"],
        chunk_events=plan.chunk_events,
        provenance=provenance,
        overwrite=overwrite,
        topology=layout["topology"],
    )


def run_generation(plan: GenerationPlan) -> EventStore:
    """Generate a planned process mixture into a new event store, or resume an interrupted one."""
    layout = _layout(plan)
    writer = _writer(plan, layout, plan.out, layout["provenance"], plan.overwrite)
    n_jobs = math.ceil(plan.n_events / plan.chunk_events)
    first = writer.n_events // plan.chunk_events
    init_args = layout["init_args"]
    with progress(f"generate {plan.generator.name}", plan.n_events) as advance:
        advance(writer.n_events)
        jobs = range(first, n_jobs)
        if plan.workers == 1 or len(jobs) <= 1:
            _init_worker(*init_args)
            for job in jobs:
                block = _run_job(job)
                writer.append(block)
                advance(len(block))
        else:
            ctx = mp.get_context("fork")
            with ctx.Pool(min(plan.workers, len(jobs)), initializer=_init_worker, initargs=init_args) as pool:
                for block in pool.imap(_run_job, jobs):
                    writer.append(block)
                    advance(len(block))
    return writer.close()


def write_shard(plan: GenerationPlan, jobs: tuple[int, int], out: str | os.PathLike) -> int:
    """Write jobs ``[j0, j1)`` of a plan as one complete store (resuming it); returns its events.

    The events are those the same jobs give in ``run_generation``, so the shards of a plan, read
    in order, hold exactly the events of the one-store run with the same seed. A shard already
    complete with the same provenance is left as it is. Runs in a Dask worker (one generator
    instance per worker process, reused across its shards).
    """
    layout = _layout(plan)
    provenance = {**layout["provenance"], "shard_jobs": list(jobs)}
    from .shards import finished_shard

    done = finished_shard(out, provenance)
    if done is not None:
        return done
    key = repr(layout["init_args"])
    if _STATE.get("key") != key:
        _init_worker(*layout["init_args"])
        _STATE["key"] = key
    writer = _writer(plan, layout, out, provenance, overwrite=False)
    for job in range(jobs[0] + writer.n_events // plan.chunk_events, jobs[1]):
        writer.append(_run_job(job))
    return writer.close().n_events


def generate_store(processes: dict[str, float], n_events: int, out: str | os.PathLike, **options: Any) -> EventStore:
    """Plan and run a generation in one call (``options`` as for ``plan_generation``).

    Returns:
        The complete store, opened for reading.
    """
    return run_generation(plan_generation(processes, n_events, out, **options))
