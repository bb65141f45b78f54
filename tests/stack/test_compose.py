"""docker-compose.yaml, checked without Docker (no engine runs here): it parses, its variables
resolve from .env.example, every file it mounts or builds from exists, it holds no secret, and
every command it runs is one the other tests run outside Docker (COMMANDS says where), or is
listed in NOT_RUN_HERE with the reason."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import pytest
import yaml

from nontax_dev.airflow_run import ROOT

COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
TEST_PG = os.environ.get("NONTAX_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
STACK = "tests/stack/shared/test_ui_rerun.py (the stack of nontax_dev.stack runs it)"
CELERY_STACK = "tests/stack/test_celery.py (the stack on CeleryExecutor runs it)"

# Every command the compose file runs (commands, entrypoint scripts, health checks), after
# variable interpolation, and where the same command is run outside Docker.
COMMANDS: dict[str, str] = {
    r"airflow api-server": STACK,
    r"airflow scheduler": STACK,
    r"airflow dag-processor": STACK,
    r"airflow triggerer": STACK,
    r"airflow db migrate": STACK,
    r"nontax migrate": STACK + "; here as the order DB's own role",
    r'airflow pools set "\$\{NONTAX_WECHAT_POOL\}" "\$\{NONTAX_POOL_SLOTS\}" "calls to WeChat"': (
        STACK
    ),
    r"python -m wechat_sandbox --host 0\.0\.0\.0 --port 8765": (
        "tests/conftest.py and the stack start `python -m wechat_sandbox --host ... --port ...`"
    ),
    r"curl --fail http://localhost:8080/api/v2/version": "the stack waits on GET /api/v2/version",
    r"curl --fail http://localhost:8974/health": (
        "test_ui_rerun: the stack's scheduler health check server answers /health"
    ),
    r'airflow jobs check --job-type (TriggererJob|DagProcessorJob) --hostname "\$\{HOSTNAME\}"': (
        "test_ui_rerun runs both against the stack"
    ),
    r"curl --fail http://localhost:8765/_sandbox/health": (
        "wechat_sandbox.process waits on GET /_sandbox/health"
    ),
    r"nontax receiver --host 0\.0\.0\.0 --port 8770": (
        "tests/integration/test_receiver.py (nontax_dev.receiver_process) and the stack start "
        "`nontax receiver --host ... --port ...`"
    ),
    r"curl --fail http://localhost:8770/healthz": (
        "nontax_dev.receiver_process and the stack wait on GET /healthz"
    ),
    r"pg_isready -U airflow": ".ci/run waits with pg_isready on the CI's server",
    r"/docker-entrypoint-initdb\.d/10-nontax-db\.sh": "test_the_postgres_init_script_... below",
    r"airflow celery worker": CELERY_STACK + ", each worker named after its host",
    r"celery --app airflow\.providers\.celery\.executors\.celery_executor\.app inspect ping "
    r'-d "celery@\$\{HOSTNAME\}"': CELERY_STACK + ": against each worker",
    r"redis-cli ping": ".ci/run waits with redis-cli ping on the CI's server",
    r"redis-server --save '' --appendonly no": (
        CELERY_STACK + ": its own redis-server with the same options (stack_helpers.PrivateRedis)"
    ),
}
NOT_RUN_HERE: dict[str, str] = {}
SERVICES = {
    "postgres",
    "redis",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-worker",
    "airflow-triggerer",
    "airflow-init",
    "wechat-sandbox",
    "nontax-receiver",
}
SANDBOX_ENV = ROOT / "docker" / "sandbox.env"
SECRET_VARS = {
    "AIRFLOW_DB_PASSWORD",
    "NONTAX_DB_PASSWORD",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_FERNET_KEY",
    "WECHAT_APPID",
    "WECHAT_APP_SECRET",
    "WECHAT_CALLBACK_TOKEN",
    "WECHAT_CALLBACK_AES_KEY",
    "WECHAT_API_URL",  # not a secret, but required: a forgotten one must not mean the sandbox
}
# The image's entrypoint runs `airflow <command>` for a bare Airflow command.
AIRFLOW_COMMANDS = ("api-server", "scheduler", "dag-processor", "triggerer", "celery")


# -- compose's variable interpolation -----------------------------------------------------------


class MissingVariable(Exception):
    pass


_VARIABLE = re.compile(
    r"\$\$|\$\{(?P<name>[A-Za-z_]\w*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)"
)


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${VAR}`, `${VAR:-default}`, `${VAR:?error}` and `$$`, over a loaded file."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def substitute(match: re.Match) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match["name"] or match["bare"]
        op, arg, current = match["op"], match["arg"] or "", env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-") and unset:
            return arg
        if op in (":?", "?") and unset:
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _VARIABLE.sub(substitute, value)


def example_env(**overrides: str) -> dict[str, str]:
    """.env.example's values, the empty secrets filled with test values."""
    env = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            env[key.strip()] = value.strip() or f"test-{key.strip().lower()}"
    env.update(overrides)
    return env


