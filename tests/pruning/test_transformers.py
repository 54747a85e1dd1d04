"""Hugging Face transformers as a user brings them: models built from tiny configs (no download),
DataCollator-style dict batches, the default prunable set (GPT-2's Conv1D, tied heads), masked
training with transformers.Trainer, and masks as .safetensors."""
import json
import os
import struct
import subprocess
import sys
import zlib

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
st = pytest.importorskip("safetensors.torch")

import sparseforce as sf  # noqa: E402
from sparseforce.masks import MasksFileError  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

transformers.logging.set_verbosity_error()
# Tiny transformers at init give their attention's query/key weights tiny saliencies: collapse
# warnings are expected here and are tested elsewhere.
pytestmark = pytest.mark.filterwarnings("ignore::sparseforce.LayerCollapseWarning")

V, T, B = 48, 8, 4  # vocabulary, sequence length, batch size


def gpt2(dropout=0.1):
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=V, n_positions=16, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)
    return transformers.GPT2LMHeadModel(cfg)


def bert(dropout=0.1):
    cfg = transformers.BertConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                  vocab_size=V, max_position_embeddings=16, num_labels=3, pad_token_id=0,
                                  hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return transformers.BertForSequenceClassification(cfg)


def llama():
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, num_key_value_heads=1,
                                   intermediate_size=64, vocab_size=V, max_position_embeddings=16, bos_token_id=0,
                                   eos_token_id=0, pad_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def vit():
    cfg = transformers.ViTConfig(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, intermediate_size=64,
                                 image_size=16, patch_size=4, num_labels=3, hidden_dropout_prob=0.1)
    return transformers.ViTForImageClassification(cfg)


MODELS = {"gpt2": gpt2, "bert": bert, "llama": llama, "vit": vit}


def batch(kind):
    """One batch as a DataCollator yields it: a dict holding the labels."""
    if kind == "vit":
        return {"pixel_values": torch.randn(B, 3, 16, 16), "labels": torch.randint(0, 3, (B,))}
    ids = torch.randint(1, V, (B, T))
    mask = torch.ones_like(ids)
    mask[0, -2:] = 0  # some padding
    labels = torch.randint(0, 3, (B,)) if kind == "bert" else ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def expected_default(model):
    """The default set spelled out with real isinstance checks: every Conv/Linear/Conv1D weight
    that is not an embedding's."""
    embedded = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    ids = {id(m.weight) for m in model.modules()
           if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, Conv1D)) and id(m.weight) not in embedded}
    return [n for n, p in model.named_parameters() if id(p) in ids]


def snapshot(model):
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grad": {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()},
        "requires_grad": {n: p.requires_grad for n, p in model.named_parameters()},
        "training": [m.training for m in model.modules()],
    }


def assert_same(a, b):
    assert a["state"].keys() == b["state"].keys()
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    for n in a["grad"]:
        x, y = a["grad"][n], b["grad"][n]
        assert (x is None) == (y is None) and (x is None or torch.equal(x, y)), n
    assert a["requires_grad"] == b["requires_grad"] and a["training"] == b["training"]


def messy_state(model, data):
    """Existing grads on some parameters, one frozen, a mixed train/eval state."""
    model(**data[0]).loss.backward()
    next(model.parameters()).grad = None
    list(model.parameters())[3].requires_grad_(False)
    model.eval()
    list(model.modules())[4].train()


# ------------------------------------------------------------------ what is prunable by default

