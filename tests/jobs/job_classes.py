"""Every job's config class, by script (the single list the CLI and docs tests walk)."""

from afov_ray.datasets.inspect import InspectJob
from afov_ray.demo import DemoConfig
from afov_ray.pipeline.evaluate import EvaluateJob
from afov_ray.pipeline.pair import PairJob
from afov_ray.pipeline.predict import PredictJob
from afov_ray.pipeline.prepare import PrepareJob
from afov_ray.pipeline.query import QueryJob
from afov_ray.pipeline.refine import AFIJob
from afov_ray.pipeline.teacher import TeacherJob
from afov_ray.train.jobs import TrainJob
from afov_ray.tune.sweep import SweepJob

JOBS = {
    "prepare.py": PrepareJob, "inspect_data.py": InspectJob, "teacher.py": TeacherJob, "pair.py": PairJob,
    "tmp.py": TrainJob, "distill.py": TrainJob, "finetune.py": TrainJob, "predict.py": PredictJob,
    "afi.py": AFIJob, "evaluate.py": EvaluateJob, "sweep.py": SweepJob, "demo.py": DemoConfig,
    "query.py": QueryJob,
}