@pytest.fixture(scope="module")
def raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def compose(raw: dict[str, Any]) -> dict[str, Any]:
    return interpolate(raw, example_env())


def commands_of(compose: dict[str, Any]) -> list[tuple[str, str]]:
    """(service, command) for every command, entrypoint script line and health check."""
    found = []
    for name, service in compose["services"].items():
        command, entrypoint = service.get("command"), service.get("entrypoint")
        if entrypoint == "/bin/bash" and isinstance(command, list) and command[0] == "-c":
            lines = [x.strip() for x in command[1].splitlines()]
            found += [(name, x) for x in lines if x and not x.startswith("set ")]
        elif isinstance(command, list):
            found.append((name, shlex.join(command)))
        elif isinstance(command, str):
            airflow = command.split()[0] in AIRFLOW_COMMANDS
            found.append((name, f"airflow {command}" if airflow else command))
        test = (service.get("healthcheck") or {}).get("test")
        if test and test[0] == "CMD":
            found.append((name, " ".join(test[1:])))
        elif test and test[0] == "CMD-SHELL":
            found.append((name, test[1]))
        for volume in service.get("volumes", []):
            if volume.startswith("./docker/postgres-init:"):
                for script in sorted((ROOT / "docker" / "postgres-init").iterdir()):
                    found.append((name, f"/docker-entrypoint-initdb.d/{script.name}"))
    return found


def worker_stop(compose: dict[str, Any]) -> tuple[bool, float]:
    """How `docker compose stop` stops a worker container: whether the signal reaches every
    process of it (dumb-init's default; DUMB_INIT_SETSID=0 sends it to Celery's main process
    only), and the seconds before Docker's SIGKILL (`stop_grace_period`, 10 s unless set)."""
    worker = compose["services"]["airflow-worker"]
    whole_group = str(environment(worker).get("DUMB_INIT_SETSID", "1")) != "0"
    grace = str(worker.get("stop_grace_period", "10s"))
    parts = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", grace)
    assert parts and grace, f"stop_grace_period {grace!r}: use h, m, s"
    hours, minutes, seconds = (int(x or 0) for x in parts.groups())
    return whole_group, float(hours * 3600 + minutes * 60 + seconds)


