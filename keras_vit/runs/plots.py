"""A run's pictures: learning curves (`curves.png`) and the confusion matrix
(`confusion.png`). matplotlib is imported only when a plot is drawn."""

from keras_vit.runs import files


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(log_path, png_path):
    """Plots loss and accuracy per epoch (training and validation) as PNG.

    Returns `png_path`, or `None` when the log has no epoch yet.
    """
    plt = _pyplot()
    rows = files.read_log(log_path)
    if not rows:
        return None
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, metric in ((axes[0], "loss"), (axes[1], "accuracy")):
        for prefix, style in (("", "-"), ("val_", "--")):
            key = prefix + metric
            if all(key in r for r in rows):
                ax.plot(epochs, [r[key] for r in rows], style, marker=".",
                        label="validation" if prefix else "training")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    axes[1].set_ylim(top=1.0)
    fig.suptitle(f"Learning curves ({len(rows)} epochs)")
    fig.tight_layout()
    try:
        files.save_atomic(lambda tmp: fig.savefig(tmp, dpi=100), png_path)
    finally:
        plt.close(fig)
    return png_path


def plot_confusion_matrix(matrix, class_names, png_path, title="Confusion matrix"):
    """Draws a confusion matrix (rows: true class, columns: predicted) as PNG."""
    plt = _pyplot()
    n = len(class_names)
    size = max(5.0, 0.55 * n + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax, label="images")
    ax.set_xticks(range(n), class_names, rotation=45, ha="right")
    ax.set_yticks(range(n), class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if matrix[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
