"""Draw docs/architecture.svg from the module map in docs/architecture.md.

One band per layer, top (what users write) to bottom (the loop core), with
the layer's modules in it. ``--check`` exits 1 if the file on disk differs
from what the map draws now (a test runs it).
"""

import re
import sys
from pathlib import Path
from typing import Dict, List

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
SVG = ROOT / "docs" / "architecture.svg"

# Top to bottom, with the colour of each band.
LAYERS = [
    ("protocols", "protocols/: framing, bytes in and requests out; no sockets", "#dff0d8", "#5b9a4a"),
    ("handler", "the handler: the user's side (hooks, send, close)", "#fde8c8", "#c98a2b"),
    ("transport", "transports: listeners, connector, processes, threads, CLI", "#e8e0f5", "#7a5fb0"),
    ("policy", "policies: limits (configuration), timeouts, shutdown, offload", "#f5e0e0", "#b05f5f"),
    ("connection", "the connection: one state machine from accept to close", "#d9e8f5", "#3f78b0"),
    ("loop core", "the loop core: selector, timers, callbacks", "#e8e8e8", "#666666"),
]
WIDTH, GAP, BOX_W, BOX_H = 900, 12, 132, 26


def module_map() -> Dict[str, List[str]]:
    """Layer -> module names, read from the table in docs/architecture.md."""
    layers: Dict[str, List[str]] = {name: [] for name, *_ in LAYERS}
    for module, layer in re.findall(r"^\| `([\w/.]+)` \| ([\w ]+?) \|", DOC.read_text(), re.M):
        layers[layer].append(Path(module).stem if module.startswith("evloop/") else module)
    return layers


def draw() -> str:
    layers = module_map()
    per_row = (WIDTH - 40) // (BOX_W + 8)
    heights = [40 + -(-len(layers[name]) // per_row) * (BOX_H + 6) for name, *_ in LAYERS]
    height = sum(heights) + GAP * (len(LAYERS) + 1)
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" '
        'font-family="Helvetica, Arial, sans-serif" font-size="12">',
        "  <title>evloop: the layers (drawn by tools/make_architecture_svg.py)</title>",
        f'  <rect width="{WIDTH}" height="{height}" fill="#ffffff"/>',
    ]
    top = GAP
    for (name, title, fill, stroke), band in zip(LAYERS, heights, strict=True):
        out.append(
            f'  <rect x="10" y="{top}" width="{WIDTH - 20}" height="{band}" rx="8" '
            f'fill="{fill}" stroke="{stroke}"/>'
        )
        out.append(f'  <text x="24" y="{top + 20}" font-weight="bold" font-size="13">{title}</text>')
        for position, module in enumerate(sorted(layers[name])):
            row, column = divmod(position, per_row)
            x = 24 + column * (BOX_W + 8)
            y = top + 32 + row * (BOX_H + 6)
            label = module.replace("protocols/", "").replace(".py", "")
            out.append(
                f'  <rect x="{x}" y="{y}" width="{BOX_W}" height="{BOX_H}" rx="4" fill="#ffffff" '
                f'stroke="{stroke}"/><text x="{x + BOX_W // 2}" y="{y + 17}" '
                f'text-anchor="middle">{label}</text>'
            )
        top += band + GAP
    out.append("</svg>")
    return "\n".join(out) + "\n"


def main(argv: List[str]) -> int:
    drawn = draw()
    if "--check" in argv:
        if SVG.read_text() != drawn:
            print("docs/architecture.svg is out of date: run python tools/make_architecture_svg.py")
            return 1
        return 0
    SVG.write_text(drawn)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
