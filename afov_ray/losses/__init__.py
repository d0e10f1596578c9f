"""afov_ray.losses"""
