"""Tests of the RRIS network (rsis.model): shapes, recurrence, padding, loss, weights, config."""

from __future__ import annotations

import copy
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.decomposition import PCA

from rsis.bench.train import reference_forward
from rsis.errors import UserError
from rsis.model import (
    BACKBONES,
    RRIS,
    TEXT_TRANSFORMS,
    ModelConfig,
    TextProjection,
    build_backbone,
    soft_iou,
    soft_iou_loss,
)
from rsis.model.convlstm import ConvLSTMCell, LSTMUpdate, tiled_conv2d
from rsis.model.resize import BilinearResize
from rsis.runs import LEARNED_TRANSFORMS
from rsis.text.pca import PcaSolution

TEXT_DIM = 8
TINY = {"backbone": "resnet18", "weights": "none", "hidden": 16, "text_dim": TEXT_DIM}


@pytest.fixture(scope="module")
def model() -> RRIS:
    """A tiny RRIS in eval mode (fixed BN statistics: outputs do not depend on the batch)."""
    torch.manual_seed(0)
    return RRIS.from_config(TINY).eval()


def inputs(batch: int, steps: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Random uint8 images (batch, 3, 64, 96) and embeddings (batch, steps, TEXT_DIM)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, 64, 96), dtype=torch.uint8, generator=g)
    return images, torch.randn(batch, steps, TEXT_DIM, generator=g)


