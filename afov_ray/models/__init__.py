"""afov_ray.models: the 3D networks and their contract.

Res16UNet34C (official) and MinkUNet18 (paper) on interchangeable sparse-convolution engines (``res16unet``,
``layers``, ``sparse``, ``engines``), official-checkpoint loading and engine layouts (``checkpoint``), and the
model contract every checkpoint and registered model carries (``spec``)."""
