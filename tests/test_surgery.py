"""Model surgery: classifier removal, cutting at a layer, pooling, the new head, and frozen-layer modes."""

from __future__ import annotations

import helpers
import pytest
import torch
from torch import nn

from graftune.backbones.base import Backbone
from graftune.backbones.surgery import CutBody, find_classifier, remove_classifier
from graftune.config import HeadConfig, validate
from graftune.errors import UserError
from graftune.grafted import GraftedModel, parameter_summary
from graftune.preprocessing import ImagePreprocess
from graftune.tasks.heads import Pooling, build_head
from graftune.tasks.image_classification import ImageClassification


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)


class Tokens(nn.Module):
    """A text-like body: (B, T) ids -> (B, T, D) states."""

    def __init__(self, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.embed(input_ids)


# --- classifier removal ------------------------------------------------------------------------------------


def test_find_classifier_is_the_last_linear() -> None:
    assert find_classifier(helpers.tiny_cnn()) == "fc"
    assert find_classifier(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Sequential(nn.Dropout(), nn.Linear(4, 2)))) \
        == "2.1"


def test_find_classifier_without_linear_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"head\.replace"):
        find_classifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()))


def test_remove_classifier_replaces_it_with_identity() -> None:
    model = helpers.tiny_cnn()
    assert remove_classifier(model) == "fc"
    assert isinstance(model.fc, nn.Identity)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 16)  # the pooled features, no longer 3 logits


def test_remove_classifier_by_nested_name() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.Sequential(nn.Dropout(0.0), nn.Linear(6, 2)))
    assert remove_classifier(model, "1.1") == "1.1"
    assert isinstance(model[1][1], nn.Identity)
    assert isinstance(model[0], nn.Linear)
    assert model(torch.randn(3, 4)).shape == (3, 6)


def test_remove_classifier_wrong_name_suggests_the_closest() -> None:
    model = helpers.tiny_cnn()
    with pytest.raises(UserError) as info:
        remove_classifier(model, "fcc")
    message = str(info.value)
    assert "'fcc' not found" in message and "Did you mean 'fc'?" in message
    assert "layer1" in message  # lists the top-level layers
    assert isinstance(model.fc, nn.Linear)  # nothing was changed


# --- cutting -----------------------------------------------------------------------------------------------


def test_cut_body_returns_the_named_layer_output_and_later_layers_never_run() -> None:
    model = helpers.tiny_cnn().eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model.layer2(model.layer1(model.relu(model.bn1(model.conv1(x)))))
    calls: list[str] = []
    model.layer3.register_forward_pre_hook(lambda *_: calls.append("layer3"))
    model.fc.register_forward_pre_hook(lambda *_: calls.append("fc"))
    cut = CutBody(model, "layer2")
    out = cut(pixel_values=x)
    assert out.shape == (2, 12, 8, 8)  # stride 2 stem, stride 2 in layer2
    assert calls == []
    assert torch.allclose(out, expected, atol=1e-6)


def test_cut_body_inside_a_stage_and_its_used_parameters() -> None:
    cut = CutBody(helpers.tiny_cnn(), "layer2.0")
    assert cut(pixel_values=torch.randn(1, 3, 32, 32)).shape == (1, 12, 8, 8)
    used = cut.used_parameters()
    assert "model.conv1.weight" in used and "model.bn1.bias" in used
    assert "model.layer1.1.conv.weight" in used and "model.layer2.0.bn.weight" in used
    assert "model.layer2.1.conv.weight" not in used
    assert not any(name.startswith(("model.layer3.", "model.fc.")) for name in used)
    assert used <= {name for name, _ in cut.named_parameters()}


def test_cut_body_wrong_layer_and_layer_never_called() -> None:
    with pytest.raises(UserError, match="Did you mean 'layer2'"):
        CutBody(helpers.tiny_cnn(), "layer22")
    model = helpers.tiny_cnn()
    model.spare = nn.Linear(2, 2)  # registered but never called in forward
    with pytest.raises(RuntimeError, match="never called"):
        CutBody(model, "spare")(pixel_values=torch.randn(1, 3, 16, 16))


# --- pooling -----------------------------------------------------------------------------------------------


