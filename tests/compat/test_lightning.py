"""sparseforce.compat.lightning with a real lightning.pytorch.Trainer on the CPU: PruneAtStart (masks,
zeros through training, checkpoint and resume, the RNG and the training batches, errors) and
ModelPruning on the exact selection (against Lightning's own, ties)."""
import copy
import importlib
import sys

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pl = pytest.importorskip("lightning.pytorch")
from lightning.pytorch.callbacks import ModelCheckpoint  # noqa: E402
from lightning.pytorch.callbacks import ModelPruning as LightningModelPruning  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

import sparseforce as sf  # noqa: E402
from sparseforce.compat import prune as sf_prune  # noqa: E402
from sparseforce.compat.lightning import ModelPruning, PruneAtStart  # noqa: E402

# Lightning's advice for real runs (workers, logging intervals) and its own deprecations.
pytestmark = pytest.mark.filterwarnings("ignore:.*(does not have many workers|LeafSpec|Checkpoint directory|"
                                        "number of training batches|callbacks used to create the checkpoint|"
                                        "dataloader is not resumable)")


class Tiny(pl.LightningModule):
    """Two Linear layers; ``flip`` turns the features around in on_after_batch_transfer (what a
    batch-transfer hook may do, so that the batches PruneAtStart prunes on must come through it)."""

    def __init__(self, optimizer="sgd", flip=False, lr=0.1):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 3))
        self.optimizer, self.flip, self.lr = optimizer, flip, lr
        self.seen = []  # the inputs of every training step

    def forward(self, x):
        return self.net(x)

    def on_after_batch_transfer(self, batch, dataloader_idx):
        x, y = batch
        return (x.flip(-1), y) if self.flip else (x, y)

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(x.clone())
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=1e-2)
        return torch.optim.AdamW(self.parameters(), lr=self.lr, weight_decay=0.1)


def loader(shuffle=False, n=32):
    g = torch.Generator().manual_seed(1)
    data = TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g))
    return DataLoader(data, batch_size=8, shuffle=shuffle)


def trainer(callbacks, max_steps=4, tmp_path=None, **kw):
    return pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, callbacks=callbacks, logger=False,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                      enable_checkpointing=tmp_path is not None, default_root_dir=tmp_path, **kw)


class ZerosKept(pl.Callback):
    """After every training step: the pruned weights, and their optimizer state, are exactly 0."""

    def __init__(self, pruner):
        self.pruner, self.steps = pruner, 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        params = dict(pl_module.named_parameters())
        state = trainer.optimizers[0].state
        for name, mask in self.pruner.masks.items():
            p = params[name]
            assert torch.all(p[~mask] == 0), f"{name}: a pruned weight is nonzero after step {self.steps + 1}"
            for key, buf in state[p].items():
                if isinstance(buf, torch.Tensor) and buf.shape == p.shape:
                    assert torch.all(buf[~mask] == 0), f"{name}: optimizer state {key!r} of a pruned weight is nonzero"
        self.steps += 1


# ------------------------------------------------------------------------------------------
# PruneAtStart
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["sgd", "adamw"])
def test_masks_are_the_method_on_the_first_batches_and_stay_zero(optimizer):
    torch.manual_seed(0)
    module = Tiny(optimizer, flip=True)
    before = copy.deepcopy(module.net)
    data = loader()
    pruner = PruneAtStart("force", 0.8, batches=2, iterations=3)
    check = ZerosKept(pruner)
    trainer([pruner, check], max_steps=5).fit(module, data)

    first = [(x.flip(-1), y) for x, y in list(data)[:2]]  # as on_after_batch_transfer hands them on
    expected = sf.prune(before, first, method="force", sparsity=0.8, iterations=3)
    assert pruner.masks == {f"net.{n}": m for n, m in expected.items()}
    assert pruner.masks.num_kept() == round(0.2 * pruner.masks.numel())
    assert check.steps == 5
    assert len(module.seen) == 5 and torch.equal(module.seen[0], first[0][0])  # training starts at the first batch


