"""The one-file player as a file: self-contained, escaped, and its CSP matches its inline blocks.

(It runs in real chromium in tests/frontend/test_player.py.)
"""

import base64
import hashlib
import json
import re

import numpy as np

from backend.exports.player import PLAYER_DIR, player_html, script_json
from backend.nca import modelfile
from tests.conftest import REPO_ROOT

XSS_NAME = "</script><script>alert(1)</script>"


def hostile_page() -> str:
    mf = modelfile.load(REPO_ROOT / "models" / "heart.safetensors")
    mf.info.name = XSS_NAME
    return player_html(mf)


def test_the_name_never_appears_unescaped():
    page = hostile_page()
    assert XSS_NAME not in page
    assert "<title>&lt;/script&gt;&lt;script&gt;alert(1)&lt;/script&gt; · Growing NCA player</title>" in page
    assert page.count("<script") == 2 and page.count("</script>") == 2
    data = re.search(r'<script type="application/json" id="nca-model">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and ">" not in data and "&" not in data
    assert json.loads(data)["name"] == XSS_NAME


def test_the_weights_inside_are_the_model_file_s():
    mf = modelfile.load(REPO_ROOT / "models" / "heart.safetensors")
    page = player_html(mf)
    data = json.loads(re.search(r'id="nca-model">(.*?)</script>', page, re.S).group(1))
    w1 = np.frombuffer(base64.b64decode(data["weights"]["w1"]), "<f4").reshape(128, 48)
    assert np.array_equal(w1, mf.model.perceive_to_hidden.weight[:, :, 0, 0].detach().numpy())
    assert data["grid"] == [36, 36] and data["fire_rate"] == 0.5 and data["channels"] == 16


def test_self_contained_with_a_csp_that_allows_only_its_own_inline_blocks():
    page = hostile_page()
    assert "{{" not in page and not re.search(r"\b(src|href)=", page)  # nothing loaded from anywhere
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', page).group(1)
    assert "default-src 'none'" in csp
    script = re.search(r'<script type="module">(.*?)</script>', page, re.S).group(1)
    assert "from './ca.js'" not in script  # inlined: an import would fail from file://
    style = re.search(r"<style>(.*?)</style>", page, re.S).group(1)
    for text in (script, style):
        digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
        assert f"'sha256-{digest}'" in csp
    # The template's sources are the files under frontend/player/.
    assert (PLAYER_DIR / "ca.js").read_text() in script and (PLAYER_DIR / "player.css").read_text() == style


def test_script_json_escapes_markup_characters():
    assert script_json({"a": "</script>&<!--"}) == '{"a":"\\u003c/script\\u003e\\u0026\\u003c!--"}'
    assert json.loads(script_json({"a": "</script>&"})) == {"a": "</script>&"}
