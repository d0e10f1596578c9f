"""afov_ray.datasets"""