def test_data_free_method_draws_no_batch():
    torch.manual_seed(0)
    module = Tiny()
    before = copy.deepcopy(module.net)
    pruner = PruneAtStart("magnitude", 0.5)
    trainer([pruner, ZerosKept(pruner)], max_steps=2).fit(module, loader())
    assert pruner.masks == {f"net.{n}": m for n, m in sf.magnitude(before, sparsity=0.5).items()}


def test_training_batches_and_rng_are_those_of_a_run_without_it():
    def run(callbacks):
        torch.manual_seed(0)
        module = Tiny()
        trainer(callbacks, max_steps=6).fit(module, loader(shuffle=True))
        return module.seen, torch.get_rng_state()

    seen, rng = run([])
    pruner = PruneAtStart("snip", 0.5, batches=3)
    seen_pruned, rng_pruned = run([pruner])
    assert len(seen) == len(seen_pruned) == 6
    assert all(torch.equal(a, b) for a, b in zip(seen, seen_pruned))
    assert torch.equal(rng, rng_pruned)


def test_checkpoint_resume_keeps_the_masks_and_does_not_prune_again(tmp_path):
    # One batch per epoch: Lightning restarts a plain DataLoader's epoch on resume, so only then
    # does the resumed run see the batches the whole run saw.
    calls = []

    def counting_loss(output, target):
        calls.append(1)
        return F.cross_entropy(output, target)

    def run(module, ckpt_path=None):
        pruner = PruneAtStart("force", 0.7, iterations=2, loss_fn=counting_loss)
        check = ZerosKept(pruner)
        saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
        trainer([pruner, check, saver], max_steps=4, tmp_path=tmp_path).fit(module, loader(n=8), ckpt_path=ckpt_path)
        return pruner, check

    torch.manual_seed(0)
    whole = Tiny()
    pruner, _ = run(whole)
    assert len(calls) == 2  # two iterations of FORCE, one batch each
    state = torch.load(tmp_path / "step=2.ckpt", weights_only=True)["callbacks"]["PruneAtStart"]
    assert sf.Masks(state["masks"]["masks"]) == pruner.masks

    calls.clear()
    torch.manual_seed(123)  # other initial weights: the checkpoint's must win
    resumed = Tiny()
    pruner2, check2 = run(resumed, ckpt_path=tmp_path / "step=2.ckpt")
    assert calls == []  # not pruned again
    assert pruner2.masks == pruner.masks
    assert check2.steps == 2
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("now, match", [
    (PruneAtStart("snip", 0.6), "sparsity=0.5, this PruneAtStart has sparsity=0.6"),
    (PruneAtStart("force", 0.5, iterations=3), "method='snip', this PruneAtStart has method='force'"),
    (PruneAtStart("snip", 0.5, k_rounding="floor"), "k_rounding='round', this PruneAtStart has k_rounding='floor'"),
    (PruneAtStart("snip", 0.5, backend="reference"), None),  # every backend gives the same masks
], ids=["sparsity", "method", "option", "backend"])
def test_resume_with_other_settings_is_an_error(tmp_path, now, match):
    torch.manual_seed(0)
    saver = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
    before = PruneAtStart("snip", 0.5)
    trainer([before, saver], max_steps=2, tmp_path=tmp_path).fit(Tiny(), loader())
    resume = trainer([now], max_steps=4, tmp_path=tmp_path)
    if match is None:
        resume.fit(Tiny(), loader(), ckpt_path=tmp_path / "step=2.ckpt")
        assert now.masks == before.masks
        return
    with pytest.raises(ValueError, match=match):
        resume.fit(Tiny(), loader(), ckpt_path=tmp_path / "step=2.ckpt")


def test_a_second_fit_keeps_the_masks():
    torch.manual_seed(0)
    module = Tiny()
    pruner = PruneAtStart("snip", 0.5)
    trainer([pruner], max_steps=2).fit(module, loader())
    first = pruner.masks
    trainer([pruner, ZerosKept(pruner)], max_steps=2).fit(module, loader(shuffle=True))
    assert pruner.masks == first


