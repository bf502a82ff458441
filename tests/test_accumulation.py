"""H = XᵀX accumulated in full float32 (never TF32) from bf16/fp16/fp32 block inputs."""

import pytest
import torch

from layerprune.problems import HessianAccumulator
from layerprune.problems.backend import full_float32_matmul


def _precision_state():
    """Every torch float32-matmul setting, as readable values (an unreadable one as "raises")."""
    state = [torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision,
             torch.backends.fp32_precision]
    for getter in (torch.get_float32_matmul_precision, torch._C._get_cublas_allow_tf32):
        try:
            state.append(getter())
        except RuntimeError:
            state.append("raises")
    return state


@pytest.fixture
def restore_precision():
    """Leave the process's matmul settings as this test found them."""
    saved = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.fp32_precision,
             torch.backends.mkldnn.matmul.fp32_precision, torch.backends.fp32_precision)
    yield
    torch.set_float32_matmul_precision(saved[0])
    torch.backends.cuda.matmul.fp32_precision = saved[1]
    torch.backends.mkldnn.matmul.fp32_precision = saved[2]
    torch.backends.fp32_precision = saved[3]


def _bf16_inputs(n: int, inp: int, seed: int, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, inp, generator=g) * torch.exp(torch.randn(inp, generator=g))[None, :]
    return x.to(torch.bfloat16).to(device)


def _errors(H, x):
    """(relative Frobenius error, max entry error relative to Σ|xᵢxⱼ|) of H against float64."""
    x64 = x.double()
    H64 = x64.T @ x64
    E = H.double() - H64
    return float(E.norm() / H64.norm()), float((E.abs() / (x64.abs().T @ x64.abs())).max())


@pytest.mark.parametrize("n,inp", [(4096, 64), (4096, 256), (6000, 128)])
def test_bf16_inputs_accumulate_to_float64_accuracy(n, inp):
    x = _bf16_inputs(n, inp, seed=inp)
    acc = HessianAccumulator(inp)
    for part in x.reshape(-1, 8, inp).split(64):  # (batch × seq × in) mini-batches, as a hook sees them
        acc.add(part)
    assert acc.count == n and acc.H.dtype == torch.float32 and acc.is_finite()
    rel, entry = _errors(acc.hessian(), x)
    assert rel < 2e-6 and entry < 2e-6  # measured ≈ 4e-7 and ≈ 6e-7


@pytest.mark.parametrize("turn_on", ["allow_tf32", "high", "medium", "new_api"])
def test_tf32_is_off_inside_the_accumulation_and_restored_after(turn_on, restore_precision, monkeypatch):
    if turn_on == "allow_tf32":
        torch.backends.cuda.matmul.allow_tf32 = True
    elif turn_on == "new_api":
        torch.backends.cuda.matmul.fp32_precision = "tf32"
    else:
        torch.set_float32_matmul_precision(turn_on)
    before = _precision_state()
    assert "tf32" in before  # the process did turn it on
    seen = []
    original = torch.Tensor.addmm_

    def spy(self, *args, **kwargs):
        seen.append((torch._C._get_cublas_allow_tf32(), torch.backends.cuda.matmul.fp32_precision,
                     torch.backends.mkldnn.matmul.fp32_precision, torch.get_float32_matmul_precision()))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "addmm_", spy)
    acc = HessianAccumulator(32)
    acc.add(_bf16_inputs(256, 32, seed=1))
    acc.add(_bf16_inputs(256, 32, seed=2).float())
    monkeypatch.undo()
    assert seen == [(False, "ieee", "ieee", "highest")] * 2
    assert _precision_state() == before


def test_full_float32_context_restores_after_an_error(restore_precision):
    torch.set_float32_matmul_precision("high")
    before = _precision_state()
    with pytest.raises(ZeroDivisionError):
        with full_float32_matmul():
            assert not torch.backends.cuda.matmul.allow_tf32
            raise ZeroDivisionError("inside")
    assert _precision_state() == before and torch.get_float32_matmul_precision() == "high"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("inp", [64, 256])
def test_gpu_accumulation_ignores_global_tf32(inp, dtype, restore_precision):
    """On the GPU with TF32 on for the whole process, H still matches float64 to float32 accuracy.

    float32 inputs are the telling case: bf16 (and fp16) values fit TF32's 10-bit mantissa, so
    their products are exact under TF32 too. A plain float32 product of the same inputs in the
    same state shows TF32's error, so the test can tell the two apart.
    """
    if not torch.cuda.is_available():
        pytest.skip("torch sees no CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.set_float32_matmul_precision("high")
    g = torch.Generator().manual_seed(inp)
    x = (torch.randn(4096, inp, generator=g) * torch.exp(torch.randn(inp, generator=g))[None, :]).to(dtype).cuda()
    acc = HessianAccumulator(inp, device="cuda")
    for part in x.split(512):
        acc.add(part)
    rel, entry = _errors(acc.hessian(), x)
    assert rel < 2e-6 and entry < 2e-6
    if dtype == torch.float32:
        plain_rel, _ = _errors(x.T @ x, x)  # TF32, as the process asked for
        assert plain_rel > 1e-5
    assert torch.get_float32_matmul_precision() == "high" and torch.backends.cuda.matmul.allow_tf32
