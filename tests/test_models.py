"""The ResNet family: torchvision compatibility, the paper's sizes, shortcuts, init, pretrained weights."""

from __future__ import annotations

import time

import pytest
import torch
import torchvision
from torch import nn

from toolkit.checkpoint import load_pretrained_weights
from toolkit.errors import BadInputError
from toolkit.models import create_model, list_models
from toolkit.models.resnet import ZeroPadShortcut
from toolkit.models.summary import count_params

CIFAR_DEPTHS = (20, 32, 44, 56, 110)
ALL_MODELS = (
    [f"resnet{d}" for d in (18, 34, 50, 101, 152)]
    + [f"resnet{d}" for d in CIFAR_DEPTHS]
    + [f"plain{d}" for d in CIFAR_DEPTHS]
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: one thread beats two that wait on each other when the cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def randomize_batchnorm(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial BN statistics and affine terms, so a wrong key mapping changes the logits."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def test_registry_lists_the_fifteen_models():
    assert list_models() == ALL_MODELS


@pytest.mark.parametrize("name, size", [("resnet18", 112), ("resnet50", 64)])
def test_torchvision_weights_load_strictly_and_give_the_same_logits(name, size):
    torch.manual_seed(0)
    theirs = getattr(torchvision.models, name)()
    randomize_batchnorm(theirs)
    ours = create_model(name)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert all(ours.state_dict()[k].shape == v.shape for k, v in theirs.state_dict().items())
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-5)

    # and back: other weights of ours into a fresh torchvision model
    mine = create_model(name)
    randomize_batchnorm(mine, seed=1)
    assert not torch.equal(mine.conv1.weight, theirs.conv1.weight)
    back = getattr(torchvision.models, name)()
    back.load_state_dict(mine.state_dict(), strict=True)
    with torch.no_grad():
        logits = mine.eval()(x)
        assert logits.shape == (1, 1000)
        torch.testing.assert_close(back.eval()(x), logits, rtol=1e-4, atol=1e-5)


def paper_param_count(depth: int, num_classes: int = 10, in_channels: int = 3) -> int:
    """Parameters of the CIFAR ResNet with option A, counted from the paper's description."""
    n = (depth - 2) // 6
    total = in_channels * 16 * 9 + 2 * 16  # stem conv + BN
    inplanes = 16
    for width in (16, 32, 64):
        for _ in range(n):
            total += inplanes * width * 9 + width * width * 9 + 2 * (2 * width)
            inplanes = width
    return total + 64 * num_classes + num_classes


@pytest.mark.parametrize("depth, paper_millions, digits", [(20, 0.27, 2), (56, 0.85, 2), (110, 1.7, 1)])
def test_cifar_resnets_have_the_papers_parameter_counts(depth, paper_millions, digits):
    with torch.device("meta"):
        params = count_params(create_model(f"resnet{depth}"))
    assert params == paper_param_count(depth)
    assert round(params / 1e6, digits) == paper_millions


@pytest.mark.parametrize("depth", CIFAR_DEPTHS)
def test_plain_nets_match_their_residual_twins_in_size_and_keys(depth):
    with torch.device("meta"):
        res, plain = create_model(f"resnet{depth}"), create_model(f"plain{depth}")
    assert count_params(res) == count_params(plain) == paper_param_count(depth)
    assert list(res.state_dict()) == list(plain.state_dict())
    shortcuts = [m for m in res.modules() if isinstance(m, ZeroPadShortcut)]
    assert len(shortcuts) == 2  # one at each stage that halves the size and doubles the width
    assert all(sum(p.numel() for p in m.parameters()) == 0 for m in shortcuts)
    assert all(not b.residual and b.downsample is None for b in plain.modules() if hasattr(b, "residual"))


def test_plain_net_has_no_shortcut_path():
    torch.manual_seed(0)
    res = create_model("resnet20").eval()
    randomize_batchnorm(res)
    plain = create_model("plain20").eval()
    plain.load_state_dict(res.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(res(x), plain(x), atol=1e-3)
        # Silence a block's residual branch: the residual block passes relu(x) on, the plain one passes zeros.
        block_res, block_plain = res.layer1[0], plain.layer1[0]
        for block in (block_res, block_plain):
            block.bn2.weight.zero_()
            block.bn2.bias.zero_()
        h = torch.randn(2, 16, 8, 8)
        torch.testing.assert_close(block_res(h), torch.relu(h))
        assert torch.count_nonzero(block_plain(h)) == 0


def test_option_a_shortcut_pads_channels_with_zeros_and_subsamples():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(1, 2, 4, 4)
    y = ZeroPadShortcut(2, 6, stride=2)(x)
    assert y.shape == (1, 6, 2, 2)
    torch.testing.assert_close(y[:, 2:4], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, :2]) == 0 and torch.count_nonzero(y[:, 4:]) == 0


def test_option_b_adds_projection_parameters():
    with torch.device("meta"):
        a = create_model("resnet20")
        b = create_model("resnet20", shortcut="B")
    projections = [m for n, m in b.named_modules() if n.endswith("downsample")]
    assert len(projections) == 2
    assert all(isinstance(p[0], nn.Conv2d) and p[0].kernel_size == (1, 1) for p in projections)
    # 1x1 convs 16->32 and 32->64 plus their BN weight and bias
    assert count_params(b) - count_params(a) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64
    x = torch.randn(1, 3, 32, 32)
    assert create_model("resnet20", shortcut="B").eval()(x).shape == (1, 10)


def test_every_model_takes_any_channels_and_classes():
    with torch.device("meta"):  # no weights computed
        for i, name in enumerate(ALL_MODELS):
            in_channels, classes = 1 + 2 * (i % 2), 1 + 3 * i
            model = create_model(name, in_channels=in_channels, num_classes=classes)
            assert model.conv1.in_channels == in_channels and model.fc.out_features == classes, name
        for name in ("resnet34", "resnet101", "resnet44", "plain32"):  # each family and block, shapes only
            out = create_model(name, in_channels=1, num_classes=7)(torch.zeros(2, 1, 32, 32))
            assert tuple(out.shape) == (2, 7), name


def test_small_models_really_run_on_grey_and_rgb():
    torch.manual_seed(0)
    for name, c in (("resnet20", 1), ("resnet20", 3), ("plain20", 1), ("resnet18", 1)):
        out = create_model(name, in_channels=c, num_classes=5).eval()(torch.randn(2, c, 32, 32))
        assert out.shape == (2, 5) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"name": "resnet19"}, "unknown model 'resnet19'"),
        ({"name": "resnet20", "in_channels": 2}, "in_channels"),
        ({"name": "resnet20", "num_classes": 0}, "num_classes"),
        ({"name": "resnet20", "init": "orthogonal"}, "init"),
        ({"name": "resnet20", "shortcut": "C"}, "shortcut"),
        ({"name": "plain20", "shortcut": "A"}, "no shortcuts"),
        ({"name": "resnet20", "depth_multiplier": 2}, "depth_multiplier"),
    ],
)
def test_bad_model_arguments_raise_bad_input(kwargs, words):
    with pytest.raises(BadInputError, match=words):
        create_model(**kwargs)


