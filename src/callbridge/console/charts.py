"""Small charts as inline SVG, drawn on the server: no script, no chart library.

Each function returns markup that scales to the width of its container (a phone's too).
Every text drawn is escaped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 600, 180
_PAD_LEFT, _PAD_BOTTOM, _PAD_TOP = 60, 24, 10
MAX_BAR = 40  # a bar's widest, when there are few
PALETTE = ("#2b6cb0", "#2f855a", "#c05621", "#b83280", "#6b46c1", "#718096", "#c53030")


def _frame(body: list[str], label: str, top: float, unit: str) -> Markup:
    plot_h = HEIGHT - _PAD_BOTTOM - _PAD_TOP
    axis = [
        f'<line x1="{_PAD_LEFT}" y1="{_PAD_TOP + plot_h}" x2="{WIDTH}" '
        f'y2="{_PAD_TOP + plot_h}" class="axis"/>',
        f'<text x="{_PAD_LEFT - 4}" y="{_PAD_TOP + 10}" text-anchor="end" class="tick">'
        f"{escape(_number(top))}{escape(unit)}</text>",
        f'<text x="{_PAD_LEFT - 4}" y="{_PAD_TOP + plot_h}" text-anchor="end" '
        'class="tick">0</text>',
    ]
    return Markup(
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(label)}">' + "".join(axis + body) + "</svg>"
    )


def _number(value: float) -> str:
    return f"{value:.0f}" if value >= 10 or value == int(value) else f"{value:.1f}"


def _top(value: float) -> float:
    return value if value > 0 else 1.0


def _ticks(labels: Sequence[str], slot: float) -> list[str]:
    step = max(1, len(labels) // 8)
    out = []
    for i in range(0, len(labels), step):
        x = _PAD_LEFT + slot * (i + 0.5)
        out.append(
            f'<text x="{x:.1f}" y="{HEIGHT - 6}" text-anchor="middle" class="tick">'
            f"{escape(labels[i])}</text>"
        )
    return out


def bars(
    series: Mapping[str, Sequence[float]], labels: Sequence[str], label: str, unit: str = ""
) -> Markup:
    """Stacked bars, one a label; `series` in stacking order, bottom first."""
    count = len(labels)
    if count == 0:
        return Markup("")
    totals = [sum(values[i] for values in series.values()) for i in range(count)]
    top = _top(max(totals, default=0))
    plot_h = HEIGHT - _PAD_BOTTOM - _PAD_TOP
    slot = (WIDTH - _PAD_LEFT) / count
    body: list[str] = []
    for i in range(count):
        base = float(_PAD_TOP + plot_h)
        for (name, values), colour in zip(series.items(), PALETTE, strict=False):
            h = plot_h * values[i] / top
            if h <= 0:
                continue
            base -= h
            bar = min(slot * 0.8, MAX_BAR)
            body.append(
                f'<rect x="{_PAD_LEFT + slot * (i + 0.5) - bar / 2:.1f}" y="{base:.1f}" '
                f'width="{bar:.1f}" height="{h:.1f}" fill="{colour}">'
                f"<title>{escape(labels[i])} {escape(name)}: {_number(values[i])}</title></rect>"
            )
    return _frame(body + _ticks(labels, slot), label, top, unit)


def lines(
    series: Mapping[str, Sequence[float | None]], labels: Sequence[str], label: str, unit: str = ""
) -> Markup:
    """A line a series; a gap where a value is None."""
    count = len(labels)
    if count == 0:
        return Markup("")
    values = [v for vs in series.values() for v in vs if v is not None]
    top = _top(max(values, default=0))
    plot_h = HEIGHT - _PAD_BOTTOM - _PAD_TOP
    slot = (WIDTH - _PAD_LEFT) / count
    body: list[str] = []
    for (name, vs), colour in zip(series.items(), PALETTE, strict=False):
        points: list[str] = []
        for i, v in enumerate(vs):
            if v is None:
                if len(points) > 1:
                    body.append(_polyline(points, colour))
                points = []
                continue
            x, y = _PAD_LEFT + slot * (i + 0.5), _PAD_TOP + plot_h * (1 - v / top)
            points.append(f"{x:.1f},{y:.1f}")
            body.append(
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{colour}">'
                f"<title>{escape(labels[i])} {escape(name)}: {_number(v)}{escape(unit)}</title>"
                "</circle>"
            )
        if len(points) > 1:
            body.append(_polyline(points, colour))
    return _frame(body + _ticks(labels, slot), label, top, unit)


def _polyline(points: list[str], colour: str) -> str:
    return f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="2"/>'


def gauge(value: int, maximum: int, label: str) -> Markup:
    """A bar filled to value/maximum."""
    share = min(1.0, value / maximum) if maximum > 0 else 0.0
    colour = PALETTE[6] if share >= 0.9 else PALETTE[1]
    return Markup(
        f'<svg class="gauge" viewBox="0 0 {WIDTH} 24" role="img" aria-label="{escape(label)}" '
        'preserveAspectRatio="none">'
        f'<rect x="0" y="0" width="{WIDTH}" height="24" fill="#e2e8f0"/>'
        f'<rect x="0" y="0" width="{WIDTH * share:.1f}" height="24" fill="{colour}"/>'
        "</svg>"
    )


def legend(names: Sequence[str]) -> Markup:
    # A swatch is a tiny SVG, not a styled element: the console's CSP allows no inline style.
    items = "".join(
        f'<span><svg class="swatch" viewBox="0 0 10 10" aria-hidden="true">'
        f'<rect width="10" height="10" fill="{colour}"/></svg>{escape(name)}</span>'
        for name, colour in zip(names, PALETTE, strict=False)
    )
    return Markup(f'<p class="legend">{items}</p>')
