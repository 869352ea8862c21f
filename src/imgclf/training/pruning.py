"""A sweep trial's pruning: the train stage reports val/acc after each epoch to the Optuna trial its job runs (the
imgclf_optuna sweeper exports which through the environment) and stops when the study's pruner says so."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable

log = logging.getLogger(__name__)

STORAGE_ENV = "IMGCLF_OPTUNA_STORAGE"  # the study's storage URL (the sweeper sets it; credentials stay out of config)
STUDY_ENV = "IMGCLF_OPTUNA_STUDY"
TRIAL_ENV = "IMGCLF_OPTUNA_TRIAL_ID"  # per job, through hydra.job.env_set
PRUNER_ENV = "IMGCLF_OPTUNA_PRUNER"  # hydra.sweeper.pruner: the job decides with the study's own rule
PRUNED_AT = "imgclf.pruned_at_epoch"  # the trial's user attribute: the sweeper tells the study PRUNED


def make_pruner(name: str):
    """hydra.sweeper.pruner as an Optuna pruner: median (after 2 trials have finished, a trial whose val/acc at an
    epoch is below the median of the others' at that epoch stops), hyperband, or none."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    return optuna.pruners.NopPruner()


def trial_pruner() -> Callable[[int, float], bool] | None:
    """For a job of an Optuna study: a function (epoch, val/acc) -> stop now?; None outside one."""
    trial_id = os.environ.get(TRIAL_ENV)
    if not trial_id:
        return None
    import optuna

    pruner = make_pruner(os.environ.get(PRUNER_ENV, "none"))
    study = optuna.load_study(study_name=os.environ[STUDY_ENV], storage=os.environ[STORAGE_ENV], pruner=pruner)
    trial = optuna.trial.Trial(study, int(trial_id))

    def should_stop(epoch: int, val_acc: float) -> bool:
        trial.report(val_acc, epoch)
        if not trial.should_prune():
            return False
        study._storage.set_trial_user_attr(int(trial_id), PRUNED_AT, epoch)
        log.info(
            "pruned: val/acc %.4f at epoch %d is behind the study's other trials (hydra.sweeper.pruner)", val_acc, epoch
        )
        return True

    return should_stop
