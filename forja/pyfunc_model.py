"""The MLflow pyfunc of a Forja model ("models from code": MLflow imports this file, never unpickles).

    model = mlflow.pyfunc.load_model("models:/forja@champion")
    model.predict(pd.DataFrame({"prompt": ["ROMEO:"]}), params={"max_new_tokens": 50, "seed": 0})

Artifacts: `checkpoint` (model.safetensors, trainer.json, tokenizer.model, manifest.json). Code: the
`lm` package, shipped with the model (code_paths), so the loader needs torch, sentencepiece and
safetensors, not Forja itself.
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class ForjaLM(PythonModel):
    def load_context(self, context) -> None:
        from lm.checkpoint import load_for_inference
        from lm.tokenizer import Tokenizer

        self.loaded = load_for_inference(context.artifacts["checkpoint"])
        self.tokenizer = Tokenizer(self.loaded.tokenizer_path)

    # A DataFrame hint: MLflow then takes the signature from the logged input example.
    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> list[str]:
        from lm.generate import generate

        params = params or {}
        top_k, top_p = int(params.get("top_k") or 0), float(params.get("top_p") or 1.0)
        prompts = list(model_input["prompt"]) if hasattr(model_input, "columns") else list(model_input)
        out = []
        for prompt in prompts:
            ids = self.tokenizer.encode(str(prompt))
            new = generate(
                self.loaded.model,
                ids,
                int(params.get("max_new_tokens", 64)),
                temperature=float(params.get("temperature", 0.8)),
                top_k=top_k or None,
                top_p=top_p if top_p < 1.0 else None,
                seed=params.get("seed"),
                eos_id=self.tokenizer.eos_id,
            )
            out.append(self.tokenizer.decode(ids + [t for t in new if t != self.tokenizer.eos_id]))
        return out


mlflow.models.set_model(ForjaLM())
