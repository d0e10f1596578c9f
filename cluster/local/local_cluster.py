"""A multi-node Ray cluster, an S3 server and an MLflow tracking server on one machine, all on 127.0.0.1.

    cluster/local/up.sh      # = python cluster/local/local_cluster.py up
    cluster/local/down.sh    # = python cluster/local/local_cluster.py down

What ``up`` starts (every port explicit and free, every listener on 127.0.0.1):

- a Ray head (``ray start --head``: GCS, dashboard + job server, ``--num-cpus`` 1 by default for the job
  drivers and Ray Data's read tasks) and worker nodes ``a``, ``b`` (``ray start --address``), each a raylet
  of its own with its own ``--temp-dir``, ``--num-cpus`` (2 by default) and a custom resource ``node_<name>``;
- an S3 endpoint (moto's server) with one bucket;
- ``mlflow server`` with a sqlite backend store and its artifacts on that S3 bucket
  (``--artifacts-destination s3://<bucket>/mlflow``), which clients reach over HTTP only.

The Ray processes get the S3 settings and ``MLFLOW_TRACKING_URI`` in their environment, as the pods of a
KubeRay cluster get them from Secrets, so every driver, task and actor reaches the same services.

Everything lives in one folder (``--dir``, else ``$AFOV_CLUSTER_DIR``, else ``/tmp/afov-cluster-<uid>``;
keep it short: Ray's socket paths must stay under 108 characters)::

    cluster.env   endpoints, to ``source`` (Ray GCS and dashboard addresses, S3 endpoint and bucket, MLflow URL)
    state.json    ports, process ids, node folders
    logs/         s3.log, mlflow.log, ray-start-<node>.log and ray-<node>/ (each node's Ray session logs)
    ray/<node>/   each node's Ray temp dir;  mlflow.db: the tracking store

``down`` stops exactly the processes of this folder (their command line or open files name it; the
services are also stopped by process group), never another Ray on the machine, then keeps ``logs/`` and
removes the rest. Fault injection for tests and drills: ``kill-node NAME`` (SIGKILL the node's raylet),
``add-node NAME`` (a replacement node with the same custom resource), ``stop SERVICE`` / ``start SERVICE``
(``mlflow`` or ``s3``; a restarted service keeps its port; the S3 server keeps its data only in memory).
Only the standard library is used, plus boto3 to create the bucket.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"
BIN = Path(sys.executable).parent
HERE = Path(__file__).resolve().parent
S3_KEYS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
# Ray's "no real cluster here" switch: every Ray process then resolves this machine's address to 127.0.0.1 (see
# ray_start.py, which still lets `ray start --address` add nodes)
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
WORKER_PORTS = 40
# non-secret settings of every node, as a pod spec would set them: no MLflow client telemetry (it would write
# ~/.config/mlflow and call out); AFOV_CACHE_DIR (node-local scratch for AFI's compiled kernels) is set per cluster
NODE_SETTINGS = {"MLFLOW_DISABLE_TELEMETRY": "true"}        # ports per node for Ray worker processes (outside Ray's default 10002-19999)


# --- ports ------------------------------------------------------------------------------------------------

def _bindable(port: int) -> bool:
    for host in (HOST, "0.0.0.0"):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError:
                return False
    return True


def free_ports(n: int, taken: set[int]) -> list[int]:
    """``n`` distinct ports the kernel reports free now (and not in ``taken``)."""
    out: list[int] = []
    while len(out) < n:
        with socket.socket() as s:
            s.bind((HOST, 0))
            p = s.getsockname()[1]
        if p not in taken and p not in out:
            out.append(p)
    taken.update(out)
    return out


def free_range(width: int, taken: set[int]) -> tuple[int, int]:
    """A block of ``width`` free ports in 20000-32000 (below the kernel's ephemeral range, above Ray's
    default worker ports)."""
    for _ in range(500):
        lo = random.randrange(20000, 32000 - width)
        block = range(lo, lo + width)
        if not taken.intersection(block) and all(_bindable(p) for p in block):
            taken.update(block)
            return lo, lo + width - 1
    raise RuntimeError("no free port range found")


# --- processes --------------------------------------------------------------------------------------------

def pids_with(marker: str) -> list[int]:
    """Processes whose command line or open files mention ``marker`` (Ray's agents rename themselves, e.g.
    ``ray::DashboardAgent``, but keep their logs under the node's temp dir open)."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) == os.getpid():
            continue
        try:
            cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            hit = marker in cmd
            if not hit:
                for fd in os.listdir(f"/proc/{d}/fd"):
                    try:
                        if marker in os.readlink(f"/proc/{d}/fd/{fd}"):
                            hit = True
                            break
                    except OSError:
                        continue
        except OSError:
            continue
        if hit:
            out.append(int(d))
    return out


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _signal(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_group(pgid: int | None, sig) -> None:
    if not pgid:
        return
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_marked(marker: str, timeout_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL, every process that mentions ``marker``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        _signal(pids_with(marker), sig)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and pids_with(marker):
            time.sleep(0.5)
        if not pids_with(marker):
            return


def wait_until(what: str, check, timeout_s: float, log_hint: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout_s:.0f} s" + (f"; see {log_hint}" if log_hint else ""))
        time.sleep(1.0)


def http_ok(url: str, timeout: float = 5.0) -> bool:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return 200 <= r.status < 300


def http_json(url: str, timeout: float = 10.0):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


# --- the cluster folder -----------------------------------------------------------------------------------

class Cluster:
    def __init__(self, root: Path):
        self.root = root.absolute()
        self.logs = self.root / "logs"
        self.state_file = self.root / "state.json"
        self.state: dict = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}

    # state -------------------------------------------------------------------------------------------
    def save(self) -> None:
        tmp = self.state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.state, indent=1))
        tmp.replace(self.state_file)

    @property
    def taken(self) -> set[int]:
        return set(self.state.get("taken", []))

    def _take(self, taken: set[int]) -> None:
        self.state["taken"] = sorted(taken)

    def service_env(self) -> dict[str, str]:
        """The environment of every service and Ray node: the S3 settings and the tracking URI (on a real
        cluster they come from Secrets), Ray token authentication off (loopback only), and no PYTHONPATH
        into a checkout: jobs run the code Ray copied from their --working-dir."""
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS", "AFOV_S3_ENDPOINT")}
        env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])   # `python` in a job = this environment
        env.update(S3_KEYS)
        env.update({"AWS_ENDPOINT_URL": self.s3_url, "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
                    "MLFLOW_TRACKING_URI": self.mlflow_url, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1",
                    LOOPBACK_ENV: "0", **NODE_SETTINGS, "AFOV_CACHE_DIR": str(self.root / "cache"),
                    # matplotlib (pictures of predict / evaluate / query) writes its font cache on first import:
                    # node scratch too, not the HOME of the node's user
                    "MPLCONFIGDIR": str(self.root / "cache" / "matplotlib"),
                    # Ray's State API client (Train's PlacementGroupCleaner uses it) finds "its" cluster by
                    # looking for running GCS processes; with other Rays on this machine it must be told
                    "RAY_API_SERVER_ADDRESS": self.dashboard})
        env.pop("AWS_SESSION_TOKEN", None)
        env.pop("AWS_PROFILE", None)
        return env

    @property
    def s3_url(self) -> str:
        return f"http://{HOST}:{self.state['ports']['s3']}"

    @property
    def mlflow_url(self) -> str:
        return f"http://{HOST}:{self.state['ports']['mlflow']}"

    @property
    def gcs(self) -> str:
        return f"{HOST}:{self.state['ports']['gcs']}"

    @property
    def dashboard(self) -> str:
        return f"http://{HOST}:{self.state['ports']['dashboard']}"

    # services ----------------------------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str]) -> int:
        log = open(self.logs / f"{name}.log", "ab")
        log.write(f"\n=== {time.strftime('%H:%M:%S')} {' '.join(cmd)}\n".encode())
        log.flush()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=self.service_env(), cwd=self.root, start_new_session=True)
        self.state.setdefault("services", {})[name] = proc.pid   # its own session: pgid == pid
        self.save()
        return proc.pid

    def start_s3(self) -> None:
        port = self.state["ports"]["s3"]
        self._spawn("s3", [str(BIN / "moto_server"), "-H", HOST, "-p", str(port)])
        wait_until("S3 server", lambda: http_ok(f"{self.s3_url}/moto-api/"), 60, self.logs / "s3.log")
        import boto3

        s3 = boto3.client("s3", endpoint_url=self.s3_url, aws_access_key_id=S3_KEYS["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=S3_KEYS["AWS_SECRET_ACCESS_KEY"],
                          region_name=S3_KEYS["AWS_DEFAULT_REGION"])
        if self.state["bucket"] not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
            s3.create_bucket(Bucket=self.state["bucket"])

    def start_mlflow(self) -> None:
        port = self.state["ports"]["mlflow"]
        self._spawn("mlflow", [str(BIN / "mlflow"), "server", "--host", HOST, "--port", str(port), "--workers", "1",
                               "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
                               "--artifacts-destination", f"s3://{self.state['bucket']}/mlflow"])
        wait_until("MLflow server", lambda: http_ok(f"{self.mlflow_url}/health"), 180, self.logs / "mlflow.log")

    def stop_service(self, name: str, hard: bool = False) -> None:
        """Stop a service's process group: SIGTERM then SIGKILL, or SIGKILL at once (``hard``: a crash)."""
        pgid = self.state.get("services", {}).pop(name, None)
        self.save()
        for sig in ((signal.SIGKILL,) if hard else (signal.SIGTERM, signal.SIGKILL)):
            _signal_group(pgid, sig)
            deadline = time.monotonic() + 10
            while pgid and time.monotonic() < deadline and _group_alive(pgid):
                time.sleep(0.3)

    # Ray nodes ---------------------------------------------------------------------------------------
    def _ray_start(self, node: str, args: list[str], timeout_s: float = 300, attempts: int = 3) -> None:
        temp = self.root / "ray" / node
        temp.mkdir(parents=True, exist_ok=True)
        taken = self.taken
        agent_http, agent_grpc, metrics, runtime_env, node_manager, object_manager = free_ports(6, taken)
        lo, hi = free_range(WORKER_PORTS, taken)
        self._take(taken)
        cmd = [sys.executable, str(HERE / "ray_start.py"), "start", "--node-ip-address", HOST, f"--temp-dir={temp}", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--metrics-export-port={metrics}", f"--runtime-env-agent-port={runtime_env}",
               f"--node-manager-port={node_manager}", f"--object-manager-port={object_manager}",
               f"--min-worker-port={lo}", f"--max-worker-port={hi}", *args]
        for attempt in range(1, attempts + 1):
            with open(self.logs / f"ray-start-{node}.log", "ab") as log:
                log.write(f"\n=== {time.strftime('%H:%M:%S')} attempt {attempt}: {' '.join(cmd)}\n".encode())
                log.flush()
                out = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.service_env(),
                                     cwd=self.root, timeout=timeout_s)
            if out.returncode == 0:
                break
            # `ray start` gives a node 30 s to register (not configurable); on a loaded machine that can
            # pass: stop what this attempt started and try again
            stop_marked(str(temp))
            shutil.rmtree(temp, ignore_errors=True)
            temp.mkdir(parents=True)
            if attempt == attempts:
                raise RuntimeError(f"ray start for node {node} failed {attempts} times; see "
                                   f"{self.logs / f'ray-start-{node}.log'}")
        link = self.logs / f"ray-{node}"
        if not os.path.lexists(link):
            link.symlink_to(Path("..") / "ray" / node / "session_latest" / "logs")
        self.state.setdefault("nodes", {})[node] = {"temp_dir": str(temp), "node_manager_port": node_manager,
                                                    "resource": f"node_{node}" if node != "head" else None}
        self.save()

    def start_head(self, cpus: int, object_store: int) -> None:
        p = self.state["ports"]
        self._ray_start("head", ["--head", f"--port={p['gcs']}", "--dashboard-host", HOST,
                                 f"--dashboard-port={p['dashboard']}", "--include-dashboard=true",
                                 f"--ray-client-server-port={p['client']}", f"--num-cpus={cpus}", "--num-gpus=0",
                                 f"--object-store-memory={object_store}"])
        self.wait_nodes(1)   # the dashboard (State API, job server) answers

    def add_node(self, name: str, cpus: int | None = None, object_store: int | None = None) -> str:
        """Start worker node ``name`` (resource ``node_<base name>``); a name already used gets a fresh folder
        (``a`` -> ``a2``) for a replacement node."""
        base = name.rstrip("0123456789") or name
        node, i = name, 1
        while (self.root / "ray" / node).exists():
            i += 1
            node = f"{base}{i}"
        cpus = self.state["worker_cpus"] if cpus is None else cpus
        store = self.state["object_store"] if object_store is None else object_store
        known = {n["node_id"] for n in self.alive_nodes()}
        self._ray_start(node, [f"--address={self.gcs}", f"--num-cpus={cpus}", "--num-gpus=0",
                               f"--resources={json.dumps({f'node_{base}': 1})}", f"--object-store-memory={store}"])
        self.state["nodes"][node]["resource"] = f"node_{base}"
        self.save()
        wait_until(f"node {node} alive", lambda: any(n["node_id"] not in known and f"node_{base}" in
                                                     (n.get("resources_total") or {}) for n in self.alive_nodes()),
                   300, self.logs)
        return node

    def alive_nodes(self) -> list[dict]:
        """Alive Ray nodes as the dashboard's State API lists them."""
        data = http_json(f"{self.dashboard}/api/v0/nodes?limit=100&detail=true")
        rows = data.get("data", {}).get("result", {}).get("result", [])
        return [r for r in rows if r.get("state") == "ALIVE"]

    def wait_nodes(self, n: int, timeout_s: float = 300) -> None:
        wait_until(f"{n} alive Ray nodes", lambda: len(self.alive_nodes()) >= n, timeout_s, self.logs)

    def raylet_pid(self, node: str) -> int | None:
        temp = self.state["nodes"][node]["temp_dir"]
        for pid in pids_with(temp):
            cmd = _cmdline(pid)
            if cmd and Path(cmd[0]).name == "raylet":
                return pid
        return None

    def kill_node(self, node: str) -> int:
        """SIGKILL the raylet of worker node ``node`` (as a machine or pod that disappears); its workers and
        agents exit with it (they are stopped for good by ``down``). Returns the raylet's pid."""
        if node == "head":
            raise ValueError("kill-node is for worker nodes")
        pid = self.raylet_pid(node)
        if pid is None:
            raise RuntimeError(f"no raylet found for node {node}")
        os.kill(pid, signal.SIGKILL)
        self.state["nodes"][node]["killed"] = True
        self.save()
        return pid

    # endpoints ---------------------------------------------------------------------------------------
    def write_env(self) -> Path:
        env = {
            "AFOV_CLUSTER_DIR": str(self.root),
            "AFOV_RAY_GCS": self.gcs,                       # ray start --address / ray.init(address=...)
            "AFOV_RAY_DASHBOARD": self.dashboard,           # ray job submit --address
            "RAY_API_SERVER_ADDRESS": self.dashboard,       # ray job logs / list / stop
            "AFOV_S3": f"s3://{self.state['bucket']}",      # the bucket: data, checkpoints, MLflow artifacts
            "AWS_ENDPOINT_URL": self.s3_url,
            "MLFLOW_S3_ENDPOINT_URL": self.s3_url,
            **S3_KEYS,
            "MLFLOW_TRACKING_URI": self.mlflow_url,
            "RAY_AUTH_MODE": "disabled",
            LOOPBACK_ENV: "0",                              # a process that joins with ray.init() resolves 127.0.0.1
            **NODE_SETTINGS,
        }
        path = self.root / "cluster.env"
        path.write_text("# written by cluster/local/up.sh; source it: . " + str(path) + "\n"
                        + "".join(f"export {k}={v}\n" for k, v in env.items()))
        return path


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


