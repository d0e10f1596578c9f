#!/usr/bin/env bash
# One command for a local multi-node cluster on 127.0.0.1: a Ray head + worker nodes a and b (separate raylets),
# an S3 server (moto) and an MLflow tracking server (sqlite store, artifacts on S3). Endpoints are written to
# $AFOV_CLUSTER_DIR/cluster.env (default /tmp/afov-cluster-$UID); source it. Stop with cluster/local/down.sh.
#   cluster/local/up.sh [--workers 2] [--head-cpus 1] [--worker-cpus 2] [--object-store-mb 300] [--bucket afov]
# Uses $PYTHON (default: python3 on PATH, e.g. the activated .venv) and the ray / mlflow / moto_server commands
# installed beside it. See docs/cluster.md.
set -euo pipefail
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
exec "${PYTHON:-python3}" "$(dirname "$0")/local_cluster.py" up "$@"
