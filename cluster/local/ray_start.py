"""``ray start`` for a cluster of several nodes on one machine, every Ray server on 127.0.0.1.

Ray turns a loopback node address into the machine's routable one (``resolve_ip_for_localhost``), and then
its servers listen on all interfaces. Ray keeps the loopback address only where it believes no real cluster
can exist (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, its setting for laptops), and there ``ray start
--address`` refuses to add a node. ``local_cluster.py`` sets that variable for every process of the cluster
(so raylets, agents, drivers and workers all resolve 127.0.0.1), and this wrapper lets this one command add
nodes anyway and keep ``--node-ip-address 127.0.0.1`` as given. Everything else is the unchanged
``ray start`` (``ray.scripts.scripts.main``) with the same arguments.
"""

import sys

import ray._private.ray_constants as ray_constants
import ray._private.services as services
from ray.scripts.scripts import main


def _keep_address(host: str) -> str:
    return host


if __name__ == "__main__":
    services.resolve_ip_for_localhost = _keep_address
    ray_constants.ENABLE_RAY_CLUSTER = True
    sys.argv[0] = "ray"
    sys.exit(main())
