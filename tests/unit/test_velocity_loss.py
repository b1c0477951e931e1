import math

import pytest
import torch

from core.velocity.loss import VelocityAlignmentLoss, VelocityRegularizationLoss

E1 = [1.0, 0.0]
E2 = [0.0, 1.0]


def t(rows):
    return torch.tensor(rows, dtype=torch.float32)


@pytest.mark.parametrize(
    "delta_z, v_z, expected",
    [([[2.0, 0.0]], [E1], 0.0), ([[0.0, 3.0]], [E1], 1.0), ([[-1.0, 0.0]], [E1], 2.0)],
    ids=["aligned", "orthogonal", "opposite"],
)
def test_direction_term_is_one_minus_cosine(delta_z, v_z, expected):
    loss, metrics = VelocityAlignmentLoss(use_magnitude=False)(t(delta_z), t(v_z))
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert metrics["direction"] == pytest.approx(expected, abs=1e-6)
    assert metrics["cos_similarity"] == pytest.approx(1.0 - expected, abs=1e-6)


def test_magnitude_term_is_absolute_norm_gap_scaled_by_beta():
    # cell 1: ||(3,4)|| = 5 vs ||(1,0)|| = 1 -> gap 4, cos 3/5
    # cell 2: ||(0,1)|| = 1 vs ||(0,2)|| = 2 -> gap 1, cos 1
    delta_z, v_z = t([[3.0, 4.0], [0.0, 1.0]]), t([[1.0, 0.0], [0.0, 2.0]])
    loss, metrics = VelocityAlignmentLoss(beta=0.5)(delta_z, v_z)
    direction = ((1 - 0.6) + 0.0) / 2
    magnitude = (4.0 + 1.0) / 2
    assert metrics["direction"] == pytest.approx(direction, abs=1e-6)
    assert metrics["magnitude"] == pytest.approx(magnitude, abs=1e-6)
    assert loss.item() == pytest.approx(direction + 0.5 * magnitude, abs=1e-6)
    assert metrics["magnitude_st"] == pytest.approx(3.0, abs=1e-6)
    assert metrics["magnitude_v"] == pytest.approx(1.5, abs=1e-6)
    assert metrics["n_cells"] == 2


