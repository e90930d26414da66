"""Read an offline W&B run the way ``wandb sync`` does: the records of its ``.wandb`` file.

    run = OfflineRun.read(next(job_dir.glob("wandb/offline-run-*")))
    run.name, run.group, run.tags, run.config["seed"], run.summary["val/acc"], run.exit_code

The file is a log of ``wandb_internal_pb2.Record`` messages: a 7-byte header (``:W&B``, the
magic 0xBEE1, a version byte), then 32 KiB blocks of chunks, each with a 7-byte header
(CRC-32, length, type: full, first, middle or last piece of a record); a block's last
bytes, too few for a chunk header, are zero padding.
"""

from __future__ import annotations

import json
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
HEADER = struct.Struct("<4sHB")
CHUNK = struct.Struct("<IHB")
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list[pb.Record]:
    """Every record of a ``.wandb`` file, in order; checks the header and each chunk's CRC."""
    data = Path(path).read_bytes()
    ident, magic, version = HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a W&B run file (header {data[:7]!r})")
    records: list[pb.Record] = []
    pending: bytes | None = None
    pos = HEADER.size
    while pos + CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < CHUNK.size:  # padding at the end of a block
            pos += left
            continue
        crc, length, kind = CHUNK.unpack_from(data, pos)
        if kind == 0 and length == 0:  # the rest of this block is unused
            pos += left
            continue
        body = data[pos + CHUNK.size : pos + CHUNK.size + length]
        if zlib.crc32(bytes([kind]) + body) != crc:
            raise ValueError(f"{path}: bad chunk checksum at byte {pos}")
        pos += CHUNK.size + length
        if kind == FULL:
            records.append(pb.Record.FromString(body))
        elif kind == FIRST:
            pending = body
        elif kind == MIDDLE and pending is not None:
            pending += body
        elif kind == LAST and pending is not None:
            records.append(pb.Record.FromString(pending + body))
            pending = None
        else:
            raise ValueError(f"{path}: chunk of type {kind} out of order at byte {pos}")
    return records


def _items(items: Any) -> dict[str, Any]:
    """Record items as a dict; nested keys (media, tables: ``["spectrum/table", "path"]``)
    become nested dicts, as W&B shows them."""
    out: dict[str, Any] = {}
    for item in items:
        path = [item.key] if item.key else list(item.nested_key)
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = json.loads(item.value_json)
    return out


def _key(item: Any) -> str:
    return item.key or item.nested_key[0]


@dataclass
class OfflineRun:
    """What the records of one offline run say about it."""

    records: list[pb.Record]
    run: Any = None  # the last RunRecord
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # define_metric records by name
    files: list[str] = field(default_factory=list)
    exit_code: int | None = None

    @classmethod
    def read(cls, run_dir: Path) -> OfflineRun:
        (path,) = Path(run_dir).glob("*.wandb")
        out = cls(read_records(path))
        for r in out.records:
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out.run = r.run
                out.config.update(_items(r.run.config.update))
            elif kind == "config":
                out.config.update(_items(r.config.update))
                for i in r.config.remove:
                    out.config.pop(_key(i), None)
            elif kind == "history":
                out.history.append(_items(r.history.item))
            elif kind == "summary":
                out.summary.update(_items(r.summary.update))
                for i in r.summary.remove:
                    out.summary.pop(_key(i), None)
            elif kind == "metric":
                out.metrics[r.metric.name or r.metric.glob_name] = r.metric
            elif kind == "files":
                out.files += [f.path for f in r.files.files]
            elif kind == "exit":
                out.exit_code = r.exit.exit_code
        return out

    @property
    def name(self) -> str:
        return self.run.display_name

    @property
    def group(self) -> str:
        return self.run.run_group

    @property
    def tags(self) -> list[str]:
        return list(self.run.tags)

    @property
    def notes(self) -> str:
        return self.run.notes

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def history_keys(self) -> set[str]:
        return {k for row in self.history for k in row}
