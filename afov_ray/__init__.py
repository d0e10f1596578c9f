"""afov_ray: annotation-free 3D LiDAR segmentation (AFOV) as a Ray-distributed trainer.

See README.md and docs in each subpackage. Importing this package has no side effects.
"""

__version__ = "0.1.0"