def test_default_prunable_sets():
    g = gpt2()
    names = sf.prunable_names(g)
    conv1d = [f"{n}.weight" for n, m in g.named_modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 8 and names == conv1d  # all of GPT-2's Conv1D, nothing else
    assert g.lm_head.weight is g.transformer.wte.weight  # tied: the head is the embedding, not pruned
    assert "transformer.wte.weight" not in names and "transformer.wpe.weight" not in names
    for make in (bert, llama, vit):
        model = make()
        assert sf.prunable_names(model) == expected_default(model)
    assert "lm_head.weight" in sf.prunable_names(llama())  # untied: an ordinary Linear
    assert "classifier.weight" in sf.prunable_names(bert())
    assert sf.prunable_names(vit())[0] == "vit.embeddings.patch_embeddings.projection.weight"


def test_conv1d_is_recognised_by_name_and_module_only():
    class Conv1DLike(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.randn(3, 4))

    def named(module_name, cls_name="Conv1D"):
        cls = type(cls_name, (Conv1DLike,), {"__module__": module_name})
        return torch.nn.Sequential(cls(), torch.nn.Linear(4, 2))

    assert sf.prunable_names(named("transformers.models.fancy.modeling")) == ["0.weight", "1.weight"]
    assert sf.prunable_names(named("mylib.layers")) == ["1.weight"]
    assert sf.prunable_names(named("transformers.x", "Conv1DX")) == ["1.weight"]
    sub = type("MyConv1D", (Conv1D,), {"__module__": "mylib"})  # a subclass of the real one counts
    assert sf.prunable_names(torch.nn.Sequential(sub(4, 3))) == ["0.weight"]


def test_importing_sparseforce_imports_neither_transformers_nor_safetensors(tmp_path):
    code = ("import sys, torch, sparseforce as sf; "
            "m = torch.nn.Linear(3, 2); sf.snip(m, [(torch.randn(2, 3), torch.tensor([0, 1]))], sparsity=0.5)"
            ".save(sys.argv[1]); sf.Masks.load(sys.argv[1]); "
            "bad = [n for n in ('transformers', 'safetensors') if n in sys.modules]; "
            "assert not bad, bad")
    root = os.path.dirname(os.path.dirname(sf.__file__))
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "m.pt")], capture_output=True, text=True,
                         cwd=root)
    assert out.returncode == 0, out.stderr


# ------------------------------------------------------------------ pruning on dict batches

@pytest.mark.parametrize("kind", sorted(MODELS))
@pytest.mark.parametrize("method", ["force", "snip"])
def test_masks_for_each_model_on_dict_batches(kind, method):
    model = MODELS[kind]()
    data = [batch(kind) for _ in range(2)]
    messy_state(model, data)
    before = snapshot(model)
    sparsity = float(torch.empty(()).uniform_(0.5, 0.97))
    kw = {"iterations": 2} if method == "force" else {}
    masks = getattr(sf, method)(model, data, sparsity=sparsity, **kw)
    assert_same(before, snapshot(model))
    assert list(masks) == expected_default(model)
    n = sum(m.numel() for m in masks.values())
    assert masks.num_kept() == round(n * (1 - sparsity))


@pytest.mark.parametrize("make", [gpt2, bert], ids=["gpt2", "bert"])
@pytest.mark.parametrize("custom", [False, True], ids=["default_loss", "loss_fn"])
def test_snip_scores_the_loss_the_model_computes_or_loss_fn(make, custom):
    """Against a plain oracle: backward of out.loss (or of the custom loss) on a copy of the model."""
    model = make(dropout=0.0)
    kind = "bert" if make is bert else "gpt2"
    data = [batch(kind)]
    seen = []

    def loss_fn(out, target):
        seen.append(target)
        return out.logits.float().square().mean() + F.softplus(out.logits).mean()

    masks = sf.snip(model, data, sparsity=0.8, loss_fn=loss_fn if custom else None)
    if custom:  # the whole dict batch is the target
        assert len(seen) == 1 and seen[0].keys() == data[0].keys()
        assert all(torch.equal(seen[0][k], data[0][k]) for k in data[0])
    oracle = make(dropout=0.0)
    oracle.load_state_dict(model.state_dict())
    oracle.train()
    out = oracle(**data[0])
    (loss_fn(out, data[0]) if custom else out.loss).backward()
    params = dict(oracle.named_parameters())
    names = expected_default(oracle)
    scores = [(params[n] * params[n].grad).abs().detach() for n in names]
    k = round(sum(s.numel() for s in scores) * 0.2)
    want = sf.ops.topk_masks(scores, k, backend="reference")
    assert list(masks) == names
    agree = sum(int((masks[n] == w).sum()) for n, w in zip(names, want))
    # Same math; float summation order may differ a hair, so allow a handful of swaps at the cut.
    assert agree >= sum(w.numel() for w in want) - 4


