"""Bring your own events: convert foreign files into event stores, and export stores to other formats.

A conversion is planned, then run, like a generation (``hepfm.generate``):

``plan_conversion`` finds the converter plugin for ``--format``, validates its parameters (the
``--map`` YAML) with errors naming the mapping file, line and key, and opens every input cheaply
(``Converter.describe``) so that a missing branch, column or dataset, a length mismatch or an
unknown target is reported before anything is written. ``run_conversion`` then streams the inputs
block by block (``Converter.read``) into a ``StoreWriter``: memory does not grow with the input,
and the store is marked complete only after the last event. Rerunning an interrupted conversion
with the same arguments resumes it.

Several inputs are interleaved in proportion to their sizes, so every chunk of the output holds a
mix of them (useful when each input is one process, labelled with ``labels``).

``export_store`` (``hepfm export``) writes a store in another format through a converter that can
also write (``spanet``: SPANet's HDF5 layout and its event YAML); ``export_spanet`` is the shortcut.

The converter toolkit (``SourceInfo``, ``MappingError``, ``require``, ``jagged_to_padded``,
``pack_objects``, ``remap_indices``, ``energy_from_mass``) lives in ``hepfm._convert_kit``; plugins
import it from ``hepfm.sdk``, and it is re-exported here for existing callers.
"""

from __future__ import annotations

import math
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ValidationError

from . import __version__, plugins
from ._convert_kit import (
    MappingError,
    SourceInfo,
)
from ._errors import HepfmError
from ._outputs import as_os_error, output_lock, prepare_output
from ._progress import progress
from ._yaml import line_of, located, read_yaml
from .batch import EventBlock
from .schema import EventSchema
from .store import DEFAULT_CHUNK, EventStore, StoreWriter

__all__ = [
    "find_converter",
    "load_mapping",
    "ConversionPlan",
    "ConversionResult",
    "plan_conversion",
    "run_conversion",
    "convert_files",
    "ExportResult",
    "ExportPlan",
    "plan_export",
    "run_export",
    "export_store",
    "export_spanet",
]

DEFAULT_STEP = 8192


# --------------------------------------------------------------------------------------------
# converter lookup and mapping files
# --------------------------------------------------------------------------------------------
def _converters() -> list:
    return list(plugins.converters())


def find_converter(name: str) -> type:
    """The converter plugin registered as ``name`` (the ``--format`` value)."""
    found = [r.cls for r in _converters() if r.name == name]
    if not found:
        known = ", ".join(r.name for r in _converters()) or "(none installed)"
        raise HepfmError(f"unknown format '{name}'; converters: {known}")
    return found[0]


