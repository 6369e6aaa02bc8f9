"""Stage 4: the original network, its parameter names and count, and the fixed dropout."""
import pytest
import torch

import helpers
from machinery import networks
from original_notebook import FMnist_CNN

ORIGINAL_PARAMETER_NAMES = [
    "conv_block1.0.weight", "conv_block1.0.bias", "conv_block1.1.weight", "conv_block1.1.bias",
    "conv_block2.0.weight", "conv_block2.0.bias", "conv_block2.1.weight", "conv_block2.1.bias",
    "conv_block3.0.weight", "conv_block3.0.bias", "conv_block3.1.weight", "conv_block3.1.bias",
    "linear1.weight", "linear1.bias", "batch_norm.weight", "batch_norm.bias",
    "linear2.weight", "linear2.bias",
]


def test_parameter_count_and_names():
    model = helpers.FMnistCNN()
    assert helpers.count_parameters(model) == 242_250
    assert [name for name, _ in model.named_parameters()] == ORIGINAL_PARAMETER_NAMES
    assert model.linear1.weight.numel() + model.linear1.bias.numel() == 1152 * 128 + 128


def test_output_is_logits_for_ten_classes():
    model = helpers.FMnistCNN().eval()
    logits = model(torch.rand(4, 1, 28, 28))
    assert logits.shape == (4, 10)
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))  # not already probabilities


def test_eval_mode_is_deterministic_and_train_mode_is_not():
    torch.manual_seed(0)
    model = helpers.FMnistCNN()
    images = torch.rand(32, 1, 28, 28)
    model.eval()
    assert torch.equal(model(images), model(images))
    model.train()
    assert not torch.equal(model(images), model(images))  # dropout is on while training


def test_in_training_mode_the_fixed_network_is_the_original_draw_for_draw():
    """Same weights, same seed, training mode: the same outputs as the original notebook's
    network, so every dropout rate and place is the original's (only the eval-mode bug is gone)."""
    torch.manual_seed(0)
    original = FMnist_CNN().train()
    ours = helpers.FMnistCNN().train()
    ours.load_state_dict(original.state_dict())
    images = torch.rand(8, 1, 28, 28)
    torch.manual_seed(1)
    expected = original(images)
    torch.manual_seed(1)
    assert torch.equal(ours(images), expected)


def test_the_original_bug_is_real_and_fixed():
    """The original's F.dropout stays on in eval(); ours does not, with the same weights."""
    torch.manual_seed(0)
    original = FMnist_CNN().eval()
    ours = helpers.FMnistCNN()
    ours.load_state_dict(original.state_dict(), strict=True)
    ours.eval()
    images = torch.rand(32, 1, 28, 28)
    assert not torch.equal(original(images), original(images))
    assert torch.equal(ours(images), ours(images))


def test_build_model_knows_the_course_networks():
    assert isinstance(helpers.build_model("original"), helpers.FMnistCNN)
    assert helpers.network_name(helpers.build_model("original")) == "original"
    assert type(helpers.build_model()) is helpers.FMnistCNN  # the original network by default
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        helpers.build_model("resnet")


def test_predict_accepts_one_image_or_a_batch():
    model = helpers.FMnistCNN()
    classes, probabilities = helpers.predict(model, torch.rand(28, 28))
    assert classes.shape == (1,) and probabilities.shape == (1, 10)
    assert torch.allclose(probabilities.sum(1), torch.ones(1))
    classes, probabilities = helpers.predict(model, torch.randint(0, 256, (5, 1, 28, 28),
                                                                  dtype=torch.uint8))
    assert classes.shape == (5,) and probabilities.shape == (5, 10)


@pytest.mark.parametrize("images, message", [
    (torch.rand(3, 32, 32), "28x28 grayscale"),
    (torch.rand(2, 3, 28, 28), "28x28 grayscale"),
    (torch.rand(1, 28, 28) * 255, "values in 0-1"),
    (torch.zeros(28, 28, dtype=torch.int64), "dtype"),
])
def test_predict_rejects_bad_images_clearly(images, message):
    with pytest.raises(ValueError, match=message):
        helpers.predict(helpers.FMnistCNN(), images)


def test_a_residual_block_adds_its_correction_to_its_input():
    """x + f(x): the block learns only a correction (stage 10's ImprovedCNN)."""
    torch.manual_seed(0)
    block = networks.ResidualBlock(4).eval()
    x = torch.randn(2, 4, 7, 7)
    with torch.no_grad():
        assert torch.equal(block(x), x + block.body(x))