# -- the tests ------------------------------------------------------------------------------------


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as docker compose gives it: its env_file(s), then `environment`."""
    from dotenv import dotenv_values

    env: dict[str, str] = {}
    for path in service.get("env_file", []):
        env.update(dotenv_values(ROOT / path, interpolate=False))
    return {**env, **service.get("environment", {})}


def test_the_services_are_the_official_shape_on_celery(compose: dict[str, Any]):
    services = compose["services"]
    assert set(services) == SERVICES
    env = environment(services["airflow-scheduler"])
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://")
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-apiserver:8080/execution/"
    )
    assert services["wechat-sandbox"]["profiles"] == ["sandbox"]
    for name, service in services.items():
        if name != "airflow-init":
            assert "healthcheck" in service, f"{name} has no health check"
    for name in ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"):
        assert services[name]["depends_on"]["airflow-init"] == {
            "condition": "service_completed_successfully"
        }


def test_the_compose_file_and_the_local_celery_stack_share_their_celery_settings(compose):
    """docker/airflow-celery.env is every Airflow container's env_file, overridden by none, and
    what the local Celery stack (tests/stack/test_celery.py) gives its processes; the sizes
    default alike; the image installs the same Celery provider as `make install`."""
    from nontax_dev.stack import celery_workers
    from nontax_dev.stack.config import StackConfig

    shared = celery_workers.shared_settings()
    assert shared["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    for name, service in compose["services"].items():
        if name.startswith("airflow-"):
            assert service["env_file"] == ["docker/airflow-celery.env"], name
            assert not set(shared) & set(service["environment"]), f"{name} overrides it"
    local = celery_workers.executor_env(
        redis_url="redis://127.0.0.1:6379/3", key_prefix="nontax-x:", result_backend="db+x",
        concurrency=StackConfig().worker_concurrency,
    )  # fmt: skip
    assert shared.items() <= local.items()
    env = environment(compose["services"]["airflow-worker"])
    default = StackConfig()
    assert int(env["AIRFLOW__CELERY__WORKER_CONCURRENCY"]) == default.worker_concurrency
    assert int(env["NONTAX_POOL_SLOTS"]) == default.pool_slots
    # The sandbox Connection of `make up` has the compose file's extra (token mode, timeout).
    wechat = json.loads(env["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"])
    assert default.sandbox_extra == wechat["extra"]
    requirements = (ROOT / "requirements.txt").read_text()
    assert re.search(r"^apache-airflow-providers-celery==", requirements, re.M)
    assert re.search(
        r"^RUN pip install .*-r /opt/nontax/requirements\.txt",
        (ROOT / "Dockerfile").read_text(),
        re.M,
    )


def test_every_dag_is_scheduled_by_the_compose_file_and_unpaused_by_make_up(compose):
    """Each DAG file reads its schedule from a variable (`dag_arguments`) that the compose file
    sets, with the DAG's own default; `make up` unpauses the daily DAG and the frequent ones."""
    from nontax_dev.airflow_api import DAG_ID
    from nontax_dev.stack.cli import FREQUENT_DAG_IDS
    from wechat_nontax import settings

    dag_files = sorted((ROOT / "dags").glob("*.py"))
    assert sorted({DAG_ID, *FREQUENT_DAG_IDS}) == [path.stem for path in dag_files]
    env = environment(compose["services"]["airflow-scheduler"])
    for path in dag_files:
        # Each argument is a string, or a name of the settings module that holds one.
        [arguments] = re.findall(r"dag_arguments\(([^)]*)\)", path.read_text(encoding="utf-8"))
        variable, default = (
            ast.literal_eval(arg) if arg.startswith('"') else getattr(settings, arg)
            for arg in (part.strip() for part in arguments.split(","))
        )
        assert env[variable] == default, path.name


def test_a_deploy_stops_a_workers_batches_cleanly(compose):
    """What tests/stack/test_celery.py reproduces: the stop signal reaches the tasks (their
    batches stop sending and record their calls in flight), and Docker's SIGKILL waits longer
    than a call in flight may take with its write-back."""
    from wechat_nontax.issuing.batch_settings import Settings

    whole_group, grace_s = worker_stop(compose)
    assert whole_group, "SIGTERM must reach the task processes, not Celery's main one only"
    worker = environment(compose["services"]["airflow-worker"])
    timeout = json.loads(worker["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"])["extra"]["timeout"]
    reserve = Settings(pdf_root="/", call_timeout_s=float(timeout)).call_reserve_s
    assert grace_s >= reserve + 30, f"{grace_s} s: a call in flight may take {reserve} s"


def test_redis_keeps_nothing_on_disk_as_every_local_run(compose):
    redis = compose["services"]["redis"]
    assert redis["command"] == ["redis-server", "--save", "", "--appendonly", "no"]
    assert "volumes" not in redis


def test_every_airflow_container_shares_one_jwt_secret_and_mounts_only_the_dags(compose):
    airflow = {n: s for n, s in compose["services"].items() if n.startswith("airflow-")}
    example = example_env()
    for key, var in (
        ("AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW_JWT_SECRET"),
        ("AIRFLOW__API__SECRET_KEY", "AIRFLOW_API_SECRET_KEY"),
        ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_FERNET_KEY"),
    ):
        assert {s["environment"][key] for s in airflow.values()} == {example[var]}
    for service in airflow.values():
        # The package is installed in the image: no path is set by hand, no code is mounted
        # but the DAG files, and nothing lands in the plugins folder to be scanned.
        assert "PYTHONPATH" not in service["environment"]
        mounts = {v.split(":")[1] for v in service["volumes"] if v.startswith("./")}
        assert mounts == {"/opt/airflow/dags"}


