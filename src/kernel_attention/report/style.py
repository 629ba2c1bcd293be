"""One colour per kernel, shared by every figure of a report, so that a kernel looks the same in the feature-dimension
plot, the validation curves, the speed plot and the diagnostics plots. The baseline is always red; a study with
fourteen kernels needs more distinct colours than matplotlib's ten-colour cycle (which gave ``ei`` and ``rff`` the
same orange), so the colours come from ``tab20`` without its reds and greys, dark shades first, and past 16 kernels from
golden-ratio-spaced points of a continuous map.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.colors import to_hex

BASELINE_COLOUR = "tab:red"
BASELINE_MARKER = "*"
GROUP_MARKERS = {"infinite": "s", "finite": "o", "unknown": "x"}  # shape = group, colour = kernel
# tab20 in pairs (dark, light); pair 3 (indices 6, 7) is red, the baseline's, and pair 7 (14, 15) grey, the colour
# of reference lines and of "unknown" — neither may mark a kernel.
_TAB20 = colormaps["tab20"].colors
_SKIP = (6, 7, 14, 15)
PALETTE = [to_hex(_TAB20[i]) for i in range(0, 20, 2) if i not in _SKIP] + [
    to_hex(_TAB20[i]) for i in range(1, 20, 2) if i not in _SKIP
]
# Past the palette: points of nipy_spectral from purple to orange, short of its red end.
_SPECTRAL_RANGE = (0.05, 0.8)
_GOLDEN = (math.sqrt(5) - 1) / 2


def kernel_colours(labels: Iterable[str], baseline: str | None = None) -> dict[str, str]:
    """Label → colour for the labels in the order given (duplicates ignored); ``baseline`` gets red. Distinct
    colours for up to 16 non-baseline labels, then golden-ratio-spaced ones from a continuous map (never repeated,
    never red or grey)."""
    others = [lab for lab in dict.fromkeys(labels) if lab != baseline]
    if len(others) <= len(PALETTE):
        colours = PALETTE[: len(others)]
    else:
        cmap = colormaps["nipy_spectral"]
        lo, hi = _SPECTRAL_RANGE
        # Golden-ratio steps along the map: all distinct, and neighbours in the table (the infinite kernels come
        # first, together) land far apart instead of on five shades of one blue.
        colours = [to_hex(cmap(lo + (hi - lo) * ((i * _GOLDEN) % 1.0))) for i in range(len(others))]
    out = dict(zip(others, colours))
    if baseline is not None:
        out[baseline] = BASELINE_COLOUR
    return out


def legend_outside(ax: Axes) -> None:
    """A legend of the axes' labelled artists, outside them so it never hides a point: right of them for up to 16
    short labels, else below the figure in as many columns as its width holds, the figure growing taller to make
    the room (a sweep over kernel parameters has 30 labels of up to ~60 characters, which beside the axes squeezed
    them to a sliver). Nothing when no artist is labelled."""
    handles, labels = ax.get_legend_handles_labels()
    if not labels:
        return
    longest = max(len(lab) for lab in labels)
    if len(labels) <= 16 and longest <= 30:
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0, frameon=False)
        return
    fig = ax.get_figure()
    width, height = fig.get_size_inches()
    col_in = 0.055 * longest + 0.45  # fontsize 7: ≈ 0.055 in per character, plus the marker and the gap
    ncol = max(1, min(4, int(width // col_in)))
    fig.set_size_inches(width, height + 0.16 * math.ceil(len(labels) / ncol) + 0.2)
    fig.legend(handles, labels, fontsize=7, loc="outside lower center", ncol=ncol, frameon=False)