# --- commands ---------------------------------------------------------------------------------------------

def up(c: Cluster, workers: int, head_cpus: int, worker_cpus: int, object_store: int, bucket: str) -> None:
    if c.state.get("services") or c.state.get("nodes"):
        raise SystemExit(f"{c.root} already holds a cluster (run down.sh first)")
    c.logs.mkdir(parents=True, exist_ok=True)
    taken: set[int] = set()
    names = ["gcs", "dashboard", "client", "s3", "mlflow"]
    c.state = {"ports": dict(zip(names, free_ports(len(names), taken))), "bucket": bucket,
               "worker_cpus": worker_cpus, "object_store": object_store, "taken": sorted(taken)}
    c.save()
    t0 = time.monotonic()
    c.start_s3()
    c.start_mlflow()
    c.start_head(head_cpus, object_store)
    for i in range(workers):
        c.add_node("abcdefghij"[i])
    c.wait_nodes(1 + workers)
    env = c.write_env()
    print(f"local cluster up in {time.monotonic() - t0:.0f} s: head + {workers} worker nodes, S3, MLflow")
    print(env.read_text(), end="")


def down(c: Cluster, keep: bool) -> None:
    if not c.root.exists():
        print(f"no local cluster in {c.root}")
        return
    for name in list(c.state.get("services", {})):
        c.stop_service(name)
    stop_marked(str(c.root))
    # keep each node's Ray logs: the logs/ray-<node> links become the folders themselves
    for link in sorted(c.logs.glob("ray-*")) if c.logs.exists() else []:
        if link.is_symlink():
            target = link.resolve()
            link.unlink()
            if target.is_dir():
                shutil.copytree(target, link, symlinks=True, dirs_exist_ok=True)
    if not keep:
        for p in c.root.iterdir():
            if p.name != "logs":
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    print(f"local cluster stopped; logs in {c.logs}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", default=os.environ.get("AFOV_CLUSTER_DIR") or f"/tmp/afov-cluster-{os.getuid()}",
                    help="the cluster's folder (default $AFOV_CLUSTER_DIR, else /tmp/afov-cluster-<uid>)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="start S3, MLflow, the Ray head and the worker nodes")
    u.add_argument("--workers", type=int, default=2, help="worker nodes (a, b, ...)")
    u.add_argument("--head-cpus", type=int, default=1, help="CPUs the head advertises (job drivers, data reads)")
    u.add_argument("--worker-cpus", type=int, default=2, help="CPUs each worker node advertises")
    u.add_argument("--object-store-mb", type=int, default=300, help="object store per node (MiB)")
    u.add_argument("--bucket", default="afov")
    d = sub.add_parser("down", help="stop everything of this folder; keep logs/")
    d.add_argument("--keep", action="store_true", help="keep the whole folder, not only logs/")
    sub.add_parser("status", help="alive nodes and services")
    k = sub.add_parser("kill-node", help="SIGKILL a worker node's raylet")
    k.add_argument("node")
    a = sub.add_parser("add-node", help="start a (replacement) worker node")
    a.add_argument("node")
    for verb in ("stop", "start"):
        s = sub.add_parser(verb, help=f"{verb} a service")
        s.add_argument("service", choices=["mlflow", "s3"])
        if verb == "stop":
            s.add_argument("--hard", action="store_true", help="SIGKILL at once (a crash)")
    args = ap.parse_args(argv)
    c = Cluster(Path(args.dir))
    if args.cmd == "up":
        up(c, args.workers, args.head_cpus, args.worker_cpus, args.object_store_mb * 2**20, args.bucket)
    elif args.cmd == "down":
        down(c, args.keep)
    elif args.cmd == "status":
        nodes = c.alive_nodes()
        print(json.dumps({"alive_nodes": [{"node_id": n["node_id"], "resources": n.get("resources_total")}
                                          for n in nodes], "services": c.state.get("services", {})}, indent=1))
    elif args.cmd == "kill-node":
        print(c.kill_node(args.node))
    elif args.cmd == "add-node":
        print(c.add_node(args.node))
    elif args.cmd == "stop":
        c.stop_service(args.service, args.hard)
    elif args.cmd == "start":
        (c.start_mlflow if args.service == "mlflow" else c.start_s3)()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
