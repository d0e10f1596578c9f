"""Drive the local multi-node cluster of ``cluster/local`` from tests and ``bench/cluster_bench.py``.

``LocalCluster.up(root)`` runs ``cluster/local/up.sh`` (a Ray head + worker nodes a and b, moto S3, an MLflow
server, all on 127.0.0.1) and reads the endpoints it writes to ``<root>/cluster.env``; ``down()`` runs
``cluster/local/down.sh``. ``submit()`` runs exactly the command a user runs from the repository root::

    ray job submit --address "$AFOV_RAY_DASHBOARD" --working-dir . -- python jobs/<job>.py <overrides>

and returns the job's id, status, logs and duration (read back through the job API). Waits are on state
(job status, files, node lists) with generous deadlines; nothing here times the work.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LAUNCHER = REPO / "cluster" / "local"
BIN = Path(sys.executable).parent
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def read_env_file(path: Path) -> dict[str, str]:
    """``export KEY=value`` lines of cluster.env."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line.startswith("export "):
            k, _, v = line[len("export "):].partition("=")
            out[k] = v
    return out


@dataclass
class JobRun:
    job_id: str
    status: str
    logs: str
    cli_output: str
    seconds: float
    command: list[str] = field(default_factory=list)

    def tail(self, n: int = 6000) -> str:
        return f"job {self.job_id} {self.status} after {self.seconds:.0f} s\n" + self.logs[-n:]


class LocalCluster:
    def __init__(self, root: Path, home: Path | None = None):
        self.root = Path(root)
        self.home = home
        self.env = read_env_file(self.root / "cluster.env") if (self.root / "cluster.env").exists() else {}

    # --- lifecycle ----------------------------------------------------------------------------------
    def base_env(self) -> dict[str, str]:
        """This process's environment for the launcher and the CLIs: this Python's bin first on PATH (``python``
        in a job, ``ray``, ``mlflow``), no PYTHONPATH into the checkout, Ray token auth off (loopback)."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
        env.update(PYTHON=sys.executable, PATH=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]),
                   AFOV_CLUSTER_DIR=str(self.root), RAY_AUTH_MODE="disabled")
        return env

    def launcher_env(self) -> dict[str, str]:
        env = self.base_env()
        if self.home is not None:
            env["HOME"] = str(self.home)   # the HOME of every cluster process, job drivers and workers included
        return env

    @classmethod
    def up(cls, root: Path, *args: str, home: Path | None = None, timeout_s: float = 900) -> "LocalCluster":
        c = cls(root, home)
        out = subprocess.run([str(LAUNCHER / "up.sh"), *args], env=c.launcher_env(), cwd=REPO, capture_output=True,
                             text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"up.sh failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
        c.env = read_env_file(c.root / "cluster.env")
        return c

    def down(self, timeout_s: float = 300) -> str:
        out = subprocess.run([str(LAUNCHER / "down.sh")], env=self.launcher_env(), cwd=REPO, capture_output=True,
                             text=True, timeout=timeout_s)
        return out.stdout + out.stderr

    def ctl(self, *args: str, timeout_s: float = 600) -> str:
        """A ``local_cluster.py`` subcommand (kill-node, add-node, stop, start, status); returns its stdout."""
        out = subprocess.run([sys.executable, str(LAUNCHER / "local_cluster.py"), *args], env=self.launcher_env(),
                             cwd=REPO, capture_output=True, text=True, timeout=timeout_s)
        if out.returncode != 0:
            raise RuntimeError(f"local_cluster.py {' '.join(args)} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
        return out.stdout.strip()

    def client_env(self) -> dict[str, str]:
        """The environment of a user shell that sourced cluster.env."""
        return {**self.base_env(), **self.env}

    @property
    def dashboard(self) -> str:
        return self.env["AFOV_RAY_DASHBOARD"]

    @property
    def mlflow_uri(self) -> str:
        return self.env["MLFLOW_TRACKING_URI"]

    @property
    def bucket(self) -> str:
        return self.env["AFOV_S3"]

    # --- state --------------------------------------------------------------------------------------
    def state(self) -> dict:
        return json.loads((self.root / "state.json").read_text())

    def nodes(self, alive_only: bool = True) -> list[dict]:
        import urllib.request

        with urllib.request.urlopen(f"{self.dashboard}/api/v0/nodes?limit=100&detail=true", timeout=30) as r:
            rows = json.loads(r.read())["data"]["result"]["result"]
        return [n for n in rows if not alive_only or n.get("state") == "ALIVE"]

    def node_ids_by_resource(self, alive_only: bool = False) -> dict[str, set[str]]:
        """``{"node_a": {node ids}, "node_b": {...}, "head": {...}}`` (dead nodes included unless alive_only)."""
        out: dict[str, set[str]] = {}
        for n in self.nodes(alive_only):
            res = n.get("resources_total") or {}
            names = [k for k in res if k.startswith("node_") and k != "node_"] or ["head"]
            if n.get("is_head_node"):
                names = ["head"]
            for k in names:
                if k.startswith("node:"):
                    continue
                out.setdefault(k, set()).add(n["node_id"])
        return out

    def job_client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard)

    def actors(self, class_name: str) -> list[dict]:
        """Actors of a class, dead ones included, as the State API lists them."""
        from ray.util.state import list_actors

        return [a if isinstance(a, dict) else a.__dict__
                for a in list_actors(address=self.dashboard, filters=[("class_name", "=", class_name)], limit=10000,
                                     detail=True, raise_on_missing_output=False)]

    # --- jobs ---------------------------------------------------------------------------------------
    def submit_command(self, job_args: list[str]) -> list[str]:
        return [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--working-dir", ".", "--",
                "python", *job_args]

    def start_submit(self, job_args: list[str]) -> "SubmittedJob":
        return SubmittedJob(self, self.submit_command(job_args))

    def submit(self, job_args: list[str], timeout_s: float = 1800) -> JobRun:
        """Run ``ray job submit ... -- python <job_args>`` to the end; returns the job's status and logs."""
        return self.start_submit(job_args).wait(timeout_s)


