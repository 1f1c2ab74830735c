"""Model cards for exported folders (the full template and pushing come with the evaluation suite)."""

from __future__ import annotations

import os
from typing import Any

from .io_utils import atomic_write_text


def render_minimal_card(model_dir_name: str, recipe: dict[str, Any], metrics: dict[str, Any]) -> str:
    method = recipe.get("method", "unknown")
    rows = []
    for name, result in metrics.get("protocols", {}).items():
        value = result.get("value")
        if isinstance(value, (int, float)):
            settings = ", ".join(f"{k}={v}" for k, v in result.get("settings", {}).items() if not isinstance(v, dict))
            rows.append(f"| {name} | {value:.4f} | {result.get('dataset', '')} / {result.get('split', '')} | {settings} |")
    table = "\n".join(["| protocol | value | data / split | settings |", "|---|---|---|---|", *rows]) if rows else "No metrics."
    return f"""---
library_name: hf_hybridcl
pipeline_tag: image-feature-extraction
tags:
- hf_hybridcl
- {method}
---

# {method} encoder ({recipe.get('model', {}).get('backbone', '')})

Trained with [hf_hybridcl](https://pypi.org/project/hf-hybridcl/) method `{method}` on `{recipe.get('data', {}).get('dataset', '')}`.

```python
from transformers import AutoModel, AutoImageProcessor
model = AutoModel.from_pretrained("{model_dir_name}", trust_remote_code=True)
processor = AutoImageProcessor.from_pretrained("{model_dir_name}", trust_remote_code=True)
```

## Metrics (measured at the end of training)

{table}
"""


def write_minimal_card(model_dir: str, recipe: dict[str, Any], metrics: dict[str, Any]) -> None:
    atomic_write_text(os.path.join(model_dir, "README.md"), render_minimal_card(".", recipe, metrics))
