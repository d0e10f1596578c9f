"""afov_ray.storage"""