class SubmittedJob:
    """One ``ray job submit`` CLI process (it tails the job's logs until the job ends), started now."""

    def __init__(self, cluster: LocalCluster, command: list[str], agent_deadline_s: float = 600):
        self.cluster, self.command = cluster, command
        self.t0 = time.monotonic()
        self.job_id: str | None = None
        deadline = time.monotonic() + agent_deadline_s
        while True:
            self._start()
            self._wait_id()
            if self.job_id is not None:
                return
            # right after `ray start` the job server answers "No available agent to submit job" for a while
            if "No available agent" not in self.output or time.monotonic() > deadline:
                raise RuntimeError(f"ray job submit failed:\n{self.output[-4000:]}")
            time.sleep(5)

    def _start(self) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(self.command, cwd=REPO, env=self.cluster.client_env(), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def _wait_id(self) -> None:
        while self.job_id is None:
            m = re.search(r"Job '([\w-]+)' submitted successfully", self.output)
            if m:
                self.job_id = m.group(1)
                return
            if self.proc.poll() is not None:
                self.reader.join(10)
                m = re.search(r"Job '([\w-]+)' submitted successfully", self.output)
                self.job_id = m.group(1) if m else None
                return
            time.sleep(0.5)

    def status(self) -> str:
        return str(self.cluster.job_client().get_job_status(self.job_id).value)

    def logs(self) -> str:
        return self.cluster.job_client().get_job_logs(self.job_id)

    def wait(self, timeout_s: float = 1800) -> JobRun:
        """Wait (bounded) until the job is in a terminal state; then the CLI exits too."""
        deadline = time.monotonic() + timeout_s
        status = self.status()
        while status not in TERMINAL:
            if time.monotonic() > deadline:
                logs = self.logs()
                self.cluster.job_client().stop_job(self.job_id)
                raise TimeoutError(f"job {self.job_id} still {status} after {timeout_s:.0f} s:\n{logs[-6000:]}")
            time.sleep(2)
            status = self.status()
        try:
            self.proc.wait(120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.reader.join(10)
        return JobRun(self.job_id, status, self.logs(), self.output, time.monotonic() - self.t0, self.command)


# --- S3 and MLflow, seen from outside the cluster ----------------------------------------------------------

def s3_client(cluster: LocalCluster):
    import boto3

    e = cluster.env
    return boto3.client("s3", endpoint_url=e["AWS_ENDPOINT_URL"], aws_access_key_id=e["AWS_ACCESS_KEY_ID"],
                        aws_secret_access_key=e["AWS_SECRET_ACCESS_KEY"], region_name=e["AWS_DEFAULT_REGION"])


def s3_keys(cluster: LocalCluster, prefix: str) -> list[str]:
    """Keys under ``prefix`` (relative to the bucket) in the cluster's bucket."""
    client, bucket = s3_client(cluster), cluster.bucket[len("s3://"):]
    keys, token = [], None
    while True:
        kw = {"Bucket": bucket, "Prefix": prefix, **({"ContinuationToken": token} if token else {})}
        r = client.list_objects_v2(**kw)
        keys += [o["Key"] for o in r.get("Contents", [])]
        if not r.get("IsTruncated"):
            return keys
        token = r["NextContinuationToken"]


def s3_json(cluster: LocalCluster, key: str):
    body = s3_client(cluster).get_object(Bucket=cluster.bucket[len("s3://"):], Key=key)["Body"].read()
    return json.loads(body)


def mlflow_client(cluster: LocalCluster):
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    return mlflow.MlflowClient(tracking_uri=cluster.mlflow_uri, registry_uri=cluster.mlflow_uri)


def find_run(cluster: LocalCluster, experiment: str, run_name: str):
    """The newest MLflow run named ``run_name`` in ``experiment``, or None (also while the server is down)."""
    try:
        c = mlflow_client(cluster)
        exp = c.get_experiment_by_name(experiment)
        if exp is None:
            return None
        runs = c.search_runs([exp.experiment_id], f"attributes.run_name = '{run_name}'",
                             order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0] if runs else None
    except Exception:  # noqa: BLE001 - server down or starting
        return None


def metric_steps(cluster: LocalCluster, run_id: str, key: str = "train/loss") -> list[int]:
    try:
        return sorted(m.step for m in mlflow_client(cluster).get_metric_history(run_id, key))
    except Exception:  # noqa: BLE001 - server down
        return []


# --- the documented commands --------------------------------------------------------------------------------

DOCS = REPO / "docs" / "cluster.md"


def doc_block(marker: str) -> list[str]:
    """The commands of the ```bash block of docs/cluster.md that contains ``marker``: continuation lines
    joined, comments dropped."""
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", DOCS.read_text(), flags=re.S) if marker in b]
    assert len(blocks) == 1, f"docs/cluster.md: expected one block with {marker!r}, found {len(blocks)}"
    out = []
    for line in blocks[0].replace("\\\n", " ").splitlines():
        line = re.sub(r"\s+#\s.*$", "", line.strip())
        if line and not line.startswith("#"):
            out.append(" ".join(line.split()))
    return out


def expand(command: str, variables: dict[str, str]) -> list[str]:
    """Words of a documented command with ``$NAME`` / ``"$NAME"`` replaced; an unknown name is an error."""
    import shlex

    def sub(m):
        name = m.group(1) or m.group(2)
        assert name in variables, f"{command}: ${name} is not set"
        return variables[name]

    return [re.sub(r"\$(?:\{(\w+)\}|(\w+))", sub, w) for w in shlex.split(command)]


def job_script(words: list[str]) -> str | None:
    """``tmp`` for a ``ray job submit ... -- python jobs/tmp.py ...`` command."""
    for w in words:
        m = re.fullmatch(r"jobs/(\w+)\.py", w)
        if m:
            return m.group(1)
    return None


def submit_words(cluster: LocalCluster, words: list[str]) -> SubmittedJob:
    """Start a documented ``ray job submit`` command (``ray`` from this environment)."""
    assert words[:3] == ["ray", "job", "submit"], words
    return SubmittedJob(cluster, [str(BIN / "ray"), *words[1:]])


# --- nothing on local disks ----------------------------------------------------------------------------------

def tree(path: Path) -> dict[str, tuple[int, float]]:
    """Files under ``path``: relative name -> (size, mtime)."""
    out = {}
    if path.exists():
        for p in path.rglob("*"):
            if p.is_file() or p.is_symlink():
                st = p.lstat()
                out[str(p.relative_to(path))] = (st.st_size, st.st_mtime)
    return out


def checkout_files() -> set[str]:
    """Files ``ray job submit --working-dir .`` may upload: tracked, or untracked and not ignored."""
    out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, text=True, check=True).stdout
    return set(out.split("\n")) - {""}


def working_dir_copies(cluster: LocalCluster) -> list[Path]:
    """Ray's copies of the submitted working dirs, on every node of the cluster."""
    return sorted(p for p in (cluster.root / "ray").glob("*/session_*/runtime_resources/working_dir_files/_ray_pkg_*")
                  if p.is_dir())


def new_files_in_copies(cluster: LocalCluster) -> dict[str, list[str]]:
    """Files in Ray's working-dir copies that are not files of the checkout (Python's __pycache__ aside)."""
    allowed = checkout_files()
    out = {}
    for copy in working_dir_copies(cluster):
        extra = sorted(n for n in tree(copy) if n not in allowed and "__pycache__" not in n)
        if extra:
            out[str(copy)] = extra
    return out


def git_status() -> str:
    return subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"],
                          capture_output=True, text=True, check=True).stdout


