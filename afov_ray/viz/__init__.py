"""afov_ray.viz: the class palette, the offline HTML scan viewer and PLY export.

- :mod:`afov_ray.viz.palette`: one palette for the product (nuScenes devkit / SemanticKITTI colours).
- :mod:`afov_ray.viz.viewer`: ``write_scan_html`` (one self-contained page per scan), ``write_index_html``.
- :mod:`afov_ray.viz.ply`: ``write_ply`` / ``read_ply`` (binary PLY for Open3D, CloudCompare).
"""

from afov_ray.viz.palette import class_colors, class_names, error_colors, score_colors
from afov_ray.viz.ply import read_ply, write_ply
from afov_ray.viz.viewer import LayerSpec, ViewerPage, write_index_html, write_scan_html

__all__ = ["LayerSpec", "ViewerPage", "class_colors", "class_names", "error_colors", "read_ply",
           "score_colors", "write_index_html", "write_ply", "write_scan_html"]
