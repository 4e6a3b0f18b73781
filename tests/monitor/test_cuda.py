"""On CUDA: no host-device synchronisation outside report steps (skips without a GPU)."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

import moediag  # noqa: E402
from tests.monitor.helpers import batch, tiny_mixtral  # noqa: E402

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _step(model, b, opt) -> None:  # type: ignore[no-untyped-def]
    # what the model itself does (transformers' Mixtral syncs in its expert loop) is not ours: only the
    # monitor's work is checked, so the model's forward runs with the check off and the hooks with it on
    model(**b).loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


@cuda
@pytest.mark.parametrize("flight", [0, 4])
def test_no_sync_on_steps_that_do_not_report(flight: int) -> None:
    model = tiny_mixtral(41).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    batches = [{k: v.cuda() for k, v in batch(i).items()} for i in range(8)]
    mon = moediag.Monitor(model, every=4, on_alert="ignore", flight_recorder=flight)
    checked: list[int] = []

    def strict(hook):  # type: ignore[no-untyped-def]
        def wrapped(*args):  # type: ignore[no-untyped-def]
            reporting = (mon.step + 1) % mon.every == 0
            if not reporting:
                torch.cuda.set_sync_debug_mode("error")
            try:
                return hook(*args)
            finally:
                torch.cuda.set_sync_debug_mode("default")
                if not reporting:
                    checked.append(mon.step)

        return wrapped

    mon._pre = strict(mon._pre)  # type: ignore[method-assign]  # the model-level hooks, before start()
    mon._post = strict(mon._post)  # type: ignore[method-assign]
    with mon:
        _step(model, batches[0], opt)  # first call decides where each router's logits come from (reads once)
        for site in mon.sites:  # every router hook runs under "error" on non-report steps
            site.module._forward_hooks.clear()
            site.module.register_forward_hook(strict(mon._make_hook(site)), with_kwargs=True)
        for b in batches[1:]:
            _step(model, b, opt)
    assert mon.reports == 2
    assert len(checked) >= 4 * len(mon.sites)
    assert mon.last_report is not None and mon.last_report.layers[0]["tokens"] > 0