def test_metadata_and_order_databases_are_separate(compose):
    env = compose["services"]["airflow-init"]["environment"]
    meta = env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert meta.startswith("postgresql+psycopg2://airflow:") and meta.endswith("@postgres/airflow")
    orders = json.loads(env["AIRFLOW_CONN_NONTAX_ORDERS_DB"])
    assert (orders["host"], orders["schema"], orders["login"]) == ("postgres", "nontax", "nontax")
    wechat = json.loads(env["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"])
    assert wechat["conn_type"] == "http" and wechat["extra"]["token_mode"] == "stable_token"


def test_no_secret_is_written_in_the_file_and_each_is_required(raw):
    from wechat_sandbox.client import DEFAULT_SECRET

    text = COMPOSE.read_text(encoding="utf-8")
    assert DEFAULT_SECRET not in text
    for var in SECRET_VARS:
        assert re.search(rf"\$\{{{var}:\?", text), f"{var} must be required (${{{var}:?...}})"
        with pytest.raises(MissingVariable, match=var):
            interpolate(raw, example_env(**{var: ""}))
    # The example leaves every secret empty, the WeChat URL and credentials too: a production
    # .env copied from it cannot talk to the sandbox by accident.
    example = _values(ENV_EXAMPLE)
    for var in SECRET_VARS:
        assert example[var] == "", var


def _values(path: Path) -> dict[str, str]:
    return dict(
        line.split("=", 1)
        for line in path.read_text().splitlines()
        if line and not line.startswith("#")
    )


def test_the_sandbox_is_chosen_on_purpose_with_its_env_file(raw):
    """Without WECHAT_API_URL nothing starts; docker/sandbox.env (given after .env, so it wins)
    is the one way to the sandbox, and it holds only the sandbox's public test values."""
    with pytest.raises(MissingVariable, match="WECHAT_API_URL"):
        interpolate(raw, example_env(WECHAT_API_URL=""))
    sandbox = _values(SANDBOX_ENV)
    assert set(sandbox) == {"WECHAT_API_URL", "WECHAT_APPID", "WECHAT_APP_SECRET"}
    chosen = interpolate(raw, {**example_env(), **sandbox})["services"]
    wechat = json.loads(
        chosen["airflow-worker"]["environment"]["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"]
    )
    assert wechat["host"] == "http://wechat-sandbox:8765"
    assert chosen["wechat-sandbox"]["profiles"] == ["sandbox"]
    production = interpolate(raw, example_env(WECHAT_API_URL="https://api.weixin.qq.com"))
    worker = production["services"]["airflow-worker"]["environment"]
    assert json.loads(worker["AIRFLOW_CONN_WECHAT_NONTAX_DEFAULT"])["host"].startswith("https://")


def test_every_published_port_is_on_loopback(compose):
    published = [
        (name, port) for name, service in compose["services"].items()
        for port in service.get("ports", [])
    ]  # fmt: skip
    assert ("airflow-apiserver", "127.0.0.1:8080:8080") in published
    for name, port in published:
        assert str(port).startswith("127.0.0.1:"), (name, port)


def test_the_ui_is_ready_for_tls_and_a_real_auth_manager(raw):
    env = interpolate(
        raw,
        example_env(
            AIRFLOW_BASE_URL="https://airflow.example.internal",
            AIRFLOW_AUTH_MANAGER="airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager",
        ),
    )["services"]["airflow-apiserver"]["environment"]
    assert env["AIRFLOW__API__BASE_URL"] == "https://airflow.example.internal"
    assert env["AIRFLOW__CORE__AUTH_MANAGER"].endswith("FabAuthManager")


