"""afov_ray.datasets.synth"""