def test_iter_snip_and_grasp_on_dict_batches():
    model = bert()
    data = [transformers.BatchEncoding(batch("bert")), batch("bert")]  # a tokenizer's type, a plain dict
    before = snapshot(model)
    a = sf.iter_snip(model, data, sparsity=0.9, iterations=3)
    b = sf.grasp(model, data, sparsity=0.9, batches_per_iteration=2)
    assert_same(before, snapshot(model))
    n = a.numel()
    assert a.num_kept() == b.num_kept() == round(n * 0.1)


def test_grasp_scales_the_logits_it_hands_to_loss_fn():
    model, data = bert(), [batch("bert")]
    outputs = []

    def ce(out, b):
        outputs.append(out)
        return F.cross_entropy(out.logits, b["labels"])

    t = float(torch.empty(()).uniform_(2, 50))
    scaled = sf.grasp(model, data, sparsity=0.8, loss_fn=ce, temperature=t, seed=3)
    assert all(o.loss is None for o in outputs)  # the model's .loss is of unscaled logits: dropped
    by_hand = sf.grasp(model, data, sparsity=0.8, temperature=1.0, seed=3,
                       loss_fn=lambda out, b: F.cross_entropy(out.logits / t, b["labels"]))
    assert scaled == by_hand
    unscaled = sf.grasp(model, data, sparsity=0.8, temperature=1.0, seed=3, loss_fn=ce)
    assert unscaled != scaled  # the temperature did change the scores
    with pytest.raises(ValueError, match="temperature.*own .loss"):
        sf.grasp(model, data, sparsity=0.8, temperature=t)  # no logits to scale inside the model's loss


def test_errors_for_dict_batches_say_what_to_do():
    model = gpt2()
    no_labels = [{k: v for k, v in batch("gpt2").items() if k != "labels"}]
    with pytest.raises(ValueError, match=r"no \.loss.*'labels'.*loss_fn"):
        sf.force(model, no_labels, sparsity=0.9, iterations=2)
    with pytest.raises(ValueError, match="keys must be str"):
        sf.snip(model, [{0: torch.zeros(2, 3, dtype=torch.long)}], sparsity=0.9)
    pair = [(batch("gpt2")["input_ids"], torch.zeros(B, dtype=torch.long))]
    with pytest.raises(TypeError, match="returned CausalLMOutput.*loss_fn"):
        sf.snip(model, pair, sparsity=0.9)  # a pair batch: cross-entropy on an output that is no tensor
    with pytest.raises(ValueError, match="'lm_head.weight' is the same tensor as 'transformer.wte.weight'"):
        sf.snip(model, [batch("gpt2")], sparsity=0.9, prunable=["lm_head.weight"])
    from sparseforce.train import evaluate
    with pytest.raises(TypeError, match="dict batch.*Trainer"):
        evaluate(model, [batch("gpt2")])


def test_synflow_takes_vit_pixels_and_refuses_token_models():
    model = vit()
    before = snapshot(model)
    masks = sf.synflow(model, sparsity=0.8, iterations=3, input_shape=(3, 16, 16))
    assert_same(before, snapshot(model))
    assert list(masks) == expected_default(model) and masks.num_kept() == round(masks.numel() * 0.2)
    with pytest.raises(ValueError, match="dict batches.*input_shape"):
        sf.synflow(model, [batch("vit")], sparsity=0.8, iterations=2)
    with pytest.raises(ValueError, match="token ids.*force or snip"):
        sf.synflow(gpt2(), sparsity=0.8, iterations=2, input_shape=(T,))


