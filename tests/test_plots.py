"""The app's matplotlib figures render without mathtext (its parser is not thread-safe) and from many threads."""

import io
import threading

from demo.plots import trajectory_figure


def _rows(side: float) -> list[dict]:
    return [
        {"sigma": s, "similarity": side * (1 - s / 100), "position": 0, "id": 3} for s in (80.0, 10.0, 1.0, 0.1, 0.01)
    ]


def test_trajectory_figures_render_concurrently_with_plain_tick_labels():
    errors: list[BaseException] = []

    def render() -> None:
        try:
            for _ in range(5):
                fig = trajectory_figure(_rows(0.9), _rows(0.99), 0.5, 0.95, 2.0, "image 1", "Ambient")
                fig.savefig(io.BytesIO(), format="png")
                labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
                assert labels and not any("$" in t for t in labels), labels
        except BaseException as e:  # collected for the main thread
            errors.append(e)

    threads = [threading.Thread(target=render) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_frontier_hover_shows_the_quality_figures_a_study_carries():
    from demo.plots import _hover

    old = {"rate_ratio": 0.5, "rate_ratio_ci95": [0.45, 0.55], "frechet_distance": 4.2, "step": 6000, "n": 256}
    text = _hover(old, "baseline")
    assert "copies 50.0 % (95 %: 45.0-55.0)" in text and "Frechet distance 4.20<br>" in text
    assert "novel" not in text and "precision" not in text  # older studies carry neither
    new = {**old, "frechet_ci95": [3.1, 5.3], "frechet_novel": 9.4, "n_novel": 128, "precision": 0.91, "recall": 0.28}
    text = _hover(new, "baseline")
    assert "Frechet distance 4.20 (95 %: 3.10-5.30)" in text
    assert "novel samples alone (128): Frechet distance 9.40" in text and "precision 0.91, recall 0.28" in text
