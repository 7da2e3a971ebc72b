"""Hugging Face interop: transformers, an independent implementation, must compute what Forja computes.

A trained model and several exactly exportable variants go through `export_hf`, are loaded back by
`AutoTokenizer` / `AutoModelForCausalLM` from the folder (offline), and must agree with Forja on
token ids, logits, the mean cross-entropy of `forja eval` and greedy generation. Then `import_hf`
must give back identical weights, and refuse what it cannot represent exactly.
"""

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

transformers = pytest.importorskip("transformers")

import huggingface_hub.constants  # noqa: E402
import sentencepiece as spm  # noqa: E402
import torch  # noqa: E402
from helpers import make_token_dir, shakespeare_text  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from support import torch_threads  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from forja.cli import app  # noqa: E402
from forja.hf import build_hf_tokenizer, export_hf, import_hf, save_hf_tokenizer  # noqa: E402
from lm import checkpoint as ckpt  # noqa: E402
from lm import downstream  # noqa: E402
from lm.config import ModelConfig, TrainConfig, to_dict  # noqa: E402
from lm.errors import ForjaError  # noqa: E402
from lm.generate import generate  # noqa: E402
from lm.models import build_model  # noqa: E402
from lm.tokenizer import Tokenizer  # noqa: E402
from lm.train import Trainer, train  # noqa: E402
from tasks.evaluate import EvalConfig, freeze_eval_set, load_eval_texts  # noqa: E402

ATOL = 1e-4
TEXTS = [
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "  two leading spaces, and   runs of   spaces, and trailing ones  ",
    "\nnewlines\n\n\nand\ttabs\r\nand windows line ends\n",
    "unicode: naïve café, Ωμέγα, Привет, 日本語, 🙂 (bytes: outside the vocabulary)",
    "literal </s> and <s> and <unk> and <0x41> are text; ＡＢＣ ﬁ ½ ▁",
    " a",
]
PROMPTS = ["First Citizen:", "ROMEO:\nBut soft", " the king"]


def small_model_cfg(**kw) -> ModelConfig:
    return ModelConfig(**{"n_layer": 2, "n_head": 2, "d_model": 64, "max_seq_len": 64, **kw})


def load_hf(folder):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    return tok, model


@torch.no_grad()
def max_logit_diff(ours, theirs, ids) -> tuple[float, float]:
    x = torch.tensor([ids])
    assert next(theirs.parameters()).dtype == torch.float32  # fp32 on both sides, CPU
    a, b = ours.eval()(x)[0], theirs(x).logits
    assert a.shape == b.shape
    return (a - b).abs().max().item(), a.std().item()


def hf_greedy(model, ids, n) -> list[int]:
    x = torch.tensor([ids])
    out = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
    return out[0, len(ids) :].tolist()


@pytest.fixture(scope="module", autouse=True)
def _offline():
    """Never the network: for this module only, restored after it.

    huggingface_hub reads HF_HUB_OFFLINE once, when it is imported (at collection, above), so the
    flag it already read is switched too; the variables cover anything that reads them later.
    """
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
        yield


@pytest.fixture(autouse=True)
def _two_threads():
    with torch_threads(2):
        yield


@pytest.fixture(scope="module")
def token_dir(tmp_path_factory):
    """SentencePiece's defaults (nmt_nfkc, dummy prefix, extra whitespace removed), BPE, byte fallback."""
    return make_token_dir(shakespeare_text(60_000), tmp_path_factory.mktemp("tokens"), vocab_size=512)


