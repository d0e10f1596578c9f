"""afov_ray.afi"""
