"""Networks: which exist (catalog.py), their pretrained weights (weights.py), the input they expect
(preprocessing.py), building one with a new head (build.py), and model.pt, the trained one (saved.py)."""
