"""afov_ray.geometry"""
