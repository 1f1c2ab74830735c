"""The README's usage snippet runs as written against a trained model folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def test_usage_snippet_runs(simclr_run_template):
    text = open(README).read()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", text, flags=re.S) if "AutoModel.from_pretrained" in b]
    assert blocks, "README lost its usage snippet"
    snippet = blocks[0].replace('"runs/my-run/model"', repr(os.path.join(simclr_run_template, "model")))
    snippet += "\nassert features.shape[0] == 8 and torch.isfinite(loss)\nprint('SNIPPET_OK')\n"
    result = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert "SNIPPET_OK" in result.stdout, result.stderr[-3000:]


def test_readme_commands_name_real_options():
    """Every `section.key=value` override shown in the README exists in the recipe defaults."""
    from hf_hybridcl.recipes import DEFAULT_RECIPE

    text = open(README).read()
    for section, key in re.findall(r"\b(optim|train|data|eval|views|model)\.([a-z_]+)=", text):
        assert key in DEFAULT_RECIPE[section], f"{section}.{key}"
