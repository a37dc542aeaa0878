"""The study's records as one archive: every ended run's own files that the tables and plots are
written from, and nothing else (no checkpoints, no logs), so that ``--report-only`` on the
unpacked archive rewrites every committed table and figure."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

from adaact_dist.study.runner import FINAL_STATES, run_state
from adaact_dist.train.noise_scale import NOISE_CSV

RECORD_FILES = ("summary.json", "config.yaml", "starts.jsonl", "plan.json", "eval.csv", NOISE_CSV)
"""A run's files that the report reads (``noise_scale.csv``: the noise runs' per-step norms)."""
FOLDERS = ("runs", "noise-runs")


def pack_records(out: Path, archive: Path) -> int:
    """Write the ended runs' records under ``out`` to ``archive`` (tar.gz, names relative to
    ``out``, sorted, with fixed owners and times: the same records give the same bytes);
    return how many files it holds. An unfinished run is left out: unpacked without its
    checkpoints it would resume from a record that its start does not match."""
    files = sorted(
        path
        for folder in FOLDERS
        for path in (out / folder).rglob("*")
        if path.name in RECORD_FILES
        and path.is_file()
        and run_state(path.parent) in FINAL_STATES  # an unfinished run resumes from scratch
    )
    archive.parent.mkdir(parents=True, exist_ok=True)
    with (
        gzip.GzipFile(archive, "wb", mtime=0) as packed,
        tarfile.open(fileobj=packed, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for path in files:
            data = path.read_bytes()
            info = tarfile.TarInfo(str(path.relative_to(out)))
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return len(files)