@pytest.mark.parametrize("args, kw, error, match", [
    (("forc", 0.5), {}, ValueError, "unknown pruning method 'forc'"),
    ((sf.force, 0.5), {}, TypeError, "method must be the name of a pruning method"),
    (("force", 0.5), {"iteration": 3}, ValueError, "force takes no option 'iteration'"),
    (("random", 0.5), {"backend": "cpp"}, ValueError, "random runs no kernel backend"),
    (("force",), {}, ValueError, "needs sparsity="),
    (("force", 1.5), {}, ValueError, r"sparsity must be in \[0, 1\]"),
    (("force", "0.5"), {}, TypeError, "sparsity must be a real number"),
    (("force", 0.5), {"batches": 0}, ValueError, "batches must be an integer >= 1"),
    (("force", 0.5), {"batches": 1.0}, TypeError, "batches must be an integer >= 1"),
])
def test_arguments_are_checked_at_construction(args, kw, error, match):
    with pytest.raises(error, match=match):
        PruneAtStart(*args, **kw)


def test_too_few_batches_is_an_error():
    pruner = PruneAtStart("snip", 0.5, batches=5)
    with pytest.raises(ValueError, match=r"batches=5\): the train dataloader gave only 4"):
        trainer([pruner], max_steps=2).fit(Tiny(), loader())


@pytest.mark.parametrize("data, error, match", [
    (lambda: [loader(), loader()], TypeError, "one train dataloader, got list of dataloaders"),
    (lambda: DataLoader(loader().dataset, batch_size=8, num_workers=1, persistent_workers=True), ValueError,
     "persistent_workers=True"),
], ids=["several loaders", "persistent workers"])
def test_loaders_it_cannot_draw_from(data, error, match):
    with pytest.raises(error, match=match):
        trainer([PruneAtStart("snip", 0.5)], max_steps=1).fit(Tiny(), data())


def test_missing_lightning_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lightning", None)
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "sparseforce.compat.lightning")
    with pytest.raises(ModuleNotFoundError, match=r"sparseforce\[lightning\]"):
        importlib.import_module("sparseforce.compat.lightning")


# ------------------------------------------------------------------------------------------
# ModelPruning on the exact selection
# ------------------------------------------------------------------------------------------

def pruned_masks(callback_type, pruning_fn, use_global, weights=None, epochs=2, amount=0.4):
    torch.manual_seed(0)
    module = Tiny(lr=0.1 if weights is None else 0.0)  # ties stay ties when the weights do not move
    if weights is not None:
        with torch.no_grad():
            for p, w in zip((module.net[0].weight, module.net[2].weight), weights):
                p.copy_(w)
    targets = [(module.net[0], "weight"), (module.net[2], "weight")]
    callback = callback_type(pruning_fn, parameters_to_prune=targets, use_global_unstructured=use_global,
                             amount=amount, make_pruning_permanent=False, use_lottery_ticket_hypothesis=False)
    trainer([callback], max_steps=4 * epochs).fit(module, loader())
    return [m.weight_mask.clone() for m, _ in targets]


def equal(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b))


@pytest.mark.parametrize("use_global", [True, False])
@pytest.mark.parametrize("fn", ["l1_unstructured", "random_unstructured"])
def test_model_pruning_is_lightnings_where_no_ties(fn, use_global):
    lightning = pruned_masks(LightningModelPruning, fn, use_global)
    assert equal(pruned_masks(ModelPruning, fn, use_global), lightning)
    if fn == "l1_unstructured" and use_global:  # the class in Lightning's own callback
        assert equal(pruned_masks(LightningModelPruning, sf_prune.L1Unstructured, True), lightning)
        assert equal(pruned_masks(ModelPruning, torch.nn.utils.prune.L1Unstructured, True), lightning)


def test_global_model_pruning_concatenates_nothing(monkeypatch):
    lightning = pruned_masks(LightningModelPruning, "l1_unstructured", True)

    def refuse(*args, **kwargs):
        raise AssertionError("the weights were concatenated")

    monkeypatch.setattr(torch.nn.utils, "parameters_to_vector", refuse)
    assert equal(pruned_masks(ModelPruning, "l1_unstructured", True), lightning)
    with pytest.raises(AssertionError, match="concatenated"):  # Lightning's own, our class inside
        pruned_masks(LightningModelPruning, sf_prune.L1Unstructured, True)


