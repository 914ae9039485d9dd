# SPDX-License-Identifier: GPL-3.0-or-later
"""Running targets under atheris in child processes, and reading back what libFuzzer says.

Used by `scripts/fuzz.py` (long runs) and `test_fuzz_bounded.py` (the bounded
pass).  One child per target run: libFuzzer owns its process (it exits when
done or on the first crash), and a crash in one target does not stop the
others.  After a crash the target is started again for the time that is left,
so one run can report several findings.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from .harness import CACHE_ROOT, REPO, Target

MAX_CRASHES_PER_TARGET = 5


def have_atheris() -> bool:
    return importlib.util.find_spec("atheris") is not None


@dataclass
class Result:
    target: str
    executions: int = 0
    seconds: float = 0.0
    coverage: int = 0
    features: int = 0
    corpus: int = 0
    peak_rss_mb: int = 0
    crashes: list[Path] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)        # crash reports (the exception lines)
    log: str = ""

    @property
    def rate(self) -> float:
        return self.executions / self.seconds if self.seconds else 0.0


def extra_seed_dir(target: Target) -> Path | None:
    """Materialise a target's extra seeds (e.g. tests/ccid/corpus) for libFuzzer, which wants directories."""
    if not target.extra_corpus:
        return None
    directory = CACHE_ROOT / "seeds" / target.name
    directory.mkdir(parents=True, exist_ok=True)
    for extra in target.extra_corpus:
        for name, data in extra().items():
            path = directory / name
            if not path.exists() or path.read_bytes() != data:
                path.write_bytes(data)
    return directory


def command(target: Target, work_corpus: Path, *, seconds: float | None = None, runs: int | None = None,
            seed: int | None = None) -> list[str]:
    crashes = CACHE_ROOT / "crashes" / target.name
    crashes.mkdir(parents=True, exist_ok=True)
    work_corpus.mkdir(parents=True, exist_ok=True)
    dirs = [str(work_corpus)]
    if target.corpus_dir.is_dir():
        dirs.append(str(target.corpus_dir))
    extra = extra_seed_dir(target)
    if extra is not None:
        dirs.append(str(extra))
    argv = [sys.executable, "-m", "tests.fuzz.atheris_main", target.name, *dirs,
            f"-max_len={target.max_len}", f"-artifact_prefix={crashes}/", "-print_final_stats=1",
            "-timeout=60", "-rss_limit_mb=2048", "-len_control=0"]
    if seconds is not None:
        argv.append(f"-max_total_time={max(1, int(seconds))}")
    if runs is not None:
        argv.append(f"-runs={runs}")
    if seed is not None:
        argv.append(f"-seed={seed}")
    return argv


_STAT = re.compile(r"^stat::(\w+):\s*(\d+)", re.M)
_STATUS = re.compile(r"^#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)", re.M)
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def parse_output(text: str, result: Result) -> None:
    stats = {k: int(v) for k, v in _STAT.findall(text)}
    status = _STATUS.findall(text)
    executions = stats.get("number_of_executed_units")
    if executions is None and status:
        executions = int(status[-1][0])
    result.executions += executions or 0
    if status:
        _, cov, ft, corp = status[-1]
        result.coverage, result.features, result.corpus = max(result.coverage, int(cov)), int(ft), int(corp)
    result.peak_rss_mb = max(result.peak_rss_mb, stats.get("peak_rss_mb", 0))
    for artifact in _ARTIFACT.findall(text):
        result.crashes.append(Path(artifact))
        lines = text.splitlines()
        marker = next((i for i, line in enumerate(lines) if "Uncaught Python exception" in line), None)
        if marker is not None:
            tail = [line for line in lines[marker + 1:marker + 60] if line.strip()]
            exc_line = next((line for line in tail if re.match(r"^[A-Za-z_.]+(Error|Exception|Finding)\b", line)),
                            tail[-1] if tail else "")
            result.errors.append(exc_line)
        else:
            result.errors.append(next((line for line in lines if "ERROR: libFuzzer" in line), "libFuzzer error"))


def run_target(target: Target, *, seconds: float | None = None, runs: int | None = None, seed: int | None = None,
               work_corpus: Path | None = None) -> Result:
    """Fuzz one target for `seconds` (restarting after crashes) or for `runs` executions."""
    result = Result(target.name)
    work = work_corpus or CACHE_ROOT / "corpus" / target.name
    start = time.monotonic()
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while True:
        left = None if seconds is None else seconds - (time.monotonic() - start)
        if left is not None and left < 1:
            break
        argv = command(target, work, seconds=left, runs=runs, seed=seed)
        proc = subprocess.run(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace")
        result.log += proc.stdout
        crashes_before = len(result.crashes)
        parse_output(proc.stdout, result)
        if proc.returncode == 0 or len(result.crashes) == crashes_before:
            if proc.returncode != 0:
                result.errors.append(f"fuzzer exited with status {proc.returncode}")
            break
        if runs is not None or len(result.crashes) >= MAX_CRASHES_PER_TARGET:
            break
    result.seconds = time.monotonic() - start
    return result


def run_many(targets: list[Target], jobs: int, **kw) -> list[Result]:
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        return list(pool.map(lambda t: run_target(t, **kw), targets))
