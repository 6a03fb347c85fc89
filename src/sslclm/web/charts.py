"""Bar charts as server-computed geometry, drawn by ``templates/_chart.html`` as inline SVG.

No script and no inline style: colours come from CSS classes on the SVG elements, which the strict
Content-Security-Policy allows because the stylesheet is a file of this site.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH = 480
ROW_HEIGHT = 26
LABEL_WIDTH = 150
VALUE_WIDTH = 70


@dataclass(frozen=True, slots=True)
class Bar:
    label: str
    value: int
    y: int
    width: int
    css_class: str
    href: str | None


@dataclass(frozen=True, slots=True)
class BarChart:
    title: str
    bars: list[Bar]
    width: int
    height: int
    bar_x: int
    value_x: int

    @property
    def total(self) -> int:
        return sum(bar.value for bar in self.bars)


def bar_chart(
    title: str,
    rows: Sequence[tuple[str, int]],
    *,
    css_classes: Sequence[str] | None = None,
    links: Sequence[str | None] | None = None,
) -> BarChart:
    """One horizontal bar per row, scaled to the largest value (a zero value keeps a hairline)."""
    span = WIDTH - LABEL_WIDTH - VALUE_WIDTH
    largest = max((value for _, value in rows), default=0) or 1
    bars = [
        Bar(
            label=label,
            value=value,
            y=index * ROW_HEIGHT,
            width=max(round(span * value / largest), 1 if value else 0),
            css_class=(css_classes[index] if css_classes else "bar"),
            href=(links[index] if links else None),
        )
        for index, (label, value) in enumerate(rows)
    ]
    return BarChart(
        title=title,
        bars=bars,
        width=WIDTH,
        height=max(len(bars), 1) * ROW_HEIGHT,
        bar_x=LABEL_WIDTH,
        value_x=LABEL_WIDTH + span + 8,
    )
