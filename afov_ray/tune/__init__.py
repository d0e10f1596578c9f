"""Hyper-parameter sweeps over training jobs with Ray Tune (``afov_ray.tune.sweep``)."""