def test_mean_pooling_honours_the_attention_mask() -> None:
    features = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]])
    pooled = Pooling("mean")(features, {"attention_mask": mask})
    assert torch.allclose(pooled[0], features[0, :2].mean(0), atol=1e-6)
    assert torch.allclose(pooled[1], features[1].mean(0), atol=1e-6)
    changed = features.clone()
    changed[0, 2:] = 1000.0  # padding
    assert torch.allclose(Pooling("mean")(changed, {"attention_mask": mask}), pooled, atol=1e-6)
    assert not torch.allclose(Pooling("mean")(changed), pooled)  # without the mask it does count


def test_max_pooling_ignores_padding_and_cls_takes_the_first_token() -> None:
    features = torch.randn(2, 4, 3)
    mask = torch.tensor([[1, 1, 1, 0], [1, 0, 0, 0]])
    features[:, -1] = 50.0  # large values at a padded position for example 0
    pooled = Pooling("max")(features, {"attention_mask": mask})
    assert torch.allclose(pooled[0], features[0, :3].amax(0))
    assert torch.allclose(pooled[1], features[1, 0])
    assert torch.equal(Pooling("cls")(features, {"attention_mask": mask}), features[:, 0])


def test_image_poolings_on_feature_maps() -> None:
    maps = torch.randn(2, 6, 3, 4)
    assert torch.allclose(Pooling("avg")(maps), maps.mean(dim=(2, 3)))
    assert torch.allclose(Pooling("max")(maps), maps.amax(dim=(2, 3)))
    both = Pooling("avgmax")(maps)
    assert both.shape == (2, 12)
    assert torch.allclose(both[:, :6], maps.mean(dim=(2, 3))) and torch.allclose(both[:, 6:], maps.amax(dim=(2, 3)))


def test_none_pooling_and_vectors_pass_through() -> None:
    vectors = torch.randn(3, 7)
    for kind in ("none", "mean", "avg", "cls"):
        assert torch.equal(Pooling(kind)(vectors), vectors)
    assert Pooling("none")(torch.randn(2, 4, 3, 3)).shape == (2, 36)


def test_resolve_pooling_auto_uses_the_backbone_default() -> None:
    backbone = Backbone(body=nn.Identity(), feature_dim=4, groups=[], preprocess=ImagePreprocess(),
                        modality="image", default_pooling="avg", source="test")
    cfg = validate({"task": "image-classification", "model": {"source": "x"}, "data": {"train": "x"}})
    assert ImageClassification.resolve(cfg, backbone).head.pooling == "avg"
    chosen = validate({**cfg.model_dump(), "head": {"pooling": "max"}})
    assert ImageClassification.resolve(chosen, backbone).head.pooling == "max"
    assert cfg.head.pooling == "auto"  # the user's config is never changed


# --- the new head ------------------------------------------------------------------------------------------


def test_build_head_plain() -> None:
    head = build_head(HeadConfig(dropout=0.0), feature_dim=10, num_outputs=4, pooling="avg")
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 4)]
    assert not any(isinstance(m, nn.Dropout) for m in head.modules())
    assert head(torch.randn(5, 10)).shape == (5, 4)


def test_build_head_hidden_layers_activation_and_dropout() -> None:
    cfg = HeadConfig(hidden=[16, 8], activation="relu", dropout=0.25)
    head = build_head(cfg, feature_dim=10, num_outputs=3, pooling="mean")
    kinds = [type(m) for m in head]
    assert kinds == [nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    linears = [m for m in head if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(10, 16), (16, 8), (8, 3)]
    assert all(m.p == 0.25 for m in head if isinstance(m, nn.Dropout))
    assert head(torch.randn(2, 10)).shape == (2, 3)


def test_avgmax_head_takes_twice_the_width() -> None:
    head = build_head(HeadConfig(), 16, 5, "avgmax")
    assert next(m for m in head if isinstance(m, nn.Linear)).in_features == 32
    model = GraftedModel(CutBody(helpers.tiny_cnn(), "layer3"), head, Pooling("avgmax"))
    assert model({"pixel_values": torch.randn(2, 3, 32, 32)}).shape == (2, 5)


def test_avgmax_on_token_states_joins_the_masked_mean_and_max() -> None:
    features = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1] * 5])
    features[0, 3:] = 1000.0  # padding: counts in neither half
    pooled = Pooling("avgmax")(features, {"attention_mask": mask})
    assert pooled.shape == (2, 8)
    assert torch.allclose(pooled[0], torch.cat([features[0, :3].mean(0), features[0, :3].amax(0)]), atol=1e-6)
    assert torch.allclose(pooled[1], torch.cat([features[1].mean(0), features[1].amax(0)]), atol=1e-6)
    model = GraftedModel(Tokens(8), build_head(HeadConfig(), 8, 3, "avgmax"), Pooling("avgmax"))
    assert model({"input_ids": torch.randint(0, 50, (2, 5)), "attention_mask": torch.ones(2, 5)}).shape == (2, 3)


