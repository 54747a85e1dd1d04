"""Two training checkpoints of the same run, compared bit for bit (the resume tests of dynamic
sparse training: fit's and the command's)."""
import torch


def assert_same_run(a: dict, b: dict):
    """Weights, masks, optimizer state, the dst object's state and the history (but its times)."""
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    for n, m in a["masks"]["masks"].items():
        assert torch.equal(m, b["masks"]["masks"][n]), n
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for i in sa:
        for k, v in sa[i].items():
            assert torch.equal(v, sb[i][k]) if isinstance(v, torch.Tensor) else v == sb[i][k], (i, k)
    assert a["dst"]["state"] == b["dst"]["state"]
    strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]  # noqa: E731
    assert strip(a["history"]) == strip(b["history"])
