"""A trained segmentation model's contour against the truth on one slice, for the results page.

No hospital's image leaves it, so the example volume is made on this computer: one synthetic CT series
(`workbench.synthetic_series`, a scanner the model may not have seen) written as DICOM and read back by
the nodes' own series loader with the training's spacing, size and window, then segmented by the final
model. The slice shown is the axial one holding most of the lesion.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def segmentation_example(model_folder: Path, scanner: int = 4) -> Figure:
    """The model in `model_folder` (final.pt, model_card.json) on a synthetic series from scanner `scanner`."""
    import torch

    from hospital_node import dicom_series
    from workbench import models, synthetic_series

    card = json.loads((model_folder / "model_card.json").read_text(encoding="utf-8"))
    source = card["input"]
    window = tuple(source["window"]) if isinstance(source["window"], list) else None
    with tempfile.TemporaryDirectory() as name:
        site = Path(name)
        synthetic_series.write_site(site, "example", pd.Series(["example"]), synthetic_series.SERIES_SCANNERS[scanner])
        found = dicom_series.load(site, "series", "masks", tuple(source["spacing_mm"]), tuple(source["volume_size"]),
                                  window)  # fmt: skip
    model = models.build(card["architecture"])
    model.load_state_dict(torch.load(model_folder / "final.pt"))
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(found.images[:1])).argmax(dim=1)[0].numpy()
    image, truth = found.images[0, 0], found.masks[0, 0]
    z = int(np.argmax(truth.sum(axis=(0, 1))))
    dice = (
        2
        * float((predicted[..., z] * truth[..., z]).sum())
        / max(float(predicted[..., z].sum() + truth[..., z].sum()), 1.0)
    )
    figure = Figure(figsize=(4.2, 4.2))
    ax = figure.subplots()
    ax.imshow(image[..., z].T, cmap="gray", origin="lower")
    ax.contour(truth[..., z].T, levels=[0.5], colors="lime", linewidths=1.2)
    if predicted[..., z].any():
        ax.contour(predicted[..., z].T, levels=[0.5], colors="red", linewidths=1.2)
    ax.set_title(f"slice {z}: truth (green), model (red); Dice on this slice {dice:.2f}", fontsize=8)
    ax.set_axis_off()
    figure.tight_layout()
    return figure
