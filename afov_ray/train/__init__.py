"""afov_ray.train"""