def load_mapping(path: str | os.PathLike, model: type[BaseModel]) -> BaseModel:
    """Read a mapping YAML and validate it with a converter's ``Params``.

    Problems are reported on one line as ``FILE:LINE: key: message`` (several joined by ``;``).
    """
    path = Path(path)
    data, lines = read_yaml(path, "mapping file")
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise HepfmError(f"{path}: a mapping file must be a mapping of keys, got {type(data).__name__}")
    if hasattr(model, "from_mapping_file"):  # e.g. a SPANet event YAML given directly as --map
        data = model.from_mapping_file(path, data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = [located(path, lines, tuple(err["loc"]), err["msg"]) for err in exc.errors()]
        raise HepfmError("; ".join(dict.fromkeys(problems))) from None


def _mapping_problem(exc: MappingError, mapping: Path | None) -> HepfmError:
    if mapping is None:
        return HepfmError(f"converter params: {exc}")
    try:
        _, lines = read_yaml(mapping)
    except HepfmError:
        lines = {}
    line = line_of(lines, exc.loc)
    return HepfmError(f"{mapping}{f':{line}' if line else ''}: {exc}")


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------
@dataclass
class ConversionPlan:
    """Everything a conversion needs, validated (inputs opened, fields checked) before writing."""

    converter: type
    params: BaseModel
    schema: EventSchema
    inputs: list[Path]
    infos: list[SourceInfo]
    out: Path
    mapping: Path | None
    labels: list[str] | None
    targets: dict[str, dict[str, Any]]
    processes: list[str]
    topology: dict[str, Any]
    chunk_events: int
    step_events: int
    overwrite: bool
    action: str

    @property
    def n_events(self) -> int:
        return sum(i.n_events for i in self.infos)

    def describe(self) -> str:
        inputs = ", ".join(str(p) for p in self.inputs[:3]) + (
            f", ... ({len(self.inputs)} files)" if len(self.inputs) > 3 else ""
        )
        targets = ", ".join(f"{k} {v['dtype']}{v['shape']}" for k, v in self.targets.items()) or "none"
        parts = [
            f"convert {self.n_events} events from {len(self.inputs)} {self.converter.name} file(s) ({inputs})",
            f"mapping {self.mapping}" if self.mapping else "default mapping",
            f"targets: {targets}",
        ]
        if self.processes:
            parts.append(f"processes: {', '.join(self.processes)}")
        if self.topology.get("resonances"):
            parts.append(f"resonances: {', '.join(self.topology['resonances'])}")
        parts.append(f"chunk={self.chunk_events} -> {self.out} ({self.action})")
        return "; ".join(parts)


def _merge_infos(paths: list[Path], infos: list[SourceInfo], labels: list[str] | None) -> tuple[dict, list, dict]:
    first = infos[0]
    for path, info in zip(paths[1:], infos[1:], strict=True):
        for key in ("targets", "processes", "topology"):
            if getattr(info, key) != getattr(first, key):
                raise HepfmError(
                    f"{path}: its {key} ({getattr(info, key)}) differ from those of {paths[0]} "
                    f"({getattr(first, key)}); convert such files into separate stores"
                )
    targets, processes = dict(first.targets), list(first.processes)
    if labels is not None:
        if "process" in targets:
            raise HepfmError(
                f"{paths[0]}: the input already carries a process target; drop --process or the mapping's process"
            )
        processes = list(dict.fromkeys(labels))
        targets = {"process": {"dtype": "int32", "shape": []}, **targets}
    return targets, processes, dict(first.topology)


def plan_conversion(
    inputs: list[str | os.PathLike],
    format: str,
    out: str | os.PathLike,
    mapping: str | os.PathLike | None = None,
    params: dict[str, Any] | None = None,
    labels: list[str] | None = None,
    schema: EventSchema | None = None,
    chunk_events: int = DEFAULT_CHUNK,
    step_events: int = DEFAULT_STEP,
    overwrite: bool = False,
    sharded: bool = False,
) -> ConversionPlan:
    """Validate a conversion request without writing anything.

    Args:
        inputs: Input files, converted in order (interleaved when several).
        format: Converter name: ``delphes``, ``parquet``, ``spanet`` or a plugin's.
        out: Event store to write (``*.zarr``).
        mapping: Mapping YAML with the converter's parameters (see docs/convert.md).
        params: The converter's parameters as a dict (instead of ``mapping``).
        labels: One process name per input, stored as ``targets/process``.
        schema: Event schema (default EveNet's).
        chunk_events: Events per chunk of the store.
        step_events: Events read from an input at a time (bounds memory).
        overwrite: Replace an existing store.
        sharded: ``out`` is a folder of shards, one per input (``hepfm.shards.convert_sharded``).
    """
    if not inputs:
        raise HepfmError("give at least one input file")
    if chunk_events < 1:
        raise HepfmError(f"--chunk-events must be positive, got {chunk_events}")
    if step_events < 1:
        raise HepfmError(f"step_events must be positive, got {step_events}")
    if mapping is not None and params is not None:
        raise HepfmError("give the converter parameters either as a mapping file or as params, not both")
    cls = find_converter(format)
    paths = [Path(p) for p in inputs]
    for p in paths:
        if not p.is_file():
            raise HepfmError(f"{p}: no such input file")
    if len(set(map(os.path.realpath, paths))) != len(paths):
        raise HepfmError("an input file is given twice")
    if labels is not None:
        labels = list(labels)
        if len(labels) != len(paths):
            raise HepfmError(f"--process: give one process name per input ({len(paths)}), got {len(labels)}")
        if any(not label.strip() for label in labels):
            raise HepfmError("--process: empty process name")
    mapping_path = Path(mapping) if mapping is not None else None
    if mapping_path is not None:
        conv_params = load_mapping(mapping_path, cls.Params)
    else:
        try:
            conv_params = cls.Params.model_validate(params or {})
        except ValidationError as exc:
            from ._errors import describe_validation_error

            if params is None:
                raise HepfmError(
                    f"--format {cls.name} needs a mapping: pass --map MAPPING.yaml ({describe_validation_error(exc)}; "
                    f"see docs/convert.md)"
                ) from None
            raise HepfmError(f"converter '{cls.name}' params: {describe_validation_error(exc)}") from None
    base = mapping_path.parent if mapping_path is not None else Path.cwd()
    for key in getattr(cls, "path_params", ()):  # file names in a mapping are relative to it
        value = getattr(conv_params, key, None)
        if value is not None and not Path(value).is_absolute():
            conv_params = conv_params.model_copy(update={key: str((base / value).resolve())})
    schema = schema or EventSchema()
    try:
        converter = cls(conv_params, schema)
    except MappingError as exc:
        raise _mapping_problem(exc, mapping_path) from None
    action = "sharded" if sharded else StoreWriter.preflight(out, overwrite)
    try:
        infos = [converter.describe(str(p)) for p in paths]
    except MappingError as exc:
        raise _mapping_problem(exc, mapping_path) from None
    for p, info in zip(paths, infos, strict=True):
        if info.n_events == 0:
            raise HepfmError(f"{p}: holds no events")
    targets, processes, topology = _merge_infos(paths, infos, labels)
    return ConversionPlan(
        cls,
        conv_params,
        schema,
        paths,
        infos,
        Path(out),
        mapping_path,
        labels,
        targets,
        processes,
        topology,
        int(chunk_events),
        int(step_events),
        overwrite,
        action,
    )


# --------------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------------
@dataclass
class ConversionResult:
    """A finished conversion: the store, its speed, and what the converters had to note."""

    store: EventStore
    n_events: int
    seconds: float
    notes: list[str]

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.seconds if self.seconds > 0 else float("inf")


class _Stream:
    """One input's blocks, taken in arbitrary sizes."""

    def __init__(self, blocks: Iterator[EventBlock]) -> None:
        self.blocks = blocks
        self.buffer: list[EventBlock] = []
        self.held = 0

    def take(self, k: int) -> EventBlock | None:
        while self.held < k:
            block = next(self.blocks, None)
            if block is None:
                break
            if len(block):
                self.buffer.append(block)
                self.held += len(block)
        if not self.buffer:
            return None
        data = EventBlock.concatenate(self.buffer) if len(self.buffer) > 1 else self.buffer[0]
        out, rest = data.take(slice(0, k)), data.take(slice(k, None))
        self.buffer, self.held = ([rest] if len(rest) else []), len(rest)
        return out

    def exhausted(self) -> bool:
        return self.take(1) is None


def _labelled(blocks: Iterator[EventBlock], label: int | None) -> Iterator[EventBlock]:
    for block in blocks:
        if label is not None:
            block.targets = {"process": np.full(len(block), label, np.int32), **block.targets}
        yield block


def _blocks(converter: Any, plan: ConversionPlan) -> Iterator[EventBlock]:
    """Every input's blocks; several inputs interleaved in proportion to their sizes, chunk by chunk."""
    index = {name: i for i, name in enumerate(plan.processes)}
    streams = [
        _labelled(
            converter.read([str(p)], step=plan.step_events), index[plan.labels[i]] if plan.labels is not None else None
        )
        for i, p in enumerate(plan.inputs)
    ]
    sizes = [info.n_events for info in plan.infos]
    if len(streams) == 1:
        yield from streams[0]
        return
    total, done = sum(sizes), 0
    wrapped = [_Stream(s) for s in streams]
    given = [0] * len(streams)
    while done < total:
        done = min(total, done + plan.chunk_events)
        pieces = []
        for i, (stream, size) in enumerate(zip(wrapped, sizes, strict=True)):
            want = size if done == total else min(size, math.floor(done * size / total))
            k = want - given[i]
            if k <= 0:
                continue
            piece = stream.take(k)
            got = 0 if piece is None else len(piece)
            if got < k:
                raise HepfmError(
                    f"{plan.inputs[i]}: yielded {given[i] + got} events, fewer than the {size} it declared"
                )
            given[i] += k
            pieces.append(piece)
        if pieces:
            yield EventBlock.concatenate(pieces) if len(pieces) > 1 else pieces[0]
    for i, stream in enumerate(wrapped):
        if not stream.exhausted():
            raise HepfmError(f"{plan.inputs[i]}: yielded more events than the {sizes[i]} it declared")


def _provenance(plan: ConversionPlan) -> dict[str, Any]:
    inputs = []
    for p in plan.inputs:
        st = p.stat()
        inputs.append({"path": str(p.resolve()), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns})
    return {
        "converter": plan.converter.name,
        "params": plan.params.model_dump(mode="json"),
        "inputs": inputs,
        "labels": plan.labels,
        "hepfm_version": __version__,
    }


def run_conversion(plan: ConversionPlan) -> ConversionResult:
    """Stream the planned inputs into the store (resuming an interrupted conversion); mark it complete last."""
    converter = plan.converter(plan.params, plan.schema)
    writer = StoreWriter(
        plan.out,
        plan.schema,
        targets=plan.targets,
        processes=plan.processes,
        chunk_events=plan.chunk_events,
        provenance=_provenance(plan),
        overwrite=plan.overwrite,
        topology=plan.topology,
    )
    skip, seen, total = writer.n_events, 0, plan.n_events
    start = time.perf_counter()
    with progress(f"convert {plan.converter.name}", total) as advance:
        advance(skip)
        for block in _blocks(converter, plan):
            n = len(block)
            seen += n
            if seen <= skip:  # resume: these events are already in the store
                continue
            if seen - n < skip:
                block = block.take(slice(skip - (seen - n), None))
            writer.append(block)
            advance(len(block))
    if seen != total:
        raise HepfmError(
            f"{plan.inputs[-1]}: the inputs yielded {seen} events, but described {total}; the store is left incomplete"
        )
    store = writer.close()
    seconds = time.perf_counter() - start
    counters: Counter = Counter(getattr(converter, "counters", {}) or {})
    notes = []
    if counters.get("truncated"):
        notes.append(
            f"{counters['truncated']} events had more than {plan.schema.max_objects} objects; "
            f"the lowest-pT ones were dropped"
        )
    if counters.get("lost_assignments"):
        notes.append(f"{counters['lost_assignments']} assignment indices pointed at dropped objects and became -1")
    return ConversionResult(store, total - skip, seconds, notes)


def convert_files(
    inputs: list[str | os.PathLike], format: str, out: str | os.PathLike, **options: Any
) -> ConversionResult:
    """Plan and run a conversion in one call (``options`` as for ``plan_conversion``)."""
    return run_conversion(plan_conversion(inputs, format, out, **options))


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------
@dataclass
class ExportResult:
    """Files an export wrote, and how fast."""

    files: list[Path]
    n_events: int
    seconds: float

    @property
    def events_per_s(self) -> float:
        return self.n_events / self.seconds if self.seconds > 0 else float("inf")


@dataclass
class ExportPlan:
    """A validated export: the store (opened), the format's converter and the files it will write."""

    converter: type
    store: EventStore
    out: Path
    files: list[Path]

    def describe(self) -> str:
        return (
            f"export {self.store.n_events} events of {self.store.path} as {self.converter.name} -> "
            f"{', '.join(map(str, self.files))}"
        )


def plan_export(
    store: str | os.PathLike | EventStore, format: str, out: str | os.PathLike, overwrite: bool = False
) -> ExportPlan:
    """Check an export before writing: the store is complete, the format can be written, outputs are free."""
    cls = find_converter(format)
    if not callable(getattr(cls, "export", None)):
        able = ", ".join(r.name for r in _converters() if callable(getattr(r.cls, "export", None))) or "none"
        raise HepfmError(f"format '{format}' cannot be exported to; exportable formats: {able}")
    store = store if isinstance(store, EventStore) else EventStore.open(store)
    out = Path(out)
    files = [out, *getattr(cls, "export_companions", lambda o: [])(out)]
    for path in files:
        prepare_output(path, "file", overwrite)
    return ExportPlan(cls, store, out, files)


def run_export(plan: ExportPlan) -> ExportResult:
    """Write the planned export chunk by chunk, with progress.

    The converter's ``export(store, out, advance) -> list[Path]`` writes under temporary names and
    renames at the end, so a failed export leaves no file that looks finished.
    """
    exporter = plan.converter(plan.converter.Params(), plan.store.schema)
    start = time.perf_counter()
    with output_lock(plan.out), progress(f"export {plan.converter.name}", plan.store.n_events) as advance:
        try:
            files = exporter.export(plan.store, plan.out, advance)
        except (OSError, RuntimeError) as exc:  # HDF5 reports a full disk as RuntimeError(... errno = 28 ...)
            os_error = as_os_error(exc, plan.out)
            if os_error is None:
                raise
            raise os_error from None
    return ExportResult(files, plan.store.n_events, time.perf_counter() - start)


def export_store(
    store: str | os.PathLike | EventStore, format: str, out: str | os.PathLike, overwrite: bool = False
) -> ExportResult:
    """Plan and run an export in one call: write a complete event store in another format."""
    return run_export(plan_export(store, format, out, overwrite))


def export_spanet(
    store: str | os.PathLike | EventStore, out: str | os.PathLike, overwrite: bool = False
) -> ExportResult:
    """Write a store as a SPANet HDF5 file ``out`` plus its event YAML beside it (same stem, ``.yaml``)."""
    return export_store(store, "spanet", out, overwrite=overwrite)
