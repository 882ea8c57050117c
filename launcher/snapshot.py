"""Code snapshots: a copy of the packages a Slurm job imports, taken at submission time.

submitit pickles the job's callable by reference, so the job imports `launcher`, `trainer_core`, `slurm` and
the user's `_target_` packages when it starts, possibly hours later and again after every requeue. Running
from a copy keeps an edited working tree out of a queued job: what runs is what was submitted.

Snapshots are content-addressed (`<parent>/code/<hash>/`): a resubmission with unchanged code reuses the copy,
and a job already running never sees its code directory change under it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import site
import sysconfig
import tempfile
from collections.abc import Iterable
from pathlib import Path

log = logging.getLogger(__name__)

PROJECT_PACKAGES = ("launcher", "trainer_core", "slurm")
# Compiled caches belong to the interpreter that wrote them; the job compiles its own.
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc")


def _installed_roots() -> list[Path]:
    """Directories whose packages are installed, not edited in place: stdlib and site-packages."""
    paths = {sysconfig.get_paths()[key] for key in ("stdlib", "platstdlib", "purelib", "platlib")}
    paths.update(site.getsitepackages())
    paths.add(site.getusersitepackages())
    return [Path(path).resolve() for path in paths if path]


def _is_installed(path: Path) -> bool:
    return any(path.is_relative_to(root) for root in _installed_roots())


def source_of(top_level: str) -> Path | None:
    """The package directory or module file that `import top_level` loads, or None when it has no file."""
    spec = importlib.util.find_spec(top_level)
    if spec is None:
        return None
    # An editable install may present a package as a namespace: its first real directory is the source.
    for location in spec.submodule_search_locations or []:
        if Path(location).is_dir():
            return Path(location).resolve()
    if spec.origin in (None, "built-in", "frozen"):
        return None
    return Path(str(spec.origin)).resolve()


def user_packages(targets: Iterable[str]) -> list[str]:
    """Top-level packages of the `_target_` classes that are the user's own code (not installed libraries)."""
    found: list[str] = []
    for target in targets:
        top = target.split(".", 1)[0]
        if top in PROJECT_PACKAGES or top in found:
            continue
        source = source_of(top)
        if source is not None and not _is_installed(source):
            found.append(top)
    return found


def _sources(packages: Iterable[str]) -> dict[str, Path]:
    sources: dict[str, Path] = {}
    for name in packages:
        source = source_of(name)
        if source is None:
            raise FileNotFoundError(f"cannot snapshot {name}: it has no source file to copy")
        sources[name] = source
    return sources


def _copy(source: Path, destination: Path) -> None:
    if source.is_dir():
        shutil.copytree(source, destination / source.name, ignore=_IGNORED, symlinks=False)
    else:
        shutil.copy2(source, destination / source.name)


def _content_hash(directory: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def take_snapshot(parent: Path, packages: Iterable[str]) -> Path:
    """Copy the packages to `<parent>/code/<content hash>/` (reusing an identical copy); return that path."""
    code_root = parent / "code"
    code_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=code_root))
    try:
        for source in _sources(packages).values():
            _copy(source, staging)
        snapshot = code_root / _content_hash(staging)
        if snapshot.is_dir():
            shutil.rmtree(staging)
        else:
            os.replace(staging, snapshot)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log.debug("code snapshot: %s", snapshot)
    return snapshot


def snapshot_for_job(parent: Path, targets: Iterable[str]) -> Path:
    """The snapshot a job runs from: the project packages and the user's `_target_` packages."""
    packages = [*PROJECT_PACKAGES, *user_packages(targets)]
    return take_snapshot(parent, packages)


def python_path(snapshot: Path, submit_dir: Path) -> str:
    """The job's PYTHONPATH: the snapshot first; the submission directory after it, for anything else."""
    entries = [str(snapshot), str(submit_dir), os.environ.get("PYTHONPATH", "")]
    return os.pathsep.join(entry for entry in entries if entry)