@pytest.mark.parametrize("how", ["names", "predicate"])
def test_prunable_excludes_embeddings_and_the_lm_head(how):
    model = llama()
    data = [batch("llama")]
    if how == "names":
        prunable = [n for n in sf.prunable_names(model) if not n.startswith("lm_head")]
    else:
        def prunable(name, p):
            return p.dim() == 2 and "embed_tokens" not in name and not name.startswith("lm_head")
    masks = sf.force(model, data, sparsity=0.9, iterations=2, prunable=prunable)
    want = [n for n in expected_default(model) if n != "lm_head.weight"]
    assert list(masks) == want
    assert masks.num_kept() == round(masks.numel() * 0.1)


# ------------------------------------------------------------------ training with transformers.Trainer

class Rows(torch.utils.data.Dataset):
    def __init__(self, n):
        ids = torch.randint(1, V, (n, T))
        self.rows = [{"input_ids": r, "attention_mask": torch.ones(T, dtype=torch.long), "labels": r} for r in ids]

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return self.rows[i]


@pytest.mark.parametrize("optim", ["adamw_torch", "adamw_torch_fused", "foreach"])
def test_apply_masks_keeps_pruned_weights_zero_under_trainer(tmp_path, optim):
    model = gpt2()
    train = Rows(16)
    data = [transformers.default_data_collator(train.rows[i:i + 4]) for i in (0, 4)]  # the Trainer's batches
    masks = sf.force(model, data, sparsity=0.9, iterations=2)
    sf.apply_masks(model, masks)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), report_to=[], use_cpu=True, max_steps=4, per_device_train_batch_size=4,
        learning_rate=1e-2, weight_decay=0.1, warmup_steps=0, save_strategy="no", logging_strategy="no",
        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch" if optim == "foreach" else optim)
    opt = None
    if optim == "foreach":
        opt = (torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, foreach=True), None)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=train,
                                   **({"optimizers": opt} if opt else {}))
    trainer.train()
    params = dict(model.named_parameters())
    for n, m in masks.items():
        assert not params[n][~m].any(), n  # every pruned weight exactly 0
        assert not torch.equal(params[n][m], before[n][m]), n  # the kept ones trained
    assert not torch.equal(params["transformer.wte.weight"], before["transformer.wte.weight"])
    assert not os.listdir(tmp_path) or all(not f.startswith("checkpoint") for f in os.listdir(tmp_path))


# ------------------------------------------------------------------ masks as .safetensors

def gpt2_masks():
    model = gpt2()
    return model, sf.snip(model, [batch("gpt2")], sparsity=float(torch.empty(()).uniform_(0.5, 0.99)))


def test_safetensors_round_trip_and_plain_load(tmp_path):
    model, masks = gpt2_masks()
    path = tmp_path / "m.safetensors"
    masks.save(path)
    back = sf.Masks.load(path, model=model)
    assert back == masks and list(back) == list(masks)  # values and the model's order
    plain = st.load_file(str(path))  # no sparseforce needed to read it
    assert set(plain) == set(masks) and all(plain[n].dtype == torch.bool and torch.equal(plain[n], masks[n])
                                            for n in masks)
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "sparseforce.masks" and meta["version"] == "1"
    assert float(meta["density"]) == masks.density() and int(meta["kept"]) == masks.num_kept()
    # the torch.save format is still what other names get
    masks.save(tmp_path / "m.pt")
    assert torch.load(tmp_path / "m.pt", weights_only=True)["format"] == "sparseforce.masks"
    assert sf.Masks.load(tmp_path / "m.pt") == masks


