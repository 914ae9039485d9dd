# SPDX-License-Identifier: GPL-3.0-or-later
"""The bounded fuzzing pass of the test suite, and the corpus replayed as regression inputs.

- Every input committed under fuzz/corpus/<target>/ (seeds and the inputs of
  fixed findings, `regress-*`) runs once and must pass.
- Every target runs under atheris for its `bounded_runs` executions with a
  fixed seed (`-seed=1`), two targets at a time, each in its own process
  (libFuzzer owns its process; the card targets patch key generation there).
  Without atheris the same budget runs as plain seeded mutations, and the test
  says so.

`make fuzz` (scripts/fuzz.py --long) is the long run.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.ci import skip_or_fail

from .harness import REPO
from .runner import have_atheris
from .targets import TARGETS

SEED = 1


def fuzz_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "scripts" / "fuzz.py"), *args], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)


def test_every_target_has_a_committed_corpus():
    for target in TARGETS.values():
        files = list(target.corpus_dir.glob("*")) if target.corpus_dir.is_dir() else []
        assert len(files) >= 3, f"fuzz/corpus/{target.name} needs seeds (scripts/fuzz.py --write-seeds)"
        assert sum(f.stat().st_size for f in files) < 256 * 1024, f"fuzz/corpus/{target.name} is not small"


def test_corpus_replays_clean():
    proc = fuzz_script("--replay")
    assert proc.returncode == 0, proc.stdout[-6000:]
    for name in TARGETS:
        assert f"{name}: " in proc.stdout


@pytest.fixture(scope="module")
def bounded_results(tmp_path_factory):
    if not have_atheris():
        return None
    work = tmp_path_factory.mktemp("fuzz-corpus")
    results = {}
    targets = list(TARGETS.values())

    def one(target):
        from .runner import run_target
        return run_target(target, runs=target.bounded_runs, seed=SEED, work_corpus=work / target.name)

    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
        for result in pool.map(one, targets):
            results[result.target] = result
    return results


@pytest.mark.parametrize("name", list(TARGETS))
def test_bounded_fuzzing(name, bounded_results):
    target = TARGETS[name]
    if bounded_results is None:
        proc = fuzz_script("--plain-runs", str(target.bounded_runs), "--seed", str(SEED), name)
        assert proc.returncode == 0, proc.stdout[-6000:]
        message = "atheris is not installed: ran plain seeded mutations only (no coverage guidance)"
        skip_or_fail(message)          # CI installs the test extra: a missing fuzzer is a defect there
    result = bounded_results[name]
    assert not result.crashes, (
        f"{name}: {result.errors}\nreproduce: {sys.executable} scripts/fuzz.py --reproduce {name} "
        f"{result.crashes[0]}\n{result.log[-4000:]}")
    assert not result.errors, result.log[-4000:]
    assert result.executions >= target.bounded_runs, result.log[-2000:]