@pytest.mark.parametrize(
    ("name", "channels"),
    [
        ("resnet18", (64, 64, 128, 256, 512)),
        ("resnet34", (64, 64, 128, 256, 512)),
        ("resnet50", (64, 256, 512, 1024, 2048)),
        ("resnet101", (64, 256, 512, 1024, 2048)),
    ],
)
def test_backbone_features(name: str, channels: tuple[int, ...]) -> None:
    encoder = build_backbone(name, "none").eval()
    assert encoder.channels == channels
    with torch.no_grad():
        features = encoder(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in features] == [
        (1, c, 64 // s, 96 // s) for c, s in zip(channels, encoder.strides, strict=True)
    ]
    assert encoder.strides == (2, 4, 8, 16, 32)
    assert all(torch.isfinite(f).all() for f in features)
    assert not any(name.startswith("fc.") for name in encoder.state_dict())


def _train_pass(encoder: torch.nn.Module, images: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """Features of ``images`` in training mode and a backward pass of a loss using every
    scale; also the bytes of the tensors the autograd graph kept for that pass."""
    kept = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        kept.append(tensor.numel() * tensor.element_size())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        features = encoder.encode_images(images)
    sum(f.square().mean() * (i + 1) for i, f in enumerate(features)).backward()
    return features, sum(kept)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_checkpointed_encoder_equals_the_plain_one(name: str) -> None:
    """Activation checkpointing keeps a small part of the activations and changes nothing
    else: the same features, gradients (float tolerance) and batch-norm running statistics,
    updated once although every block ran twice."""
    torch.manual_seed(0)
    plain = build_backbone(name, "none").train()
    checkpointed = copy.deepcopy(plain)
    checkpointed.checkpoint_blocks()
    initial = {key: value.clone() for key, value in plain.named_buffers()}
    images, _ = inputs(2, 1)
    expected, plain_bytes = _train_pass(plain, images)
    got, checkpointed_bytes = _train_pass(checkpointed, images)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    for (key, p), q in zip(plain.named_parameters(), checkpointed.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, msg=key)
    buffers = dict(checkpointed.named_buffers())
    for key, value in plain.named_buffers():
        torch.testing.assert_close(buffers[key], value, rtol=0, atol=0, msg=key)
    assert int(buffers["bn1.num_batches_tracked"]) == 1
    assert not torch.equal(buffers["layer4.0.bn1.running_var"], initial["layer4.0.bn1.running_var"])
    assert checkpointed_bytes < plain_bytes / 10, (checkpointed_bytes, plain_bytes)


def test_checkpointed_decoder_steps_equal_the_plain_ones() -> None:
    """With ``checkpoint_activations`` the whole model (encoder blocks and decoder steps, a
    padded slot included) gives the same logits and gradients; the decoder steps keep fewer
    tensors than with the encoder's blocks checkpointed alone."""
    torch.manual_seed(0)
    plain = RRIS.from_config(TINY).train()
    encoder_only, checkpointed = copy.deepcopy(plain), copy.deepcopy(plain)
    encoder_only.encoder.checkpoint_blocks()
    checkpointed.checkpoint_activations()
    images, text = inputs(2, 3)
    valid = torch.tensor([[True, True, True], [True, False, True]])
    masks = (images[:, :3] > 127).float()
    logits, kept = [], []
    for model in (plain, encoder_only, checkpointed):
        sizes = []

        def pack(tensor: torch.Tensor, sizes: list[int] = sizes) -> torch.Tensor:
            sizes.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            logits.append(model(images, text, valid))
        soft_iou_loss(logits[-1], masks, valid).backward()
        kept.append(sum(sizes))
    torch.testing.assert_close(logits[2], logits[0], rtol=0, atol=0)
    grads = dict(checkpointed.named_parameters())
    for key, param in plain.named_parameters():
        torch.testing.assert_close(grads[key].grad, param.grad, msg=key)
    assert kept[2] < 0.8 * kept[1] and kept[1] < kept[0] / 5, kept


@pytest.mark.parametrize(("batch", "steps"), [(1, 1), (1, 6), (3, 1), (3, 6)])
def test_output_shape_and_finite(model: RRIS, batch: int, steps: int) -> None:
    images, text = inputs(batch, steps)
    with torch.no_grad():
        logits = model(images, text)
    assert logits.shape == (batch, steps, 64, 96)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_batch_members_are_independent(model: RRIS) -> None:
    images, text = inputs(3, 4)
    with torch.no_grad():
        together = model(images, text)
        alone = model(images[1:2], text[1:2])
    torch.testing.assert_close(together[1:2], alone, atol=1e-5, rtol=1e-4)


def test_float_images_equal_uint8(model: RRIS) -> None:
    images, text = inputs(2, 2)
    with torch.no_grad():
        torch.testing.assert_close(model(images.float() / 255, text), model(images, text))


def test_recurrence_is_causal_and_real(model: RRIS) -> None:
    images, text = inputs(2, 3)
    changed_first, changed_second = text.clone(), text.clone()
    changed_first[:, 0] = torch.randn(2, TEXT_DIM)
    changed_second[:, 1] = torch.randn(2, TEXT_DIM)
    with torch.no_grad():
        base = model(images, text)
        after_first = model(images, changed_first)
        after_second = model(images, changed_second)
    # mask 2 depends on expression 1 (the state carries over) ...
    assert (after_first[:, 1] - base[:, 1]).abs().max() > 1e-3
    # ... but mask 1 never depends on a later expression
    torch.testing.assert_close(after_second[:, 0], base[:, 0])


def test_padded_slots_do_not_touch_valid_ones(model: RRIS) -> None:
    images, text = inputs(2, 4)
    valid = torch.tensor([[True, True, True, False], [True, False, True, False]])
    garbage = text.clone()
    garbage[~valid] = 100 * torch.randn(int((~valid).sum()), TEXT_DIM)
    with torch.no_grad():
        padded = model(images, text, valid)
        padded_garbage = model(images, garbage, valid)
        first_alone = model(images[:1], text[:1, :3])
        second_alone = model(images[1:], text[1:, [0, 2]])
    torch.testing.assert_close(padded[valid], padded_garbage[valid])
    torch.testing.assert_close(padded[0, :3], first_alone[0], atol=1e-5, rtol=1e-4)
    # a padded slot in the middle is skipped: referent 3 sees the state after referent 1
    torch.testing.assert_close(padded[1, [0, 2]], second_alone[0], atol=1e-5, rtol=1e-4)


def test_convlstm_equals_concatenating_the_tiled_embedding() -> None:
    """Computed in parts (fixed map and text once per sequence, [step, h] per step), the
    cell equals one convolution over the concatenation of all its inputs."""
    torch.manual_seed(0)
    cell = ConvLSTMCell(fixed_channels=5, step_channels=3, cond_channels=7, hidden_channels=4)
    fixed, coarse = torch.randn(2, 5, 6, 9), torch.randn(2, 3, 3, 5)
    step = F.interpolate(coarse, size=(6, 9), mode="bilinear", align_corners=False)
    h, c = torch.randn(2, 4, 6, 9), torch.randn(2, 4, 6, 9)
    cond = torch.randn(2, 3, 7)  # three steps
    resize = BilinearResize((3, 5), (6, 9), coarse)
    prepared = cell.prepare(fixed, cond, resize)
    for t in range(3):
        h_new, c_new = cell(prepared, t, coarse, (h, c))
        tiled = cond[:, t, :, None, None].expand(-1, -1, 6, 9)
        i, f, o, g = cell.gates(torch.cat([fixed, step, h, tiled], dim=1)).chunk(4, dim=1)
        c_ref = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        torch.testing.assert_close(c_new, c_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            h_new, torch.sigmoid(o) * torch.tanh(c_ref), atol=1e-5, rtol=1e-5
        )
    zeros = torch.zeros(2, 4, 6, 9)
    coarsest = ConvLSTMCell(fixed_channels=5, step_channels=0, cond_channels=7, hidden_channels=4)
    for layer, given, by in ((cell, coarse, resize), (coarsest, None, None)):
        ready = layer.prepare(fixed, cond, by)  # the zero state skips its products
        first = layer(ready, 0, given, None)
        expected = layer(ready, 0, given, (zeros, zeros))
        for value, reference in zip(first, expected, strict=True):
            torch.testing.assert_close(value, reference, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("zero_state", [False, True])
def test_lstm_update_backward_is_the_gradient(zero_state: bool) -> None:
    """The hand-written backward of the gates' pointwise update passes gradcheck, also from
    the zero state (no c_prev) and when only h is used (no gradient for c)."""
    g = torch.Generator().manual_seed(3)
    gates = torch.randn(2, 12, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    c_prev = None
    if not zero_state:
        c_prev = torch.randn(2, 3, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    inputs = (gates, c_prev)
    assert torch.autograd.gradcheck(LSTMUpdate.apply, inputs)
    assert torch.autograd.gradcheck(lambda *x: LSTMUpdate.apply(*x)[0], inputs)
    i, f, o, cell = gates.chunk(4, dim=1)
    c = torch.sigmoid(i) * torch.tanh(cell)
    if c_prev is not None:
        c = c + torch.sigmoid(f) * c_prev
    h_new, c_new = LSTMUpdate.apply(gates, c_prev)
    torch.testing.assert_close(c_new, c)
    torch.testing.assert_close(h_new, torch.sigmoid(o) * torch.tanh(c))


@pytest.mark.parametrize(
    ("size_in", "size_out"),
    [
        ((1, 2), (2, 4)),
        ((2, 3), (3, 6)),
        ((6, 11), (12, 21)),
        ((24, 42), (48, 84)),
        ((7, 5), (3, 9)),
    ],
)
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_bilinear_resize_equals_interpolate(size_in, size_out, memory_format) -> None:
    """Matrix products (two 1-D ones, or one Kronecker product for small maps) give
    F.interpolate's bilinear resize (align_corners=False), and its gradient, up to float
    rounding; also shrinking, odd sizes and channels_last (which it keeps)."""
    x = torch.randn(2, 3, *size_in).contiguous(memory_format=memory_format).requires_grad_(True)
    y = x.detach().clone().requires_grad_(True)
    grad = torch.randn(2, 3, *size_out)
    resize = BilinearResize(size_in, size_out, x)
    assert (resize.kron is not None) == (size_in[0] * size_in[1] * size_out[0] * size_out[1] < 4096)
    resized = resize(x)
    expected = F.interpolate(y, size=size_out, mode="bilinear", align_corners=False)
    torch.testing.assert_close(resized, expected, atol=1e-6, rtol=1e-5)
    assert resized.is_contiguous(memory_format=memory_format)
    resized.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(x.grad, y.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_forward_equals_the_step_by_step_reference(model: RRIS, memory_format) -> None:
    """The reorganised decoder computes the function of the step-by-step one (the benchmark's
    baseline), logits and gradients, padded slots included."""
    images, text = inputs(3, 5, seed=4)
    valid = torch.ones(3, 5, dtype=torch.bool)
    valid[0, 3:] = False
    valid[2, 1] = False
    valid[1, 0] = False  # a padded first slot: the zero state carries over
    reference_model = RRIS.from_config(TINY).eval()
    reference_model.load_state_dict(model.state_dict())
    model.to(memory_format=memory_format)
    try:
        logits = model(images.contiguous(memory_format=memory_format), text, valid)
        expected = reference_forward(reference_model, images, text, valid)
        torch.testing.assert_close(logits[valid], expected[valid], atol=1e-5, rtol=1e-4)
        logits[valid].square().sum().backward()
        expected[valid].square().sum().backward()
        for (name, p), q in zip(
            model.decoder.named_parameters(), reference_model.decoder.parameters(), strict=True
        ):
            torch.testing.assert_close(p.grad, q.grad, atol=1e-4, rtol=1e-3, msg=name)
    finally:
        model.zero_grad(set_to_none=True)
        model.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("k", [1, 3, 5])
def test_tiled_conv2d_equals_conv_of_the_tiled_map(k: int) -> None:
    cond, weight = torch.randn(3, 6), torch.randn(10, 6, k, k)
    tiled = cond[:, :, None, None].expand(-1, -1, 4, 7)
    expected = F.conv2d(tiled, weight, padding=k // 2)
    torch.testing.assert_close(tiled_conv2d(cond, weight, (4, 7)), expected)


def test_channels_last_and_bfloat16_autocast(model: RRIS) -> None:
    images, text = inputs(2, 3)
    with torch.no_grad():
        reference = model(images, text)
        model.to(memory_format=torch.channels_last)
        try:
            channels_last = model(images.contiguous(memory_format=torch.channels_last), text)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low = model(images, text)
        finally:
            model.to(memory_format=torch.contiguous_format)
    torch.testing.assert_close(channels_last, reference, atol=1e-4, rtol=1e-4)
    assert low.dtype == torch.bfloat16
    assert torch.isfinite(low).all()
    assert (torch.sigmoid(low.float()) - torch.sigmoid(reference)).abs().max() < 0.05


def test_soft_iou_by_hand() -> None:
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 1.0]]]])
    target = torch.tensor([[[[1, 0], [0, 1]]]], dtype=torch.uint8)
    p = [0.5, 1 / (1 + np.exp(-2.0)), 1 / (1 + np.exp(1.0)), 1 / (1 + np.exp(-1.0))]
    y = [1, 0, 0, 1]
    intersection = p[0] + p[3]
    union = sum(pi + yi - pi * yi for pi, yi in zip(p, y, strict=True))
    assert soft_iou(logits, target).item() == pytest.approx(intersection / union, rel=1e-5)
    assert soft_iou_loss(logits, target).item() == pytest.approx(1 - intersection / union, rel=1e-5)


def test_soft_iou_loss_averages_valid_referents_in_float32() -> None:
    target = torch.zeros(2, 3, 4, 4)
    target[:, :, :2] = 1
    logits = torch.where(target.bool(), 20.0, -20.0)
    logits[0, 1] = -logits[0, 1]  # completely wrong: loss 1
    logits[1, 2] = 0.0  # padded: excluded whatever it is
    valid = torch.tensor([[True, True, True], [True, True, False]])
    loss = soft_iou_loss(logits.bfloat16(), target, valid)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1 / 5, abs=1e-4)
    empty = torch.zeros(1, 1, 4, 4)
    assert soft_iou_loss(torch.full((1, 1, 4, 4), -30.0), empty).item() == pytest.approx(
        0, abs=1e-3
    )


def test_linear_pca_starts_at_the_pca_projection() -> None:
    rng = np.random.default_rng(0)
    data = (rng.normal(size=(50, 12)) @ rng.normal(size=(12, 12)) + 3).astype(np.float32)
    pca = PCA(n_components=4).fit(data)
    projection = TextProjection("linear_pca", 12, 4)
    projection.load_pca(PcaSolution(pca.components_, pca.mean_))
    with torch.no_grad():
        projected = projection(torch.from_numpy(data)).numpy()
    np.testing.assert_allclose(projected, pca.transform(data), atol=1e-4)
    with pytest.raises(UserError, match="do not fit"):
        projection.load_pca(PcaSolution(pca.components_[:3], pca.mean_))
    with pytest.raises(UserError, match="no linear layer"):
        TextProjection("pca", 4).load_pca(PcaSolution(pca.components_, pca.mean_))


def test_text_transforms_and_their_sizes() -> None:
    text = torch.randn(2, 3, 12)
    assert TextProjection("none", 12)(text) is text
    assert TextProjection("pca", 12, 12)(text) is text
    assert TextProjection("linear", 12, 5)(text).shape == (2, 3, 5)
    with pytest.raises(UserError, match="needs proj_dim"):
        TextProjection("linear", 12)
    with pytest.raises(UserError, match="proj_dim"):
        TextProjection("none", 12, 5)
    with pytest.raises(UserError, match="unknown text_transform"):
        TextProjection("bert", 12)


def test_model_with_linear_pca_projection() -> None:
    rng = np.random.default_rng(1)
    components, mean = rng.normal(size=(4, TEXT_DIM)), rng.normal(size=TEXT_DIM)
    settings = {**TINY, "text_transform": "linear_pca", "proj_dim": 4}
    model = RRIS.from_config(settings, pca=PcaSolution(components, mean)).eval()
    np.testing.assert_allclose(model.text.linear.weight.detach().numpy(), components, rtol=1e-6)
    images, text = inputs(1, 2)
    with torch.no_grad():
        assert model(images, text).shape == (1, 2, 64, 96)
    assert model.decoder.cells[0].gates.in_channels == 16 + 16 + 4


def test_parameter_groups_split_the_model(model: RRIS) -> None:
    encoder = {id(p) for p in model.encoder_parameters()}
    decoder = {id(p) for p in model.decoder_parameters()}
    assert encoder and decoder and not encoder & decoder
    assert encoder | decoder == {id(p) for p in model.parameters()}
    assert {id(p) for p in model.encoder.parameters()} == encoder


def test_model_config_round_trip() -> None:
    config = ModelConfig(
        backbone="resnet50", hidden=64, text_dim=384, text_transform="linear", proj_dim=128
    )
    assert ModelConfig.from_dict(config.to_dict()) == config
    model = RRIS.from_config(TINY)
    assert model.config == ModelConfig.from_dict(TINY)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hiden": 64}, "unknown model setting"),
        ({"hidden": 24}, "multiple of 16"),
        ({"hidden": "64"}, "^model setting hidden='64' is not an integer$"),
        ({"hidden": True}, "^model setting hidden=True is not an integer$"),
        ({"proj_dim": "x"}, r"^model setting proj_dim='x' is not of type int \| None$"),
        ({"backbone": "vgg16"}, "unknown backbone"),
        ({"text_transform": "linear"}, "needs proj_dim"),
    ],
)
def test_model_config_rejects_bad_settings(settings: dict, message: str) -> None:
    with pytest.raises(UserError, match=message):
        ModelConfig.from_dict(settings)