def exact_with_ties(masks, weights, pruned_count):
    """Exactly ``pruned_count`` pruned; every pruned |w| <= every kept |w|; among the |w| equal to
    the largest pruned one, the kept precede the pruned (global position order)."""
    keep = torch.cat([m.flatten() for m in masks]).bool()
    score = torch.cat([w.flatten() for w in weights]).abs()
    assert int((~keep).sum()) == pruned_count
    threshold = score[~keep].max()
    assert score[keep].min() >= threshold
    tied = (score == threshold).nonzero().flatten()
    tied_kept = keep[tied]
    assert torch.equal(tied_kept, tied_kept.sort(descending=True, stable=True).values)
    assert tied_kept.any() and not tied_kept.all()  # the case has ties across the threshold


@pytest.mark.parametrize("callback_type, fn", [
    (ModelPruning, "l1_unstructured"),
    (LightningModelPruning, sf_prune.L1Unstructured),
], ids=["sf.ModelPruning", "lightning.ModelPruning-sf.L1Unstructured"])
def test_global_pruning_with_ties_prunes_exactly_the_amount(callback_type, fn):
    weights = [torch.tensor([0.5, -0.5, 1.0]).repeat(24).reshape(12, 6),
               torch.tensor([0.5, 1.0, -0.5]).repeat(12).reshape(3, 12)]
    masks = pruned_masks(callback_type, fn, True, weights, epochs=1, amount=0.3)
    exact_with_ties(masks, weights, round(0.3 * 108))


def test_local_pruning_with_ties_prunes_exactly_the_amount():
    weights = [torch.tensor([0.5, -0.5, 1.0]).repeat(24).reshape(12, 6),
               torch.tensor([0.5, 1.0, -0.5]).repeat(12).reshape(3, 12)]
    masks = pruned_masks(ModelPruning, "l1_unstructured", False, weights, epochs=1, amount=0.3)
    for m, w in zip(masks, weights):
        exact_with_ties([m], [w], round(0.3 * w.numel()))


class SameMasksOnEveryRank(pl.Callback):
    def __init__(self, pruner):
        self.pruner = pruner

    def on_train_start(self, trainer, pl_module):
        for name, mask in self.pruner.masks.items():
            gathered = [torch.empty_like(mask) for _ in range(trainer.world_size)]
            torch.distributed.all_gather(gathered, mask)
            assert all(torch.equal(g, mask) for g in gathered), f"{name}: the ranks pruned differently"


def test_every_rank_gets_the_same_masks_under_ddp():
    torch.manual_seed(0)
    pruner = PruneAtStart("force", 0.8, batches=2, iterations=2)
    pl.Trainer(accelerator="cpu", devices=2, strategy="ddp_spawn", max_steps=1, logger=False,
               enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
               callbacks=[pruner, SameMasksOnEveryRank(pruner)]).fit(Tiny(), loader(shuffle=True))


def test_enforcement_ends_with_fit_and_the_next_fit_binds_again():
    # apply_masks' global step hook and its hold on the module last as long as fit does
    prune = PruneAtStart("magnitude", sparsity=0.5)
    module = Tiny()
    trainer([prune, ZerosKept(prune)], max_steps=2).fit(module, loader())
    assert prune.handle is None
    params = dict(module.named_parameters())
    assert all(torch.all(params[n][~m] == 0) for n, m in prune.masks.items())
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    module(torch.ones(2, 6)).sum().backward()
    opt.step()  # outside Lightning: nothing re-zeroes the pruned weights any more
    assert any(bool(params[n][~m].any()) for n, m in prune.masks.items())
    masks = prune.masks
    trainer([prune, ZerosKept(prune)], max_steps=2).fit(module, loader())  # zeros again from the next step on
    assert prune.masks is masks or prune.masks == masks
