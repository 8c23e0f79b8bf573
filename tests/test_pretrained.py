"""PyTorch reference networks with random weights -> converted -> same features (float32)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from mrp_jax.models import pretrained
from mrp_jax.models.resnet import LAYOUTS, ResNet


class TorchBasicBlock(nn.Module):
  """MedicalNet / torchvision BasicBlock (dims 2 or 3, shortcut 'A' or 'B')."""

  def __init__(self, dims, inplanes, planes, stride, dilation, shortcut):
    super().__init__()
    conv, bn = (nn.Conv3d, nn.BatchNorm3d) if dims == 3 else (nn.Conv2d, nn.BatchNorm2d)
    self.dims, self.stride, self.planes, self.shortcut = dims, stride, planes, shortcut
    self.conv1 = conv(inplanes, planes, 3, stride, padding=dilation, dilation=dilation,
                      bias=False)
    self.bn1 = bn(planes)
    self.conv2 = conv(planes, planes, 3, 1, padding=dilation, dilation=dilation, bias=False)
    self.bn2 = bn(planes)
    self.needs_projection = stride != 1 or inplanes != planes
    if self.needs_projection and shortcut == "B":
      self.downsample = nn.Sequential(conv(inplanes, planes, 1, stride, bias=False), bn(planes))

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x
    if self.needs_projection:
      if self.shortcut == "B":
        residual = self.downsample(x)
      else:  # MedicalNet's downsample_basic_block: strided avg-pool (k=1) + zero channels
        pool = F.avg_pool3d if self.dims == 3 else F.avg_pool2d
        residual = pool(x, kernel_size=1, stride=self.stride)
        zeros = torch.zeros((residual.shape[0], self.planes - residual.shape[1],
                             *residual.shape[2:]))
        residual = torch.cat([residual, zeros], dim=1)
    return F.relu(out + residual)


class TorchResNet18(nn.Module):
  def __init__(self, dims, in_channels, strides, dilations, shortcut, head):
    super().__init__()
    conv, bn, pool = ((nn.Conv3d, nn.BatchNorm3d, nn.MaxPool3d) if dims == 3
                      else (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d))
    self.conv1 = conv(in_channels, 64, 7, 2, padding=3, bias=False)
    self.bn1 = bn(64)
    self.maxpool = pool(3, 2, 1)
    inplanes = 64
    for i, (planes, stride, dilation) in enumerate(zip((64, 128, 256, 512), strides, dilations)):
      blocks = [TorchBasicBlock(dims, inplanes, planes, stride, dilation, shortcut),
                TorchBasicBlock(dims, planes, planes, 1, dilation, shortcut)]
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
      inplanes = planes
    # Heads that the converter must drop: MedicalNet's segmentation conv, torchvision's fc.
    self.head_name = head
    setattr(self, head, conv(512, 2, 1) if head == "conv_seg" else nn.Linear(512, 1000))

  def features(self, x):
    x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
    for i in range(1, 5):
      x = getattr(self, f"layer{i}")(x)
    return x.mean(dim=tuple(range(2, x.ndim)))


def _randomise(net, seed):
  """Random weights and BatchNorm running statistics away from the defaults."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, (nn.BatchNorm2d, nn.BatchNorm3d)):
        n = module.num_features
        module.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
        module.bias.copy_(0.2 * torch.randn(n, generator=generator))
        module.running_mean.copy_(0.3 * torch.randn(n, generator=generator))
        module.running_var.copy_(0.5 + torch.rand(n, generator=generator))
  return net.eval()


def _relative_error(a, b):
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("layout", ["medicalnet", "resnet"])
def test_medicalnet_checkpoint_reproduces_pytorch_features(tmp_path, layout):
  torch.manual_seed(0)
  strides, dilations = LAYOUTS[layout]["strides"], LAYOUTS[layout]["dilations"]
  net = _randomise(TorchResNet18(3, 1, strides, dilations, "A", "conv_seg"), seed=1)
  path = tmp_path / "resnet_18_23dataset.pth"
  # MedicalNet's layout: a dict with 'state_dict', keys under DataParallel's 'module.'.
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)

  model = ResNet(spatial_dims=3, shortcut="A", dtype=jnp.float32, **LAYOUTS[layout])
  x = np.random.default_rng(0).normal(size=(2, 24, 24, 32)).astype(np.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), x[..., None], train=False))
  variables = pretrained.convert_resnet(pretrained.load_state_dict(path), template)
  ours = np.asarray(model.apply(variables, x[..., None], train=False))
  with torch.no_grad():
    theirs = net.features(torch.from_numpy(x)[:, None]).numpy()
  assert ours.shape == theirs.shape == (2, 512)
  assert _relative_error(ours, theirs) < 1e-4


