#!/usr/bin/env bash
# Stop everything cluster/local/up.sh started in $AFOV_CLUSTER_DIR (default /tmp/afov-cluster-$UID), and nothing
# else: only processes that name that folder (never `ray stop`, which stops every Ray on the machine). Logs stay
# in $AFOV_CLUSTER_DIR/logs.   cluster/local/down.sh [--keep]
set -euo pipefail
exec "${PYTHON:-python3}" "$(dirname "$0")/local_cluster.py" down "$@"
