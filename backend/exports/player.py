"""The one-file web player: a model's weights and the browser CA (frontend/player/) in one HTML file.

`player_html(mf)` inlines ca.js, player.js and player.css into player.html with the model as a JSON
data block, so the file needs no network and works opened from `file://`. Nothing user-supplied
reaches the page unescaped: the title is HTML-escaped, the JSON block cannot close its <script>
(`<`, `>` and `&` are written as JSON escapes) and the page shows the name through textContent. A
Content-Security-Policy allows only the two inline blocks it ships (by hash) and no network at all.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import re
from pathlib import Path
from typing import Any

import torch

from backend.nca.modelfile import ModelFile

PLAYER_DIR = Path(__file__).resolve().parents[2] / "frontend" / "player"
_CA_IMPORT = re.compile(r"^import \{[^}]*\} from '\./ca\.js';\n", re.MULTILINE)
_SLOT = re.compile(r"\{\{([A-Z_]+)\}\}")
_TEMPLATE_NOTE = re.compile(r"<!--template.*?-->\n", re.DOTALL)


def _floats(t: torch.Tensor) -> str:
    """Little-endian float32 bytes, base64 (what `Float32Array` reads on every browser platform)."""
    return base64.b64encode(t.detach().float().cpu().contiguous().numpy().astype("<f4").tobytes()).decode("ascii")


def player_model(mf: ModelFile) -> dict[str, Any]:
    """What the player needs of a model: its weights as in the model file, the grid and the labels."""
    m = mf.model
    return {
        "name": mf.info.name or "NCA model",
        "experiment": mf.info.experiment,
        "iterations": mf.info.iterations,
        "source": mf.info.source,
        "grid": [mf.info.grid_height, mf.info.grid_width],
        "channels": m.channels,
        "hidden": m.hidden,
        "fire_rate": m.fire_rate,
        "weights": {
            "w1": _floats(m.perceive_to_hidden.weight[:, :, 0, 0]),  # (hidden, 3C), channel-major inputs
            "b1": _floats(m.perceive_to_hidden.bias),
            "w2": _floats(m.hidden_to_update.weight[:, :, 0, 0]),  # (C, hidden)
            "b2": _floats(m.hidden_to_update.bias),
        },
    }


def script_json(value: Any) -> str:
    """JSON that is safe inside a <script> element: no `<`, `>` or `&` characters at all."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode("ascii") + "'"


def player_html(mf: ModelFile, assets: Path = PLAYER_DIR) -> str:
    """One self-contained HTML page that plays `mf` in the browser (WebGL2, else plain JavaScript)."""
    template = _TEMPLATE_NOTE.sub("", (assets / "player.html").read_text())
    ca_js, page_js = (assets / "ca.js").read_text(), (assets / "player.js").read_text()
    if not _CA_IMPORT.search(page_js):
        raise RuntimeError("player.js must import from './ca.js' on one line (the builder inlines it)")
    script = ca_js + "\n" + _CA_IMPORT.sub("", page_js)
    css = (assets / "player.css").read_text()
    for name, text in (("script", script), ("style", css)):
        if f"</{name}" in text.lower():
            raise RuntimeError(f"the player's {name} must not contain '</{name}'")
    csp = (f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(css)}; img-src data:; "
           "base-uri 'none'; form-action 'none'")
    slots = {"CSP": csp, "TITLE": html.escape(mf.info.name or "NCA model"), "CSS": css,
             "MODEL_JSON": script_json(player_model(mf)), "SCRIPT": script}
    return _SLOT.sub(lambda m: slots[m.group(1)], template)  # one pass: filled slots are not scanned again
