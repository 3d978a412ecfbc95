"""The pieces a report page is made of: a matplotlib figure as embedded PNG, a figure with its caption,
a table. Every section module (report.py, report_insight.py) builds from these."""
from __future__ import annotations

import base64
import html
import io


def pyplot():
    """matplotlib.pyplot on the Agg backend: reports are drawn to PNG, never to a screen."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(figure) -> str:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode()


def img(png_b64: str, alt: str, caption: str) -> str:
    return (f'<figure><img class="plot" alt="{html.escape(alt)}" src="data:image/png;base64,{png_b64}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def table(header: list[str], rows: list[list], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def count_heatmap(axes, matrix, names: list[str], fontsize: int = 7) -> None:
    """A square matrix of image counts (rows and columns named `names`) with a colour bar; each cell's count
    written in it where there are at most 30 names."""
    image = axes.imshow(matrix, cmap="Blues")
    axes.figure.colorbar(image, ax=axes, label="images (count)")
    k = len(names)
    if k <= 30:
        axes.set_xticks(range(k), names, rotation=60, ha="right", fontsize=8)
        axes.set_yticks(range(k), names, fontsize=8)
        for i in range(k):
            for j in range(k):
                if matrix[i, j]:
                    axes.text(j, i, matrix[i, j], ha="center", va="center", fontsize=fontsize,
                              color="white" if matrix[i, j] > matrix.max() / 2 else "black")