@pytest.fixture(scope="module")
def trained_run(token_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    train_cfg = TrainConfig(
        batch_size=4,
        max_steps=4,
        lr=3e-3,
        warmup_steps=1,
        eval_every=0,
        eval_batches=2,
        checkpoint_every=0,
        log_every=4,
        device="cpu",
        dtype="float32",
    )
    train(small_model_cfg(), train_cfg, token_dir, out)
    return out


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    return export_hf(str(trained_run), tmp_path_factory.mktemp("hf") / "model")


def make_run(run_dir, tokenizer_path, **model_kw):
    """A checkpoint with random weights large enough that any mapping error shows in the logits,
    and norm scales away from 1 (so a misplaced norm shows too)."""
    tok = Tokenizer(tokenizer_path)
    cfg = small_model_cfg(vocab_size=tok.vocab_size, init_std=0.1, **model_kw)
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.uniform_(0.5, 1.5)
    state = {"config": to_dict(cfg, TrainConfig()), "tokenizer_sha256": tok.sha256, "metrics": {}}
    ckpt.save_checkpoint(run_dir, 1, model, None, state, tokenizer_path)
    return run_dir


def production_sp(tmp_path, model_type: str):
    """A SentencePiece model trained with the tokenize stage's own settings ("\\n" user-defined,
    identity normalisation, whitespace kept, no dummy prefix)."""
    from tasks.tokenize import TokenizeConfig

    args = TokenizeConfig(model_type=model_type, vocab_size=600, train_threads=1).trainer_args()
    model = io.BytesIO()
    text = shakespeare_text(100_000)
    spm.SentencePieceTrainer.train(sentence_iterator=iter(text.split("\n\n")), model_writer=model, **args)
    path = tmp_path / f"{model_type}.model"
    path.write_bytes(model.getvalue())
    return path


# --------------------------------------------------------------------------- export


def test_exported_model_matches_forja_on_ids_logits_eval_loss_and_greedy_generation(
    trained_run, exported, tmp_path
):
    folder = exported["out"]
    names = {p.name for p in Path(folder).iterdir()}
    assert names >= {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "tokenizer.model",
        "forja.json",
    }
    assert exported["architecture"] == "LlamaForCausalLM"
    assert exported["verification"]["logits_max_abs_diff"] <= ATOL
    # Forja's tokenizers put no space before a text; llama.cpp's converter reads this flag
    assert json.loads((Path(folder) / "tokenizer_config.json").read_text())["add_prefix_space"] is False
    loaded = ckpt.load_for_inference(trained_run)
    sp = Tokenizer(loaded.tokenizer_path)
    hf_tok, hf = load_hf(folder)
    assert type(hf).__name__ == "LlamaForCausalLM"
    assert hf.config.bos_token_id == hf.config.eos_token_id == sp.eos_id == hf_tok.bos_token_id

    for text in TEXTS:  # the same ids, no BOS added, and the same text back
        ids = sp.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == sp.decode(ids)
        diff, scale = max_logit_diff(loaded.model, hf, [sp.eos_id, *ids][:64])
        assert diff <= ATOL and scale > 0.1, (text, diff)

    # the mean cross-entropy of `forja eval`, recomputed with transformers' own loss over the same
    # windows (lm-evaluation-harness's rolling ones): EOS first, targets 64 at a time, each window
    # reading the 64 tokens before its last target, only its own targets counted
    text = shakespeare_text(61_500)[60_000:]
    (tmp_path / "eval.txt").write_text(text, encoding="utf-8")
    result = CliRunner().invoke(
        app, ["eval", str(trained_run), "--text", str(tmp_path / "eval.txt"), "--json"]
    )
    assert result.exit_code == 0, result.output
    forja_loss = json.loads(result.output)["loss"]
    ids = [hf_tok.bos_token_id, *hf_tok(text)["input_ids"]]
    total, count, n = 0.0, 0, len(ids) - 1
    with torch.no_grad():
        for start in range(0, n, 64):
            end = min(start + 64, n)
            w = torch.tensor([ids[max(0, end - 64) : end + 1]])
            labels = w.clone()
            labels[0, : w.shape[1] - (end - start)] = -100  # the context's own tokens are not scored
            total += hf(w, labels=labels).loss.item() * (end - start)
            count += end - start
    assert count > 5 * 64
    assert total / count == pytest.approx(forja_loss, rel=1e-5)

    for prompt in PROMPTS:  # greedy decoding: 32 new tokens, the same ids
        ids = sp.encode(prompt)
        ours = generate(loaded.model, ids, 32, temperature=0, eos_id=sp.eos_id)
        assert hf_greedy(hf, ids, 32) == ours, prompt


@pytest.mark.parametrize(
    "variant, architecture",
    [
        ({"tie_embeddings": True}, "LlamaForCausalLM"),
        ({"n_head": 4, "n_kv_head": 2, "rope_theta": 500_000.0, "norm_eps": 1e-6}, "LlamaForCausalLM"),
        ({"n_head": 4, "n_kv_head": 1, "qk_norm": True, "tie_embeddings": True}, "Qwen3ForCausalLM"),
        ({"mlp": "relu2", "ffn_hidden": 96}, "ArceeForCausalLM"),
    ],
    ids=["tied", "gqa-theta-eps", "qk_norm-mqa-tied", "relu2"],
)
def test_exact_variants_load_in_transformers_with_the_same_logits_and_generation(
    token_dir, tmp_path, variant, architecture
):
    run = make_run(tmp_path / "run", token_dir / "tokenizer.model", **variant)
    manifest = export_hf(str(run), tmp_path / "hf", verify=False)
    assert manifest["architecture"] == architecture and manifest["verification"] is None
    loaded = ckpt.load_for_inference(run)
    _, hf = load_hf(tmp_path / "hf")
    assert type(hf).__name__ == architecture
    sp = Tokenizer(loaded.tokenizer_path)
    ids = [sp.eos_id, *sp.encode(shakespeare_text(400))][:64]
    diff, scale = max_logit_diff(loaded.model, hf, ids)
    assert diff <= ATOL and scale > 0.5, diff
    ours = generate(loaded.model, ids[:20], 12, temperature=0, eos_id=sp.eos_id)  # the KV-cache path
    assert hf_greedy(hf, ids[:20], 12) == ours


@pytest.mark.parametrize("model_type", ["bpe", "unigram"])
def test_tokenizer_of_the_tokenize_stage_gives_sentencepiece_ids_through_autotokenizer(tmp_path, model_type):
    from transformers import AutoTokenizer

    sp_path = production_sp(tmp_path, model_type)
    folder = tmp_path / "tok"
    folder.mkdir()
    save_hf_tokenizer(sp_path, folder, max_seq_len=4096)
    hf_tok = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    sp = spm.SentencePieceProcessor(model_file=str(sp_path))
    body = shakespeare_text(120_000)[100_000:]
    texts = [*TEXTS, *(body[i : i + 700] for i in range(0, 20_000, 700))]
    for text in texts:
        ids = sp.encode(text)
        assert hf_tok(text)["input_ids"] == ids, text
        assert hf_tok.decode(ids) == sp.decode(ids)
        assert "▁" in text or sp.decode(ids) == text  # identity normalisation: the text comes back


def test_export_refuses_what_transformers_cannot_compute_exactly(token_dir, tmp_path):
    sp_path = token_dir / "tokenizer.model"
    run = make_run(tmp_path / "relu2-qk", sp_path, mlp="relu2", qk_norm=True)
    with pytest.raises(ForjaError, match=r"relu2.*qk_norm"):
        export_hf(str(run), tmp_path / "a")
    tok = Tokenizer(sp_path)
    lstm = ModelConfig(arch="lstm", vocab_size=tok.vocab_size, n_layer=1, d_model=32, max_seq_len=16)
    state = {"config": to_dict(lstm, TrainConfig()), "tokenizer_sha256": tok.sha256, "metrics": {}}
    ckpt.save_checkpoint(tmp_path / "lstm", 1, build_model(lstm), None, state, sp_path)
    with pytest.raises(ForjaError, match=r"'arch'.*LSTM"):
        export_hf(str(tmp_path / "lstm"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()

    # user-defined symbols cut out of the raw text cannot reproduce a whole-text dummy prefix
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(shakespeare_text(30_000).splitlines()),
        model_writer=model,
        vocab_size=300,
        user_defined_symbols=["\n"],
        minloglevel=2,
    )
    (tmp_path / "ud.model").write_bytes(model.getvalue())
    with pytest.raises(ForjaError, match="add_dummy_prefix"):
        build_hf_tokenizer(tmp_path / "ud.model")


def test_export_is_idempotent_and_never_overwrites(trained_run, exported, token_dir, tmp_path):
    folder = exported["out"]
    before = {p.name: p.stat().st_mtime_ns for p in os.scandir(folder)}
    again = export_hf(str(trained_run), folder)
    assert again["created_at"] == exported["created_at"]
    assert {p.name: p.stat().st_mtime_ns for p in os.scandir(folder)} == before
    other = make_run(tmp_path / "other", token_dir / "tokenizer.model")
    with pytest.raises(ForjaError, match="already exists"):
        export_hf(str(other), folder)


# --------------------------------------------------------------------------- import


def test_round_trip_through_the_cli_gives_identical_weights_logits_and_a_run_to_continue(
    trained_run, token_dir, tmp_path
):
    runner = CliRunner()
    res = runner.invoke(app, ["export-hf", str(trained_run), "--out", str(tmp_path / "hf")])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["import-hf", str(tmp_path / "hf"), "--out", str(tmp_path / "imported")])
    assert res.exit_code == 0, res.output
    manifest = json.loads(res.output)
    assert manifest["source"]["architecture"] == "LlamaForCausalLM"

    a, b = ckpt.load_for_inference(trained_run), ckpt.load_for_inference(tmp_path / "imported")
    assert a.model_cfg == b.model_cfg and a.train_cfg == b.train_cfg
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.tensor([Tokenizer(a.tokenizer_path).encode(shakespeare_text(300))[:64]])
    assert torch.equal(a.model(ids)[0], b.model(ids)[0])
    assert b.state["tokenizer_sha256"] == Tokenizer(token_dir / "tokenizer.model").sha256
    assert not (b.checkpoint / ckpt.OPTIM_FILE).exists()

    # continued pretraining: a new run that starts from the imported weights (fresh optimizer)
    trainer = Trainer(
        b.model_cfg,
        TrainConfig(**{**a.train_cfg.__dict__, "max_steps": 2, "batch_size": 2}),
        token_dir,
        tmp_path / "continued",
        init_from=tmp_path / "imported",
    )
    assert all(torch.equal(p, sa[k]) for k, p in trainer.model.state_dict().items())
    result = trainer.fit()
    assert result.step == 2 and result.checkpoint.name == "step-0000002"
    assert not torch.equal(trainer.model.embed_tokens.weight.detach(), sa["embed_tokens.weight"])


def _folder_copy(exported, tmp_path):
    folder = tmp_path / "src"
    shutil.copytree(exported["out"], folder)
    return folder


def _edit_config(folder, **changes):
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"rope_scaling": {"rope_type": "linear", "factor": 2.0}}, "rope_scaling"),
        ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4, "factor": 2.0}}, "rope_parameters"),
        ({"attention_bias": True}, "attention_bias"),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "model_type"),
        ({"head_dim": 16}, "head_dim"),
    ],
)
def test_import_refuses_a_config_forja_cannot_compute_exactly_naming_the_field(
    exported, tmp_path, changes, message
):
    folder = _folder_copy(exported, tmp_path)
    _edit_config(folder, **changes)
    with pytest.raises(ForjaError, match=message):
        import_hf(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_refuses_missing_tokenizer_pickles_and_weights_that_do_not_fit(exported, tmp_path):
    folder = _folder_copy(exported, tmp_path)
    (folder / "tokenizer.model").unlink()
    with pytest.raises(ForjaError, match="SentencePiece"):
        import_hf(folder, tmp_path / "out")

    folder = _folder_copy(exported, tmp_path / "b")
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ForjaError, match="pickled"):
        import_hf(folder, tmp_path / "out")

    folder = _folder_copy(exported, tmp_path / "c")
    tensors = load_file(str(folder / "model.safetensors"))
    del tensors["model.norm.weight"]
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ForjaError, match=r"missing.*model\.norm\.weight"):
        import_hf(folder, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_import_reads_bf16_shards_of_a_foreign_folder(exported, tmp_path):
    """A folder as the Hub ships them: bf16 weights in shards with an index, no forja.json."""
    folder = _folder_copy(exported, tmp_path)
    (folder / "forja.json").unlink()
    tensors = {k: v.to(torch.bfloat16) for k, v in load_file(str(folder / "model.safetensors")).items()}
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[:5], "model-00002-of-00002.safetensors": names[5:]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
    weight_map = {k: file for file, keys in shards.items() for k in keys}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    _edit_config(folder, torch_dtype="bfloat16", dtype="bfloat16")

    manifest = import_hf(folder, tmp_path / "out")
    assert manifest["source"]["weights_dtypes"] == ["bfloat16"]
    loaded = ckpt.load_for_inference(tmp_path / "out")
    for name, p in loaded.model.state_dict().items():
        key = name if name == "lm_head.weight" else f"model.{name}"
        assert p.dtype == torch.float32 and torch.equal(p, tensors[key].float()), name
    assert loaded.train_cfg == TrainConfig()  # no forja.json: the default training settings


def test_forja_eval_total_nats_equals_lm_eval_loglikelihood_rolling_on_the_export(
    trained_run, exported, tmp_path
):
    """lm-evaluation-harness itself, offline, on the exported folder: its rolling log-likelihood of
    a text equals minus `forja eval`'s total_nats, for a text within one context and for texts of
    several contexts whose last window is partial."""
    lm_eval_hf = pytest.importorskip("lm_eval.models.huggingface", reason="could not import 'lm_eval'")
    from lm_eval.api.instance import Instance

    lm = lm_eval_hf.HFLM(pretrained=exported["out"], dtype="float32", device="cpu", batch_size=1)
    texts = [shakespeare_text(61_000)[60_000 : 60_000 + n] for n in (40, 700, 2_345)]
    requests = [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]
    theirs = lm.loglikelihood_rolling(requests, disable_tqdm=True)
    for text, ll in zip(texts, theirs, strict=True):
        (tmp_path / "t.txt").write_text(text, encoding="utf-8")
        result = CliRunner().invoke(
            app, ["eval", str(trained_run), "--text", str(tmp_path / "t.txt"), "--json"]
        )
        assert result.exit_code == 0, result.output
        ours = json.loads(result.output)["total_nats"]
        assert -ll == pytest.approx(ours, rel=1e-5), (len(text), -ll, ours)


def test_downstream_tasks_give_the_same_accuracy_through_lm_evaluation_harness(
    trained_run, exported, token_dir, tmp_path
):
    """Forja's downstream tasks, written as lm-evaluation-harness tasks (a task YAML over a local
    JSON Lines file, no hub) and run by the harness on the export: the same acc and acc_norm as
    Forja's own scorer on the checkpoint, and the same log-likelihood for every choice."""
    lm_eval = pytest.importorskip("lm_eval", reason="could not import 'lm_eval'")
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    freeze_eval_set(token_dir, tmp_path / "eval", EvalConfig())  # the held-out documents
    texts, _ = load_eval_texts(tmp_path / "eval")
    tasks = downstream.build_tasks(texts, seed=0, max_items=24)
    for name, items in tasks.items():
        downstream.write_lm_eval_task(f"forja_{name}", items, tmp_path / "tasks", tmp_path / "datasets")
    lm = HFLM(pretrained=exported["out"], dtype="float32", device="cpu", batch_size=8)
    out = lm_eval.simple_evaluate(
        model=lm,
        tasks=[f"forja_{name}" for name in tasks],
        task_manager=TaskManager(include_path=str(tmp_path / "tasks"), include_defaults=False),
        log_samples=True,
    )
    loaded = ckpt.load_for_inference(trained_run)
    tok, max_len = Tokenizer(loaded.tokenizer_path), loaded.model_cfg.max_seq_len
    for name, items in tasks.items():
        assert len(items) >= 12, name
        ours = downstream.score_items(loaded.model, tok, items, max_len)
        theirs = out["results"][f"forja_{name}"]
        assert (theirs["acc,none"], theirs["acc_norm,none"]) == (ours["acc"], ours["acc_norm"]), name
        lls = downstream.loglikelihoods(
            loaded.model, tok, [(it.context, c) for it in items for c in it.choices], max_len
        )
        for sample in out["samples"][f"forja_{name}"]:
            i = sample["doc_id"]
            assert sample["target"] == items[i].gold
            got = [ll for ll, _ in sample["filtered_resps"]]
            assert got == pytest.approx(lls[i * downstream.K : (i + 1) * downstream.K], abs=1e-3), (name, i)


def test_llama_cpp_s_converter_reads_that_forja_tokenizers_add_no_space_prefix(exported, tmp_path):
    """llama.cpp's own converter (fetched by `make setup`) turns the export into a GGUF that says
    `tokenizer.ggml.add_space_prefix = false`: without it llama.cpp tokenizes every text as " " + text."""
    converter = Path(sys.prefix) / "llama-convert"
    if not (converter / "convert_hf_to_gguf.py").is_file():
        pytest.skip(f"llama.cpp's converter is not in {converter}: run scripts/fetch_llama_converter")
    gguf_file = tmp_path / "model.gguf"
    r = subprocess.run(
        [
            sys.executable,
            "convert_hf_to_gguf.py",
            exported["out"],
            "--outfile",
            str(gguf_file),
            "--outtype",
            "f32",
        ],
        cwd=converter,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    read = (
        "import sys; from gguf import GGUFReader; f = GGUFReader(sys.argv[1]).fields;"
        "print(f['tokenizer.ggml.add_space_prefix'].contents(), f['tokenizer.ggml.model'].contents())"
    )
    r = subprocess.run(
        [sys.executable, "-c", read, str(gguf_file)],
        env={**os.environ, "PYTHONPATH": str(converter / "gguf-py")},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["False", "llama"]
