"""afov_ray.models.engines"""