def test_confidence_weights_and_masking_match_hand_computation():
    # directions: cell 1 aligned (0), cell 2 orthogonal (1), cell 3 opposite (2)
    delta_z = t([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    v_z = t([E1, E1, E1])
    confidence = t([0.9, 0.3, 0.6])
    fn = VelocityAlignmentLoss(use_magnitude=False)
    _, weighted = fn(delta_z, v_z, confidence)
    assert weighted["direction"] == pytest.approx((0.9 * 0 + 0.3 * 1 + 0.6 * 2) / 1.8, abs=1e-6)
    assert weighted["avg_confidence"] == pytest.approx(0.6, abs=1e-6)

    _, masked = VelocityAlignmentLoss(use_magnitude=False, min_confidence=0.5)(delta_z, v_z, confidence)
    assert masked["direction"] == pytest.approx((0.9 * 0 + 0.6 * 2) / 1.5, abs=1e-6)
    assert masked["n_cells"] == 2
    assert masked["avg_confidence"] == pytest.approx(0.75, abs=1e-6)


def test_cells_with_zero_velocity_are_left_out_of_direction_but_not_magnitude():
    delta_z, v_z = t([[0.0, 2.0], [1.0, 0.0]]), t([[0.0, 0.0], [1.0, 0.0]])
    loss, metrics = VelocityAlignmentLoss(beta=1.0)(delta_z, v_z)
    assert metrics["direction"] == pytest.approx(0.0, abs=1e-6)  # only cell 2 has a direction: aligned
    assert metrics["n_direction_cells"] == 1
    assert metrics["magnitude"] == pytest.approx((2.0 + 0.0) / 2, abs=1e-6)
    assert loss.item() == pytest.approx(1.0, abs=1e-6)


def test_fully_masked_batch_gives_zero_loss_that_backpropagates():
    delta_z = torch.randn(4, 3, requires_grad=True)
    v_z = torch.randn(4, 3)
    loss, metrics = VelocityAlignmentLoss(min_confidence=0.9)(delta_z, v_z, torch.full((4,), 0.1))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(delta_z.grad, torch.zeros_like(delta_z))
    assert metrics["n_cells"] == 0
    assert not any(math.isnan(v) for v in metrics.values())


@pytest.mark.parametrize("loss_cls", [VelocityAlignmentLoss, VelocityRegularizationLoss])
def test_gradients_are_finite_at_zero_shift(loss_cls):
    delta_z = torch.zeros(3, 4, requires_grad=True)
    v_z = torch.randn(3, 4)
    loss, _ = loss_cls()(delta_z, v_z, torch.ones(3))
    loss.backward()
    assert torch.isfinite(delta_z.grad).all()


def test_a_zero_shift_has_no_direction_and_no_exploding_gradient():
    # A zero-initialised head predicts delta_z = 0 at step 0: before this rule the cosine's gradient there was
    # v_hat / 1e-8 (a from-scratch run logged a gradient norm of 2.7e5 at step 1).
    delta_z = t([[0.0, 0.0], [0.0, 2.0]]).requires_grad_()
    v_z = t([[3.0, 4.0], [1.0, 0.0]])
    loss, metrics = VelocityAlignmentLoss(beta=1.0)(delta_z, v_z)
    loss.backward()
    assert metrics["n_direction_cells"] == 1
    assert metrics["direction"] == pytest.approx(1.0)  # only the second cell: orthogonal, 1 - 0
    # magnitude |0 - 5| and |2 - 1| average to 3; the zero cell's magnitude gradient is 0 (no direction to grow in)
    assert metrics["magnitude"] == pytest.approx(3.0)
    # second cell: d(1 - cos)/d(dz) = -(v_hat - cos dz_hat) / |dz| = (-0.5, 0); magnitude: 0.5 * dz_hat = (0, 0.5)
    assert delta_z.grad.tolist() == [pytest.approx([0.0, 0.0]), pytest.approx([-0.5, 0.5])]


def test_alignment_gradient_rotates_shift_towards_velocity():
    delta_z = t([[0.0, 1.0]]).requires_grad_()
    loss, _ = VelocityAlignmentLoss(use_magnitude=False)(delta_z, t([E1]))
    loss.backward()
    # d(1 - cos)/d(delta_z) at (0,1) against (1,0) is (-1, 0): descending moves delta_z towards +x
    assert delta_z.grad[0].tolist() == pytest.approx([-1.0, 0.0], abs=1e-6)


def test_regularization_is_weighted_squared_distance():
    delta_z, v_z = t([[1.0, 1.0], [0.0, 0.0]]), t([[0.0, 1.0], [2.0, 0.0]])
    loss, metrics = VelocityRegularizationLoss()(delta_z, v_z, t([1.0, 3.0]))
    assert loss.item() == pytest.approx((1.0 * 1.0 + 3.0 * 4.0) / 4.0, abs=1e-6)
    assert metrics["regularization"] == pytest.approx(loss.item())
    masked, _ = VelocityRegularizationLoss(min_confidence=2.0)(delta_z, v_z, t([1.0, 3.0]))
    assert masked.item() == pytest.approx(4.0, abs=1e-6)


def test_bf16_inputs_are_computed_in_float32():
    delta_z = torch.randn(8, 16).bfloat16()
    loss, metrics = VelocityAlignmentLoss()(delta_z, delta_z.clone())
    assert loss.dtype == torch.float32
    assert metrics["direction"] == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize(
    "delta_z, v_z, confidence, message",
    [
        (torch.zeros(3, 2), torch.zeros(3, 4), None, "same shape"),
        (torch.zeros(3), torch.zeros(3), None, r"\[N, D\]"),
        (torch.zeros(3, 2), torch.zeros(3, 2), torch.ones(2), r"one value per cell"),
        (torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), None, "delta_z contains NaN"),
        (torch.zeros(1, 2), torch.tensor([[float("inf"), 0.0]]), None, "v_z contains NaN"),
        (torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([0.5, -0.1]), "negative"),
    ],
)
def test_bad_inputs_raise_value_error_naming_the_problem(delta_z, v_z, confidence, message):
    with pytest.raises(ValueError, match=message):
        VelocityAlignmentLoss()(delta_z, v_z, confidence)
