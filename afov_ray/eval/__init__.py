"""afov_ray.eval"""