def test_the_sandbox_gets_only_what_it_needs(compose):
    sandbox = compose["services"]["wechat-sandbox"]
    assert set(sandbox["environment"]) <= {
        "PYTHONPATH", "WECHAT_SANDBOX_APPID", "WECHAT_SANDBOX_SECRET", "WECHAT_SANDBOX_ADMIN_TOKEN"
    }  # fmt: skip
    values = " ".join(str(v) for v in sandbox["environment"].values())
    example = example_env()
    for var in SECRET_VARS - {"WECHAT_APPID", "WECHAT_APP_SECRET", "WECHAT_API_URL"}:
        assert example[var] not in values, var
    assert [v for v in sandbox["volumes"] if "pdfs" in v or "logs" in v] == []


def test_the_receiver_runs_apart_with_only_its_own_secrets(compose, monkeypatch):
    """WeChat's events reach a service of their own, never the api-server: it gets the order DB
    and the callback credentials, no Airflow secret, no WeChat app secret, its spool on a volume."""
    from wechat_nontax.receiver.config import credentials_from_env
    from wechat_nontax.settings import CALLBACK_CONN_ID, DEFAULT_RECEIVER_PORT

    receiver = compose["services"]["nontax-receiver"]
    env = receiver["environment"]
    assert set(env) == {
        "AIRFLOW_CONN_NONTAX_ORDERS_DB", f"AIRFLOW_CONN_{CALLBACK_CONN_ID.upper()}",
        "NONTAX_RECEIVER_SPOOL",
    }  # fmt: skip
    worker = compose["services"]["airflow-worker"]["environment"]
    assert env["AIRFLOW_CONN_NONTAX_ORDERS_DB"] == worker["AIRFLOW_CONN_NONTAX_ORDERS_DB"]
    values, example = json.dumps(env), example_env()
    for var in ("AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_FERNET_KEY",
                "WECHAT_APP_SECRET", "AIRFLOW_DB_PASSWORD"):  # fmt: skip
        assert example[var] not in values, var
    assert receiver["ports"] == [f"127.0.0.1:{DEFAULT_RECEIVER_PORT}:{DEFAULT_RECEIVER_PORT}"]
    assert receiver["volumes"] == [f"receiver-spool:{env['NONTAX_RECEIVER_SPOOL']}"]
    assert receiver["depends_on"]["airflow-init"] == {"condition": "service_completed_successfully"}
    # The Connection as written parses to the receiver's credentials (a 43-character key).
    key = "k" * 43
    with_key = interpolate(
        yaml.safe_load(COMPOSE.read_text(encoding="utf-8")),
        example_env(WECHAT_CALLBACK_AES_KEY=key),
    )["services"]["nontax-receiver"]["environment"]
    conn_var = f"AIRFLOW_CONN_{CALLBACK_CONN_ID.upper()}"
    monkeypatch.setenv(conn_var, with_key[conn_var])
    creds = credentials_from_env()
    assert (creds.token, creds.appid) == (example["WECHAT_CALLBACK_TOKEN"], example["WECHAT_APPID"])
    assert len(creds.aes_keys) == 1


def test_every_file_it_mounts_or_builds_from_exists(compose):
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts {source}: missing"
        if "build" in service:
            dockerfile = ROOT / service["build"] / "Dockerfile"
            assert dockerfile.exists()
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM apache/airflow:3\.3\.2-python3\.11$", dockerfile, re.M)
    for copy in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M):
        for source in copy.split():
            assert (ROOT / source).exists(), f"Dockerfile copies {source}: missing"
    assert (ROOT / "dags" / "nontax_insertbill.py").exists()
    for script in (ROOT / "docker" / "postgres-init").iterdir():
        assert os.access(script, os.X_OK), f"{script} must be executable"


def test_every_command_is_run_outside_docker_or_says_why_not(compose):
    unmapped, seen = [], set()
    for service, command in commands_of(compose):
        matches = [p for p in (*COMMANDS, *NOT_RUN_HERE) if re.fullmatch(p, command)]
        if len(matches) != 1:
            unmapped.append(f"{service}: {command}")
        seen.update(matches)
    assert unmapped == [], "map these commands in COMMANDS or NOT_RUN_HERE:\n" + "\n".join(unmapped)
    assert seen == set(COMMANDS) | set(NOT_RUN_HERE), "entries no command uses any more"


