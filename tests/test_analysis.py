import numpy as np
import pytest

from imgclf.analysis import (
    Predictions,
    confident_mistakes,
    confusion,
    most_confused,
    most_uncertain,
    per_image_loss,
    random_correct,
    top_k_accuracy,
    top_losses,
    write_error_analysis,
)

PROBS = np.array([[0.9, 0.1], [0.2, 0.8], [0.55, 0.45], [0.05, 0.95], [0.6, 0.4]])
Y = np.array([0, 0, 1, 1, 1])


def test_top_losses_are_the_highest_losses():
    idx = top_losses(PROBS, Y, 3)
    losses = per_image_loss(PROBS, Y)
    assert list(idx) == [1, 4, 2] and list(losses[idx]) == sorted(losses, reverse=True)[:3]


def test_uncertain_mistakes_and_correct():
    assert list(most_uncertain(PROBS, 2)) == [2, 4]  # top probabilities 0.55, 0.6
    assert list(confident_mistakes(PROBS, Y, 5)) == [1, 4, 2]  # wrong ones, 0.8 > 0.6 > 0.55
    picked = random_correct(PROBS, Y, per_class=5)
    assert sorted(picked) == [0, 3]


def test_top_k_is_capped_for_binary_tasks():
    assert top_k_accuracy(PROBS, Y, 5) == 1.0
    assert top_k_accuracy(PROBS, Y, 1) == pytest.approx(0.4)


def test_most_confused_pairs():
    matrix = np.array([[5, 2, 0], [7, 1, 1], [0, 0, 3]])
    assert most_confused(matrix, ["a", "b", "c"], 2) == [
        {"true": "b", "predicted": "a", "count": 7},
        {"true": "a", "predicted": "b", "count": 2},
    ]


def test_most_confused_breaks_ties_by_true_then_predicted_class_and_the_matrix_counts_every_pair():
    matrix = np.array([[0, 2, 2], [2, 0, 0], [1, 0, 4]])
    assert [(p["true"], p["predicted"]) for p in most_confused(matrix, ["a", "b", "c"])] == [
        ("a", "b"), ("a", "c"), ("b", "a"), ("c", "a")
    ]  # fmt: skip
    y_true, y_pred = np.array([0, 0, 2, 2, 1]), np.array([1, 1, 2, 0, 1])
    assert confusion(y_true, y_pred, 4).tolist() == [[0, 2, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [0, 0, 0, 0]]


def test_the_figures_of_over_a_hundred_classes_are_drawn_at_a_bounded_size(tmp_path):
    """A figure grew 0.45 inch a class: 300 classes took 45 s and 4 GB a confusion matrix, 1,000 did not fit."""
    from PIL import Image

    from imgclf.plots import MAX_FIGURE_INCHES, plot_class_counts, plot_confusion

    names = [f"class_{i:03d}" for i in range(120)]
    plot_confusion(np.eye(120, dtype=int), names, tmp_path / "confusion.png")
    plot_class_counts([{"class": c, "split": "train", "images": 3} for c in names], tmp_path / "counts.png")
    for name in ("confusion.png", "counts.png"):
        assert max(Image.open(tmp_path / name).size) <= 100 * MAX_FIGURE_INCHES, name  # saved at 100 dpi


def test_write_error_analysis(tmp_path):
    images = np.zeros((5, 3, 8, 8), np.uint8)
    paths = [f"x/{i}.png" for i in range(5)]
    preds = Predictions(paths, images, Y, PROBS, ["cat", "dog"])
    out = write_error_analysis(tmp_path, preds, np.array([[1, 1], [2, 1]]), n=2)
    assert [r["path"] for r in out["top_losses"]] == ["x/1.png", "x/4.png"]
    assert out["most_confused"][0] == {"true": "dog", "predicted": "cat", "count": 2}
    for name in ("top_losses", "most_uncertain", "confident_mistakes", "random_correct"):
        assert (tmp_path / f"{name}.png").stat().st_size > 1000
