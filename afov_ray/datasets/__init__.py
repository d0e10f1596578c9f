"""afov_ray.datasets: raw datasets in, keyframes out.

Readers of nuScenes (through the nuscenes-devkit) and SemanticKITTI (``nuscenes``, ``kitti``, ``reader``), the
in-memory ``Keyframe`` record (``types``: points, labels, cameras with the whole LiDAR -> camera chain), the
sweep shard schema that stores keyframes as Parquet (``sweeps``), label maps (``labels``), official splits and
the 1 % rules (``splits``), the procedural scene generator for tests and the demo (``synth``) and the
inspection pictures of prepared shards (``inspect``)."""
