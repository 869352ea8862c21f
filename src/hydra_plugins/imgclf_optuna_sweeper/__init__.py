"""`hydra/sweeper=imgclf_optuna`: an Optuna (4+) search whose study lives in a database, so a sweep resumes where it
stopped, several workers share one study, and a trial can be pruned. See sweeper.py."""
