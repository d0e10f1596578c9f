"""afov_ray.serving: the registered model as a user runs it (``mlflow.pyfunc.load_model(...).predict(points)``):
weights and contract in, per-point labels out, without the training code paths (``model``)."""