def test_its_airflow_and_python_commands_exist_here(compose):
    from airflow.cli.cli_parser import get_parser

    parser = get_parser()
    values = {"NONTAX_WECHAT_POOL": "wechat_nontax", "NONTAX_POOL_SLOTS": "4", "HOSTNAME": "h"}
    for _, command in commands_of(compose):
        argv = shlex.split(re.sub(r"\$\{(\w+)\}", lambda m: values[m[1]], command))
        if argv[0] == "airflow":
            parser.parse_args(argv[1:])  # exits on an unknown command or option
        if argv[0] == "celery":
            assert (Path(sys.executable).parent / "celery").exists()
        if argv[0] == "python" and argv[1] == "-m":
            assert importlib.util.find_spec(argv[2]) is not None, argv[2]
        if argv[0] == "nontax":  # the package's console script, as the image installs it
            assert (Path(sys.executable).parent / "nontax").exists()


def test_the_postgres_init_script_makes_an_order_db_its_role_can_migrate():
    """The init script against a real server, then `nontax migrate` as the
    order DB's own role (not a superuser), as airflow-init does."""
    suffix = uuid.uuid4().hex[:8]
    name, role, password = f"nontax_init_{suffix}", f"nontax_init_{suffix}", uuid.uuid4().hex
    server = psycopg2.extensions.parse_dsn(TEST_PG)
    env = {
        **os.environ,
        "PGHOST": server.get("host") or "127.0.0.1",
        "PGPORT": str(server.get("port") or 5432),
        "POSTGRES_USER": server.get("user") or "postgres",
        "POSTGRES_DB": server.get("dbname") or "postgres",
        "NONTAX_DB_NAME": name,
        "NONTAX_DB_USER": role,
        "NONTAX_DB_PASSWORD": password,
    }
    if server.get("password"):
        env["PGPASSWORD"] = server["password"]
    script = ROOT / "docker" / "postgres-init" / "10-nontax-db.sh"
    try:
        done = subprocess.run([str(script)], env=env, capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        conn = {
            "conn_type": "postgres",
            "host": env["PGHOST"],
            "port": int(env["PGPORT"]),
            "login": role,
            "password": password,
            "schema": name,
        }
        migrate = subprocess.run(
            [str(Path(sys.executable).parent / "nontax"), "migrate"],
            env={**os.environ, "AIRFLOW_CONN_NONTAX_ORDERS_DB": json.dumps(conn)},
            capture_output=True,
            text=True,
            check=False,
            cwd=ROOT,
        )
        assert migrate.returncode == 0, migrate.stderr
        assert "schema version" in migrate.stdout
    finally:
        admin = psycopg2.connect(TEST_PG)
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            cur.execute(f'DROP ROLE IF EXISTS "{role}"')
        admin.close()


def test_the_runbook_is_linked_and_the_example_env_names_the_compose_file():
    assert "docker-compose.yaml" in ENV_EXAMPLE.read_text()
    assert Path(ROOT / "docs" / "operating.md").exists()
    assert "(docs/operating.md)" in (ROOT / "README.md").read_text()


def test_ci_resolves_exactly_what_the_dockerfile_installs(tmp_path: Path):
    """`make image-deps` (in .ci/run, before `make test`) reads the Dockerfile's pip install:
    the image's Airflow with its Celery extra, requirements.txt under constraints.txt, and the
    package from the folder its pyproject.toml is copied into."""
    from nontax_dev import image_deps

    airflow, python, args = image_deps.dockerfile_install()
    assert (airflow, python) == ("3.3.2", "3.11")
    assert args == [
        "apache-airflow[celery]==3.3.2",
        "-r", str(ROOT / "requirements.txt"),
        "-c", str(ROOT / "constraints.txt"),
        str(ROOT),
    ]  # fmt: skip
    assert re.search(r"^make image-deps$", (ROOT / ".ci" / "run").read_text(), re.M)
    # A Dockerfile that leaves the image's Airflow unnamed is refused before pip runs.
    bare = tmp_path / "Dockerfile"
    bare.write_text(
        (ROOT / "Dockerfile").read_text().replace('"apache-airflow[celery]==3.3.2" ', "")
    )
    with pytest.raises(image_deps.ImageDepsError, match=r"apache-airflow\[celery\]==3.3.2"):
        image_deps.check(bare)
