"""afov_ray.pipeline: the passes of the AFOV pipeline, in the order the data flows, all built on one
shard-pass layer (``shard_pass``: items, resume, Ray tasks or actor pools, per-item isolation, atomic
commits, error records, progress, summary, manifest, exit code).

    prepare   raw dataroot (nuScenes / SemanticKITTI, local or s3://) -> sweep shards + splits.json
    teacher   camera images -> teacher shards (2D open-vocabulary masks, text ids, mask features)
    pair      sweeps + teacher shards -> pairing shards (superpixel-superpoint pairs, pseudo-labels)
              [training: afov_ray.train (TMP, distillation, fine-tuning) reads the pairing shards]
    predict   a registered model over pairing / sweep shards -> prediction shards (a TMP model: zero-shot,
              with the teacher run's text table, ``text_space``)
    query     a TMP model + text prompts over pairing / sweep shards -> score / mask shards, pictures, viewer pages
    refine    AFI over prediction shards -> refined prediction shards
    evaluate  prediction shards -> mIoU report (all / camera-visible / unseen points) + viewer pages
    export    prediction shards -> benchmark submission files

Viewer pages, .ply files and camera views of single scans: ``scan_views``.

Jobs (``jobs/*.py``) are thin command lines over these modules.
"""
