"""`make image-deps` (run by .ci/run): the Dockerfile's pip install resolves, without a conflict.

The Dockerfile installs, on the official image, `apache-airflow[celery]==<the image's version>`
with requirements.txt under constraints.txt, and the package. This asks pip to resolve exactly
those arguments, read from the Dockerfile, for a clean Python of the image's version (`--dry-run
--ignore-installed`: nothing is installed; the index is only read), and checks its report:
pip found a solution, it installs the image's Airflow, and every package it would install is
pinned in constraints.txt at that very version (so the image runs what `make install` tests).
A unit's first `docker compose build` then does not stop on a version clash.

What it cannot see: the packages the official image already holds beyond Airflow and its celery
extra (its other providers, under Airflow's own constraints), which pip in the image may move to
our pins; only a build of the image shows those (see "Dependencies and the image" in
docs/development.md).
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
DOCKERFILE = ROOT / "Dockerfile"
PROJECT = "wechat-nontax-pipeline"
IMAGE = re.compile(r"^FROM\s+apache/airflow:(?P<airflow>[\d.]+)-python(?P<python>[\d.]+)\s*$", re.M)


class ImageDepsError(RuntimeError):
    pass


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def dockerfile_install(dockerfile: Path = DOCKERFILE) -> tuple[str, str, list[str]]:
    """(Airflow version, Python version, the arguments of the image's `pip install` of the
    project's dependencies) as the Dockerfile writes them, its paths made this checkout's."""
    text = dockerfile.read_text(encoding="utf-8")
    image = IMAGE.search(text)
    if image is None:
        raise ImageDepsError("the Dockerfile does not start FROM apache/airflow:<v>-python<v>")
    runs = [
        shlex.split(line.split("pip install", 1)[1])
        for line in re.sub(r"\\\n", " ", text).splitlines()
        if line.startswith("RUN ") and "pip install" in line
    ]
    if len(runs) != 1:
        raise ImageDepsError(f"expected one RUN pip install in the Dockerfile, found {len(runs)}")
    copied = {}
    for line in text.splitlines():
        if line.startswith("COPY "):
            *sources, target = line.split()[1:]
            copied.update({f"{target.rstrip('/')}/{Path(s).name}": str(ROOT / s) for s in sources})
            if "pyproject.toml" in sources:  # the folder the package is installed from
                copied[target.rstrip("/")] = str(ROOT)
    args = [copied.get(arg, arg) for arg in runs[0] if arg != "--no-cache-dir"]
    return image["airflow"], image["python"], args


def constraints(path: Path = ROOT / "constraints.txt") -> dict[str, str]:
    pins = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[_canonical(name)] = version.strip()
    return pins


def check(dockerfile: Path = DOCKERFILE) -> list[str]:
    """Resolve the Dockerfile's install; returns a line per package it would install."""
    airflow, python, args = dockerfile_install(dockerfile)
    if f"{sys.version_info.major}.{sys.version_info.minor}" != python:
        raise ImageDepsError(f"the image runs Python {python}; run this with that Python")
    if f"apache-airflow[celery]=={airflow}" not in args:
        raise ImageDepsError(
            f"the Dockerfile must install apache-airflow[celery]=={airflow} (the image's own "
            f"Airflow, with its Celery extra) with the requirements: {shlex.join(args)}"
        )
    with tempfile.TemporaryDirectory(prefix="image-deps-") as tmp:
        report_path = Path(tmp) / "report.json"
        command = [
            sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed",
            "--quiet", "--disable-pip-version-check", "--report", str(report_path), *args,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, check=False, cwd=tmp)
        if done.returncode != 0:
            errors = [x for x in done.stderr.splitlines() if not x.startswith("WARNING: Location")]
            raise ImageDepsError("pip cannot resolve the Dockerfile's set:\n" + "\n".join(errors))
        report = json.loads(report_path.read_text(encoding="utf-8"))
    pins = constraints()
    resolved = {
        _canonical(item["metadata"]["name"]): item["metadata"]["version"]
        for item in report["install"]
        if _canonical(item["metadata"]["name"]) != PROJECT  # the package itself, not a pin
    }
    problems = [
        f"{name}=={version}: " + (f"constraints.txt pins {pins[name]}" if name in pins else
                                  "not pinned in constraints.txt")
        for name, version in sorted(resolved.items())
        if pins.get(name) != version
    ]  # fmt: skip
    if resolved.get("apache-airflow") != airflow:
        problems.append(
            f"apache-airflow resolves to {resolved.get('apache-airflow')}, not {airflow}"
        )
    if problems:
        raise ImageDepsError(
            "the Dockerfile's set differs from the pins:\n  " + "\n  ".join(problems)
        )
    return [f"{name}=={version}" for name, version in sorted(resolved.items())]


def main() -> int:
    started = time.monotonic()
    try:
        resolved = check()
    except ImageDepsError as exc:
        print(f"image-deps: {exc}", file=sys.stderr)
        return 1
    celery = [p for p in resolved if p.split("==")[0] in ("celery", "kombu", "redis", "flower")]
    print(
        f"image-deps: the Dockerfile's pip install resolves without a conflict to {len(resolved)} "
        f"packages, each at its constraints.txt pin ({', '.join(celery)}) "
        f"in {time.monotonic() - started:.0f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