def test_xavier_init_changes_the_weight_distribution():
    torch.manual_seed(0)
    kaiming = create_model("resnet20").layer3[1].conv1.weight.detach()
    torch.manual_seed(0)
    xavier_model = create_model("resnet20", init="xavier")
    xavier = xavier_model.layer3[1].conv1.weight.detach()
    fan = 64 * 9  # fan_in == fan_out for a 64->64 3x3 conv
    bound = (6 / (2 * fan)) ** 0.5
    assert xavier.abs().max() <= bound  # uniform within the Glorot bound
    assert abs(xavier.std().item() - bound / 3**0.5) < 0.05 * bound
    assert abs(kaiming.std().item() - (2 / fan) ** 0.5) < 0.05 * (2 / fan) ** 0.5  # He normal, fan_out
    assert kaiming.abs().max() > bound  # normal tails reach past the uniform bound
    assert torch.count_nonzero(xavier_model.fc.bias) == 0
    assert all(torch.all(m.weight == 1) for m in xavier_model.modules() if isinstance(m, nn.BatchNorm2d))


@pytest.fixture(scope="module")
def torchvision_resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()
    randomize_batchnorm(theirs)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(theirs.state_dict(), path)
    return path, theirs.state_dict()


def test_pretrained_weights_with_another_class_count_get_a_fresh_head(torchvision_resnet18_file):
    path, theirs = torchvision_resnet18_file
    torch.manual_seed(1)
    model = create_model("resnet18", num_classes=10)
    fresh_head = model.fc.weight.detach().clone()
    adapted = load_pretrained_weights(model, path)
    assert adapted == ["fc.weight", "fc.bias"]
    ours = model.state_dict()
    for key, value in theirs.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[key], value), key
    assert model.fc.weight.shape == (10, 512)
    assert torch.equal(model.fc.weight, fresh_head)