def test_avgmax_on_vectors_is_a_user_error() -> None:
    backbone = Backbone(body=nn.Identity(), feature_dim=4, groups=[], preprocess=ImagePreprocess(),
                        modality="image", default_pooling="none", source="test", feature_rank=2)
    cfg = validate({"task": "image-classification", "model": {"source": "x"}, "data": {"train": "x"},
                    "head": {"pooling": "avgmax"}})
    with pytest.raises(UserError, match="already gives one vector per example"):
        ImageClassification.resolve(cfg, backbone)


def test_fine_tune_model_text_forward_uses_the_mask() -> None:
    model = GraftedModel(Tokens(8), build_head(HeadConfig(dropout=0.0), 8, 3, "mean"), Pooling("mean")).eval()
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1] * 6])
    logits = model({"input_ids": ids, "attention_mask": mask})
    assert logits.shape == (2, 3)
    other = ids.clone()
    other[0, 3:] = 0  # change only padded tokens
    assert torch.allclose(model({"input_ids": other, "attention_mask": mask}), logits, atol=1e-6)


# --- frozen layers in train mode ---------------------------------------------------------------------------


def frozen_stem_model(policy: str) -> GraftedModel:
    body = helpers.body_of(helpers.tiny_cnn())
    for name, param in body.named_parameters():
        if name.startswith(("model.conv1.", "model.bn1.")):
            param.requires_grad_(False)
    return GraftedModel(body, build_head(HeadConfig(), 16, 3, "avg"), Pooling("avg"), batchnorm_policy=policy)


def test_train_keeps_frozen_batchnorm_in_eval_and_its_statistics() -> None:
    model = frozen_stem_model("frozen")
    model.train()
    net = model.body.model
    assert not net.bn1.training and not net.conv1.training
    assert net.layer1[0].bn.training and model.head.training and model.training
    frozen_before = net.bn1.running_mean.clone()
    trainable_before = net.layer1[0].bn.running_mean.clone()
    model({"pixel_values": torch.randn(4, 3, 32, 32) * 3 + 1})
    assert torch.equal(net.bn1.running_mean, frozen_before)
    assert int(net.bn1.num_batches_tracked) == 0
    assert not torch.equal(net.layer1[0].bn.running_mean, trainable_before)


def test_batchnorm_policy_train_updates_frozen_batchnorm() -> None:
    model = frozen_stem_model("train")
    model.train()
    net = model.body.model
    assert net.bn1.training
    before = net.bn1.running_mean.clone()
    model({"pixel_values": torch.randn(4, 3, 32, 32) * 3 + 1})
    assert not torch.equal(net.bn1.running_mean, before)
    assert int(net.bn1.num_batches_tracked) == 1


def test_fully_frozen_body_runs_in_eval_mode_and_eval_still_works() -> None:
    model = GraftedModel(helpers.body_of(helpers.tiny_cnn()), build_head(HeadConfig(dropout=0.5), 16, 3, "avg"),
                         Pooling("avg"))
    for param in model.body.parameters():
        param.requires_grad_(False)
    model.train()
    assert not any(m.training for m in model.body.modules())
    assert all(m.training for m in model.head.modules())
    model.eval()
    assert not any(m.training for m in model.modules())


def test_parameter_summary_counts() -> None:
    model = frozen_stem_model("frozen")
    net = model.body.model
    frozen = sum(p.numel() for p in (*net.conv1.parameters(), *net.bn1.parameters()))
    total = sum(p.numel() for p in model.parameters())
    assert parameter_summary(model) == {"total": total, "trainable": total - frozen, "frozen": frozen}
    assert frozen == 3 * 8 * 9 + 2 * 8
