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
