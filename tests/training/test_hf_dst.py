"""sparseforce.hf.DSTCallback: dynamic sparse training inside transformers.Trainer, on a tiny GPT-2
on the CPU: the masks move, the pruned weights stay 0, the state rides with the Trainer's
checkpoints and a resumed run ends as an uninterrupted one."""
import os
import shutil

import pytest
import torch

transformers = pytest.importorskip("transformers")

import sparseforce as sf  # noqa: E402

transformers.logging.set_verbosity_error()
pytestmark = pytest.mark.usefixtures("one_thread")


def gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=48, n_positions=16, bos_token_id=0,
                                  eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(cfg)


ROWS = [{"input_ids": r, "labels": r}
        for r in torch.randint(1, 48, (64, 8), generator=torch.Generator().manual_seed(1))]


def trainer(model, callback, out, steps=8, accumulate=1):
    args = transformers.TrainingArguments(str(out), report_to=[], max_steps=steps, save_strategy="steps", save_steps=4,
                                          per_device_train_batch_size=8 // accumulate,
                                          gradient_accumulation_steps=accumulate, disable_tqdm=True, use_cpu=True,
                                          seed=3, logging_strategy="no")
    return transformers.Trainer(model=model, args=args, train_dataset=ROWS, callbacks=[callback])


def counts(masks):
    return [int(m.sum()) for m in masks.values()]


@pytest.mark.parametrize("method, options, accumulate", [("rigl", {}, 1), ("set", {"scope": "global"}, 1),
                                                         ("rigl", {}, 2)])
def test_the_callback_moves_the_masks_and_keeps_the_pruned_weights_zero(tmp_path, method, options, accumulate):
    model = gpt2()
    masks = sf.random(model, sparsity=0.8, seed=0)
    start = {n: m.clone() for n, m in masks.items()}
    cb = sf.hf.DSTCallback(method, masks, update_every=2, end=1.0, backend="reference", **options)
    t = trainer(model, cb, tmp_path, accumulate=accumulate)  # stepped once per optimizer step
    t.train()
    assert cb.dst.steps_taken == 8 and type(cb.dst).__name__ == {"rigl": "RigL", "set": "SET"}[method]
    moved = [int((start[n] != m).sum()) for n, m in masks.items()]
    assert all(moved) if method == "rigl" else any(moved)
    if method == "rigl":
        assert counts(masks) == counts(start)
    assert sum(counts(masks)) == sum(counts(start))
    params = dict(model.named_parameters())
    state = t.optimizer.optimizer.state  # under accelerate's wrapper: the Trainer's AdamW
    for n, m in masks.items():
        assert torch.count_nonzero(params[n].detach()[~m]) == 0, n
        for key in ("exp_avg", "exp_avg_sq"):  # the dropped weights' too
            assert torch.count_nonzero(state[params[n]][key][~m]) == 0, (n, key)
    if method == "set":
        assert cb.dst.state_dict()["options"]["seed"] == 3  # the Trainer's
    for step in (4, 8):
        saved = torch.load(tmp_path / f"checkpoint-{step}" / sf.hf.DST_STATE_NAME, weights_only=True)
        assert saved["state"]["step"] == step
    assert sf.Masks(saved["masks"]["masks"]) == masks


def test_a_resumed_trainer_ends_as_an_uninterrupted_one(tmp_path):
    model = gpt2()
    masks = sf.random(model, sparsity=0.8, seed=0)
    initial = sf.Masks({n: m.clone() for n, m in masks.items()})
    cb = sf.hf.DSTCallback("rigl", masks, update_every=3, end=1.0, backend="reference")
    trainer(model, cb, tmp_path).train()
    shutil.rmtree(tmp_path / "checkpoint-8")

    model2 = gpt2()
    masks2 = sf.Masks({n: m.clone() for n, m in initial.items()})
    cb2 = sf.hf.DSTCallback("rigl", masks2, update_every=3, end=1.0, backend="reference")
    trainer(model2, cb2, tmp_path).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
    assert cb2.dst.steps_taken == 8 and masks2 == masks and masks2 != initial
    for (n, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), n


def test_the_callback_refuses_what_it_cannot_do(tmp_path):
    model = gpt2()
    masks = sf.random(model, sparsity=0.8, seed=0)
    with pytest.raises(ValueError, match="dst_options\\['ends'\\] is not an option of dst='rigl'"):
        sf.hf.DSTCallback("rigl", masks, ends=0.5)
    with pytest.raises(ValueError, match="dst must be None or one of"):
        sf.hf.DSTCallback("rigl2", masks)
    with pytest.raises(TypeError, match="masks must be a sparseforce.Masks"):
        sf.hf.DSTCallback("rigl", [1])
    cb = sf.hf.DSTCallback("rigl", masks, update_every=2, backend="reference")
    trainer(model, cb, tmp_path, steps=4).train()
    os.remove(tmp_path / "checkpoint-4" / sf.hf.DST_STATE_NAME)
    cb2 = sf.hf.DSTCallback("rigl", sf.random(gpt2(), sparsity=0.8, seed=0), update_every=2, backend="reference")
    with pytest.raises(FileNotFoundError, match="resumes at step 4"):
        trainer(gpt2(), cb2, tmp_path, steps=6).train(resume_from_checkpoint=str(tmp_path / "checkpoint-4"))
