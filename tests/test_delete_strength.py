"""DELETE's suppression strength and, in chat, its layer: the write is scaled back to the
smallest that meets the goal with a margin (``delete._strengthen`` / ``_shrink``), and a
chat-form suppression that changes the spare siblings' replies is moved to another layer
(``delete.suppress_in_chat``) — on stand-ins whose answers are known in closed form."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from lql.edit import delete as D
from lql.edit.patch import PatchOp


class _Overlay:
    def __init__(self):
        self.changes = 0
        self.recording = SimpleNamespace(operations=[])

    def _changed(self):
        self.changes += 1

    def record(self, op):
        self.recording.operations.append(op)
        self._changed()


def _op(norm: float) -> PatchOp:
    down = np.zeros(8, np.float32)
    down[0] = norm
    return PatchOp.make("insert", layer=3, feature=7, alpha=0.1, mode="suppress",
                        down_meta={"t": "x", "i": 0, "c": 2.0 * norm}, vectors={"down": down})


def _probs(op: PatchOp, vocab: int, p0: float = 0.8):
    """Target (id 0) probability ``p0 · exp(−3 · ‖down‖)``; the rest shared evenly."""
    def probs():
        p = p0 * math.exp(-3.0 * float(np.linalg.norm(op.vector("down"))))
        out = np.full(vocab, (1.0 - p) / (vocab - 1))
        out[0] = p
        return out
    return probs


@pytest.mark.parametrize("vocab", [3, 40])
def test_strengthen_scales_back_to_the_smallest_write_that_meets_the_aim(vocab):
    op = _op(1.0)
    ov = _Overlay()
    goal = D.KEEP * 0.8
    aim = goal * D.SHRINK_AIM
    p = D._strengthen(ov, op, _probs(op, vocab), 0, goal, max_doublings=4)
    scale = float(np.linalg.norm(op.vector("down")))
    out = _probs(op, vocab)()
    assert p == pytest.approx(out[0]) and p <= aim
    assert int(np.argmax(out)) != 0                        # the target is off the top
    # the smallest such write, up to the bisection's step (12 / 2**6 on a log2 scale):
    # 0.8·e^(−3s) ≤ aim  ⇔  s ≥ ln(0.8 / aim) / 3; off the top (40 tokens) needs p < (1−p)/39
    need = math.log(0.8 / aim) / 3.0
    if vocab == 40:
        need = max(need, math.log(0.8 * 40) / 3.0)
    assert need <= scale < need * 2 ** (12 / 64 + 1e-9)
    assert op.data["alpha"] == pytest.approx(0.1 * scale)  # the op records the strength
    assert op.data["down_meta"]["c"] == pytest.approx(2.0 * scale)   # and its score
    assert ov.changes > 0


def test_strengthen_doubles_a_weak_write_first():
    op = _op(0.05)                                         # P 0.69: far above the goal
    ov = _Overlay()
    p = D._strengthen(ov, op, _probs(op, 3), 0, D.KEEP * 0.8, max_doublings=6)
    assert p <= D.KEEP * 0.8 * D.SHRINK_AIM
    assert float(np.linalg.norm(op.vector("down"))) > 0.05


def test_strengthen_stops_at_max_doublings_and_says_how_far_it_got():
    op = _op(0.001)
    p = D._strengthen(_Overlay(), op, _probs(op, 3), 0, D.KEEP * 0.8, max_doublings=2)
    assert p > D.KEEP * 0.8                                 # not reached: no scaling back
    assert float(np.linalg.norm(op.vector("down"))) == pytest.approx(0.004)


# --------------------------------------------------------------------------- chat layer

def _chat_stage(monkeypatch, changed_at: dict[int, int]):
    """Stand-ins for the model: the reply states the target at position 0; a suppression
    at layer L changes ``changed_at.get(L, 0)`` of the spare siblings' replies."""
    ov = _Overlay()
    view = SimpleNamespace(num_layers=10, tokenizer=SimpleNamespace(decode=lambda ids: "x"))

    def rounds(overlay, view, entity, relation, target, ids, before, first, p0, layer,
               keep, max_doublings):
        overlay.record(PatchOp.make("insert", layer=layer, feature=1, mode="suppress"))
        return [(layer, 1)], [9]

    def collateral(view, before):
        ops = ov.recording.operations
        n = changed_at.get(ops[-1].data["layer"], 0) if ops else 0
        return [{"prompt": p} for p, _ in before[:n]]

    def predict(view, ids):
        return SimpleNamespace(probs=np.array([0.05 if ov.recording.operations else 0.5, 0.5]))

    monkeypatch.setattr("lql.edit.insert.chat_prompt_ids", lambda view, p: [1, 2])
    monkeypatch.setattr(D, "chat_reply", lambda view, ids, n=16: [0] if len(ids) == 2 else [9])
    monkeypatch.setattr(D, "stated_at", lambda view, reply, t: 0 if reply == [0] else None)
    monkeypatch.setattr(D, "predict", predict)
    monkeypatch.setattr(D, "_chat_rounds", rounds)
    monkeypatch.setattr(D, "chat_collateral", collateral)
    monkeypatch.setattr(D, "checked_siblings",
                        lambda template, entity: [f"s{i}" for i in range(D.CHAT_CHECKED + 4)])
    return ov, view


def test_chat_suppression_moves_to_a_layer_that_leaves_the_spare_siblings_alone(monkeypatch):
    ov, view = _chat_stage(monkeypatch, {5: 2, 3: 1})       # 5 and 3 change some, 7 none
    rep = D.suppress_in_chat(ov, view, "Germany", "capital", "Berlin", "p", layer=5)
    assert rep is not None and rep.features == [(7, 1)]
    assert [o.data["layer"] for o in ov.recording.operations] == [7]   # the others removed


def test_chat_suppression_keeps_the_layer_that_changed_fewest(monkeypatch):
    ov, view = _chat_stage(monkeypatch, {5: 2, 3: 3, 7: 1, 1: 4, 9: 2})
    rep = D.suppress_in_chat(ov, view, "Germany", "capital", "Berlin", "p", layer=5)
    assert rep is not None and rep.features == [(7, 1)]
    assert [o.data["layer"] for o in ov.recording.operations] == [7]


def test_chat_suppression_stays_at_its_layer_when_that_is_clean(monkeypatch):
    ov, view = _chat_stage(monkeypatch, {3: 2})
    rep = D.suppress_in_chat(ov, view, "Germany", "capital", "Berlin", "p", layer=5)
    assert rep is not None and rep.features == [(5, 1)] and not rep.still_stated