def test_safetensors_edge_cases(tmp_path):
    base = torch.rand(6, 5) > 0.5
    odd = sf.Masks({"z.view": base[:, 1:3], "a.same": base, "b.same_again": base, "scalar": torch.tensor(False),
                    "empty": torch.zeros(0, 3, dtype=torch.bool)})
    odd.save(tmp_path / "odd.SafeTensors")  # the suffix in any case
    assert sf.Masks.load(tmp_path / "odd.SafeTensors") == odd
    with pytest.raises(TypeError, match="map_location for a .safetensors file must be a device"):
        sf.Masks.load(tmp_path / "odd.SafeTensors", map_location={"cpu": "cpu"})
    assert sf.Masks.load(tmp_path / "odd.SafeTensors", map_location=torch.device("cpu")) == odd
    sf.Masks().save(tmp_path / "none.safetensors")
    assert len(sf.Masks.load(tmp_path / "none.safetensors")) == 0


def write_raw(path, header, data: bytes):
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)


def good_parts(masks):
    """(header, data) of a valid file for ``masks``, built by hand (the format is documented)."""
    header, data = {}, b""
    for n, m in masks.items():
        b = m.to(torch.uint8).numpy().tobytes()
        header[n] = {"dtype": "BOOL", "shape": list(m.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    header["__metadata__"] = {"format": "sparseforce.masks", "version": "1", "names": json.dumps(list(masks)),
                              "crc32": json.dumps({n: zlib.crc32(m.to(torch.uint8).numpy().tobytes())
                                                   for n, m in masks.items()})}
    return header, data


def test_hand_built_file_loads(tmp_path):
    _, masks = gpt2_masks()
    header, data = good_parts(masks)
    write_raw(tmp_path / "h.safetensors", header, data)
    assert sf.Masks.load(tmp_path / "h.safetensors") == masks  # so the broken variants below differ by one thing


def _broken(kind, masks):
    header, data = good_parts(masks)
    meta = header["__metadata__"]
    first = next(iter(masks))
    if kind == "wrong_dtype":
        header[first]["dtype"] = "U8"
    elif kind == "float_weights":
        return None, st.save({"w": torch.randn(3, 2)})
    elif kind == "no_format_tag":
        del meta["format"]
    elif kind == "other_format":
        meta["format"] = "sparseforce.checkpoint"
    elif kind == "newer_version":
        meta["version"] = "99"
    elif kind == "flipped_byte":
        data = bytes([data[0] ^ 1]) + data[1:]
    elif kind == "byte_two":  # a valid checksum of bytes that are no bool
        data = b"\x02" + data[1:]
        crcs = json.loads(meta["crc32"])
        crcs[first] = zlib.crc32(data[:masks[first].numel()])
        meta["crc32"] = json.dumps(crcs)
    elif kind == "names_mismatch":
        meta["names"] = json.dumps(list(masks)[1:])
    elif kind == "no_crc":
        del meta["crc32"]
    return header, data


BROKEN = {
    "wrong_dtype": r"invalid masks.*not BOOL.*U8",
    "float_weights": r"not a sparseforce masks file.*non-bool",
    "no_format_tag": r"not a sparseforce masks file.*no sparseforce 'format' tag",
    "other_format": r"format tag is 'sparseforce.checkpoint'",
    "newer_version": r"version 99, newer.*upgrade",
    "flipped_byte": r"corrupt: the stored bytes of .* checksum",
    "byte_two": r"corrupt: mask .* bytes other than 0 and 1",
    "names_mismatch": r"corrupt: the masks its metadata lists",
    "no_crc": r"corrupt: its metadata lacks",
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_broken_safetensors_files(tmp_path, kind):
    _, masks = gpt2_masks()
    header, data = _broken(kind, masks)
    path = tmp_path / f"{kind}.safetensors"
    if header is None:
        path.write_bytes(data)
    else:
        write_raw(path, header, data)
    before = path.read_bytes()
    with pytest.raises(MasksFileError, match=f"{kind}.safetensors.*" + BROKEN[kind]):
        sf.Masks.load(path)
    assert path.read_bytes() == before


def test_truncated_and_foreign_safetensors_files(tmp_path):
    _, masks = gpt2_masks()
    masks.save(tmp_path / "m.safetensors")
    good = (tmp_path / "m.safetensors").read_bytes()
    n = struct.unpack("<Q", good[:8])[0]
    cuts = {0: "empty", 5: "fewer than the 8", 8 + n // 2: "truncated: its safetensors header",
            8 + n + 1: "truncated: its tensors need", len(good) - 1: "truncated: its tensors need"}
    for cut, pattern in cuts.items():
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(good[:cut])
        with pytest.raises(MasksFileError, match=f"cut{cut}.safetensors.*{pattern}"):
            sf.Masks.load(path)
    (tmp_path / "text.safetensors").write_text("this is not a safetensors file at all")
    with pytest.raises(MasksFileError, match="text.safetensors.*not a sparseforce masks file"):
        sf.Masks.load(tmp_path / "text.safetensors")
    masks.save(tmp_path / "zip.pt")
    os.replace(tmp_path / "zip.pt", tmp_path / "zip.safetensors")  # torch.save's format under the wrong name
    with pytest.raises(MasksFileError, match="zip.safetensors.*not a sparseforce masks file"):
        sf.Masks.load(tmp_path / "zip.safetensors")
    os.replace(tmp_path / "m.safetensors", tmp_path / "renamed.pt")  # and the other way round
    with pytest.raises(MasksFileError, match=r"renamed.pt.*is a safetensors file.*rename"):
        sf.Masks.load(tmp_path / "renamed.pt")


def test_failed_safetensors_save_leaves_the_file_as_it_was(tmp_path, monkeypatch):
    _, masks = gpt2_masks()
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"previous contents")

    def boom(*a, **k):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(st, "save", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        masks.save(path)
    assert path.read_bytes() == b"previous contents" and os.listdir(tmp_path) == ["m.safetensors"]


def test_without_safetensors_installed_the_error_says_how_to_get_it(tmp_path, monkeypatch):
    _, masks = gpt2_masks()
    masks.save(tmp_path / "ok.safetensors")
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"previous contents")
    monkeypatch.setitem(sys.modules, "safetensors", None)  # import safetensors now fails
    monkeypatch.setitem(sys.modules, "safetensors.torch", None)
    with pytest.raises(ModuleNotFoundError, match="needs the safetensors package: pip install safetensors"):
        masks.save(path)
    assert path.read_bytes() == b"previous contents"
    with pytest.raises(ModuleNotFoundError, match="loading masks as .safetensors needs"):
        sf.Masks.load(tmp_path / "ok.safetensors")
    masks.save(tmp_path / "m.pt")  # the torch.save format needs nothing else
    assert sf.Masks.load(tmp_path / "m.pt") == masks


def test_the_readme_llama_example_says_why_it_warns_of_layer_collapse():
    # was: the example printed a LayerCollapseWarning that nothing in the README explained
    import re
    import warnings
    from pathlib import Path
    readme = (Path(__file__).resolve().parents[2] / "docs" / "huggingface.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "LlamaForCausalLM" in b)
    lines = block.splitlines()
    first = next(i for i, ln in enumerate(lines) if ln.startswith("llama = "))
    last = max(i for i, ln in enumerate(lines) if ln.startswith("masks_l = ")) + 1
    code = "\n".join(lines[first:last])
    while not code.rstrip().endswith(")"):  # the last statement's continuation lines
        last += 1
        code = "\n".join(lines[first:last])
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        exec(code, {"torch": torch, "transformers": transformers, "sf": sf})
    if any(issubclass(w.category, sf.LayerCollapseWarning) for w in caught):
        assert "LayerCollapseWarning" in "\n".join(lines[max(0, first - 6):last + 3]), \
            "the README's Llama example warns of layer collapse without a word about it"
