"""Procedural driving-scene generator: a real nuScenes dataroot (devkit 1.2.0 loads it, with lidarseg)
and SemanticKITTI sequences, with labels from ray casting (see nuscenes_writer / kitti_writer docs).

Modules: config (SynthConfig), classes (Kind and class maps), rig (sensor rigs), scene (layout,
motion, Scene JSON), raycast (vectorised casting), lidar (sweeps), render (cameras), nuscenes_writer,
kitti_writer. Import from the modules; this package imports nothing at import time.
"""
