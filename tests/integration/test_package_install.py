"""The package as a unit installs it: `pip install .` builds a wheel of plugins/wechat_nontax with
its migrations and templates, registers the Bills plugin through the `airflow.plugins` entry
point and the `nontax` command, and carries none of the development harness.

The wheel goes into a throwaway virtualenv of its own; the pinned dependencies come from this
one's site-packages (a .pth file), so nothing is downloaded and the check takes seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from nontax_dev.airflow_run import ROOT

HARNESS = ("nontax_dev/", "wechat_sandbox/", "tests/", "bench/", "include/", "dags/")


# What the image may hold of the checkout: the pins, the build's description, the package.
IMAGE_SOURCES = {"requirements.txt", "constraints.txt", "pyproject.toml", "plugins/wechat_nontax"}


def dockerfile_copies() -> set[str]:
    """The checkout's paths the Dockerfile copies into the image (its COPY lines' sources)."""
    lines = (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines()
    return {source for line in lines if line.startswith("COPY ")
            for source in line.split()[1:-1]}  # fmt: skip


def test_the_image_copies_only_the_pins_and_the_package():
    assert dockerfile_copies() == IMAGE_SOURCES


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # What the Dockerfile copies, built apart so that the checkout stays clean; without build
    # isolation, with this environment's pinned setuptools (no index).
    source = out / "source"
    for copied in dockerfile_copies():
        target = source / copied
        target.parent.mkdir(parents=True, exist_ok=True)
        if (ROOT / copied).is_dir():
            shutil.copytree(ROOT / copied, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / copied, target)
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
    subprocess.run(
        [*command, "--quiet", "--disable-pip-version-check", "-w", str(out), str(source)],
        check=True, capture_output=True, text=True, timeout=120, cwd=out,
    )  # fmt: skip
    (found,) = out.glob("wechat_nontax_pipeline-*.whl")
    return found


def test_the_wheel_holds_the_package_its_data_and_none_of_the_harness(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    assert [n for n in names if n.startswith(HARNESS)] == []
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"wechat_nontax"}
    expected = {
        "wechat_nontax/ui/plugin.py",
        "wechat_nontax/ui/routes.py",
        "wechat_nontax/cli/main.py",
        "wechat_nontax/store/migrations/0001_order_schema.sql",
        "wechat_nontax/ui/templates/bills_overview.html",
        "wechat_nontax/ui/static/bills.js",
        "wechat_nontax/ui/locale/zh_CN/LC_MESSAGES/bills.mo",
        "wechat_nontax/preload.py",
    }
    assert expected <= set(names)
    migrations = {p.name for p in (ROOT / "plugins/wechat_nontax/store/migrations").glob("*.sql")}
    packed = {Path(n).name for n in names if "/store/migrations/" in n}
    assert packed == migrations
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "bills = wechat_nontax.ui.plugin:BillsPlugin" in text
    assert "nontax = wechat_nontax.cli.main:main" in text
    # A provider names what it needs: Airflow and what the package imports beyond Airflow's own.
    (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
    requires = {
        line.split(":", 1)[1].strip().split(";")[0].split(">")[0].split("=")[0].split("<")[0]
        for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines()
        if line.startswith("Requires-Dist:")
    }
    assert {"apache-airflow", "apache-airflow-providers-http", "psycopg2-binary",
            "prometheus-client", "statsd"} <= requires  # fmt: skip
    # None of the harness's own packages (requirements-dev.txt) is the package's.
    assert not requires & {"pgserver", "reportlab", "python-dotenv", "psutil", "pytest"}


def test_installed_in_a_fresh_virtualenv_airflow_lists_the_bills_plugin(
    wheel: Path, tmp_path: Path
):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            check=True, capture_output=True, text=True,
        ).stdout.strip()
    )  # fmt: skip
    # The dependencies, as installed here; the package itself only from the wheel.
    (site / "shared-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet",
         "--disable-pip-version-check", "--no-deps", str(wheel)],
        check=True, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    home = tmp_path / "airflow"
    (home / "plugins").mkdir(parents=True)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHONPATH"))},
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(home / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    }
    where = subprocess.run(
        [str(python), "-c", "import wechat_nontax.ui.plugin as p; print(p.__file__)"],
        env=env, check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(site), where
    listed = subprocess.run(
        [str(python), "-m", "airflow", "plugins", "--output", "json"],
        env=env, check=True, capture_output=True, text=True, timeout=120, cwd=tmp_path,
    ).stdout  # fmt: skip
    plugins = json.loads(listed[listed.index("[") :])
    bills = [p for p in plugins if p["name"] == "nontax_bills"]
    assert bills, listed
    assert "wechat-nontax-pipeline" in str(bills[0].get("source")), bills[0]
    help_text = subprocess.run(
        [str(venv / "bin" / "nontax"), "--help"],
        env=env, check=True, capture_output=True, text=True, cwd=tmp_path,
    ).stdout  # fmt: skip
    for command in ("migrate", "load", "status", "attention", "history", "reset", "refuse"):
        assert command in help_text