def test_pretrained_rgb_stem_is_summed_into_a_grey_stem(torchvision_resnet18_file):
    path, theirs = torchvision_resnet18_file
    model = create_model("resnet18", in_channels=1)
    adapted = load_pretrained_weights(model, path)
    assert adapted == ["conv1.weight"]
    torch.testing.assert_close(model.conv1.weight, theirs["conv1.weight"].sum(dim=1, keepdim=True))
    assert torch.equal(model.fc.weight, theirs["fc.weight"])
    # a grey image through the grey stem == the same image as RGB through the original
    rgb = torchvision.models.resnet18()
    rgb.load_state_dict(theirs)
    grey = torch.rand(1, 1, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(grey), rgb.eval()(grey.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-4)


def test_pretrained_file_that_does_not_fit_is_refused(torchvision_resnet18_file, tmp_path):
    path, _ = torchvision_resnet18_file
    with pytest.raises(BadInputError, match="does not fit"):
        load_pretrained_weights(create_model("resnet34"), path)  # missing layers
    with pytest.raises(BadInputError, match="does not fit"):
        load_pretrained_weights(create_model("resnet20"), path)
    cifar = tmp_path / "resnet20.pth"
    state = create_model("resnet20").state_dict()
    state["layer2.0.conv1.weight"] = torch.zeros(32, 8, 3, 3)  # same names, another architecture
    torch.save(state, cifar)
    with pytest.raises(BadInputError, match="layer2.0.conv1.weight"):
        load_pretrained_weights(create_model("resnet20"), cifar)
    not_weights = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(BadInputError, match="not a state_dict"):
        load_pretrained_weights(create_model("resnet20"), not_weights)


def test_pretrained_weights_saved_from_data_parallel_load(tmp_path):
    source = create_model("resnet20")
    path = tmp_path / "dp.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    target = create_model("resnet20")
    assert load_pretrained_weights(target, path) == []
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_summary_walks_shapes_without_weights_or_compute():
    """Built on the meta device: a huge input costs no memory and no time."""
    from toolkit.models.catalog import model_summary

    start = time.process_time()
    huge = model_summary("resnet152", (8, 3, 2048, 2048))  # some 80 GB of activations on a real device
    assert time.process_time() - start < 10
    assert huge["output_shape"] == [8, 1000] and huge["params"] == 60_192_808

    doc = model_summary("resnet20", (2, 3, 32, 32))
    assert doc["output_shape"] == [2, 10] and doc["params"] == 269_722 and doc["input"] == [2, 3, 32, 32]
    layers = {r["name"]: r for r in doc["layers"]}
    assert layers["layer3.2"]["output_shape"] == [2, 64, 8, 8] and layers["layer2.0.downsample"]["params"] == 0
    assert layers["conv1"]["macs"] == 2 * 32 * 32 * 16 * 27  # output elements x (3 x 3 x 3) per output
    assert doc["gflops"] == pytest.approx(2 * 40_551_040 / 1e9)  # twice resnet20's MACs at batch 1
    assert model_summary("resnet20", (3, 32, 32))["input"] == [1, 3, 32, 32]  # --input-size CxHxW: batch 1
    assert model_summary("resnet20", (40,))["input"] == [1, 3, 40, 40]  # N: square, the model's channels
    with pytest.raises(BadInputError, match="give N, HxW or CxHxW"):
        model_summary("resnet20", (1, 1, 3, 32, 32))
