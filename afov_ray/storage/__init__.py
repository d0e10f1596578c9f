"""afov_ray.storage: where bytes live, whatever they mean.

URIs for local folders and ``s3://`` (``uri``: one filesystem layer, traversal-safe joins), the one atomic
writer (``atomic``: temp object + commit, so outputs exist whole or not at all), shard-folder manifests
(``manifest``) and verified reading of shard folders (``shards``: manifest, safe names, checksums)."""