def local_disk_problems(cluster: LocalCluster, home_before: dict, status_before: str, raw: Path | None = None,
                        raw_before: dict | None = None) -> list[str]:
    """What the jobs left on local disks: new files in the cluster processes' HOME, files in Ray's working-dir
    copies that the checkout does not have, a changed raw folder, a changed checkout."""
    problems = []
    home = tree(cluster.home) if cluster.home else {}
    new_home = sorted(set(home) - set(home_before))
    if new_home:
        problems.append(f"new files in the cluster's HOME {cluster.home}: {new_home[:20]}")
    for copy, extra in new_files_in_copies(cluster).items():
        problems.append(f"files written into Ray's working-dir copy {copy}: {extra[:20]}")
    if raw is not None and raw_before is not None and tree(raw) != raw_before:
        problems.append(f"the raw dataset folder {raw} changed after generate.py")
    if git_status() != status_before:
        problems.append(f"the submitting checkout changed:\n{git_status()}")
    return problems


def launcher():
    """cluster/local/local_cluster.py as a module (it is a script folder, not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("afov_local_cluster", LAUNCHER / "local_cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# --- running the documented blocks ---------------------------------------------------------------------------

USER_PATH = "tests/cluster/test_user_path.py runs"
DRILLS = "tests/cluster/test_failures.py runs"
JOB_TIMEOUT_S = 1800      # one job, on a loaded 2-core machine


def run_documented(cluster: LocalCluster, command: str, variables: dict[str, str], runs: dict) -> None:
    """Run one command of a documented block: ``export NAME=...`` (the test's own value wins: RAW, TEACHER_RUN),
    ``python cluster/local/generate.py``, or ``ray job submit ...`` (waited for; kept in ``runs`` by job name)."""
    if command.startswith("export "):
        name, _, value = command[len("export "):].partition("=")
        variables.setdefault(name, expand(value, variables)[0])
        return
    words = expand(command, variables)
    if words[:2] == ["python", "cluster/local/generate.py"]:
        subprocess.run([sys.executable, *words[1:]], cwd=REPO, env={**cluster.client_env(), "PYTHONPATH": str(REPO)},
                       check=True, timeout=900, capture_output=True)
        return
    if words[:3] == ["ray", "job", "submit"]:
        name = job_script(words)
        run = submit_words(cluster, words).wait(JOB_TIMEOUT_S)
        runs[name] = run
        assert run.status == "SUCCEEDED", f"{command[:200]} ...\n{run.tail()}"
        if name == "teacher":
            m = re.search(r"teacher run: (s3://\S+)", run.logs)
            assert m, run.tail()
            variables["TEACHER_RUN"] = m.group(1)
        return
    raise AssertionError(f"docs/cluster.md: a command the test does not run: {command}")


@dataclass
class ClusterData:
    variables: dict[str, str]          # $NAME values of the documented commands (cluster.env, RAW, TEACHER_RUN)
    runs: dict                         # job name -> JobRun
    raw: Path
    raw_tree: dict                     # the raw folder right after generate.py


def build_data(cluster: LocalCluster, raw: Path) -> ClusterData:
    """The documented user-path commands up to the pairing job: generated raw data in ``raw``, then prepare,
    the simulated teacher and pairing as submitted jobs writing to the cluster's bucket."""
    data = ClusterData({**cluster.env, "RAW": str(raw)}, {}, raw, {})
    commands = doc_block(USER_PATH)
    last_data = max(i for i, c in enumerate(commands) if "jobs/pair.py" in c)
    for command in commands[:last_data + 1]:
        run_documented(cluster, command, data.variables, data.runs)
        if "cluster/local/generate.py" in command:
            data.raw_tree = tree(raw)
    return data


def listening_sockets(pids: set[int]) -> list[tuple[str, int, int]]:
    """(address, port, pid) of the TCP sockets the processes ``pids`` listen on (from /proc/net/tcp{,6})."""
    import ipaddress
    import socket
    import struct

    inode_pid = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inode_pid[link[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table, width in (("/proc/net/tcp", 4), ("/proc/net/tcp6", 16)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if f[3] != "0A" or f[9] not in inode_pid:      # 0A: LISTEN
                continue
            hex_ip, hex_port = f[1].split(":")
            raw = bytes.fromhex(hex_ip)
            raw = b"".join(struct.pack("<I", w) for w in struct.unpack(f">{width // 4}I", raw))
            ip = socket.inet_ntop(socket.AF_INET if width == 4 else socket.AF_INET6, raw)
            v = ipaddress.ip_address(ip)
            if getattr(v, "ipv4_mapped", None):
                ip = str(v.ipv4_mapped)
            out.append((ip, int(hex_port, 16), inode_pid[f[9]]))
    return out
