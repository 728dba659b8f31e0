"""Word2vec (skip-gram and CBOW with negative sampling) in PyTorch Lightning."""

from omegaconf import OmegaConf

__version__ = "0.1.0"


def _cpu_workers(deterministic: object) -> int:
    from sgns.hogwild import default_workers  # (lightning is imported when a config is resolved, not before)

    return default_workers(deterministic)


# conf/trainer/default.yaml: trainer.devices=${cpu_workers:${.deterministic}}
OmegaConf.register_new_resolver("cpu_workers", _cpu_workers, replace=True)


def _run_stamp() -> str:
    from sgns.rundir import run_stamp

    return run_stamp()


# conf/hydra/default.yaml: hydra.run.dir=outputs/runs/${run_stamp:}, unique per process
OmegaConf.register_new_resolver("run_stamp", _run_stamp, replace=True)


def _per_objective(objective: str, ns: float, hs: float) -> float:
    return hs if objective == "hs" else ns  # (an unknown objective is refused, with its line, when the model is made)


# conf/model/cbow.yaml: alpha=${per_objective:${.objective},0.1,0.05}, a default measured for each output layer
OmegaConf.register_new_resolver("per_objective", _per_objective, replace=True)
