"""afov_ray.teachers"""
