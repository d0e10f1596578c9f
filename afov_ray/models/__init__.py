"""afov_ray.models"""