def test_imagenet_weights_offline_say_what_to_do(monkeypatch, tmp_path) -> None:
    """No network (simulated at the resolver, so this cannot hang): a helpful UserError."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    with pytest.raises(UserError) as error:
        build_backbone("resnet18", "imagenet")
    message = str(error.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth") in message
    assert "local state_dict file" in message and "'none'" in message


def test_weights_file_round_trip(tmp_path) -> None:
    torch.manual_seed(3)
    source = torchvision.models.resnet18()
    path = tmp_path / "resnet18.pt"
    torch.save(source.state_dict(), path)
    encoder = build_backbone("resnet18", str(path))
    for key, value in encoder.state_dict().items():
        torch.testing.assert_close(value, source.state_dict()[key], rtol=0, atol=0)
    # the encoder's own state dict (no fc) loads back too
    torch.save(encoder.state_dict(), tmp_path / "encoder.pt")
    again = build_backbone("resnet18", str(tmp_path / "encoder.pt"))
    torch.testing.assert_close(again.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    with pytest.raises(UserError, match="do not fit"):
        build_backbone("resnet34", str(path))
    with pytest.raises(UserError, match="does not exist"):
        build_backbone("resnet18", str(tmp_path / "missing.pt"))


def test_weights_saved_without_batch_norm_step_counters_load(tmp_path):
    """Files saved before torch 0.4.1 (torchvision's first ImageNet weights among them) have no
    ``num_batches_tracked``: batch norm fills it in, so the weights fit."""
    torch.manual_seed(0)
    source = torchvision.models.resnet18()
    state = source.state_dict()
    old = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    torch.save(old, tmp_path / "old.pt")
    encoder = build_backbone("resnet18", str(tmp_path / "old.pt"))
    for key, value in encoder.state_dict().items():
        expected = torch.tensor(0) if key.endswith("num_batches_tracked") else state[key]
        torch.testing.assert_close(value, expected, rtol=0, atol=0)


def coloured_squares(size: int = 48, side: int = 16) -> tuple[torch.Tensor, ...]:
    """Four grey images, each with two squares of different colours (every colour is a first
    and a second referent somewhere); the embedding of a referent is its colour, one-hot
    (scaled to 4 so that, like a real embedding, it is not tiny beside the image features)."""
    colours = torch.tensor([[220, 30, 30], [30, 200, 30], [30, 60, 220]], dtype=torch.uint8)
    pairs = [(0, 1), (1, 2), (2, 0), (1, 0)]
    g = torch.Generator().manual_seed(0)
    images = torch.full((4, 3, size, size), 128, dtype=torch.uint8)
    masks = torch.zeros(4, 2, size, size, dtype=torch.uint8)
    text = torch.zeros(4, 2, 3)
    for i, pair in enumerate(pairs):
        while True:  # two corners far enough apart for the squares not to overlap
            ys, xs = torch.randint(0, size - side + 1, (2, 2), generator=g)
            if (ys[0] - ys[1]).abs() >= side or (xs[0] - xs[1]).abs() >= side:
                break
        for r, (colour, y, x) in enumerate(zip(pair, ys.tolist(), xs.tolist(), strict=True)):
            images[i, :, y : y + side, x : x + side] = colours[colour].view(3, 1, 1)
            masks[i, r, y : y + side, x : x + side] = 1
            text[i, r, colour] = 4.0
    return images, masks, text


@pytest.mark.slow
def test_model_overfits_coloured_squares() -> None:
    images, masks, text = coloured_squares()
    torch.manual_seed(0)
    model = RRIS(backbone="resnet18", weights="none", hidden=32, text_dim=3)
    optimizer = torch.optim.Adam(
        [
            {"params": model.encoder_parameters(), "lr": 1e-3},
            {"params": model.decoder_parameters(), "lr": 1e-2},
        ]
    )
    losses = []
    for _ in range(150):
        loss = soft_iou_loss(model(images, text), masks)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if loss.item() < 0.2:
            break
    assert losses[0] > 0.6
    assert losses[-1] < 0.2, f"soft IoU loss still {losses[-1]:.3f} after {len(losses)} steps"


@pytest.mark.slow
@pytest.mark.parametrize("transform", TEXT_TRANSFORMS)
@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_backbone_and_text_transform_trains(backbone: str, transform: str) -> None:
    """One forward and backward pass of every variant: finite logits, a gradient everywhere."""
    proj_dim = 8 if transform in LEARNED_TRANSFORMS else None
    config = {**TINY, "backbone": backbone, "text_transform": transform, "proj_dim": proj_dim}
    torch.manual_seed(0)
    model = RRIS.from_config(config)
    images, text = inputs(2, 2)  # batch 2: batch norm needs two values at layer4's 1x1
    logits = model(images[..., :32, :32], text)
    assert logits.shape == (2, 2, 32, 32) and torch.isfinite(logits).all()
    soft_iou_loss(logits, (images[:, :2, :32, :32] > 127).float()).backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    assert missing == []


def test_ended_sequences_take_no_steps(model: RRIS, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each decoder step runs on the sequences that still have a valid slot there or later
    only (a batch out of that order is reordered and put back), and every sequence's logits
    equal those it gets alone."""
    images, text = inputs(batch=3, steps=4)
    valid = torch.tensor(
        [[True, True, False, False], [True, True, True, True], [True, False, True, False]]
    )
    rows_per_step = []
    step = model.decoder.step

    def counting_step(prepared, t, state, rows):
        rows_per_step.append(rows)
        return step(prepared, t, state, rows)

    monkeypatch.setattr(model.decoder, "step", counting_step)
    with torch.no_grad():
        logits = model(images, text, valid)
    assert rows_per_step == [3, 3, 2, 1]  # the sequences ending at slots 2, 4 and 3
    assert logits.shape == (3, 4, *images.shape[-2:])
    assert not logits[0, 2:].any() and not logits[2, 3].any()  # after their last valid slot
    with torch.no_grad():
        for row in range(3):
            last = int(valid[row].nonzero().max()) + 1
            alone = model(
                images[row : row + 1], text[row : row + 1, :last], valid[row : row + 1, :last]
            )
            torch.testing.assert_close(
                logits[row, :last][valid[row, :last]],
                alone[0][valid[row, :last]],
                atol=1e-5,
                rtol=1e-4,
            )