def test_torchvision_resnet18_collapses_rgb_to_grey(tmp_path):
  torch.manual_seed(0)
  net = _randomise(TorchResNet18(2, 3, (1, 2, 2, 2), (1, 1, 1, 1), "B", "fc"), seed=2)
  path = tmp_path / "resnet18.pth"
  torch.save(net.state_dict(), path)
  model = ResNet(spatial_dims=2, shortcut="B", dtype=jnp.float32)
  grey = np.random.default_rng(0).normal(size=(2, 64, 48)).astype(np.float32)
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), grey[..., None], train=False))
  variables = pretrained.convert_resnet(pretrained.load_state_dict(path), template)
  ours = np.asarray(model.apply(variables, grey[..., None], train=False))
  with torch.no_grad():
    theirs = net.features(torch.from_numpy(grey)[:, None].repeat(1, 3, 1, 1)).numpy()
  assert _relative_error(ours, theirs) < 1e-4


def test_mismatched_checkpoint_lists_every_problem(tmp_path):
  net = TorchResNet18(3, 1, (1, 2, 1, 1), (1, 1, 2, 4), "A", "conv_seg")
  state = net.state_dict()
  state["layer1.0.extra.weight"] = torch.zeros(3)
  state["conv1.weight"] = torch.zeros(64, 1, 5, 5, 5)
  path = tmp_path / "odd.pth"
  torch.save(state, path)
  model = ResNet(spatial_dims=3, shortcut="B")  # shortcut B: expects downsample weights
  template = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 16, 1)),
                                               train=False))
  with pytest.raises(pretrained.PretrainedMismatchError) as raised:
    pretrained.convert_resnet(pretrained.load_state_dict(path), template)
  message = str(raised.value)
  # 3 downsample blocks x (conv kernel, BN scale, bias, mean, var)
  assert "missing from the checkpoint (15)" in message
  assert "layer2_0/downsample_conv/kernel" in message
  assert "not in the model (1): layer1.0.extra.weight" in message
  assert "conv1.weight: checkpoint (5, 5, 5, 1, 64) (as Flax) vs model (7, 7, 7, 1, 64)" in message


def test_refuses_pickled_code(tmp_path):
  class Evil:
    def __reduce__(self):
      return (print, ("executed",))
  path = tmp_path / "evil.pth"
  torch.save({"state_dict": {"x": Evil()}}, path)
  with pytest.raises(Exception, match="(?i)weights_only|unsupported|global"):
    pretrained.load_state_dict(path)


def test_load_encoder_replaces_only_the_image_encoder(tmp_path):
  from configs import iMRrhpc
  from mrp_jax import models
  config = iMRrhpc.get_config("tiny")
  config.model.encoder.width = 64  # checkpoints are full-width ResNet18
  config.model.encoder.layout = "medicalnet"
  model = models.create_model(config.model)
  batch = models.dummy_batch("iMRrhpc", 1, mri_shape=(16, 16, 16))
  variables = model.init(jax.random.key(0), batch, train=False)
  net = _randomise(TorchResNet18(3, 1, (1, 2, 1, 1), (1, 1, 2, 4), "A", "conv_seg"), seed=3)
  path = tmp_path / "resnet_18_23dataset.pth"
  torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
  loaded = pretrained.load_encoder(path, variables)
  np.testing.assert_allclose(
      loaded["params"]["image_encoder"]["conv1"]["kernel"][..., 0, :],
      np.transpose(net.conv1.weight.detach().numpy()[:, 0], (1, 2, 3, 0)))
  np.testing.assert_allclose(loaded["batch_stats"]["image_encoder"]["bn1"]["var"],
                             net.bn1.running_var.numpy())
  for name in ("rhpc_encoder", "response_head_0", "time_embedding"):
    jax.tree.map(np.testing.assert_array_equal, loaded["params"][name], variables["params"][name])
